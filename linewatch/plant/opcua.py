"""The OPC UA server: per station the last part's result, counters and state, and methods to trigger a part,
select the product and acknowledge a NOK, for PLCs, SCADA and MES clients (asyncua; docs/opcua.md).

The address space follows the ideas of OPC 40100 (OPC UA for Machine Vision) without implementing that
companion specification (its types, state machine and result management are far larger than a line PLC
needs, and its NodeIds would need the whole nodeset): a ``MachineVision`` folder holds one object per station,
standing for 40100's vision system; its ``Last*`` variables are the last result of its result management,
``State`` its state machine's current state, ``Trigger`` its StartSingleJob and ``SelectProduct`` its
recipe management's PrepareProduct. Node ids are strings in the namespace ``urn:linewatch:<site>:<line>``
(``nsu=urn:linewatch:site1:line1;s=st1.LastResult``), so a PLC program can address them without browsing.

The server runs its own asyncio loop in a daemon thread, so the daemon's threads never wait on OPC UA: they
call :meth:`OpcUaServer.part_done` and :meth:`OpcUaServer.set_state`, which hand the values to that loop
(``call_soon_threadsafe``); one writer task applies them in order, so a subscriber sees a part's variables
within milliseconds, ``ResultCount`` last. Methods ask the daemon (:class:`PlantControl`) from a small thread
pool, since the daemon's answers may block. Who may do what: linewatch/plant/opcua_security.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from sqlalchemy import Engine

from linewatch.config import OpcUaSection
from linewatch.plant.opcua_security import (
    CALLER,
    AccountRules,
    AccountUsers,
    ClientTrust,
    OpcUaError,
    server_certificate,
)
from linewatch.plant.parts import PART_VERDICTS, STATION_STATES, PartResult, PlantControl
from linewatch.sinks.users import role_allows, role_of

log = logging.getLogger(__name__)

__all__ = ["OpcUaError", "OpcUaServer"]

START_TIMEOUT_S = 30.0  # asyncua loads the standard address space first: about a second
STOP_TIMEOUT_S = 5.0
NO_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's null DateTime: no part yet

_S, _D, _T, _U = ua.VariantType.String, ua.VariantType.Double, ua.VariantType.DateTime, ua.VariantType.UInt64
VARIABLES: dict[str, tuple[ua.VariantType, str]] = {  # per station, in the order a client browses them
    "LastPartId": (_S, "The id of the last part judged; empty before the first."),
    "LastResult": (_S, 'Its verdict: "OK", "NOK" or "incomplete" (a camera did not report in time).'),
    "LastScore": (_D, "The worst camera's score relative to its threshold (1 or more: a defect); NaN: none."),
    "LastReason": (_S, "Why, in a sentence: the defect cameras, or those that did not report in time."),
    "LastTime": (_T, "When the verdict was reached (UTC); also the source timestamp of each Last* value."),
    "ModelVersion": (_S, "The model version that judged the last part."),
    "Product": (_S, "The product inspected: the last part's, or the one SelectProduct chose since."),
    "ResultCount": (
        _U,
        "Parts judged since the daemon started (OK + NOK + incomplete); written after the rest "
        "of a part's values, so a change means all of them are there.",
    ),
    "OkCount": (_U, "OK parts since the daemon started."),
    "NokCount": (_U, "NOK parts since the daemon started."),
    "IncompleteCount": (_U, "Incomplete parts since the daemon started."),
    "State": (_S, 'The station: "ready", "running" or "error".'),
}
_COUNTS = {"OK": "OkCount", "NOK": "NokCount", "incomplete": "IncompleteCount"}
METHODS: dict[str, tuple[str | None, str, int]] = {  # name -> (its String argument, what it does, status if refused)
    "Trigger": (
        "PartId",
        "Judge the next part, with this id (empty: the daemon numbers it).",
        ua.StatusCodes.BadInvalidArgument,
    ),
    "SelectProduct": (
        "Product",
        "Inspect this product from now on, at every camera of the station.",
        ua.StatusCodes.BadInvalidArgument,
    ),
    "Acknowledge": (None, "An operator saw the last NOK.", ua.StatusCodes.BadInvalidState),
}


def part_values(result: PartResult) -> list[tuple[str, Any]]:
    """A part's variables in the order they are written (model version and product only when known)."""
    values: list[tuple[str, Any]] = [
        ("LastPartId", result.part_id),
        ("LastScore", math.nan if result.score is None else float(result.score)),
        ("LastReason", result.reason),
        ("LastTime", result.at),
    ]
    values += [
        (name, value)
        for name, value in (("ModelVersion", result.model_version), ("Product", result.product))
        if value is not None
    ]
    return [*values, ("LastResult", result.verdict)]


