"""Model work on the command line: ``train``, ``score``, ``eval`` and ``model pull|import|list|info|export``.

Each ``cmd_*`` takes the parsed arguments and returns the exit code; :mod:`linewatch.cli.main` builds the
parser and maps the errors named in ``USER_ERRORS`` there to exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from linewatch.anople.artifact import ArtifactError
from linewatch.anople.backbone import BackboneError
from linewatch.anople.files import RANDOM_WEIGHTS
from linewatch.anople.settings import AnoPLeSettings
from linewatch.cli.console import announce_random, progress_bar
from linewatch.images import ImageError, collect_images, heatmap_overlay, read_rgb, write_image
from linewatch.model.training import ProductSource, TrainingError, train_artifact
from linewatch.model.weights import (
    describe_artifact,
    describe_weights,
    import_checkpoint,
    list_artifacts,
    list_weights,
    load_backbone,
    pull,
)
from linewatch.pipeline.scorer import ScoredImage, Scorer


def cmd_train(args: argparse.Namespace) -> int:
    if len(args.normals) != len(args.product):
        raise TrainingError(
            f"give one --product per --normals (got {len(args.normals)} --normals and {len(args.product)} --product)"
        )
    sources = [
        ProductSource(product, collect_images([spec])) for spec, product in zip(args.normals, args.product, strict=True)
    ]
    settings = AnoPLeSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        hflip=args.hflip,
        memory_features=args.memory_features,
        fusion=args.fusion,
    )
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
    scorer = Scorer.from_artifact(args.model, args.models_dir, args.device, args.precision, args.weights, args.runtime)
    random_backbone = scorer.backbone_spec.is_random
    announce_random(random_backbone)
    product = args.product
    if product is None:
        if len(scorer.products) != 1:
            raise KeyError(f"this model holds several products {scorer.products}; choose one with --product")
        product = scorer.products[0]
    scorer.product_index(product)
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
    from linewatch.model.export import describe_exports

    target: Path = args.target
    if target.is_dir():
        print(json.dumps({**describe_artifact(target), "exports": describe_exports(target)}, indent=2))
        return 0
    if target.suffix == ".safetensors" and target.is_file():
        print(json.dumps(describe_weights(target), indent=2))
        return 0
    candidate = args.models_dir / "backbones" / f"{target}.safetensors"
    if candidate.is_file():
        print(json.dumps(describe_weights(candidate), indent=2))
        return 0
    raise ArtifactError(f"{target}: neither a model directory, a weights file, nor MODEL/TAG under {args.models_dir}")


def cmd_model_export(args: argparse.Namespace) -> int:
    """Export, calibrate and parity-check at each precision; a refused precision ends the command (exit 2)
    with the numbers, the precisions before it stay exported. ``--format triton``: see :func:`_export_triton`."""
    from linewatch.anople.artifact import load_artifact
    from linewatch.model.export import export_dir, export_openvino
    from linewatch.model.weights import backbone_loader

    if args.format == "triton":
        return _export_triton(args)
    if not args.precision:
        raise ValueError("--format openvino needs --precision (fp32, bf16 or int8; several at once)")
    model, info = load_artifact(args.model, backbone_loader(args.models_dir, args.weights))
    announce_random(model.backbone_spec.is_random)
    for precision in args.precision:
        record = export_openvino(args.model, model, info, precision, log=lambda line: print(line, file=sys.stderr))
        print(f"{export_dir(args.model, args.runtime, precision)}: {record.parity.describe()}")
        for product, calibration in record.calibrations.items():
            print(
                f"  {product}: threshold {calibration.threshold:.5f} (PyTorch fp32: "
                f"{info.products[product].calibration.threshold:.5f}), pixel threshold "
                f"{calibration.pixel_threshold:.5f}, from {calibration.n_normals} {calibration.source}"
            )
    return 0


def _export_triton(args: argparse.Namespace) -> int:
    """One model version into a Triton model repository, named by the registry's id (``NAME@HASH``) so a line
    PC asks for it by the version it runs. The settings are checked before the model loads (seconds)."""
    from linewatch.anople.artifact import load_artifact
    from linewatch.model.remote_protocol import DEFAULT_MODEL_NAME
    from linewatch.model.triton_repository import TritonSettings, export_triton
    from linewatch.model.weights import backbone_loader
    from linewatch.retrain.versions import model_version

    if args.repository is None:
        raise ValueError("--format triton needs --repository DIR, the model repository to write into")
    if args.precision not in (None, ["fp32"]):
        raise ValueError("a Triton export is fp32; --precision is for --format openvino")
    settings = TritonSettings(
        backend=args.backend,
        max_batch=args.max_batch,
        instances=args.instances,
        instance_kind=args.instance_kind,
        queue_delay_us=args.queue_delay_us,
    )
    name = args.triton_model or DEFAULT_MODEL_NAME
    model, info = load_artifact(args.model, backbone_loader(args.models_dir, args.weights))
    announce_random(model.backbone_spec.is_random)
    version = model_version(Path(os.path.abspath(args.model)))  # "models/nut/." is version nut too
    result = export_triton(
        args.model, model, info, version, args.repository, name, settings, log=lambda line: print(line, file=sys.stderr)
    )
    print(result.describe())
    print(
        f"serve it: tritonserver --model-repository {args.repository} --model-control-mode explicit "
        f"--load-model {name}"
    )
    return 0


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
    from linewatch.eval.report import term_lines, text_tables, write_outputs

    splits = read_dataset(args.dataset, args.root, args.classes, _name_overrides(args.name))
    if args.weights is not None and args.pretrained == RANDOM_WEIGHTS:
        raise BackboneError("--weights and --pretrained none contradict each other; give one of them")
    pretrained = "file" if args.weights is not None else args.pretrained
    backbone = load_backbone(args.backbone, pretrained, args.models_dir, args.weights, 0)
    announce_random(backbone.spec.is_random)
    model_settings = AnoPLeSettings(steps=args.steps, memory_features=args.memory_features, fusion=args.fusion)
    settings = EvalSettings(
        shots=tuple(args.shots),
        seeds=tuple(args.seeds),
        eval_size=args.eval_size,
        batch_size=args.batch_size,
        limit_test=args.limit_test,
        multi_class=args.multi_class,
        device=args.device,
        runtime=args.runtime,
        precision=args.precision,
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
    print(f"runtime {settings.runtime} {settings.precision}")
    print(text_tables(table))
    print(term_lines(results))
    print(f"{cached} cell(s) from the cache; results, tables and heatmaps in {args.out}")
    return 0
