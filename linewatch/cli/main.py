"""``linewatch`` command line: the parser and ``main``, a thin layer over the command groups.

The commands themselves live beside this module, one per group: model work (``model.py``), daemon
operations (``ops.py``), retraining (``retrain.py``), status (``status.py``) and the demo (``demo.py``).

Exit codes: 0 success, 1 some inputs failed while others were processed, 2 bad usage or input
(the message names the file, key or value at fault).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from linewatch.anople.files import RANDOM_WEIGHTS
from linewatch.anople.settings import FUSIONS, MEMORY_FEATURES, AnoPLeSettings
from linewatch.model import DEFAULT_MODELS_DIR

# ValueError covers the errors of bad input that every layer raises (ConfigError, ImageError, TrainingError,
# ArtifactError, BackboneError subclass it), so this module need not import the modules that define them.
USER_ERRORS = (KeyError, ValueError)
FUSION_HELP = (
    "scaled_mean: each term in multiples of its mean on the calibration normals, averaged; harmonic: the paper's "
    "harmonic mean, which the smaller term rules"
)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (steps, shots, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (seconds, fractions)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


EX_CONFIG = 78  # sysexits.h; systemd's RestartPreventExitStatus keeps a broken config from restart loops


def cmd_check_config(args: argparse.Namespace) -> int:
    from linewatch.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"linewatch: config error: {error}", file=sys.stderr)
        return EX_CONFIG
    cameras = ", ".join(f"{c.name} ({c.source}, {c.product})" for c in config.cameras) or "none"
    print(
        f"{args.config}: OK; line {config.site.site}/{config.site.line}; cameras: {cameras}; model {config.model.path}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from linewatch.config import ConfigError
    from linewatch.daemon.lifecycle import serve
    from linewatch.pipeline.journal.records import JournalError
    from linewatch.retrain.versions import RegistryBusy, RegistryError
    from linewatch.sinks.db import DatabaseError

    try:
        return serve(args.config, args.verbose)
    except ConfigError as error:
        print(f"linewatch: config error: {error}", file=sys.stderr)
        return EX_CONFIG
    # e.g. the HTTP port is taken, another daemon serves the line, active.json or the journal is damaged
    except (DatabaseError, JournalError, OSError, RegistryBusy, RegistryError) as error:
        print(f"linewatch: error: {error}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from linewatch.cli.demo import run_demo

    return run_demo(args.config)


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``module.name``, imported when it runs. Command modules import torch, open_clip, SQLAlchemy
    or uvicorn at their top; importing them all to build the parser made ``linewatch --help`` take seconds."""

    def run(args: argparse.Namespace) -> int:
        command: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return command(args)

    return run


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same 'linewatch: error: ...' form as every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"linewatch: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="linewatch", description="Few-shot visual inspection for production lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where backbone weights live")
        sub.add_argument("--weights", type=Path, help="explicit backbone .safetensors file instead of models/")
        sub.add_argument("--device", default="cpu", help="cpu or cuda[:N]")

    train = commands.add_parser("train", help="train a model from normal images")
    common(train)
    train.add_argument("--normals", action="append", required=True, help="folder, file or glob of normal images")
    train.add_argument("--product", action="append", required=True, help="product name, one per --normals")
    train.add_argument("--out", type=Path, required=True, help="model directory to create, e.g. models/NAME")
    train.add_argument("--shots", type=positive_int, default=4, help="normal images used for training and memory")
    train.add_argument("--steps", type=positive_int, default=AnoPLeSettings.steps)
    train.add_argument("--batch-size", type=positive_int, default=AnoPLeSettings.batch_size)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--frr", type=float, default=0.01, help="target false-reject rate for the threshold")
    train.add_argument("--backbone", default="ViT-B-16-plus-240", help="open_clip model name")
    train.add_argument("--pretrained", default="laion400m_e32", help=f"pretrained tag, or {RANDOM_WEIGHTS!r}")
    train.add_argument("--hflip", action="store_true", help="augment with horizontal flips")
    train.add_argument(
        "--memory-features",
        default=AnoPLeSettings.memory_features,
        choices=MEMORY_FEATURES,
        help="memory bank from the prompted tower (one pass) or the plain one (2/3 of a pass more)",
    )
    train.add_argument("--fusion", default=AnoPLeSettings.fusion, choices=FUSIONS, help=FUSION_HELP)
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.set_defaults(func=lazy("linewatch.cli.model", "cmd_train"))

    score = commands.add_parser("score", help="score images with a trained model")
    common(score)
    score.add_argument("images", nargs="+", help="image files, folders or globs")
    score.add_argument("--model", type=Path, required=True, help="model directory")
    score.add_argument("--product", help="product name (needed when the model holds several)")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.add_argument("--heatmaps", type=Path, help="write heatmap overlays into this folder")
    score.add_argument("--batch-size", type=positive_int, default=8)
    score.add_argument("--runtime", default="torch", choices=["torch", "openvino"], help="openvino: the model's export")
    score.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"], help="torch: bf16/fp16 on CUDA only"
    )
    score.set_defaults(func=lazy("linewatch.cli.model", "cmd_score"))

    model = commands.add_parser("model", help="backbone weights and trained models")
    model_commands = model.add_subparsers(dest="model_command", required=True)
    pull_cmd = model_commands.add_parser("pull", help="download backbone weights once (connected machine)")
    pull_cmd.add_argument("name")
    pull_cmd.add_argument("tag")
    import_cmd = model_commands.add_parser("import", help="convert a copied checkpoint into models/")
    import_cmd.add_argument("name")
    import_cmd.add_argument("tag")
    import_cmd.add_argument("checkpoint", type=Path)
    list_cmd = model_commands.add_parser("list", help="list backbone weights and trained models")
    info_cmd = model_commands.add_parser("info", help="describe a model directory or weights")
    info_cmd.add_argument("target", type=Path, help="model directory, weights file, or MODEL/TAG")
    for sub, name in (
        (pull_cmd, "cmd_model_pull"),
        (import_cmd, "cmd_model_import"),
        (list_cmd, "cmd_model_list"),
        (info_cmd, "cmd_model_info"),
    ):
        sub.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
        sub.set_defaults(func=lazy("linewatch.cli.model", name))
    export_cmd = model_commands.add_parser(
        "export",
        help="export a model to OpenVINO (fp32, bf16, int8) or into a Triton model repository, parity-checked",
    )
    export_cmd.add_argument("model", type=Path, help="model directory; an OpenVINO export goes into its exports/")
    export_cmd.add_argument(
        "--format", default="openvino", choices=["openvino", "triton"], help="triton: into --repository (fp32)"
    )
    export_cmd.add_argument("--runtime", default="openvino", choices=["openvino"])
    export_cmd.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "int8"], help="--format openvino")
    triton = export_cmd.add_argument_group("--format triton")
    triton.add_argument("--repository", type=Path, help="the Triton model repository to write into")
    triton.add_argument("--triton-model", help="the model's name in the repository (default linewatch)")
    triton.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    triton.add_argument("--max-batch", type=positive_int, default=64, help="Triton's max_batch_size")
    triton.add_argument("--instances", type=positive_int, default=1, help="model instances (per GPU for gpu)")
    triton.add_argument(
        "--instance-kind", choices=["cpu", "gpu"], help="default: gpu for onnxruntime, cpu for openvino"
    )
    triton.add_argument("--queue-delay-us", type=int, default=2000, help="how long the batcher waits to fill a batch")
    export_cmd.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where backbone weights live")
    export_cmd.add_argument("--weights", type=Path, help="explicit backbone .safetensors file instead of models/")
    export_cmd.set_defaults(func=lazy("linewatch.cli.model", "cmd_model_export"))
    rollback = model_commands.add_parser("rollback", help="put the previous (or a named) model version back")
    rollback.add_argument("version", nargs="?", help="folder name or NAME@HASH (default: the one active before)")
    rollback.add_argument("--config", type=Path, default=Path("config.toml"))
    rollback.set_defaults(func=lazy("linewatch.cli.retrain", "cmd_model_rollback"))
    versions = model_commands.add_parser("versions", help="the line's model versions, the active one starred")
    versions.add_argument("--config", type=Path, default=Path("config.toml"))
    versions.set_defaults(func=lazy("linewatch.cli.versions", "cmd_model_versions"))

    evaluate = commands.add_parser("eval", help="the paper's few-shot protocol on MVTec-AD, VisA or a folder")
    common(evaluate)
    evaluate.add_argument("--dataset", required=True, choices=["mvtec", "visa", "folder"])
    evaluate.add_argument("--root", type=Path, required=True, help="dataset root (for folder: the class folder)")
    evaluate.add_argument("--classes", nargs="+", help="classes to evaluate (default: all found)")
    evaluate.add_argument("--shots", nargs="+", type=positive_int, default=[1, 2, 4], help="k values")
    evaluate.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    evaluate.add_argument("--steps", type=positive_int, default=AnoPLeSettings.steps)
    evaluate.add_argument("--memory-features", default=AnoPLeSettings.memory_features, choices=MEMORY_FEATURES)
    evaluate.add_argument("--fusion", default=AnoPLeSettings.fusion, choices=FUSIONS, help=FUSION_HELP)
    evaluate.add_argument("--multi-class", action="store_true", help="one model for all classes per (k, seed)")
    evaluate.add_argument("--limit-test", type=positive_int, help="score at most N test images per class (smoke runs)")
    evaluate.add_argument("--eval-size", type=positive_int, default=256, help="maps and masks compared at this size")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--runtime", default="torch", choices=["torch", "openvino"], help="what scores each cell")
    evaluate.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"])
    evaluate.add_argument("--name", action="append", default=[], help="prompt words for a class: CLASS=WORDS")
    evaluate.add_argument("--out", type=Path, default=Path("out/eval"), help="results and the resumable cell cache")
    evaluate.add_argument("--backbone", default="ViT-B-16-plus-240", help="open_clip model name")
    evaluate.add_argument("--pretrained", default="laion400m_e32", help=f"pretrained tag, or {RANDOM_WEIGHTS!r}")
    evaluate.set_defaults(func=lazy("linewatch.cli.model", "cmd_eval"))

    run = commands.add_parser("run", help="run the inspection daemon until SIGTERM")
    run.add_argument("--config", type=Path, default=Path("config.toml"))
    run.set_defaults(func=cmd_run)
    check = commands.add_parser("check-config", help="validate a config file (exit 78 when invalid)")
    check.add_argument("--config", type=Path, default=Path("config.toml"))
    check.set_defaults(func=cmd_check_config)

    demo = commands.add_parser("demo", help="train and score on synthetic parts (the default main job)")
    demo.add_argument("--config", type=Path, default=Path("config.toml"))
    demo.set_defaults(func=cmd_demo)
    collect = commands.add_parser("collect", help="save normal images from a camera of the config, for training")
    collect.add_argument("--camera", required=True, help="the camera's name in the config")
    collect.add_argument("--count", type=positive_int, required=True, help="how many images to keep")
    collect.add_argument("--out", type=Path, required=True, help="folder for <camera>-NNNN.png (added to)")
    collect.add_argument("--every", type=non_negative_float, default=1.0, help="seconds at least between images")
    collect.add_argument("--min-change", type=non_negative_float, default=0.02,
                         help="skip a frame this close to one kept (mean grey difference, 0..1)")  # fmt: skip
    collect.add_argument("--timeout", type=non_negative_float, default=600.0, help="give up after this many s")
    collect.add_argument("--config", type=Path, default=Path("config.toml"))
    collect.set_defaults(func=lazy("linewatch.cli.collect", "cmd_collect"))
    serve = commands.add_parser(
        "serve",
        help="the scoring server for many lines (Triton through PyTriton; `linewatch serve --help` lists its options)",
        add_help=False,
    )
    serve.add_argument("server_args", nargs=argparse.REMAINDER, help="passed to the server (--models, --device, ...)")
    serve.set_defaults(func=lazy("linewatch.cli.serve", "cmd_serve"))
    add_operating_commands(commands)
    return parser


