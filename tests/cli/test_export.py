"""`linewatch model export` and `linewatch score --runtime openvino` on a model `linewatch train` wrote."""

from __future__ import annotations

import json
from pathlib import Path

from linewatch.model.export import current_export
from tests.cli.test_main import Run, model, models_dir, run, workspace  # noqa: F401


def test_export_prints_the_parity_and_the_thresholds_then_score_uses_them(
    run: Run,  # noqa: F811
    model: Path,  # noqa: F811
    models_dir: Path,  # noqa: F811
    workspace: Path,  # noqa: F811
) -> None:
    code, out, err = run("model", "export", model, "--precision", "fp32", "--models-dir", models_dir)
    assert code == 0, err
    record = current_export(model, "openvino", "fp32")
    assert record is not None
    assert "exports/openvino-fp32: fp32 vs PyTorch fp32 on" in out and "max |error|" in out
    assert f"plate: threshold {record.calibrations['plate'].threshold:.5f}" in out
    assert "RANDOM" in err  # the random backbone is announced here too
    code, out, _ = run("model", "info", model, "--models-dir", models_dir)
    (described,) = json.loads(out)["exports"]
    assert described["precision"] == "fp32" and described["current"] is True
    assert described["thresholds"] == {"plate": record.calibrations["plate"].threshold}
    images = workspace / "test"
    code, out, err = run("score", images, "--model", model, "--models-dir", models_dir, "--json")
    torch_results = json.loads(out)["results"]
    code, out, err = run(
        "score", images, "--model", model, "--models-dir", models_dir, "--json", "--runtime", "openvino"
    )
    assert code == 0, err
    openvino_results = json.loads(out)["results"]
    for ours, theirs in zip(openvino_results, torch_results, strict=True):
        assert ours["path"] == theirs["path"] and ours["verdict"] == theirs["verdict"]
        assert abs(ours["score"] - theirs["score"]) < 1e-5
        assert ours["threshold"] == round(record.calibrations["plate"].threshold, 6)


def test_a_refused_export_exits_2_with_the_numbers(
    run: Run,  # noqa: F811
    model: Path,  # noqa: F811
    models_dir: Path,  # noqa: F811
) -> None:
    code, out, err = run("model", "export", model, "--precision", "int8", "--models-dir", models_dir)
    assert code == 2 and out == ""
    assert "linewatch: error:" in err and "export refused, int8 vs PyTorch fp32" in err and "Spearman" in err
    assert current_export(model, "openvino", "int8") is None


def test_export_needs_a_precision(run: Run, model: Path) -> None:  # noqa: F811
    code, _, err = run("model", "export", model)
    assert code == 2 and "--precision" in err
