"""N line clients against ONE ``linewatch serve`` (Triton through PyTriton), against in-process scoring, in one run.

A model folder (``--model``, RANDOM backbone weights: speed does not depend on the values) is trained in
seconds (3 steps, 2 shots), put under a temporary models folder and served by ``python -m linewatch.serve``
started from ``.venv-serve`` on free loopback ports, in a process group of its own that is killed at the end
(also on errors and Ctrl-C). Each line client is a separate PROCESS (multiprocessing spawn: threads would
measure the GIL, not the server) calling :meth:`linewatch.pipeline.remote.TritonConnection.score` with real
frames (640 x 480 synthetic parts resized to the model's input, uint8) and the folder's version id, as a
line PC does. Per client count:

- throughput: every client sends ``--batch`` frames per request, back to back, for ``--seconds``; the
  aggregate img/s is all frames answered over the time from the common start to the last answer;
- latency: every client sends one frame per 1/``--fps`` s on a fixed schedule, not back to back (each
  client at its own phase in the period, ``--phases``); p50/p99/max round trip; a slot that comes while
  the previous request is still in flight is sent late, at once, and counts as missed, as do slots left
  unsent when the cell's time is over;
- in-process: a :class:`~linewatch.pipeline.scorer.Scorer` on the same model folder, device, precision and
  torch threads as the server, scoring ``--batch`` frames back to back, run before the first and after
  every client count, so machine drift hits both sides; each ratio uses the two in-process cells around it.

The server's Triton metrics (Prometheus, read before and after each cell) say how many requests the
dynamic batcher merged per model execution ("req/exec"), the frames per execution, the wait in its queue
and its time per request. A column says how much CPU other processes on the machine took during each cell.

    python benchmarks/remote_scoring.py                              # 1, 4, 8 clients, tiny model, CPU
    python benchmarks/remote_scoring.py --clients 1 --seconds 3      # smoke test
    python benchmarks/remote_scoring.py --server-threads 1 --phases aligned
    python benchmarks/remote_scoring.py --model ViT-B-16-plus-240 --clients 1 2 --batch 1 --fps 1 --seconds 20
    # a server already running (a GPU box): the model is copied into the folder it serves, and the
    # in-process scorer runs here with --device/--precision (bf16 is fine for speed: lines refuse a
    # non-fp32 server at activation, this benchmark does not activate)
    python benchmarks/remote_scoring.py --server-url 127.0.0.1:8001 --models /srv/linewatch/models \\
        --metrics-port 8002 --device cuda --precision bf16 --model ViT-B-16-plus-240

Targets (issue): 8 clients reach at least 0.8 of in-process throughput (batching across clients works);
p99 round trip under 50 ms at 8 x 10 fps.

Honest notes: on a small machine server, clients and the in-process scorer share the same cores (the
clients' gRPC and serialisation work is taken from the server, which the in-process scorer never pays);
remote numbers exclude the line PC's map rebuild from the g x g grid
(:class:`~linewatch.pipeline.remote.RemoteEngine`), in-process numbers include the full pixel maps. A full
default run takes about 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"
MODEL_NAME = "linewatch"  # the Triton model linewatch serve binds by default
INFO_MODEL = "linewatch_info"
PRODUCT = "bracket"
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 300.0
DEADLINE_MS = 10_000.0  # per call: a slow answer shows in p99 instead of failing the run
FRAME_POOL = 8
BUSY_SHARE = 0.10  # other processes' share of the CPU in a cell above which the report warns
ISSUE_CLIENTS, ISSUE_FPS, ISSUE_RATIO, ISSUE_P99_MS = 8, 10.0, 0.8, 50.0


# --- the line clients (separate processes) ------------------------------------------------------------------


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def _client(index: int, url: str, commands: Any, results: Any) -> None:
    """One line PC: import, connect, then run what the parent sends (a warm-up first) until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole terminal group: the parent stops us
    try:
        from linewatch.config import TritonSection
        from linewatch.pipeline.remote import TritonConnection

        connection = TritonConnection(TritonSection(url=url, model=MODEL_NAME, deadline_ms=DEADLINE_MS))
    except BaseException as error:  # the parent reports it and stops
        results.put(("error", index, f"{type(error).__name__}: {error}"))
        return
    version, frames, ids = "", np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, np.int64)
    while (command := commands.get()) is not None:
        try:
            if command[0] == "warm":  # the model version and the frames to send, then a request of each size
                _, version, frames, batch = command
                ids = np.zeros(len(frames), np.int64)
                for size in sorted({1, batch}):
                    connection.score(frames[:size], ids[:size], version, "")
                results.put(("ready", index, None))
                continue
            mode, start_at, seconds, batch, fps, phase = command
            _sleep_until(start_at)
            if mode == "throughput":
                answer = _back_to_back(connection, frames[:batch], ids[:batch], version, start_at + seconds)
            else:
                answer = _scheduled(connection, frames, ids, version, start_at + phase, seconds, fps)
            results.put(("done", index, answer))
        except BaseException as error:
            results.put(("error", index, f"{type(error).__name__}: {error}"))
    connection.close()


