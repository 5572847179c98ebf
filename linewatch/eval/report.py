"""Tables from protocol results: per class and mean, mean and spread over seeds, in percent like the paper.

The class mean for a k is computed per seed (mean over classes) and then summarised over seeds, so
its spread is the seed-to-seed spread of the headline number.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from linewatch.eval.metrics import summarise
from linewatch.eval.protocol import ClassResult

METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
HEADERS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "f1_max": "F1-max"}
MEAN_ROW = "mean"


def summary(results: list[ClassResult]) -> dict[int, dict[str, dict[str, tuple[float, float] | None]]]:
    """{k: {class or "mean": {metric: (mean, std) over seeds, or None when not measured}}}."""
    by_cell: dict[int, dict[str, dict[int, ClassResult]]] = defaultdict(lambda: defaultdict(dict))
    for result in results:
        by_cell[result.shots][result.class_name][result.seed] = result
    table: dict[int, dict[str, dict[str, tuple[float, float] | None]]] = {}
    for shots in sorted(by_cell):
        classes = by_cell[shots]
        rows: dict[str, dict[str, tuple[float, float] | None]] = {}
        for name in sorted(classes):
            rows[name] = {metric: _over_seeds(list(classes[name].values()), metric) for metric in METRICS}
        seeds = sorted({seed for per_seed in classes.values() for seed in per_seed})
        rows[MEAN_ROW] = {}
        for metric in METRICS:
            per_seed = []
            for seed in seeds:
                values = [
                    getattr(per_seed_results[seed], metric)
                    for per_seed_results in classes.values()
                    if seed in per_seed_results
                ]
                if values and all(value is not None for value in values):
                    per_seed.append(sum(values) / len(values))
            rows[MEAN_ROW][metric] = summarise(per_seed) if per_seed else None
        table[shots] = rows
    return table


def _over_seeds(results: list[ClassResult], metric: str) -> tuple[float, float] | None:
    values = [getattr(result, metric) for result in results]
    if any(value is None for value in values):
        return None
    return summarise(values)


def _cell(value: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    mean, spread = value
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def text_tables(table: dict[int, dict[str, dict[str, tuple[float, float] | None]]]) -> str:
    lines = []
    for shots, rows in table.items():
        width = max(len(name) for name in rows)
        lines.append(f"k = {shots}")
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{HEADERS[m]:>13}" for m in METRICS))
        for name, metrics in rows.items():
            lines.append(f"{name:<{width}}  " + "  ".join(f"{_cell(metrics[m]):>13}" for m in METRICS))
        lines.append("")
    return "\n".join(lines)


def markdown_tables(table: dict[int, dict[str, dict[str, tuple[float, float] | None]]]) -> str:
    lines = ["Values in percent, mean ± standard deviation over seeds.", ""]
    for shots, rows in table.items():
        lines.append(f"### k = {shots}")
        lines.append("")
        lines.append("| class | " + " | ".join(HEADERS[m] for m in METRICS) + " |")
        lines.append("|---|" + "---:|" * len(METRICS))
        for name, metrics in rows.items():
            label = f"**{name}**" if name == MEAN_ROW else name
            lines.append(f"| {label} | " + " | ".join(_cell(metrics[m]) for m in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def term_lines(results: list[ClassResult]) -> str:
    """Image and pixel AUROC of each fusion term alone and of the fusion, mean over every class and seed of a
    k: which part carries the result. Empty when no cell measured its terms (OpenVINO scores fused only)."""
    lines = []
    for shots in sorted({result.shots for result in results}):
        cells = [result.terms for result in results if result.shots == shots and result.terms]
        if not cells:
            continue
        lines.append(f"k = {shots}, each term alone (mean over classes and seeds): image / pixel AUROC")
        for term in cells[0]:
            parts = []
            for metric in ("image_auroc", "pixel_auroc"):
                values = [cell[term][metric] for cell in cells if cell.get(term, {}).get(metric) is not None]
                parts.append(f"{100 * sum(values) / len(values):.1f}" if values else "-")
            lines.append(f"  {term:<20} {parts[0]:>6} / {parts[1]:>6}")
    return "\n".join(lines)


def write_outputs(out: Path, results: list[ClassResult], run_info: dict[str, Any]) -> dict[int, Any]:
    """results.json (run info, every cell, the summary), results.csv (one row per class and cell),
    results.md (the tables). Returns the summary."""
    table = summary(results)
    out.mkdir(parents=True, exist_ok=True)
    serialisable = {
        str(shots): {
            name: {
                metric: (None if value is None else {"mean": value[0], "std": value[1]}) for metric, value in m.items()
            }
            for name, m in rows.items()
        }
        for shots, rows in table.items()
    }
    document = {"run": run_info, "cells": [asdict(result) for result in results], "summary": serialisable}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "shots", "seed", *METRICS, "n_test", "n_anomalous", "seconds"])
        for r in results:
            writer.writerow(
                [r.class_name, r.shots, r.seed, *(getattr(r, m) for m in METRICS), r.n_test, r.n_anomalous, r.seconds]
            )
    terms = term_lines(results)
    (out / "results.md").write_text(markdown_tables(table) + (f"\n```\n{terms}\n```\n" if terms else ""))
    return table
