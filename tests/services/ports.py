"""Free loopback ports for the throwaway test servers (PostgreSQL, Mosquitto) and for "nothing listens here".

A port number handed to another program can never be reserved: between the check here and the server's own
bind, anything may take it. Two things keep that race rare and harmless:

- Ports are drawn at random OUTSIDE the kernel's ephemeral range (Linux: ip_local_port_range). Binding port
  0 would hand out a port from inside it, where the kernel also puts the local end of every outgoing
  connection (a test's client, pip, apt...), so the port could be taken the next instant. Random rather
  than seeded: concurrent test runs must not all draw the same ports.
- The servers retry their FIRST start on a new port when the bind collides (:func:`address_in_use` tells
  from their error output). Restarts keep their port: outage tests reconnect clients to it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

HOST = "127.0.0.1"
FIRST_START_TRIES = 3  # a first start that collides picks a new port this many times in all
_LOWEST = 10_000  # below: well-known and registered services more likely to be installed
_EPHEMERAL_DEFAULT = (32_768, 60_999)  # Linux's default, when /proc says nothing
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DRAWS = 200
_random = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ends of outgoing connections (inclusive)."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT
    return low, high


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing uses right now (not even a socket in TIME_WAIT), outside the
    ephemeral range when there is room for one; see the module docstring for why it may still be taken."""
    low, high = ephemeral_range()
    candidates = [*range(_LOWEST, low), *range(high + 1, 65_536)]
    for _ in range(_DRAWS if candidates else 0):
        port = _random.choice(candidates)
        if _bindable(host, port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room outside: the kernel's pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def address_in_use(output: str) -> bool:
    """Whether a server's error output says its listening port was taken (EADDRINUSE's message)."""
    return "Address already in use" in output


def _bindable(host: str, port: int) -> bool:
    # No SO_REUSEADDR: a port with a socket in TIME_WAIT counts as taken, which is the safe answer.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