def add_operating_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The commands for a line in service: retrain, label, db upgrade, status."""
    retrain = commands.add_parser("retrain", help="retrain from confirmed normals now (gated, like the schedule)")
    retrain.add_argument("--reason", help="why; recorded with the run")
    retrain.add_argument("--wait", action="store_true", help="with a running daemon: wait for the run to end")
    retrain.add_argument("--config", type=Path, default=Path("config.toml"))
    retrain.set_defaults(func=lazy("linewatch.cli.retrain", "cmd_retrain"))

    label = commands.add_parser("label", help="mark an inspection or defect event normal or defect")
    label.add_argument("id", help="inspection id or event id (from the MQTT payload, the store or the logs)")
    label.add_argument("label", choices=["normal", "defect"])
    label.add_argument("--user", help="who judged it (default: the login name)")
    label.add_argument("--config", type=Path, default=Path("config.toml"))
    label.set_defaults(func=lazy("linewatch.cli.ops", "cmd_label"))

    db = commands.add_parser("db", help="the SQL store")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the store to this version (SQLite is backed up first)")
    upgrade.add_argument("--config", type=Path, default=Path("config.toml"))
    upgrade.set_defaults(func=lazy("linewatch.cli.ops", "cmd_db_upgrade"))

    user = commands.add_parser("user", help="the operator page's accounts and roles, in the SQL store")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for action, text in (
        ("add", "a new account (the password is asked for twice, or read from --password-stdin)"),
        ("passwd", "set an account's password; its page sessions end"),
        ("role", "give an account another role; it applies within 10 s"),
        ("remove", "delete an account; its sessions end at their next request"),
        ("list", "every account with its role"),
    ):
        sub = user_commands.add_parser(action, help=text)
        if action != "list":
            sub.add_argument("name")
        if action in ("add", "role"):
            sub.add_argument("--role", required=True, choices=["viewer", "operator", "engineer", "admin"])
        if action in ("add", "passwd"):
            sub.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
        sub.add_argument("--config", type=Path, default=Path("config.toml"))
        sub.set_defaults(func=lazy("linewatch.cli.users", "cmd_user"))

    status = commands.add_parser("status", help="the running daemon's cameras, rates, backlog and model")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between the two readings (rates)")
    status.add_argument("--config", type=Path, default=Path("config.toml"))
    status.set_defaults(func=lazy("linewatch.cli.status", "cmd_status"))


def main(argv: Sequence[str] | None = None) -> int:
    # cuBLAS is only deterministic with a fixed workspace, read when CUDA first creates a cuBLAS handle: it must
    # be set before any command touches CUDA. Training on CUDA asks for deterministic algorithms (anople.train);
    # a retrain child inherits it from the daemon. A CPU-only run never reads it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # every option is the server's own, --help included: argparse would take some
        argv = ["serve", "--", *argv[1:]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse already printed the usage error; callers get the code
        return int(stop.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"linewatch: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
