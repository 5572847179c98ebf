"""The frozen open_clip backbone: build it from explicit weights, never from the network.

Where weights come from is the caller's business (``linewatch.model.weights`` resolves pretrained tags to files
under ``models/``). This module only turns a model name plus either a safetensors file or an explicit
random-init seed into a frozen CLIP model, and fingerprints what it loaded so an artifact can later prove
it is paired with the same backbone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from safetensors.torch import load_file
from torch import nn

from linewatch.anople.files import RANDOM_WEIGHTS

TINY_MODEL = "linewatch-tiny"
_CONFIG_DIR = Path(__file__).with_name("model_configs")
_HASH_CHUNK = 1 << 20

# open_clip only knows the configs in its own folder; ours are added once, at import.
open_clip.add_model_config(_CONFIG_DIR)


class BackboneError(ValueError):
    """The backbone cannot be built as asked; the message names the model, file or setting at fault."""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild the exact same frozen backbone, as recorded in artifacts.

    ``pretrained`` is an open_clip pretrained tag, ``"none"`` for random weights (tests, benchmarks),
    or ``"file"`` when the weights came from an explicit path. ``weights_sha256`` is the sha256 of the
    safetensors file, or of the random state dict, so loading can detect a different backbone.
    """

    model_name: str
    pretrained: str
    weights_sha256: str
    init_seed: int | None = None
    force_quick_gelu: bool = False

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM_WEIGHTS


@dataclass
class Backbone:
    """A frozen CLIP model with its tokenizer and the preprocessing its weights were trained with."""

    spec: BackboneSpec
    clip: nn.Module
    tokenizer: SimpleTokenizer | HFTokenizer
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights do not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Hex sha256 over a module's tensors in key order; identifies random-init backbones."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_model_name(model_name: str) -> None:
    if model_name not in open_clip.list_models():
        vit_names = sorted(name for name in open_clip.list_models() if name.startswith("ViT"))
        raise BackboneError(
            f"unknown open_clip model {model_name!r}; ViT models known: {', '.join(vit_names[:12])}, ..."
            f" (and {TINY_MODEL!r} for tests)"
        )


def _freeze(clip: nn.Module) -> nn.Module:
    clip.eval()
    clip.requires_grad_(False)
    visual = getattr(clip, "visual", None)
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise BackboneError(f"AnoPLe needs an open_clip ViT image tower; got {type(visual).__name__}")
    if visual.attn_pool is not None or visual.pool_type != "tok":
        raise BackboneError("AnoPLe needs a ViT pooled on its class token (no attention pooling)")
    return clip


Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std) per RGB channel


def tag_normalisation(model_name: str, pretrained: str, defaults: Normalisation) -> Normalisation:
    """The input mean and std the weights of ``pretrained`` were trained with: the tag's own values from
    open_clip's table (no download), else ``defaults`` (the model config's, :func:`config_normalisation`).
    A model built without its tag carries only the config's: for tags with their own preprocessing
    (ViT-L-14 ``laion2b_s32b_b82k``: mean = std = 0.5) those would feed inputs about 1.9x off scale."""
    tag = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained not in (RANDOM_WEIGHTS, "file") else {}
    return _triple(tag.get("mean", defaults[0]), "mean"), _triple(tag.get("std", defaults[1]), "std")


def config_normalisation(clip: nn.Module) -> Normalisation:
    """The mean and std open_clip gave the model it built (its config's, or its tag's if built with one)."""
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    return _triple(preprocess["mean"], "mean"), _triple(preprocess["std"], "std")


def _triple(values: object, what: str) -> tuple[float, float, float]:
    if not isinstance(values, list | tuple) or len(values) != 3 or not all(isinstance(v, int | float) for v in values):
        raise BackboneError(f"input normalisation {what} must be three numbers, got {values!r}")
    if what == "std" and not all(v > 0 for v in values):
        raise BackboneError(f"input normalisation std must be positive, got {values!r}")
    return float(values[0]), float(values[1]), float(values[2])


def _finish(spec: BackboneSpec, clip: nn.Module, normalisation: Normalisation | None = None) -> Backbone:
    clip = _freeze(clip)
    mean, std = normalisation or tag_normalisation(spec.model_name, spec.pretrained, config_normalisation(clip))
    size = clip.visual.image_size
    return Backbone(
        spec=spec,
        clip=clip,
        tokenizer=open_clip.get_tokenizer(spec.model_name),
        input_size=int(size[0] if isinstance(size, tuple | list) else size),
        mean=mean,
        std=std,
    )


def load_random_backbone(model_name: str, seed: int) -> Backbone:
    """Random weights, reproducible from ``seed``. Only for tests, benchmarks and explicit demos.

    Callers must announce loudly that the result detects nothing meaningful on real parts.
    """
    _check_model_name(model_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.create_model(model_name, pretrained=None)
    logging.getLogger(__name__).warning(
        "backbone %s has RANDOM weights (seed %d): scores mean nothing on real parts", model_name, seed
    )
    spec = BackboneSpec(model_name, RANDOM_WEIGHTS, state_dict_sha256(clip), init_seed=seed)
    return _finish(spec, clip)


def load_backbone_file(
    model_name: str,
    weights: Path,
    *,
    pretrained: str = "file",
    force_quick_gelu: bool = False,
    normalisation: tuple[object, object] | None = None,
) -> Backbone:
    """Weights from a local safetensors file holding the full open_clip state dict.

    Pickle checkpoints are refused: anything a user can drop into a folder is loaded without code
    execution. ``linewatch model pull``/``import`` convert official checkpoints once. ``normalisation``
    (mean, std) as recorded beside the weights; without it, the tag's (:func:`tag_normalisation`).
    """
    _check_model_name(model_name)
    if weights.suffix != ".safetensors":
        raise BackboneError(
            f"{weights}: backbone weights must be a .safetensors file; convert a checkpoint once with "
            "'linewatch model import'"
        )
    if not weights.is_file():
        raise BackboneError(f"{weights}: backbone weights file not found (run 'linewatch model pull' first)")
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises several private error types
        raise BackboneError(f"{weights}: not a readable safetensors file ({error})") from error
    clip = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=force_quick_gelu)
    try:
        missing, unexpected = clip.load_state_dict(state, strict=False)
    except RuntimeError as error:  # same names, other shapes: another architecture
        raise BackboneError(f"{weights}: does not fit {model_name} ({str(error).splitlines()[-1].strip()})") from error
    if missing or unexpected:
        raise BackboneError(
            f"{weights}: does not fit {model_name} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    spec = BackboneSpec(model_name, pretrained, file_sha256(weights), force_quick_gelu=force_quick_gelu)
    recorded = None
    if normalisation is not None:
        recorded = (_triple(normalisation[0], "mean"), _triple(normalisation[1], "std"))
    return _finish(spec, clip, recorded)
