"""The one configuration tree: a TOML file validated by pydantic, unknown keys rejected.

Every error names the key path and what is allowed. Numbers and strings are strict (TOML has types:
``steps = true`` or ``shots = "3"`` is a mistake to report, not to coerce); paths accept strings.
Sections so far: ``[model]`` (which artifact and backbone, on which device) and ``[demo]`` (the
synthetic end-to-end run behind ``linewatch demo``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """An unusable configuration file; the message lists every bad key with what is allowed."""


def _require_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number, not {kind}", {"kind": type(value).__name__})
    return value


Number = Annotated[float, BeforeValidator(_require_number)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    path: Path = Path("models/demo")
    models_dir: Path = Path("models")
    backbone: StrictStr = "ViT-B-16-plus-240"
    pretrained: StrictStr = "laion400m_e32"
    weights: Path | None = None
    device: StrictStr = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    target_frr: Number = Field(0.01, ge=0.0, lt=1.0)


class DemoSection(_Section):
    data_dir: Path = Path("data/demo")
    product: StrictStr = "demo part"
    train_normals: StrictInt = Field(16, ge=1)
    shots: StrictInt = Field(4, ge=1)
    steps: StrictInt = Field(200, ge=1)
    test_normals: StrictInt = Field(20, ge=1)
    test_defects_per_kind: StrictInt = Field(5, ge=1)
    seed: StrictInt = 0


class Config(_Section):
    model: ModelSection = ModelSection()
    demo: DemoSection = DemoSection()


def load_config(path: Path) -> Config:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())
        raise ConfigError(f"{path}: {problems}") from error
