"""Backbone weights: random backbones, imported checkpoints, refusals, mismatch detection, listings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from linewatch.anople.artifact import ArtifactError, load_artifact
from linewatch.anople.backbone import (
    TINY_MODEL,
    Backbone,
    BackboneError,
    load_backbone_file,
    load_random_backbone,
    tag_normalisation,
)
from linewatch.anople.settings import AnoPLeSettings
from linewatch.model.training import ProductSource, train_artifact
from linewatch.model.weights import (
    backbone_loader,
    describe_artifact,
    describe_weights,
    import_checkpoint,
    list_artifacts,
    list_weights,
    load_backbone,
    read_weights_meta,
    weights_path,
)
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.scorer import Scorer
from tests.conftest import image_folder

TAG = "testtag"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_state(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.create_model(TINY_MODEL, pretrained=None)
    return {key: value.detach().clone() for key, value in clip.state_dict().items()}


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def saved_state() -> dict[str, torch.Tensor]:
    return _tiny_state(seed=11)


@pytest.fixture(scope="module")
def imported(saved_state, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(models_dir, checkpoint .pt, imported .safetensors)."""
    root = tmp_path_factory.mktemp("weights")
    checkpoint = root / "copied" / "tiny-checkpoint.pt"
    checkpoint.parent.mkdir()
    torch.save(saved_state, checkpoint)
    models_dir = root / "models"
    path = import_checkpoint(TINY_MODEL, TAG, checkpoint, models_dir)
    return models_dir, checkpoint, path


@pytest.fixture(scope="module")
def normals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    product = SyntheticProduct(style_seed=5, width=64, height=64)
    rng = np.random.default_rng(21)
    folder = image_folder(tmp_path_factory.mktemp("normals"), [product.normal(rng).image for _ in range(4)])
    return sorted(folder.glob("*.png"))


def _train(backbone: Backbone, normals: list[Path], out: Path) -> None:
    train_artifact(
        [ProductSource("part", normals)], backbone, AnoPLeSettings(steps=2), out, 2, 0, 0.25, log=lambda _l: None
    )


# ---- random backbones ------------------------------------------------------------------------------


def test_pretrained_none_gives_a_reproducible_random_backbone(tmp_path: Path) -> None:
    first = load_backbone(TINY_MODEL, "none", tmp_path, random_seed=3)
    again = load_backbone(TINY_MODEL, "none", tmp_path, random_seed=3)
    other = load_backbone(TINY_MODEL, "none", tmp_path, random_seed=4)
    assert first.spec.is_random and first.spec.pretrained == "none" and first.spec.init_seed == 3
    assert first.spec.weights_sha256 == again.spec.weights_sha256 != other.spec.weights_sha256
    assert _state_equal(first.clip.state_dict(), again.clip.state_dict())
    assert first.input_size == 224
    assert not any(p.requires_grad for p in first.clip.parameters())
    assert list(tmp_path.iterdir()) == []  # nothing looked up or written under models/


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="unknown open_clip model 'ViT-Nope'"):
        load_backbone("ViT-Nope", "none", tmp_path)


# ---- imported checkpoints --------------------------------------------------------------------------


def test_import_writes_safetensors_and_a_sidecar_with_the_right_sha256(imported, saved_state) -> None:
    models_dir, checkpoint, path = imported
    assert path == weights_path(models_dir, TINY_MODEL, TAG)
    assert path == models_dir / "backbones" / TINY_MODEL / f"{TAG}.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{TAG}.json", f"{TAG}.safetensors"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == _sha256(path)
    assert meta["model_name"] == TINY_MODEL and meta["pretrained"] == TAG
    assert meta["source"] == f"file:{checkpoint.name}"
    assert meta["force_quick_gelu"] is False
    assert _state_equal(load_file(str(path)), saved_state)


def test_load_backbone_by_tag_loads_the_imported_weights(imported, saved_state) -> None:
    models_dir, _, path = imported
    backbone = load_backbone(TINY_MODEL, TAG, models_dir)
    assert _state_equal(backbone.clip.state_dict(), saved_state)
    assert backbone.spec.pretrained == TAG and not backbone.spec.is_random
    assert backbone.spec.weights_sha256 == _sha256(path) == json.loads(path.with_suffix(".json").read_text())["sha256"]
    assert backbone.spec.init_seed is None


def test_explicit_safetensors_file_loads_the_same_weights(imported, saved_state, tmp_path: Path) -> None:
    _, _, path = imported
    backbone = load_backbone(TINY_MODEL, TAG, tmp_path, weights=path)
    assert _state_equal(backbone.clip.state_dict(), saved_state)
    assert backbone.spec.weights_sha256 == _sha256(path)