def count_values(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """The counters, ``ResultCount`` last."""
    values = [(name, int(counts.get(verdict, 0))) for verdict, name in _COUNTS.items()]
    return [*values, ("ResultCount", sum(value for _, value in values))]


@dataclass
class _Station:
    """What the server knows of a station at start: read from the daemon, then kept by the writer task."""

    state: str
    last: PartResult | None
    counts: dict[str, int]


class OpcUaServer:
    """The ``[opcua]`` server of one daemon. ``start`` before the stations run: the parts judged before it
    come from the daemon's own record (``last_part``, ``part_counts``), those after it from ``part_done``."""

    def __init__(
        self, section: OpcUaSection, control: PlantControl, engine: Engine, data_dir: Path, *, site: str, line: str
    ) -> None:
        self._section, self._control, self._engine = section, control, engine
        self.cert_dir = section.cert_dir or data_dir / "opcua"
        self.trusted_dir = section.trusted_clients_dir or self.cert_dir / "trusted"
        self.application_uri = f"urn:linewatch:{site}:{line}:opcua"
        self.namespace = f"urn:linewatch:{site}:{line}"
        self.endpoint = f"opc.tcp://{_url_host(section.host)}:{section.port}/linewatch"
        self._name = f"linewatch {site}/{line}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._updates: asyncio.Queue[Callable[[], Any]] | None = None
        self._server: Server | None = None
        self._stations: dict[str, _Station] = {}
        self._nodes: dict[str, dict[str, ua.NodeId]] = {}
        self._calls: concurrent.futures.ThreadPoolExecutor | None = None

    # --- called from the daemon's threads -----------------------------------------------------------------

    def start(self) -> None:
        """Listen; returns once clients can connect, or raises :class:`OpcUaError` naming what to change."""
        if self._thread is not None:
            raise RuntimeError("the OPC UA server is started already")
        stack_log = logging.getLogger("asyncua")
        if stack_log.level == logging.NOTSET:  # its INFO is a line per node loaded and per request: journald noise
            stack_log.setLevel(logging.WARNING)
        stations = {
            name: _Station(
                self._control.station_state(name), self._control.last_part(name), dict(self._control.part_counts(name))
            )
            for name in self._control.stations()
        }
        now = datetime.now(UTC)
        try:
            cert, key = server_certificate(self.cert_dir, self.application_uri, self._section.host, now)
            trust = ClientTrust(self.trusted_dir, self.cert_dir / "rejected")
        except OSError as error:
            raise OpcUaError(f"opcua: {error} (opcua.cert_dir, opcua.trusted_clients_dir)") from error
        self._calls = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="opcua-call")
        ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready, stations, cert, key, trust),), name="opcua", daemon=True
        )
        thread.start()
        try:
            self._loop = ready.result(START_TIMEOUT_S)
        except TimeoutError as error:
            if ready.cancel():
                raise OpcUaError(f"opcua: the server did not start within {START_TIMEOUT_S:g} s") from error
            self._loop = ready.result()
        except OSError as error:
            thread.join(STOP_TIMEOUT_S)
            where = f"{self._section.host}:{self._section.port}"
            raise OpcUaError(
                f"opcua: cannot listen on {where} (opcua.host, opcua.port): {error.strerror or error}"
            ) from error
        self._thread = thread
        log.info("opcua: listening at %s (%d stations)", self.endpoint, len(stations))

    def stop(self) -> None:
        """Close every session and stop listening; waits at most a few seconds."""
        thread, loop, self._thread, self._loop = self._thread, self._loop, None, None
        if thread is None or loop is None or self._stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop ended already
            loop.call_soon_threadsafe(self._stopping.set)
        thread.join(STOP_TIMEOUT_S + 1.0)
        if thread.is_alive():
            log.warning("opcua: the server did not stop within %g s; leaving its thread behind", STOP_TIMEOUT_S)
        if self._calls is not None:
            self._calls.shutdown(wait=False, cancel_futures=True)

    def part_done(self, result: PartResult) -> None:
        """Show a part's verdict (thread-safe, returns at once); ignored while the server is not running."""
        self._hand_over(lambda: self._apply_part(result))

    def set_state(self, station: str, state: str) -> None:
        """Show a station's state (thread-safe, returns at once)."""
        if state not in STATION_STATES:
            raise ValueError(f"a station's state is one of {', '.join(STATION_STATES)}, not {state!r}")
        self._hand_over(lambda: self._apply_state(station, state))

    def _hand_over(self, update: Callable[[], Any]) -> None:
        loop, updates = self._loop, self._updates
        if loop is None or updates is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            loop.call_soon_threadsafe(updates.put_nowait, update)

    # --- on the server's loop -----------------------------------------------------------------------------

    async def _serve(
        self,
        ready: concurrent.futures.Future[asyncio.AbstractEventLoop],
        stations: dict[str, _Station],
        cert: Path,
        key: Path,
        trust: ClientTrust,
    ) -> None:
        self._stopping, self._updates, self._stations = asyncio.Event(), asyncio.Queue(), stations
        try:
            server = await self._open(cert, key, trust)
        except BaseException as error:
            if not ready.cancelled():
                ready.set_exception(error)
            return
        writer = asyncio.create_task(self._write_updates())
        try:
            ready.set_result(asyncio.get_running_loop())
        except concurrent.futures.InvalidStateError:  # start() gave up waiting
            self._stopping.set()
        try:
            await self._stopping.wait()
        finally:
            writer.cancel()
            try:
                await asyncio.wait_for(server.stop(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("opcua: closing the sessions took longer than %g s", STOP_TIMEOUT_S)
            log.info("opcua: stopped")

    async def _open(self, cert: Path, key: Path, trust: ClientTrust) -> Server:
        section = self._section
        server = Server(
            user_manager=AccountUsers(self._engine, trust, section.allow_anonymous, section.allow_unsecured)
        )
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(self._name)
        server.application_type = ua.ApplicationType.Server
        server.product_uri = "urn:linewatch"
        server.manufacturer_name = "linewatch"
        await server.set_application_uri(self.application_uri)
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        if section.allow_unsecured:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies, permission_ruleset=AccountRules())
        tokens: list[type] = [ua.UserNameIdentityToken]
        if section.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        await self._build(server)
        self._server = server
        await server.start()
        return server

    async def _build(self, server: Server) -> None:
        index = await server.register_namespace(self.namespace)
        folder = await server.nodes.objects.add_folder(ua.NodeId("MachineVision", index), f"{index}:MachineVision")
        await _describe(folder, f"The inspection stations of {self._name}, after OPC 40100's vision systems.")
        for station, known in self._stations.items():
            station_object = await folder.add_object(ua.NodeId(station, index), f"{index}:{station}")
            await _describe(station_object, f"Inspection station {station}: its last part, counters and state.")
            values = dict(_initial_values(known))
            nodes = self._nodes[station] = {}
            for name, (variant_type, text) in VARIABLES.items():
                node = await station_object.add_variable(
                    ua.NodeId(f"{station}.{name}", index), f"{index}:{name}", values[name], variant_type
                )
                await _describe(node, text)
                nodes[name] = node.nodeid
            for name, (argument, text, _) in METHODS.items():
                inputs = (
                    []
                    if argument is None
                    else [
                        ua.Argument(
                            Name=argument,
                            DataType=ua.NodeId(ua.ObjectIds.String),
                            ValueRank=-1,
                            Description=ua.LocalizedText(text),
                        )
                    ]
                )
                method = await station_object.add_method(
                    ua.NodeId(f"{station}.{name}", index),
                    f"{index}:{name}",
                    self._method(station, station_object.nodeid, name),
                    inputs,
                    [],
                )
                await _describe(method, text)

    async def _write_updates(self) -> None:
        """The one writer: updates are applied in the order the daemon handed them over."""
        assert self._updates is not None
        while True:
            update = await self._updates.get()
            try:
                await update()
            except Exception:
                log.exception("opcua: could not update the address space")

    async def _apply_part(self, result: PartResult) -> None:
        known = self._stations.get(result.station)
        if known is None:
            log.warning("opcua: a part of %r, which is no station of this server; not shown", result.station)
            return
        if result.verdict in PART_VERDICTS:
            known.counts[result.verdict] = known.counts.get(result.verdict, 0) + 1
        await self._write(result.station, [*part_values(result), *count_values(known.counts)], result.at)

    async def _apply_state(self, station: str, state: str) -> None:
        if station in self._stations:
            self._stations[station].state = state
            await self._write(station, [("State", state)], None)

    async def _write(self, station: str, values: list[tuple[str, Any]], at: datetime | None) -> None:
        assert self._server is not None
        now = datetime.now(UTC)
        for name, value in values:
            variant = ua.Variant(value, VARIABLES[name][0])
            data = ua.DataValue(variant, SourceTimestamp=at or now, ServerTimestamp=now)
            await self._server.write_attribute_value(self._nodes[station][name], data)

    def _method(self, station: str, object_id: ua.NodeId, name: str) -> Callable[..., Any]:
        async def call(parent: ua.NodeId, *arguments: ua.Variant) -> Any:
            if parent != object_id:  # a station's method called on another object
                return ua.StatusCode(ua.StatusCodes.BadMethodInvalid)
            return await self._call(station, name, list(arguments))

        return call

    async def _call(self, station: str, name: str, arguments: list[ua.Variant]) -> Any:
        identity = CALLER.get()
        if identity is None or identity.name is None:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        argument, _, refused = METHODS[name]
        expected = 0 if argument is None else 1
        if len(arguments) != expected:
            wrong = (
                ua.StatusCodes.BadArgumentsMissing if len(arguments) < expected else ua.StatusCodes.BadTooManyArguments
            )
            return ua.StatusCode(wrong)
        if expected and arguments[0].VariantType != ua.VariantType.String:
            mismatch = ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
            return ua.CallMethodResult(StatusCode=mismatch, InputArgumentResults=[mismatch])
        value = arguments[0].Value if expected else None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._calls, self._ask, station, name, value, identity.name)
        except PermissionError:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        except ValueError as error:
            log.info("opcua: %s at %s by %s refused: %s", name, station, identity.name, error)
            status = ua.StatusCode(refused)
            if not expected:
                return ua.CallMethodResult(StatusCode=status)
            diagnostic = ua.DiagnosticInfo(AdditionalInfo=str(error))  # the sentence, beside the argument
            return ua.CallMethodResult(
                StatusCode=status, InputArgumentResults=[status], InputArgumentDiagnosticInfos=[diagnostic]
            )
        except Exception:
            log.exception("opcua: %s at %s by %s failed", name, station, identity.name)
            return ua.StatusCode(ua.StatusCodes.BadInternalError)
        if name == "SelectProduct":
            await self._write(station, [("Product", value)], None)
        return []

    def _ask(self, station: str, name: str, value: str | None, user: str) -> None:
        """In the call pool: the account's role now (a demoted or removed user loses methods at once, not at
        the next login), then the daemon."""
        if not role_allows(role_of(self._engine, user), "operator"):
            log.warning("opcua: %s at %s refused: %r is no operator (any more)", name, station, user)
            raise PermissionError(user)
        by = f"opcua: {user}"
        if name == "Trigger":
            self._control.trigger(station, value or None, by)
        elif name == "SelectProduct":
            self._control.select_product(station, value or "", by)
        else:
            self._control.acknowledge(station, by)


def _initial_values(known: _Station) -> list[tuple[str, Any]]:
    empty = [
        ("LastPartId", ""),
        ("LastResult", ""),
        ("LastScore", math.nan),
        ("LastReason", ""),
        ("LastTime", NO_TIME),
        ("ModelVersion", ""),
        ("Product", ""),
    ]
    known_part = part_values(known.last) if known.last is not None else []
    return [*empty, *known_part, *count_values(known.counts), ("State", known.state)]


async def _describe(node: Any, text: str) -> None:
    await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text))))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
