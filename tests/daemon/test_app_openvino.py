"""The daemon on the OpenVINO runtime: it exports the model it is given, scores every frame with the export's
threshold, and refuses to start on an export that fails its parity gate (no silent fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.model.export import ExportError, current_export
from tests.daemon.test_app import _assert_no_frame_lost, _wait_for, daemon_model, journal_records, write_config  # noqa: F401


def _openvino_config(tmp_path: Path, model: Path, precision: str) -> Path:
    path = write_config(tmp_path, model)
    path.write_text(
        path.read_text().replace("[scoring]\n", f'[scoring]\nruntime = "openvino"\nprecision = "{precision}"\n')
    )
    return path


def test_daemon_on_openvino_journals_every_frame_with_the_exports_threshold(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = load_config(_openvino_config(tmp_path, daemon_model, "fp32"))
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= 24, timeout_s=90)
    finally:
        app.stop()
    record = current_export(daemon_model, "openvino", "fp32")
    assert record is not None
    verdicts = journal_records(config.journal_path, "verdict")
    _assert_no_frame_lost(verdicts, cameras=2)
    threshold = next(iter(record.calibrations.values())).threshold
    assert {v.payload["threshold"] for v in verdicts} == {threshold}
    assert all(v.payload["label"] == ("defect" if v.payload["score"] > threshold else "normal") for v in verdicts)
    assert app.model_state()["runtime"] == "openvino fp32"


def test_daemon_refuses_to_start_on_an_export_that_fails_its_gate(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The daemon's model is trained for three steps: its scores bunch up and INT8 reorders them.
    app = App(load_config(_openvino_config(tmp_path, daemon_model, "int8")))
    with pytest.raises(ExportError, match="export refused, int8 vs PyTorch fp32"):
        app.start()
    app.stop()
    assert current_export(daemon_model, "openvino", "int8") is None
