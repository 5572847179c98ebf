"""Helper process for the journal's SIGKILL test (not a test module).

Usage: python tests/pipeline/journal_writer.py <journal path> <max batches>

Appends batches of 4 verdicts (keys ``kill-<batch>-<0..3>``) in a loop and, after each ``append_batch``
returns, prints ``<batch> <last position>`` and flushes, so the parent knows exactly what was acknowledged.
Stops after <max batches> so a forgotten child cannot run forever.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from linewatch.clock import SystemClock
from linewatch.pipeline.journal.outbox import Journal
from linewatch.types import Verdict, VerdictLabel

BATCH = 4


def main(argv: list[str]) -> int:
    path, max_batches = Path(argv[1]), int(argv[2])
    journal = Journal(path, SystemClock())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for batch in range(max_batches):
        verdicts = [
            Verdict(
                inspection_id=f"kill-{batch}-{index}",
                camera=f"cam{index % 2}",
                product="metal plate",
                seq=batch * BATCH + index + 1,
                frame_ts=start + timedelta(milliseconds=batch * BATCH + index),
                captured_mono=float(batch * BATCH + index),
                score=0.001 * index,
                threshold=0.5,
                label=VerdictLabel.NORMAL,
                model_version="v1",
            )
            for index in range(BATCH)
        ]
        positions = journal.append_batch(verdicts, [])
        print(batch, positions[-1], flush=True)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
