"""AnoPLe hyperparameters: one frozen record, saved verbatim in every artifact.

Defaults follow ../shared/docs/anople.md; the ones marked there as linewatch choices are fields here
so that a changed choice is visible in the artifact that used it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

VIEWS_PER_IMAGE = 5  # the whole image and its four 2x-zoomed quadrants (anople.md; simulate.make_views)
MEMORY_FEATURES = ("prompted", "plain")
# How the terms become one score (model.fuse): "scaled_mean" puts each term in multiples of its mean on the
# calibration normals and averages them; "harmonic" is anople.md's harmonic mean of the raw terms.
FUSIONS = ("scaled_mean", "harmonic")
# Artifacts written before ``fusion`` was a setting fused with the harmonic mean; reading one keeps that.
FUSION_BEFORE_THE_SETTING = "harmonic"


@dataclass(frozen=True)
class AnoPLeSettings:
    """Prompt, decoder, scoring and training knobs of one AnoPLe model.

    ``decoder_width`` is a linewatch choice beyond anople.md: the small transformer block in each
    decoder branch runs at this bottleneck width, capped at the joint embedding width (then projects to
    the joint embedding), because a block
    at the full text width (640 for ViT-B-16-plus-240) costs about 2 GFLOP per image and branch, and
    every FLOP the scorer adds costs line throughput one for one.
    """

    n_text_ctx: int = 4
    n_visual_ctx: int = 4
    prompt_depth: int = 9
    decoder_fractions: tuple[float, ...] = (0.5, 0.75, 1.0)
    memory_fractions: tuple[float, ...] = (0.25, 2 / 3)
    # "prompted": the memory bank and the queries are patch tokens of the prompted tower (one pass per image);
    # "plain": of the frozen tower without prompts (a second pass up to the deepest memory block). anople.md
    # is silent; eval compares them (docs/model.md).
    memory_features: str = "prompted"
    decoder_width: int = 128
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 2.0
    n_views: int = 5
    latent_noise_sigma: float = 0.015
    anomaly_probability: float = 0.5
    tau_max: float = 100.0
    focal_gamma: float = 2.0
    blur_sigma_at_400px: float = 4.0
    # anople.md fuses with harmonic means, which the smaller term rules: at tau = 100 a confident global
    # probability (about 1e-4) makes the image score about twice that whatever the maps say, and a defect the
    # decoder misses stays dark even where the memory map flags it (issue 18, item 2). See model.fuse.
    fusion: str = "scaled_mean"
    harmonic_eps: float = 1e-6
    normal_template: str = "{ctx} {product}."
    abnormal_template: str = "{ctx} abnormal {product}."
    # training
    steps: int = 300
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    hflip: bool = False

    def __post_init__(self) -> None:
        for name in (
            "n_text_ctx",
            "n_visual_ctx",
            "prompt_depth",
            "decoder_width",
            "decoder_heads",
            "steps",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"AnoPLe setting {name} must be at least 1, got {getattr(self, name)}")
        if self.n_views != VIEWS_PER_IMAGE:
            raise ValueError(
                f"n_views must be {VIEWS_PER_IMAGE} (the whole image and its four quadrants, each with its own view "
                f"token); another view layout is not implemented, got {self.n_views}"
            )
        if self.memory_features not in MEMORY_FEATURES:
            raise ValueError(
                f"memory_features must be one of {', '.join(MEMORY_FEATURES)}, got {self.memory_features!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not 0.0 <= self.anomaly_probability <= 1.0:
            raise ValueError(f"anomaly_probability must be in [0, 1], got {self.anomaly_probability}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decoder_fractions"] = list(self.decoder_fractions)
        data["memory_fractions"] = list(self.memory_fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnoPLeSettings:
        """Rebuild from an artifact; unknown keys are an error so a newer artifact is not half-read."""
        known = {field.name for field in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AnoPLe settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        values.setdefault("fusion", FUSION_BEFORE_THE_SETTING)
        for key in ("decoder_fractions", "memory_fractions"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def layer_indices(depth: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Block indices (0-based, ascending, unique) at the given fractions of the depth.

    A fraction f picks the output of block round(f * depth) counted from 1, so 0.5, 0.75, 1.0 of 12
    blocks are blocks 6, 9 and 12 (indices 5, 8, 11); shallow test models collapse duplicates.
    """
    picked = {min(depth, max(1, round(fraction * depth))) - 1 for fraction in fractions}
    return tuple(sorted(picked))