def _scored(connection: Any, frames: np.ndarray, ids: np.ndarray, version: str) -> bool:
    """One request; False when it got no answer within the client deadline (the server is too slow for this
    load: counted, not fatal). Any other error (a refused request) ends the run."""
    from linewatch.pipeline.remote import RemoteScoringError

    try:
        connection.score(frames, ids, version, "")
    except RemoteScoringError as error:
        if not error.unreachable:
            raise
        return False
    return True


def _back_to_back(connection: Any, frames: np.ndarray, ids: np.ndarray, version: str, end: float) -> dict:
    images, round_trips, failed, finished = 0, [], 0, time.monotonic()
    while time.monotonic() < end:
        sent = time.monotonic()
        answered = _scored(connection, frames, ids, version)
        finished = time.monotonic()
        if answered:
            round_trips.append(finished - sent)
            images += len(frames)
        else:
            failed += 1
    return {"images": images, "finished": finished, "round_trips": round_trips, "missed": 0, "failed": failed}


def _scheduled(
    connection: Any, frames: np.ndarray, ids: np.ndarray, version: str, first: float, seconds: float, fps: float
) -> dict:
    """One frame per 1/fps s from ``first`` for ``seconds``. A slot that comes while the previous request is in
    flight is sent late, at once; slots still unsent when the schedule's time is over are not sent. Both count
    as missed."""
    planned = max(1, round(seconds * fps))
    round_trips, missed, failed, finished = [], 0, 0, time.monotonic()
    for n in range(planned):
        slot = first + n / fps
        now = time.monotonic()
        if now >= first + seconds:
            missed += planned - n
            break
        if now >= slot:
            missed += 1
        else:
            _sleep_until(slot)
        k = n % len(frames)
        sent = time.monotonic()
        answered = _scored(connection, frames[k : k + 1], ids[k : k + 1], version)
        finished = time.monotonic()
        if answered:
            round_trips.append(finished - sent)
        else:
            failed += 1
    images = len(round_trips)
    return {"images": images, "finished": finished, "round_trips": round_trips, "missed": missed, "failed": failed}


def phases_of(kind: str, count: int, fps: float) -> list[float]:
    """Where in the 1/fps period each client's frames fall: "random" (independent lines; drawn, but the same
    for a client count in every run), "even" (spread evenly: the kindest case for latency, the worst for
    batching) or "aligned" (all at once, e.g. lines triggered by one clock: the worst case for latency)."""
    period = 1.0 / fps
    if kind == "aligned":
        return [0.0] * count
    if kind == "even":
        return [period * i / count for i in range(count)]
    return [float(phase) for phase in np.random.default_rng(count).uniform(0.0, period, count)]


