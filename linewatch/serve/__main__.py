"""``python -m linewatch.serve``: the scoring server's command line, run in ``.venv-serve``.

``linewatch serve`` (the daemon's command line) starts this with the serving environment's interpreter;
it can also be run directly, e.g. by a systemd unit on the GPU server (deploy/systemd).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from linewatch.model import remote_protocol
from linewatch.serve.catalog import TORCH_DTYPES, UnknownVersion
from linewatch.serve.server import ServerSettings, serve


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(
        prog="linewatch serve",
        description="Score frames for many lines on one Triton Inference Server (PyTriton); docs/serving.md.",
    )
    p.add_argument("--models", type=Path, default=Path("models"), help="folder holding the lines' model folders")
    p.add_argument("--weights", type=Path, help="backbone weights file, for models trained on an explicit file")
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="cuda[:N] or cpu (default: cuda if present)")
    p.add_argument(
        "--precision",
        choices=sorted(TORCH_DTYPES),
        help="default: bf16 on CUDA, fp32 on the CPU (PyTorch bf16 on a CPU is slower than fp32)",
    )
    p.add_argument("--model-name", default=remote_protocol.DEFAULT_MODEL_NAME, help="the Triton model lines call")
    p.add_argument("--address", default="0.0.0.0", help="address gRPC and HTTP listen on")
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--metrics-port", type=_port, default=8002, help="Triton's Prometheus metrics")
    p.add_argument("--max-batch", type=_positive, default=64, help="largest batch the dynamic batcher forms")
    p.add_argument("--queue-delay-us", type=int, default=1000, help="how long a request may wait for company")
    p.add_argument(
        "--max-loaded", type=_positive, default=32,
        help="model versions kept loaded, the least recent go: at least one per line (about 1 GB each at ViT-B size)",
    )  # fmt: skip
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: gRPC over TLS (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--preload", action="append", default=[], metavar="VERSION", help="load this version at start")
    p.add_argument("--threads", type=_positive, help="torch threads for CPU scoring (default: torch's own)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.tls_cert is None) != (args.tls_key is None):
        print("linewatch serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not args.models.is_dir():
        print(f"linewatch serve: --models {args.models} is not a folder", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    settings = ServerSettings(
        models=args.models,
        weights=args.weights,
        device=args.device,
        precision=precision,
        model_name=args.model_name,
        address=args.address,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        max_loaded=args.max_loaded,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        preload=tuple(args.preload),
    )
    try:
        serve(settings)
    except (ValueError, UnknownVersion) as error:
        print(f"linewatch serve: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
