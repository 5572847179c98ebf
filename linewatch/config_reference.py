"""The configuration reference, ``docs/configuration.md``, written from the pydantic models in
:mod:`linewatch.config` and the comments beside their fields, so the document cannot drift from the code:
``tests/test_config_reference.py`` fails when the committed file differs from what this writes.

    python -m linewatch.config_reference > docs/configuration.md

Per section: the class docstring, then one row per key with its type, default, the bounds the loader
enforces and the field's comment (the line above the field and the one beside it). Checks that span
keys (``reconnect_min_s`` not above ``reconnect_max_s``, ...) live in validators and are listed by
``linewatch check-config`` when broken; they are not repeated here.
"""

from __future__ import annotations

import inspect
import io
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from linewatch.config import Config

HEADER = """# Configuration reference

Generated from `linewatch/config.py` by `python -m linewatch.config_reference > docs/configuration.md`;
do not edit by hand (`tests/test_config_reference.py` checks that this file is current).

One TOML file, `config.toml` by default (`--config PATH`). Every section and key is optional; an unknown
key, a value of the wrong type or out of bounds stops the start with exit status 78 and a message naming
the key (`linewatch check-config` shows them all). Relative paths are relative to the working directory
(the unit's `WorkingDirectory=`). `linewatch run` rereads the file on SIGHUP and applies thresholds and
camera flags; everything else needs a restart.

Secrets stay out of the file: instead of `url`, `password` or `token`, give `<key>_file = "PATH"` (the
value is the file's content, stripped; systemd's `LoadCredential=` puts files under
`/run/credentials/linewatch.service/`) or `<key>_env = "NAME"` (an environment variable).
"""


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> its comment: full-line comments right above the field, then the one beside it."""
    source = inspect.getsource(model)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        name = line[4:].split(":", 1)[0] if line.startswith("    ") and not line.startswith("     ") else ""
        if not name.isidentifier() or name not in model.model_fields:
            continue
        above: list[str] = []
        previous = number - 1
        while previous >= 1 and lines[previous - 1].strip().startswith("#"):
            above.insert(0, comments[previous])
            previous -= 1
        beside = [comments[number]] if number in comments else []
        found[name] = " ".join(part for part in [*above, *beside] if part and not part.startswith("fmt:"))
    return found


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: number, integer, text, path, one of given values, a list."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is Literal:
        return " \\| ".join(f"`{value!r}`".replace("'", '"') for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " or ".join(names)
    if origin is tuple:
        return f"list of {len(typing.get_args(annotation))} {type_name(typing.get_args(annotation)[0])}s"
    if origin is list:
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return f"table of {type_name(typing.get_args(annotation)[1])}"
    simple = {bool: "true/false", int: "integer", float: "number", str: "text", Path: "path"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds(info: FieldInfo) -> str:
    """The limits in the field's metadata, as ``>= 0``, ``< 1``, ``pattern``."""
    parts = []
    for item in info.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attribute, None)
            if isinstance(item, annotated_types.BaseMetadata) and value is not None:
                parts.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value!r}`".replace("'", '"')


def section_text(heading: str, model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model)
    own_doc = doc if doc and model.__doc__ is not None and "__doc__" in vars(model) else ""
    comments = field_comments(model)
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        meaning = comments.get(name, "").replace("|", "\\|")
        row = [f"`{name}`", type_name(info.annotation), default_text(info), bounds(info), meaning]
        rows.append("| " + " | ".join(row) + " |")
    parts = [f"## `{heading}`", own_doc.split("\n\n")[0].replace("\n", " ") if own_doc else "", "\n".join(rows)]
    return "\n\n".join(part for part in parts if part)


def reference() -> str:
    sections = [HEADER.rstrip()]
    for name, info in Config.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) is list:
            sections.append(section_text(f"[[{name}]]", typing.get_args(annotation)[0]))
        else:
            sections.append(section_text(f"[{name}]", annotation))
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
