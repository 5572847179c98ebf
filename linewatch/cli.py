"""``linewatch`` command line: a thin layer over training, scoring, weights, the daemon and the demo.

Exit codes: 0 success, 1 some inputs failed while others were processed, 2 bad usage or input
(the message names the file, key or value at fault).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from linewatch.anople.artifact import ArtifactError
from linewatch.anople.backbone import RANDOM_WEIGHTS, BackboneError
from linewatch.anople.settings import AnoPLeSettings
from linewatch.cli_ops import add_commands as add_operating_commands
from linewatch.cli_retrain import add_commands as add_retrain_commands
from linewatch.cli_status import add_commands as add_status_commands
from linewatch.config import ConfigError, load_config
from linewatch.console import announce_random, progress_bar
from linewatch.images import ImageError, collect_images, heatmap_overlay, read_rgb, write_image
from linewatch.scorer import ScoredImage, Scorer
from linewatch.training import ProductSource, TrainingError, train_artifact
from linewatch.weights import (
    DEFAULT_MODELS_DIR,
    describe_artifact,
    describe_weights,
    import_checkpoint,
    list_artifacts,
    list_weights,
    load_backbone,
    pull,
)

USER_ERRORS = (ImageError, TrainingError, ArtifactError, BackboneError, ConfigError, KeyError, ValueError)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (steps, shots, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    if len(args.normals) != len(args.product):
        raise TrainingError(
            f"give one --product per --normals (got {len(args.normals)} --normals and {len(args.product)} --product)"
        )
    sources = [
        ProductSource(product, collect_images([spec])) for spec, product in zip(args.normals, args.product, strict=True)
    ]
    settings = AnoPLeSettings(steps=args.steps, batch_size=args.batch_size, hflip=args.hflip)
    if args.weights is not None and args.pretrained == RANDOM_WEIGHTS:
        raise BackboneError("--weights and --pretrained none contradict each other; give one of them")
    # An explicit weights file is recorded as "file", so scoring asks for the same file again.
    pretrained = "file" if args.weights is not None else args.pretrained
    backbone = load_backbone(args.backbone, pretrained, args.models_dir, args.weights, args.seed)
    announce_random(backbone.spec.is_random)
    bar, update = progress_bar(settings.steps)
    with bar:
        train_artifact(
            sources,
            backbone,
            settings,
            args.out,
            args.shots,
            args.seed,
            args.frr,
            args.overwrite,
            update,
            log=lambda line: print(line, file=sys.stderr),
            device=args.device,
        )
    print(f"saved model to {args.out}")
    return 0


def _heatmap_name(path: Path, used: set[str]) -> str:
    name, counter = f"{path.stem}.heatmap.png", 1
    while name in used:
        counter += 1
        name = f"{path.stem}-{counter}.heatmap.png"
    used.add(name)
    return name


def cmd_score(args: argparse.Namespace) -> int:
    paths = collect_images(args.images)
    scorer = Scorer.from_artifact(args.model, args.models_dir, args.device, args.precision, args.weights)
    random_backbone = scorer.model.backbone_spec.is_random
    announce_random(random_backbone)
    product = args.product
    if product is None:
        if len(scorer.products) != 1:
            raise KeyError(f"this model holds several products {scorer.products}; choose one with --product")
        product = scorer.products[0]
    scorer.model.product_index(product)
    results: list[dict[str, object]] = []
    failures = 0
    used_names: set[str] = set()
    for start in range(0, len(paths), args.batch_size):
        batch_paths, images = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                images.append(read_rgb(path))
                batch_paths.append(path)
            except ImageError as error:
                failures += 1
                print(f"linewatch: skipped: {error}", file=sys.stderr)
        scored: list[ScoredImage] = scorer.score(images, [product] * len(images))
        for path, image, result in zip(batch_paths, images, scored, strict=True):
            entry: dict[str, object] = {
                "path": str(path),
                "product": product,
                "score": round(result.score, 6),
                "threshold": round(result.threshold, 6),
                "verdict": result.verdict,
            }
            if args.heatmaps is not None:
                overlay = heatmap_overlay(image, result.pixel_map, result.pixel_threshold)
                target = args.heatmaps / _heatmap_name(path, used_names)
                write_image(target, overlay)
                entry["heatmap"] = str(target)
            results.append(entry)
    if args.json:
        print(json.dumps({"model": str(args.model), "random_backbone": random_backbone, "results": results}, indent=2))
    else:
        width = max((len(str(r["path"])) for r in results), default=4)
        print(f"{'image':<{width}}  {'score':>9}  {'threshold':>9}  verdict")
        for r in results:
            print(f"{r['path']!s:<{width}}  {r['score']:>9.5f}  {r['threshold']:>9.5f}  {r['verdict']}")
        defects = sum(r["verdict"] == "defect" for r in results)
        print(f"{len(results)} scored, {defects} defect(s), {failures} unreadable")
    return 1 if failures else 0


def cmd_model_pull(args: argparse.Namespace) -> int:
    path = pull(args.name, args.tag, args.models_dir)
    print(json.dumps(describe_weights(path), indent=2))
    return 0


def cmd_model_import(args: argparse.Namespace) -> int:
    path = import_checkpoint(args.name, args.tag, args.checkpoint, args.models_dir)
    print(json.dumps(describe_weights(path), indent=2))
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    weights = list_weights(args.models_dir)
    artifacts = list_artifacts(args.models_dir)
    print(f"backbone weights in {args.models_dir / 'backbones'}:")
    for entry in weights:
        print(f"  {entry.model_name} {entry.pretrained}  sha256 {entry.meta.get('sha256', '?')[:12]}")
    if not weights:
        print("  (none; 'linewatch model pull NAME TAG' on a connected machine)")
    print(f"models in {args.models_dir}:")
    for path in artifacts:
        info = describe_artifact(path)
        backbone = info["backbone"]
        random_note = "  RANDOM BACKBONE" if backbone.get("random_weights") else ""
        print(
            f"  {path}  {backbone['model_name']}/{backbone['pretrained']}"
            f"  products {list(info['products'])}{random_note}"
        )
    if not artifacts:
        print("  (none; 'linewatch train' makes one)")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    target: Path = args.target
    if target.is_dir():
        print(json.dumps(describe_artifact(target), indent=2))
        return 0
    if target.suffix == ".safetensors" and target.is_file():
        print(json.dumps(describe_weights(target), indent=2))
        return 0
    candidate = args.models_dir / "backbones" / f"{target}.safetensors"
    if candidate.is_file():
        print(json.dumps(describe_weights(candidate), indent=2))
        return 0
    raise ArtifactError(f"{target}: neither a model directory, a weights file, nor MODEL/TAG under {args.models_dir}")


def _name_overrides(pairs: list[str]) -> dict[str, str]:
    names = {}
    for pair in pairs:
        class_id, sep, words = pair.partition("=")
        if not sep or not class_id or not words.strip():
            raise ValueError(f"--name expects CLASS=WORDS (e.g. metal_nut='metal nut'), got {pair!r}")
        names[class_id] = words.strip()
    return names


def cmd_eval(args: argparse.Namespace) -> int:
    from linewatch.eval.datasets import read_dataset
    from linewatch.eval.protocol import EvalSettings, run_protocol
    from linewatch.eval.report import text_tables, write_outputs

    splits = read_dataset(args.dataset, args.root, args.classes, _name_overrides(args.name))
    if args.weights is not None and args.pretrained == RANDOM_WEIGHTS:
        raise BackboneError("--weights and --pretrained none contradict each other; give one of them")
    pretrained = "file" if args.weights is not None else args.pretrained
    backbone = load_backbone(args.backbone, pretrained, args.models_dir, args.weights, 0)
    announce_random(backbone.spec.is_random)
    model_settings = AnoPLeSettings(steps=args.steps)
    settings = EvalSettings(
        shots=tuple(args.shots),
        seeds=tuple(args.seeds),
        eval_size=args.eval_size,
        batch_size=args.batch_size,
        limit_test=args.limit_test,
        multi_class=args.multi_class,
        device=args.device,
    )
    groups = 1 if args.multi_class else len(splits)
    cached = 0
    with tqdm(total=groups * len(args.shots) * len(args.seeds), desc="eval", unit="cell", file=sys.stderr) as bar:

        def advance(label: str, from_cache: bool) -> None:
            nonlocal cached
            cached += from_cache
            bar.set_postfix_str(label + (" (cached)" if from_cache else ""))
            bar.update(1)

        results = run_protocol(splits, backbone, model_settings, settings, args.out, advance)
    run_info = {
        "dataset": args.dataset,
        "root": str(args.root),
        "classes": [s.name for s in splits],
        "prompt_words": {s.name: s.prompt_name for s in splits},
        "backbone": {
            "model_name": backbone.spec.model_name,
            "pretrained": backbone.spec.pretrained,
            "weights_sha256": backbone.spec.weights_sha256,
            "random_weights": backbone.spec.is_random,
        },
        "settings": model_settings.to_dict(),
        "eval": {**vars(settings), "shots": list(settings.shots), "seeds": list(settings.seeds)},
    }
    table = write_outputs(args.out, results, run_info)
    print(text_tables(table))
    print(f"{cached} cell(s) from the cache; results, tables and heatmaps in {args.out}")
    return 0


EX_CONFIG = 78  # sysexits.h; systemd's RestartPreventExitStatus keeps a broken config from restart loops


def cmd_check_config(args: argparse.Namespace) -> int:
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
    from linewatch.daemon import serve
    from linewatch.retrain.versions import RegistryBusy, RegistryError
    from linewatch.sinks.db import DatabaseError

    try:
        return serve(args.config, args.verbose)
    except ConfigError as error:
        print(f"linewatch: config error: {error}", file=sys.stderr)
        return EX_CONFIG
    # e.g. the HTTP port is taken, another daemon serves the line, active.json is damaged: the log says why
    except (DatabaseError, OSError, RegistryBusy, RegistryError) as error:
        print(f"linewatch: error: {error}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from linewatch.demo import run_demo  # the demo pulls in the synthetic generator only when used

    return run_demo(args.config)


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
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.set_defaults(func=cmd_train)

    score = commands.add_parser("score", help="score images with a trained model")
    common(score)
    score.add_argument("images", nargs="+", help="image files, folders or globs")
    score.add_argument("--model", type=Path, required=True, help="model directory")
    score.add_argument("--product", help="product name (needed when the model holds several)")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.add_argument("--heatmaps", type=Path, help="write heatmap overlays into this folder")
    score.add_argument("--batch-size", type=positive_int, default=8)
    score.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    score.set_defaults(func=cmd_score)

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
    for sub, func in (
        (pull_cmd, cmd_model_pull),
        (import_cmd, cmd_model_import),
        (list_cmd, cmd_model_list),
        (info_cmd, cmd_model_info),
    ):
        sub.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
        sub.set_defaults(func=func)
    add_retrain_commands(commands, model_commands)

    evaluate = commands.add_parser("eval", help="the paper's few-shot protocol on MVTec-AD, VisA or a folder")
    common(evaluate)
    evaluate.add_argument("--dataset", required=True, choices=["mvtec", "visa", "folder"])
    evaluate.add_argument("--root", type=Path, required=True, help="dataset root (for folder: the class folder)")
    evaluate.add_argument("--classes", nargs="+", help="classes to evaluate (default: all found)")
    evaluate.add_argument("--shots", nargs="+", type=positive_int, default=[1, 2, 4], help="k values")
    evaluate.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    evaluate.add_argument("--steps", type=positive_int, default=AnoPLeSettings.steps)
    evaluate.add_argument("--multi-class", action="store_true", help="one model for all classes per (k, seed)")
    evaluate.add_argument("--limit-test", type=positive_int, help="score at most N test images per class (smoke runs)")
    evaluate.add_argument("--eval-size", type=positive_int, default=256, help="maps and masks compared at this size")
    evaluate.add_argument("--batch-size", type=positive_int, default=16)
    evaluate.add_argument("--name", action="append", default=[], help="prompt words for a class: CLASS=WORDS")
    evaluate.add_argument("--out", type=Path, default=Path("out/eval"), help="results and the resumable cell cache")
    evaluate.add_argument("--backbone", default="ViT-B-16-plus-240", help="open_clip model name")
    evaluate.add_argument("--pretrained", default="laion400m_e32", help=f"pretrained tag, or {RANDOM_WEIGHTS!r}")
    evaluate.set_defaults(func=cmd_eval)

    run = commands.add_parser("run", help="run the inspection daemon until SIGTERM")
    run.add_argument("--config", type=Path, default=Path("config.toml"))
    run.set_defaults(func=cmd_run)
    check = commands.add_parser("check-config", help="validate a config file (exit 78 when invalid)")
    check.add_argument("--config", type=Path, default=Path("config.toml"))
    check.set_defaults(func=cmd_check_config)

    demo = commands.add_parser("demo", help="train and score on synthetic parts (the default main job)")
    demo.add_argument("--config", type=Path, default=Path("config.toml"))
    demo.set_defaults(func=cmd_demo)
    add_operating_commands(commands)
    add_status_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
