"""The scoring server's version catalog, in process (the server around it is tested through real servers in
tests/pipeline/test_remote.py and tests/daemon/test_app_remote.py)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.backbone import Backbone
from linewatch.anople.files import model_version
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.serve.catalog import UnknownVersion, VersionCatalog
from tests.conftest import quick_artifact


@pytest.fixture
def models(tiny_backbone: Backbone, tmp_path: Path) -> tuple[Path, list[str]]:
    """A server's models folder holding two lines' versions, in the registry layout."""
    rng = np.random.default_rng(3)
    images = [SyntheticProduct(style_seed=4, width=96, height=80).normal(rng).image for _ in range(4)]
    root = tmp_path / "served"
    versions = []
    for line in ("press1", "press2"):
        made = quick_artifact(tmp_path / "made" / line / f"{line}-v1", tiny_backbone, images, "plate", 2, 0.2)
        shutil.copytree(made, root / line / made.name)
        versions.append(model_version(made))
    backbones = tmp_path / "made" / "press1" / "backbones"
    if backbones.is_dir():  # a random tiny backbone needs no file; a real one would be here
        shutil.copytree(backbones, root / "backbones")
    return root, versions


def test_concurrent_requests_for_a_new_version_load_it_once(models: tuple[Path, list[str]]) -> None:
    root, (first, second) = models
    catalog = VersionCatalog(root, "cpu", "fp32", max_loaded=4)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(catalog.get(first))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 4 and all(loaded is got[0] for loaded in got)  # one load: the same object for all
    assert catalog.get(second).version == second
    assert catalog.loaded() == [first, second]


def test_the_least_recently_used_version_goes_and_a_failed_load_leaves_no_trace(
    models: tuple[Path, list[str]],
) -> None:
    root, (first, second) = models
    catalog = VersionCatalog(root, "cpu", "fp32", max_loaded=1)
    catalog.get(first)
    catalog.get(second)
    assert catalog.loaded() == [second]
    with pytest.raises(UnknownVersion, match="not under"):
        catalog.get("press3-v1@0123456789")
    assert catalog.loaded() == [second]
    assert catalog.get(first).version == first  # loads again after it was dropped


def test_a_slow_load_does_not_hold_up_versions_already_loaded(
    models: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a full-size version takes seconds; the other lines' requests must not wait behind it."""
    root, (first, second) = models
    catalog = VersionCatalog(root, "cpu", "fp32", max_loaded=4)
    catalog.get(second)
    loading, release = threading.Event(), threading.Event()
    real_load = catalog._load

    def slow_load(version: str) -> object:
        loading.set()
        release.wait(10)
        return real_load(version)

    monkeypatch.setattr(catalog, "_load", slow_load)
    loader = threading.Thread(target=catalog.get, args=(first,))
    loader.start()
    assert loading.wait(10)
    answered = threading.Event()
    threading.Thread(target=lambda: (catalog.get(second), answered.set())).start()
    try:
        assert answered.wait(2.0), "a loaded version waited behind another version's load"
    finally:
        release.set()
        loader.join()
    assert catalog.loaded() == [second, first]