def test_explicit_non_safetensors_file_is_refused(imported, tmp_path: Path) -> None:
    _, checkpoint, _ = imported
    with pytest.raises(BackboneError) as caught:
        load_backbone(TINY_MODEL, TAG, tmp_path, weights=checkpoint)
    assert str(checkpoint) in str(caught.value)
    assert ".safetensors" in str(caught.value) and "linewatch model import" in str(caught.value)


def test_missing_weights_point_to_model_pull(tmp_path: Path) -> None:
    with pytest.raises(BackboneError) as caught:
        load_backbone(TINY_MODEL, "laion-none", tmp_path / "models")
    message = str(caught.value)
    assert f"linewatch model pull {TINY_MODEL} laion-none" in message
    assert str(weights_path(tmp_path / "models", TINY_MODEL, "laion-none")) in message


def test_missing_explicit_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(TINY_MODEL, TAG, tmp_path, weights=tmp_path / "gone.safetensors")


def test_corrupt_safetensors_file_is_a_clear_backbone_error(tmp_path: Path) -> None:
    path = weights_path(tmp_path, TINY_MODEL, "corrupt")
    path.parent.mkdir(parents=True)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BackboneError, match="not a readable safetensors file") as caught:
        load_backbone(TINY_MODEL, "corrupt", tmp_path)
    assert str(path) in str(caught.value)


def test_truncated_safetensors_file_is_a_clear_backbone_error(imported, tmp_path: Path) -> None:
    _, _, path = imported
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BackboneError, match="not a readable safetensors file"):
        load_backbone(TINY_MODEL, TAG, tmp_path, weights=truncated)


def test_corrupt_sidecar_is_a_clear_backbone_error(imported, tmp_path: Path) -> None:
    _, _, path = imported
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    copy.with_suffix(".json").write_text("{not json")
    with pytest.raises(BackboneError, match="corrupt sidecar JSON"):
        load_backbone(TINY_MODEL, TAG, tmp_path, weights=copy)


def test_safetensors_with_missing_tensors_is_refused(saved_state, tmp_path: Path) -> None:
    partial = {k: v.contiguous() for k, v in saved_state.items() if not k.startswith("visual.transformer.resblocks.1")}
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(BackboneError, match=f"does not fit {TINY_MODEL}"):
        load_backbone_file(TINY_MODEL, path)