class Clients:
    """``count`` client processes, started at once (each imports torch and open_clip: seconds apiece)."""

    def __init__(self, count: int, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.commands = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_client, args=(i, url, self.commands[i], self.results), daemon=True)
            for i in range(count)
        ]
        for process in self.processes:
            process.start()

    def warm_up(self, version: str, frames: np.ndarray, batch: int, timeout: float) -> None:
        """Tell every client what to send; each sends one request of each size (connections up, first calls
        done) and says it is ready."""
        for queue in self.commands:
            queue.put(("warm", version, frames, batch))
        self._collect(len(self.processes), "ready", timeout)

    def run(self, mode: str, count: int, seconds: float, batch: int, fps: float, phases: str) -> list[dict]:
        """Run a cell on the first ``count`` clients; in the latency mode each client's schedule starts at its
        phase within the period (:func:`phases_of`)."""
        start_at = time.monotonic() + 0.5  # every client starts at this moment (one monotonic clock per machine)
        for queue, phase in zip(self.commands[:count], phases_of(phases, count, fps), strict=True):
            queue.put((mode, start_at, seconds, batch, fps, float(phase)))
        answers = self._collect(count, "done", seconds + 2 * DEADLINE_MS / 1000 + 30)
        for answer in answers:
            answer["started"] = start_at
        return answers

    def _collect(self, count: int, kind: str, timeout: float) -> list[dict]:
        import queue as queues

        answers, deadline = [], time.monotonic() + timeout
        while len(answers) < count:
            try:
                got, index, payload = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queues.Empty:
                raise RuntimeError(
                    f"{count - len(answers)} client(s) did not answer ({kind}) within {timeout:.0f} s"
                ) from None
            if got == "error":
                raise RuntimeError(f"client {index}: {payload}")
            answers.append(payload)
        return answers

    def stop(self) -> None:
        for queue in self.commands:
            with contextlib.suppress(Exception):
                queue.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


# --- the server ----------------------------------------------------------------------------------------------


class Server:
    """``python -m linewatch.serve`` from ``.venv-serve`` in a process group of its own."""

    def __init__(self, models: Path, log: Path, args: argparse.Namespace) -> None:
        from tests.services.ports import HOST, free_port  # the tests' free loopback ports

        if not SERVE_PYTHON.is_file():
            raise RuntimeError(f"no serving environment at {SERVE_PYTHON.parent.parent}: run `make serve-setup`")
        self.log = log
        self.grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        self.url = f"{HOST}:{self.grpc_port}"
        self.metrics_url = f"http://{HOST}:{metrics_port}/metrics"
        command = [
            str(SERVE_PYTHON), "-m", "linewatch.serve", "--models", str(models), "--address", HOST,
            "--grpc-port", str(self.grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
            "--device", args.device, "--precision", args.precision, "--threads", str(args.server_threads),
            "--queue-delay-us", str(args.queue_delay_us), "--max-batch", str(args.max_batch),
        ]  # fmt: skip
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.server_threads)}
        with log.open("ab") as output:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=environment, start_new_session=True, cwd=REPO
            )

    def wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"linewatch serve exited at start:\n{self.log_tail()}")
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_ready(client_timeout=1.0) and all(
                        client.is_model_ready(name, client_timeout=1.0) for name in (INFO_MODEL, MODEL_NAME)
                    ):
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"linewatch serve not ready within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server (it stops tritonserver and its stubs), then SIGKILL to the whole group."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


_METRICS = {
    "nv_inference_request_success": "requests",
    "nv_inference_count": "images",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_request_duration_us": "request_us",
}


@dataclass
class ServerCounts:
    """Triton's cumulative counters of the scoring model (Prometheus metrics; its gRPC statistics API is
    restricted to PyTriton's own access token). Durations are summed per request."""

    requests: float = 0.0
    images: float = 0.0
    executions: float = 0.0
    queue_us: float = 0.0
    request_us: float = 0.0

    def minus(self, other: ServerCounts) -> ServerCounts:
        return ServerCounts(**{name: getattr(self, name) - getattr(other, name) for name in _METRICS.values()})


def server_counts(metrics_url: str | None) -> ServerCounts | None:
    """The scoring model's counters now; None when the metrics endpoint does not answer."""
    import re
    import urllib.request

    if metrics_url is None:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=5.0) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    counts = ServerCounts()
    pattern = re.compile(r'^(nv_inference_\w+)\{(?=[^}]*model="' + re.escape(MODEL_NAME) + r'")[^}]*\} (\S+)$')
    for line in text.splitlines():
        found = pattern.match(line)
        if found and found.group(1) in _METRICS:
            name = _METRICS[found.group(1)]
            setattr(counts, name, getattr(counts, name) + float(found.group(2)))
    return counts


# --- setup and in-process scoring ----------------------------------------------------------------------------


