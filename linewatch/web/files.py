"""Evidence files as the page serves them: only paths of the evidence layout
(``<camera>/<YYYY-MM-DD>/<inspection id>-<verdict>[-heatmap].jpg``) that resolve inside the evidence folder."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from linewatch.sinks.evidence import DATE_FORMAT, parse_evidence_name, safe_segment

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class NoEvidence(Exception):
    """The asked-for evidence is not served; the message says why, for a 404."""


def evidence_bytes(root: Path, camera: str, day: str, name: str) -> bytes:
    """The JPEG's bytes, read whole (a JPEG is small, and retention may remove the file at any moment)."""
    root = root.resolve()
    try:
        safe_segment(camera, "camera")
        if not _DAY.match(day) or parse_evidence_name(name) is None:
            raise ValueError("not an evidence file name")
        datetime.strptime(day, DATE_FORMAT)
        path = (root / camera / day / name).resolve()
    except (ValueError, OSError):
        raise NoEvidence("no such evidence") from None
    if not path.is_relative_to(root):
        raise NoEvidence("no such evidence (retention may have removed it)")
    try:
        return path.read_bytes()
    except OSError:
        raise NoEvidence("no such evidence (retention may have removed it)") from None


def evidence_url(path: str | None) -> str | None:
    """The page URL of an evidence path from the store (already in the layout's POSIX form)."""
    return None if not path else "/evidence/" + path
