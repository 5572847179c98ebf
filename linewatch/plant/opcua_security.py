"""Who may talk to the OPC UA server (linewatch/plant/opcua.py): its certificate, the client certificates it
trusts, the accounts it accepts and what each may do. docs/opcua.md is the reader's version.

- The server certificate and key are generated once, at the first start, into the certificate folder, and
  reused unchanged afterwards: every client trusts exactly that certificate, so replacing it silently would
  cut every PLC off. A certificate that no longer fits (expired, another application URI after a site or
  line rename, a key that is not its own) stops the start with a message naming the files.
- Client application certificates are trusted only when a copy lies in the trusted folder (DER or PEM,
  compared whole; no CA chains). An unknown one is refused and kept in ``rejected/`` beside it, so an
  administrator moves the file over instead of exporting it from the client. Nothing is trusted on first
  use. The check runs at every session activation, on the certificate the secure channel's handshake proved
  (asyncua's own hook, at CreateSession, sees only the certificate a client chooses to send there).
- Users are the accounts of the operator page (linewatch/sinks/users.py): any role reads and subscribes,
  ``operator`` and above call methods, nobody writes or changes the address space. Passwords are accepted
  only over a signed and encrypted channel. Anonymous sessions, when allowed, read only.

asyncua asks the user manager synchronously on its event loop, so a login's argon2 check (50-100 ms)
holds the OPC UA server's loop (not the daemon's) that long; logins are rare, sessions last.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import Engine

from linewatch.sinks.db import DatabaseError
from linewatch.sinks.users import authenticate, role_allows

log = logging.getLogger(__name__)

CERT_FILE = "server_cert.der"
KEY_FILE = "server_key.pem"
# A renewed certificate must be trusted anew on every client of the line; make that a once-a-decade chore.
CERT_DAYS = 3650
MAX_REJECTED = 100  # certificates kept in rejected/: enough to find one, bounded against a flood of strangers


class OpcUaError(RuntimeError):
    """The OPC UA server cannot start; the message names the setting or the file to look at."""


def server_certificate(cert_dir: Path, application_uri: str, host: str, now: datetime) -> tuple[Path, Path]:
    """(certificate, key) in ``cert_dir``: checked and reused, or generated when there is no certificate (the
    key is written first, so a key alone is what a first start cut short leaves, and is replaced)."""
    cert_path, key_path = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    if cert_path.is_file():
        _check_reused(cert_path, key_path, application_uri, now)
        return cert_path, key_path
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(socket.gethostname()),
    ]
    try:
        address = ipaddress.ip_address(host)
        if not address.is_unspecified:
            names.append(x509.IPAddress(address))
    except ValueError:
        names.append(x509.DNSName(host))
    key = cert_gen.generate_private_key()  # RSA 2048, as Basic256Sha256 asks
    cert = cert_gen.generate_self_signed_app_certificate(
        key, f"linewatch {application_uri}", {}, names, [ExtendedKeyUsageOID.SERVER_AUTH], days=CERT_DAYS
    )
    _write_new(key_path, cert_gen.dump_private_key_as_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(Encoding.DER), 0o644)
    log.info("opcua: generated the server certificate %s (SHA-1 %s)", cert_path, thumbprint(cert_path.read_bytes()))
    return cert_path, key_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file created with ``mode`` (never readable by others, even for a moment)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


def _check_reused(cert_path: Path, key_path: Path, application_uri: str, now: datetime) -> None:
    remedy = f"remove {cert_path} and {key_path} to generate new ones (every client must then trust the new one)"
    try:
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise OpcUaError(f"opcua: cannot read the server certificate or key ({error}); {remedy}") from error
    if _public(key.public_key()) != _public(cert.public_key()):
        raise OpcUaError(f"opcua: {key_path} is not the key of {cert_path}; {remedy}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise OpcUaError(
            f"opcua: {cert_path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; {remedy}"
        )
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = uris.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        found = []
    if application_uri not in found:
        raise OpcUaError(
            f"opcua: {cert_path} names the application {', '.join(found) or 'none'}, this server is "
            f"{application_uri} ([site] site or line changed?); {remedy}"
        )


def _public(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def thumbprint(der: bytes) -> str:
    """The SHA-1 thumbprint OPC UA clients show for a certificate (UaExpert, the trust dialogs)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