def build_model(name: str, root: Path, device: str) -> Path:
    """A model folder trained for 3 steps on 4 synthetic normals (2 shots), random backbone weights."""
    from linewatch.anople.backbone import load_random_backbone
    from linewatch.anople.settings import AnoPLeSettings
    from linewatch.images import write_image
    from linewatch.model.training import ProductSource, train_artifact
    from linewatch.pipeline.camera.synthetic import SyntheticProduct

    product, rng = SyntheticProduct(style_seed=0, width=320, height=240), np.random.default_rng(0)
    folder = root / "normals"
    folder.mkdir(parents=True)
    for index in range(4):
        write_image(folder / f"{index}.png", product.normal(rng).image)
    out = root / "models" / "bench" / f"remote-scoring-{name}-{os.getpid()}"
    train_artifact([ProductSource(PRODUCT, sorted(folder.glob("*.png")))], load_random_backbone(name, 0),
                   AnoPLeSettings(steps=3), out, shots=2, seed=0, target_frr=0.2, log=lambda _line: None,
                   device=device)  # fmt: skip
    return out


def line_frames(size: int, count: int) -> np.ndarray:
    """(count, size, size, 3) uint8: 640 x 480 synthetic parts resized as a line PC sends them."""
    from linewatch.model.preprocess import resize_batch
    from linewatch.pipeline.camera.synthetic import SyntheticProduct

    product, rng = SyntheticProduct(style_seed=0, width=640, height=480), np.random.default_rng(1)
    return resize_batch([product.normal(rng).image for _ in range(count)], size)


def in_process(scorer: Any, frames: np.ndarray, batch: int, seconds: float) -> tuple[float, list[float]]:
    """img/s of ``scorer`` on ``batch`` frames back to back for ``seconds`` (after 3 warm-up batches), and the
    seconds of each call."""
    images, products = list(frames[:batch]), [PRODUCT] * batch
    for _ in range(3):
        scorer.score(images, products)
    calls: list[float] = []
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        scorer.score(images, products)  # answers are numpy on the host: CUDA work is finished
        calls.append(time.monotonic() - now)
    return batch * len(calls) / (time.monotonic() - started), calls


# --- the run -------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    mode: str  # "in-process" | "throughput" | "latency"
    clients: int
    batch: int
    rate: float  # img/s
    round_trips: list[float] = field(default_factory=list)
    missed: int = 0
    failed: int = 0  # requests without an answer within the client deadline
    planned: int = 0  # latency mode: requests the schedule asked for
    server: ServerCounts | None = None  # the server's counters over the cell
    other_cpu: float | None = None  # share of the machine's CPU other processes used during the cell

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.round_trips)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def remote_cell(clients: Clients, metrics_url: str | None, mode: str, count: int, args: argparse.Namespace) -> Cell:
    batch = args.batch if mode == "throughput" else 1
    before = server_counts(metrics_url)
    answers = clients.run(mode, count, args.seconds, batch, args.fps, args.phases)
    after = server_counts(metrics_url)
    images = sum(answer["images"] for answer in answers)
    elapsed = max(answer["finished"] for answer in answers) - answers[0]["started"]
    return Cell(
        mode,
        count,
        batch,
        images / elapsed,
        [seconds for answer in answers for seconds in answer["round_trips"]],
        sum(answer["missed"] for answer in answers),
        sum(answer["failed"] for answer in answers),
        count * max(1, round(args.seconds * args.fps)) if mode == "latency" else 0,
        after.minus(before) if before is not None and after is not None else None,
    )


NOTES = (
    "p50/p99/max: round trip per request at the clients; in-process: the time of one Scorer.score call.",
    "missed: latency requests sent late (the previous answer came after their slot) or not at all (the",
    "  schedule's time was over); fail: requests without an answer within the {deadline:g} s client deadline.",
    "other%: the machine's CPU used by processes outside this benchmark during the cell (more than a few %",
    "  makes that cell slower than this machine can do).",
    "Server side, from its Triton metrics: req/exec and img/exec, requests and frames per model execution",
    "  (above 1 req/exec: the dynamic batcher merged clients' requests); queue ms, the wait in the batcher per",
    "  request; srv ms, server time per request (queue + execution); the rest of a round trip is gRPC and the",
    "  client processes.",
    "Remote img/s exclude the line PC's map rebuild from the grid; in-process img/s include the full maps.",
)
COLUMNS = (
    f"{'mode':<11} {'clients':>7} {'batch':>5} {'img/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
    f"{'missed':>9} {'fail':>4} {'other%':>6} {'req/exec':>8} {'img/exec':>8} {'queue ms':>8} {'srv ms':>7}"
)


