"""``linewatch label`` and ``linewatch db upgrade`` on a config's journal and store."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from linewatch.cli.main import main
from linewatch.clock import FakeClock
from linewatch.config import load_config
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import label_from_payload
from linewatch.types import LabelTarget, VerdictLabel
from tests.pipeline.test_journal import make_event, make_verdict


def _config(tmp_path: Path, store_url: str | None = None) -> Path:
    path = tmp_path / "linewatch.toml"
    store = f'\n[store]\nurl = "{store_url}"\n' if store_url else ""
    path.write_text(f'[site]\ndata_dir = "{tmp_path / "data"}"\n{store}')
    return path


def test_label_journals_an_inspection_or_event_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path)
    journal_path = load_config(config_path).journal_path
    with Journal(journal_path, FakeClock()) as journal:
        journal.append_batch([make_verdict(1)], [make_event("ev-1", 1)])
    assert main(["label", "cam1-boot-1", "defect", "--config", str(config_path), "--user", "anna"]) == 0
    assert main(["label", "ev-1", "normal", "--config", str(config_path)]) == 0
    assert "inspection cam1-boot-1 (camera cam1) labelled defect by anna" in capsys.readouterr().out
    with Journal(journal_path, FakeClock()) as journal:
        journal.register_forwarder("probe")
        labels = [label_from_payload(r.payload) for r in journal.read_after("probe", 10, kinds={"label"})]
    assert [(lb.target, lb.target_id, lb.label, lb.source) for lb in labels] == [
        (LabelTarget.INSPECTION, "cam1-boot-1", VerdictLabel.DEFECT, "cli"),
        (LabelTarget.EVENT, "ev-1", VerdictLabel.NORMAL, "cli"),
    ]


def test_label_refuses_unknown_ids_and_a_missing_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path)
    assert main(["label", "x", "normal", "--config", str(config_path)]) == 2
    assert "no journal at" in capsys.readouterr().err
    with Journal(load_config(config_path).journal_path, FakeClock()) as journal:
        journal.append_batch([make_verdict(1)], [])
    assert main(["label", "cam1-boot-9", "normal", "--config", str(config_path)]) == 2
    assert "no inspection or event with id 'cam1-boot-9'" in capsys.readouterr().err
    assert main(["label", "cam1-boot-1", "fine", "--config", str(config_path)]) == 2  # argparse choices


def test_db_upgrade_migrates_once_and_backs_up_only_an_existing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _config(tmp_path)
    assert main(["db", "upgrade", "--config", str(config_path)]) == 0
    assert "upgraded from empty to" in capsys.readouterr().out
    assert main(["db", "upgrade", "--config", str(config_path)]) == 0
    assert "already at revision" in capsys.readouterr().out
    assert not (tmp_path / "data" / "backups").exists()  # nothing to back up: the file was new, then current

    other = tmp_path / "other"
    other.mkdir()
    existing = other / "store.sqlite3"
    with closing(sqlite3.connect(existing)) as connection:  # a file holding data, not yet migrated
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.execute("INSERT INTO notes VALUES ('keep me')")
        connection.commit()
    config_path = _config(other, f"sqlite:///{existing}")
    assert main(["db", "upgrade", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    backups = list((other / "data" / "backups").iterdir())
    assert len(backups) == 1 and f"backup of the previous file: {backups[0]}" in out
    with closing(sqlite3.connect(backups[0])) as connection:
        assert connection.execute("SELECT text FROM notes").fetchall() == [("keep me",)]


def test_label_checks_the_user_like_every_feedback_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _config(tmp_path)
    with Journal(load_config(config_path).journal_path, FakeClock()) as journal:
        journal.append_batch([make_verdict(1)], [])
    assert main(["label", "cam1-boot-1", "normal", "--config", str(config_path), "--user", "x" * 65]) == 2
    assert "user must be a printable string" in capsys.readouterr().err


def test_db_upgrade_names_an_unreachable_database_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _config(tmp_path, "postgresql+psycopg://lw:topsecret@127.0.0.1:1/lw")
    assert main(["db", "upgrade", "--config", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert "127.0.0.1:1" in error and "topsecret" not in error