def _other_architecture_state() -> dict[str, torch.Tensor]:
    """A CLIP like linewatch-tiny but half as wide: same tensor names, other shapes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = open_clip.model.CLIP(
            embed_dim=32,
            vision_cfg={"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        )
    return {key: value.contiguous() for key, value in clip.state_dict().items()}


def test_safetensors_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = weights_path(tmp_path, TINY_MODEL, "wide")
    path.parent.mkdir(parents=True)
    save_file(_other_architecture_state(), str(path))
    with pytest.raises(BackboneError, match="does not fit"):
        load_backbone(TINY_MODEL, "wide", tmp_path)


def test_import_of_a_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="checkpoint file not found"):
        import_checkpoint(TINY_MODEL, TAG, tmp_path / "nothing.pt", tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_import_of_a_corrupt_checkpoint_is_a_backbone_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_bytes(b"definitely not a torch checkpoint" * 8)
    with pytest.raises(BackboneError, match=r"broken\.pt"):
        import_checkpoint(TINY_MODEL, TAG, checkpoint, tmp_path / "models")


# ---- backbone mismatch between artifact and weights -------------------------------------------------


@pytest.fixture(scope="module")
def random_artifact(tiny_backbone: Backbone, normals, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "random-seed-0"
    _train(tiny_backbone, normals, out)
    return out


def test_artifact_loads_with_its_own_backbone(random_artifact: Path, tmp_path: Path) -> None:
    model, info = load_artifact(random_artifact, backbone_loader(tmp_path))
    assert model.backbone_spec.init_seed == 0 and model.backbone_spec.is_random
    assert list(info.products) == ["part"]


def test_backbone_of_another_random_seed_is_a_mismatch(random_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="backbone mismatch"):
        load_artifact(random_artifact, lambda spec: load_random_backbone(spec.model_name, 1))


def test_backbone_from_a_weights_file_is_a_mismatch(random_artifact: Path, imported) -> None:
    models_dir, _, _ = imported
    with pytest.raises(ArtifactError, match="backbone mismatch") as caught:
        load_artifact(random_artifact, lambda spec: load_backbone(TINY_MODEL, TAG, models_dir))
    assert str(random_artifact) in str(caught.value)


def test_replaced_weights_under_the_same_tag_are_a_mismatch(normals, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    for seed in (1, 2):
        checkpoint = tmp_path / f"ck{seed}.pt"
        torch.save(_tiny_state(seed), checkpoint)
        import_checkpoint(TINY_MODEL, "site", checkpoint, models_dir)
        if seed == 1:
            _train(load_backbone(TINY_MODEL, "site", models_dir), normals, models_dir / "line")
            assert Scorer.from_artifact(models_dir / "line", models_dir).products == ["part"]
    with pytest.raises(ArtifactError, match="backbone mismatch"):
        Scorer.from_artifact(models_dir / "line", models_dir)


def test_artifact_trained_on_an_explicit_file_needs_that_file(imported, normals, tmp_path: Path) -> None:
    _, _, path = imported
    _train(load_backbone_file(TINY_MODEL, path), normals, tmp_path / "from-file")
    with pytest.raises(BackboneError, match="--weights"):
        Scorer.from_artifact(tmp_path / "from-file", tmp_path)
    scorer = Scorer.from_artifact(tmp_path / "from-file", tmp_path, weights=path)
    assert scorer.backbone_spec.weights_sha256 == _sha256(path)


# ---- listings --------------------------------------------------------------------------------------


def test_list_weights_finds_the_imported_file(imported) -> None:
    models_dir, _, path = imported
    found = list_weights(models_dir)
    assert [(w.model_name, w.pretrained, w.path) for w in found] == [(TINY_MODEL, TAG, path)]
    assert found[0].meta["sha256"] == _sha256(path)
    described = describe_weights(path)
    assert described["size_bytes"] == path.stat().st_size and described["sha256"] == _sha256(path)


def test_list_weights_and_artifacts_of_an_empty_folder(tmp_path: Path) -> None:
    assert list_weights(tmp_path) == [] and list_artifacts(tmp_path) == []


def test_list_artifacts_finds_one_and_two_levels_down_but_not_hidden(random_artifact: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    for relative in ("line-a", "site/line-b", ".line-c.tmp123", "a/b/too-deep"):
        target = models_dir / relative
        target.mkdir(parents=True)
        for item in random_artifact.iterdir():
            (target / item.name).write_bytes(item.read_bytes())
    (models_dir / "no-manifest").mkdir()
    assert list_artifacts(models_dir) == [models_dir / "line-a", models_dir / "site" / "line-b"]
    described = describe_artifact(models_dir / "line-a")
    assert described["backbone"]["random_weights"] is True
    assert described["products"]["part"]["shots"] == 2
    assert described["products"]["part"]["calibration_source"] == "held-out normals"
    assert described["training"]["steps"] == 2


# ---- input normalisation (issue 18, item 3) ---------------------------------------------------------------


OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize(
    ("model_name", "tag"),
    [("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-B-16-plus-240", "laion400m_e32"), ("ViT-B-32", "openai")],
)
def test_a_tags_normalisation_is_open_clips_for_that_tag(model_name: str, tag: str) -> None:
    expected = open_clip.get_pretrained_cfg(model_name, tag)
    mean, std = tag_normalisation(model_name, tag, OPENAI)
    assert (mean, std) == (tuple(expected["mean"]), tuple(expected["std"]))
    if tag == "laion2b_s32b_b82k":
        assert mean == std == (0.5, 0.5, 0.5)  # not the model config's (OpenAI's) values


def test_import_records_the_tags_normalisation_and_loading_uses_the_record(
    saved_state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny model has no tag with its own preprocessing in open_clip's table: one is made up here."""
    checkpoint = tmp_path / "tiny.pt"
    torch.save(saved_state, checkpoint)
    real_cfg = open_clip.get_pretrained_cfg
    halves = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "hf_hub": "someone/tiny-halves/"}

    def with_halves(model_name: str, tag: str) -> dict[str, object]:
        return dict(halves) if (model_name, tag) == (TINY_MODEL, "halves") else real_cfg(model_name, tag)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", with_halves)
    path = import_checkpoint(TINY_MODEL, "halves", checkpoint, tmp_path / "models")
    meta = read_weights_meta(path)
    assert meta["preprocess"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert meta["fetched_from"] == "someone/tiny-halves/"
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", real_cfg)  # the record alone must carry it now
    backbone = load_backbone(TINY_MODEL, "halves", tmp_path / "models")
    assert (backbone.mean, backbone.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert load_backbone(TINY_MODEL, "halves", tmp_path / "models", weights=path).mean == (0.5, 0.5, 0.5)

    del meta["preprocess"]  # a sidecar from before the record: the tag's values (here the config's)
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert load_backbone(TINY_MODEL, "halves", tmp_path / "models").mean == OPENAI[0]
    meta["preprocess"] = {"mean": [0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(BackboneError, match="mean must be three numbers"):
        load_backbone(TINY_MODEL, "halves", tmp_path / "models")