def print_row(cell: Cell) -> None:
    clients = "-" if cell.mode == "in-process" else str(cell.clients)
    if cell.round_trips:
        p50, p99, most = cell.percentile_ms(0.5), cell.percentile_ms(0.99), 1000 * max(cell.round_trips)
        timing = f" {p50:>7.1f} {p99:>7.1f} {most:>7.1f}"
    else:
        timing = f" {'':>7} {'':>7} {'':>7}"
    missed = f"{cell.missed}/{cell.planned}" if cell.mode == "latency" else ""
    failed = "" if cell.mode == "in-process" else str(cell.failed)
    other = "?" if cell.other_cpu is None else f"{100 * cell.other_cpu:.0f}"
    server = ""
    if cell.server is not None and cell.server.executions > 0:
        m = cell.server
        server = (
            f" {m.requests / m.executions:>8.2f} {m.images / m.executions:>8.2f}"
            f" {m.queue_us / 1000 / m.requests:>8.2f} {m.request_us / 1000 / m.requests:>7.2f}"
        )
    elif cell.mode != "in-process":
        server = f" {'(no server metrics)':>25}"
    row = f"{cell.mode:<11} {clients:>7} {cell.batch:>5} {cell.rate:>8.1f}{timing}"
    print(f"{row} {missed:>9} {failed:>4} {other:>6}{server}", flush=True)


class CpuWatch:
    """How much of the machine's CPU went to processes other than this benchmark's (this process, its
    clients, the server's process group) over a span: /proc/stat against /proc/<pid>/stat. Linux only."""

    def __init__(self, pids: set[int], groups: set[int]) -> None:
        self.pids, self.groups = pids, groups
        self.tick = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1

    def snapshot(self) -> tuple[float, float, float] | None:
        """(monotonic s, busy CPU s of the machine, CPU s of ours), or None without /proc."""
        try:
            with open("/proc/stat") as stat:  # cpu user nice system idle iowait irq softirq steal ...
                values = [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(values) - values[3] - values[4]) / self.tick
        ours = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    text = stat.read()
            except OSError:  # exited meanwhile
                continue
            fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ... utime stime
            if int(entry.name) in self.pids or int(fields[2]) in self.groups:
                ours += int(fields[11]) + int(fields[12])
        return time.monotonic(), busy, ours / self.tick

    def other_share(self, before: tuple[float, float, float] | None) -> float | None:
        after = self.snapshot()
        if before is None or after is None or after[0] <= before[0]:
            return None
        other = (after[1] - before[1]) - (after[2] - before[2])
        return max(0.0, other) / ((after[0] - before[0]) * self.cores)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return "unknown"


