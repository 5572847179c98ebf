"""A throwaway ``linewatch serve`` (Triton through PyTriton) on free loopback ports, for the remote-scoring tests.

It runs from ``.venv-serve`` (``make serve-setup``, which ``make test`` runs), in a process group of its
own: PyTriton starts ``tritonserver`` and its Python stubs as children, and a crash test must take them all
down, as a power cut of the GPU server would. A missing serving environment fails loudly, never skips.
Restarts keep the ports: the lines' clients must find the server where it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.ports import HOST, free_port

START_TIMEOUT_S = 90.0
SERVE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-serve" / "bin" / "python"


class ScoringServer:
    def __init__(self, models: Path, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        if not SERVE_PYTHON.is_file():
            raise RuntimeError(f"no serving environment at {SERVE_PYTHON.parent.parent}: run `make serve-setup`")
        self.models = models
        self.log = log
        self.extra_args = extra_args
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        command = [
            str(SERVE_PYTHON), "-m", "linewatch.serve", "--models", str(self.models), "--address", HOST,
            "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port), "--device", "cpu", "--precision", "fp32", "--threads", "1",
            "--queue-delay-us", "500", *self.extra_args,
        ]  # fmt: skip
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError(f"linewatch serve exited at start:\n{self.log_text()}")
                try:
                    if client.is_server_ready(client_timeout=1.0) and client.is_model_ready(
                        "linewatch_info", client_timeout=1.0
                    ):
                        return
                except InferenceServerException:  # not listening yet: keep waiting
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.kill()
        raise RuntimeError(f"linewatch serve not ready within {START_TIMEOUT_S} s:\n{self.log_text()}")

    def kill(self) -> None:
        """A crash of the whole server (SIGKILL to the process group: PyTriton, tritonserver, the stubs)."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None
        time.sleep(0.5)  # the listening sockets close with the processes

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def scoring_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringServer]:
    """One server for the session, serving whatever the tests copy under ``scoring_server.models``: each test
    puts its model folders in a subfolder of its own (the server finds versions up to three levels down)."""
    root = tmp_path_factory.mktemp("scoring-server")
    models = root / "models"
    models.mkdir()
    server = ScoringServer(models, root / "serve.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_scoring_server(tmp_path: Path) -> Iterator[ScoringServer]:
    """A server of the test's own, for tests that kill and restart it; started by the test."""
    models = tmp_path / "served"
    models.mkdir()
    server = ScoringServer(models, tmp_path / "serve.log")
    yield server
    server.kill()


def serve_copy(server: ScoringServer, model: Path, under: str) -> Path:
    """Copy a model folder where ``server`` finds it: ``<models>/<under>/<model name>``."""
    target = server.models / under / model.name
    shutil.copytree(model, target)
    return target
