"""Secrets outside the config file: ``<key>_file = PATH`` and ``<key>_env = NAME`` for the keys that may carry
credentials, resolved before the config is validated (linewatch/config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class SecretError(ValueError):
    """A secret that cannot be read; the message names the key path, never the secret."""


SECRET_KEYS = frozenset({"url", "password", "token", "scrape_token"})  # values that may carry credentials


def resolve_secrets(node: object, where: str, environ: Mapping[str, str]) -> object:
    """Replace ``<key>_file = PATH`` and ``<key>_env = NAME`` by ``<key>`` read from the file (stripped)
    or the environment, for the secret keys only, so credentials stay out of the config file (systemd's
    LoadCredential= puts them in files). Errors name the key path, never the secret."""
    if isinstance(node, list):
        return [resolve_secrets(item, f"{where}.{index}", environ) for index, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    resolved = {}
    for key, value in node.items():
        path = f"{where}.{key}" if where else key
        base, _, source = key.rpartition("_")
        if source in ("file", "env") and base in SECRET_KEYS:
            if base in node or (f"{base}_env" in node and f"{base}_file" in node):
                raise SecretError(f"{path}: give only one of {base}, {base}_file, {base}_env")
            if not isinstance(value, str):
                raise SecretError(f"{path}: expected a string")
            if source == "file":
                try:
                    resolved[base] = Path(value).read_text(encoding="utf-8").strip()
                except OSError as error:
                    raise SecretError(f"{path}: cannot read {value} ({error.strerror})") from error
                except UnicodeDecodeError:
                    raise SecretError(f"{path}: {value} is not UTF-8 text") from None
            elif value in environ:
                resolved[base] = environ[value]
            else:
                raise SecretError(f"{path}: environment variable {value} is not set")
        else:
            resolved[key] = resolve_secrets(value, path, environ)
    return resolved