def run(args: argparse.Namespace, work: Path) -> None:
    import torch

    from linewatch.anople.files import model_version
    from linewatch.config import TritonSection
    from linewatch.pipeline.remote import TritonConnection
    from linewatch.pipeline.scorer import Scorer

    load_before = load_average()
    torch.set_num_threads(args.server_threads)  # the in-process scorer gets the server's threads
    started = time.monotonic()
    served_copy: Path | None = None
    server: Server | None = None
    clients: Clients | None = None
    try:
        # Server, clients (seconds of imports each) and training start at once: setup is most of a short run.
        if args.server_url:
            url = args.server_url
            metrics_url = f"http://{url.rsplit(':', 1)[0]}:{args.metrics_port}/metrics"
        else:
            (work / "models").mkdir()
            server = Server(work / "models", work / "serve.log", args)
            url, metrics_url = server.url, server.metrics_url
        clients = Clients(max(args.clients), url)
        model = build_model(args.model, work, args.device)
        version = model_version(model)
        trained_s = time.monotonic() - started
        if args.server_url:
            served_copy = args.models / f"bench-remote-scoring-{os.getpid()}" / model.name
            shutil.copytree(model, served_copy)
        scorer = Scorer.from_artifact(model, work / "models", args.device, args.precision)
        frames = line_frames(scorer.input_size, max(FRAME_POOL, args.batch))
        if server is not None:
            server.wait_ready()
        connection = TritonConnection(TritonSection(url=url, model=MODEL_NAME, deadline_ms=DEADLINE_MS))
        try:
            served = connection.info(version, LOAD_TIMEOUT_S)  # loads the version before any client asks
        finally:
            connection.close()
        clients.warm_up(version, frames, args.batch, START_TIMEOUT_S)
        setup_s = time.monotonic() - started

        cores = os.cpu_count() or 1
        shared = server is not None and args.device.startswith("cpu")
        print(f"model {args.model}, input {scorer.input_size} px, version {version}")
        print("*** RANDOM BACKBONE WEIGHTS: speed only; the scores mean nothing (speed does not depend on the values)")
        if server is not None:
            print(f"server: linewatch serve started here at {url}, {served.get('device')} {served.get('precision')}, "
                  f"torch threads {args.server_threads}, queue delay {args.queue_delay_us} us, "
                  f"max batch {args.max_batch}")  # fmt: skip
        else:
            print(f"server: already running at {url}, {served.get('device')} {served.get('precision')} "
                  "(its threads, queue delay and max batch are its own)")  # fmt: skip
        print(f"in-process: Scorer.score, {args.device} {args.precision}, torch threads {torch.get_num_threads()}")
        print(f"clients: {max(args.clients)} processes (spawn), one gRPC connection each; throughput: {args.batch} "
              f"frame(s) per request back to back; latency: 1 frame per request, {args.fps:g} per s each, "
              f"{args.phases} phases")  # fmt: skip
        print(f"machine: {cores} CPU core(s); " + (
            f"server ({args.server_threads} torch threads), clients and in-process scoring all share them: the "
            "clients' gRPC work competes with the server" if shared else "the clients run on this machine (other% "
            "counts a server not started here as other work)"
        ))  # fmt: skip
        print(f"load average (1/5/15 min) at the start: {load_before}; other work on the machine skews every cell")
        print(f"setup (server, clients and training started together): model trained after {trained_s:.0f} s, "
              f"all ready after {setup_s:.0f} s; {args.seconds:g} s per cell")  # fmt: skip
        print()
        print(COLUMNS)
        cells: list[Cell] = []
        watch = CpuWatch(
            {os.getpid(), *(p.pid for p in clients.processes if p.pid)},
            {server.process.pid} if server is not None and server.process is not None else set(),
        )

        def measured(make: Any) -> None:
            before = watch.snapshot()
            cell = make()
            cell.other_cpu = watch.other_share(before)
            cells.append(cell)
            print_row(cell)

        def local() -> None:
            measured(lambda: Cell("in-process", 0, args.batch, *in_process(scorer, frames, args.batch, args.seconds)))

        local()
        for count in args.clients:
            for mode in ("throughput", "latency"):
                measured(lambda mode=mode, count=count: remote_cell(clients, metrics_url, mode, count, args))
                if server is not None and server.process is not None and server.process.poll() is not None:
                    raise RuntimeError("linewatch serve exited during the run")
            local()
        report(cells, args)
        print(f"load average at the end: {load_average()}")
    finally:
        if server is not None and server.process is not None and server.process.poll() is not None:
            print(f"linewatch serve exited ({server.process.returncode}):\n{server.log_tail()}", file=sys.stderr)
        if clients is not None:
            clients.stop()
        if server is not None:
            server.stop()
        if served_copy is not None:
            shutil.rmtree(served_copy.parent, ignore_errors=True)