class ClientTrust:
    """The trusted folder, read at every check: a certificate copied in counts at the client's next try."""

    def __init__(self, trusted_dir: Path, rejected_dir: Path) -> None:
        self.trusted_dir, self.rejected_dir = trusted_dir, rejected_dir
        for folder in (trusted_dir, rejected_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def trusts(self, der: bytes, now: datetime) -> bool:
        cert = x509.load_der_x509_certificate(der)
        name = ", ".join(str(attribute.value) for attribute in cert.subject) or "no subject"
        if der not in self._trusted():
            self._keep_rejected(der, name)
            return False
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            log.warning(
                "opcua: client certificate %s (%s) is trusted but expired or not yet valid", name, thumbprint(der)
            )
            return False
        return True

    def _trusted(self) -> set[bytes]:
        found = set()
        for path in sorted(self.trusted_dir.iterdir()):
            if path.suffix.lower() not in (".der", ".pem", ".crt", ".cer") or not path.is_file():
                continue
            try:
                data = path.read_bytes()
                cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else None
                found.add(cert.public_bytes(Encoding.DER) if cert is not None else data)
            except (OSError, ValueError) as error:
                log.warning("opcua: skipping %s in the trusted folder: %s", path, error)
        return found

    def _keep_rejected(self, der: bytes, name: str) -> None:
        path = self.rejected_dir / f"{thumbprint(der)}.der"
        if not path.exists() and sum(1 for _ in self.rejected_dir.iterdir()) < MAX_REJECTED:
            _write_new(path, der, 0o644)
        log.warning(
            "opcua: refused the untrusted client certificate %s; to let it in, move %s to %s",
            name,
            path,
            self.trusted_dir,
        )


@dataclass
class Identity(User):
    """An activated session's user: an account and its role, or anonymous (``account_role`` None).

    asyncua's own role stays ``User`` or ``Anonymous``, never ``Admin``, which would bypass access levels."""

    account_role: str | None = None


# The identity of the request being served. asyncua hands a method only its object's id, so the permission
# check, which runs in the same task just before each request is served, records who is asking.
CALLER: ContextVar[Identity | None] = ContextVar("linewatch_opcua_caller", default=None)

_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)


class AccountRules(PermissionRuleset):
    """Per request: reading, browsing and subscribing for every activated session; Call for operators and
    above; nothing else (no Write: every variable is the daemon's to set; no node management)."""

    def __init__(self) -> None:
        self._reading = {ua.NodeId(type_id) for type_id in USER_TYPES} - {_CALL, _WRITE}

    def check_validity(self, user: Any, action_type_id: ua.NodeId, body: Any) -> bool:
        if not isinstance(user, Identity):  # a session not activated through AccountUsers
            return False
        CALLER.set(user)
        if action_type_id == _CALL:
            return role_allows(user.account_role, "operator")
        return action_type_id in self._reading


class AccountUsers(UserManager):
    """Session activation: the channel's client certificate must be trusted, then the account's password
    checked (only on a signed and encrypted channel), or anonymous accepted when allowed."""

    def __init__(self, engine: Engine, trust: ClientTrust, allow_anonymous: bool, allow_unsecured: bool) -> None:
        self._engine, self._trust = engine, trust
        self._anonymous, self._unsecured = allow_anonymous, allow_unsecured

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        # On a SignAndEncrypt channel, certificate is the one its handshake proved; on a None channel, empty.
        secured = bool(certificate)
        if secured and not self._trust.trusts(certificate, datetime.now(UTC)):
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
        if username is None:
            allowed = self._anonymous and (secured or self._unsecured)
            return Identity(role=UserRole.Anonymous) if allowed else None
        if not secured:
            log.warning("opcua: refused %r: passwords only over the Basic256Sha256 SignAndEncrypt endpoint", username)
            return None
        try:
            role = authenticate(self._engine, username, password or "")
        except DatabaseError as error:
            log.warning("opcua: cannot check the login of %r: %s", username, error)
            return None
        if role is None or not role_allows(role, "viewer"):
            log.warning("opcua: refused %r: wrong name or password", username)
            return None
        return Identity(role=UserRole.User, name=username, account_role=role)
