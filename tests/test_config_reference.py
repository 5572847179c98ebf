"""docs/configuration.md is generated from linewatch/config.py and must be current; every key is in it
with a meaning, and what it says about types, defaults and bounds is what the loader enforces."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from linewatch.config import Config, ConfigError, load_config
from linewatch.config_reference import reference

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text() == reference(), "run: python -m linewatch.config_reference > docs/configuration.md"


def test_every_key_of_every_section_has_a_row_with_a_meaning() -> None:
    text = reference()
    for name, info in Config.model_fields.items():
        model = info.annotation
        if typing.get_origin(model) is list:
            model = typing.get_args(model)[0]
        heading = f"[[{name}]]" if typing.get_origin(info.annotation) is list else f"[{name}]"
        section = text.split(f"## `{heading}`", 1)[1].split("\n## ", 1)[0]
        for key in model.model_fields:  # type: ignore[union-attr]
            row = re.search(rf"^\| `{key}` \|.*\| ([^|]*) \|$", section, re.MULTILINE)
            assert row is not None, f"{heading} {key} has no row"
            assert row.group(1).strip(), f"{heading} {key} has no meaning: comment the field in linewatch/config.py"


@pytest.mark.parametrize(
    ("row", "toml", "accepted"),
    [
        ("| `port` | integer | `9108` | >= 0, <= 65535 |", "[http]\nport = 65536\n", False),
        ("| `port` | integer | `9108` | >= 0, <= 65535 |", "[http]\nport = 0\n", True),
        ("| `target_frr` | number | `0.01` | >= 0, < 1 |", "[model]\ntarget_frr = 1.0\n", False),
        ('| `protocol` | `"5"` \\| `"3.1.1"` | `"5"` |', '[mqtt]\nprotocol = "3.1"\n', False),
    ],
)
def test_what_the_reference_says_is_what_the_loader_does(tmp_path: Path, row: str, toml: str, accepted: bool) -> None:
    assert row in reference()
    path = tmp_path / "c.toml"
    path.write_text(toml)
    if accepted:
        load_config(path)
    else:
        with pytest.raises(ConfigError):
            load_config(path)