def report(cells: list[Cell], args: argparse.Namespace) -> None:
    print()
    for line in NOTES:
        print(line.format(deadline=DEADLINE_MS / 1000))
    print()
    ratios: dict[int, float] = {}
    for index, cell in enumerate(cells):
        if cell.mode != "throughput":
            continue
        before = next(c for c in reversed(cells[:index]) if c.mode == "in-process")
        after = next(c for c in cells[index:] if c.mode == "in-process")
        reference = (before.rate + after.rate) / 2
        ratios[cell.clients] = cell.rate / reference
        print(f"remote / in-process img/s, {cell.clients} client(s): {cell.rate:.1f} / {reference:.1f} "
              f"(the in-process cells around it) = {ratios[cell.clients]:.2f}")  # fmt: skip
    busy = [cell for cell in cells if cell.other_cpu is not None and cell.other_cpu > BUSY_SHARE]
    if busy:
        worst = max(cell.other_cpu or 0.0 for cell in busy)
        print(f"WARNING: other processes took more than {100 * BUSY_SHARE:.0f} % of the machine's CPU in {len(busy)} "
              f"of {len(cells)} cells (up to {100 * worst:.0f} %): those cells, and the ratios and targets built on "
              "them, do not show what this machine can do; rerun when it is quiet")  # fmt: skip
    print()
    print("Targets (issue):")
    goal = f"{ISSUE_CLIENTS} clients reach >= {ISSUE_RATIO} x in-process throughput"
    if ISSUE_CLIENTS in ratios:
        ratio = ratios[ISSUE_CLIENTS]
        print(f"  {goal}: {ratio:.2f} -> {'PASS' if ratio >= ISSUE_RATIO else 'FAIL'}")
    else:
        print(f"  {goal}: not measured (--clients lacks {ISSUE_CLIENTS})")
    goal = f"p99 round trip < {ISSUE_P99_MS:g} ms at {ISSUE_CLIENTS} x {ISSUE_FPS:g} fps"
    latency = [c for c in cells if c.mode == "latency" and c.clients == ISSUE_CLIENTS]
    if latency and args.fps == ISSUE_FPS:
        p99, cell = latency[0].percentile_ms(0.99), latency[0]
        verdict = "PASS" if p99 < ISSUE_P99_MS and not cell.failed else "FAIL"
        print(f"  {goal}: {p99:.1f} ms -> {verdict} ({cell.missed} of {cell.planned} requests missed the schedule, "
              f"{cell.failed} got no answer)")  # fmt: skip
    else:
        print(f"  {goal}: not measured (needs --clients {ISSUE_CLIENTS} and --fps {ISSUE_FPS:g})")
    print(f"  (RANDOM weights: a trained {args.model} runs at the same speed; targets are judged on this machine)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 8], help="client counts to measure")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--batch", type=int, default=4, help="frames per request, throughput mode (a line's batch)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames/s per client in the latency mode")
    parser.add_argument(
        "--phases", choices=["random", "even", "aligned"], default="random",
        help="latency mode: when in the period each client sends (random: independent lines)",
    )  # fmt: skip
    parser.add_argument(
        "--server-threads", type=int, default=os.cpu_count() or 1,
        help="torch threads of the server and of the in-process scorer (default: all cores)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda[:N]: the server's (when started here) and the in-process scorer's"
    )
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="as --device; bf16: CUDA only")
    parser.add_argument("--model", default="linewatch-tiny", help="linewatch-tiny or an open_clip ViT (random weights)")
    parser.add_argument("--queue-delay-us", type=int, default=1000, help="the server's dynamic batcher queue delay")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch the server's batcher forms")
    parser.add_argument("--server-url", help="host:port (gRPC) of a linewatch serve already running")
    parser.add_argument("--models", type=Path, help="with --server-url: the folder it serves (copied into)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="with --server-url: its Triton metrics port")
    args = parser.parse_args()
    if args.server_url and args.models is None:
        parser.error("--server-url needs --models (the folder that server serves: the model is copied there)")
    if args.models is not None and not args.models.is_dir():
        parser.error(f"--models {args.models} is not a folder")
    if args.device.startswith("cpu") and args.precision != "fp32":
        parser.error("bf16 on the CPU: PyTorch runs it slower than fp32 and linewatch serve refuses it; use fp32")
    if min(args.clients) < 1 or args.batch < 1 or args.fps <= 0 or args.seconds <= 0 or args.server_threads < 1:
        parser.error("--clients, --batch and --server-threads must be at least 1; --fps and --seconds positive")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))  # tests.services.ports; spawned clients inherit the path

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with tempfile.TemporaryDirectory(prefix="linewatch-remote-bench-") as folder:
            run(args, Path(folder))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"remote_scoring: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
