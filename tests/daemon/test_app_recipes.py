"""Recipe changeover at run time (issue 19): a camera changed over to another product of the model judges its
next frames as that product, echoes it on MQTT, records who did it, refuses a product the model does not
know, and stays changed over across a restart unless the config was edited since."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.backbone import TINY_MODEL, load_random_backbone
from linewatch.anople.settings import AnoPLeSettings
from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.daemon.recipes import SELECTIONS_FILE, ProductSelections, Selection, UnknownProduct
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.journal.records import action_from_payload, verdict_from_payload
from tests.conftest import image_folder
from tests.daemon.test_app import HEIGHT, PRODUCT, WIDTH, _wait_for, journal_records, mqtt_section, write_config
from tests.services.mosquitto import MosquittoBroker, MqttWatcher

FIRST, SECOND = "bracket A", "bracket B"


@pytest.fixture(scope="module")
def two_product_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model of two products (3 training steps: the products' names matter here, not the accuracy)."""
    root = tmp_path_factory.mktemp("two-products")
    sources = []
    for style, name in enumerate((FIRST, SECOND)):
        product = SyntheticProduct(style_seed=style, width=WIDTH, height=HEIGHT)
        rng = np.random.default_rng(style)
        folder = image_folder(root / f"normals-{style}", [product.normal(rng).image for _ in range(4)])
        sources.append(ProductSource(name, sorted(folder.glob("*.png"))))
    out = root / "model"
    train_artifact(sources, load_random_backbone(TINY_MODEL, seed=0), AnoPLeSettings(steps=3), out, shots=2, seed=0,
                   target_frr=0.1, log=lambda _line: None)  # fmt: skip
    return out


def _config(root: Path, model: Path, outputs: str) -> Path:
    path = write_config(root, model, cameras=2, fps=20.0, outputs=outputs)
    path.write_text(path.read_text().replace(f'product = "{PRODUCT}"', f'product = "{FIRST}"'))
    return path


def test_a_changeover_over_mqtt_applies_from_the_next_frame_and_survives_a_restart(
    two_product_model: Path, tmp_path: Path, broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    config = load_config(
        _config(tmp_path, two_product_model, f"{mqtt_section(broker, mqtt_prefix)}\n[http]\nport = 0\n")
    )
    with MqttWatcher(broker, f"{mqtt_prefix}/+/product") as watcher:
        app = App(config)
        app.start()
        try:
            for camera in ("cam0", "cam1"):
                watcher.wait_for(
                    lambda seen, c=camera: seen.topic == f"{mqtt_prefix}/{c}/product" and seen.text == FIRST
                )
            watcher.publish(f"{mqtt_prefix}/cam1/product/set/plc-7", json.dumps(SECOND))
            watcher.wait_for(lambda seen: seen.topic == f"{mqtt_prefix}/cam1/product" and seen.text == SECOND)
            watcher.publish(f"{mqtt_prefix}/cam1/product/set/plc-7", json.dumps({"product": "bracket C"}))
            assert app.outputs is not None and app.outputs.link is not None
            link = app.outputs.link
            _wait_for(lambda: link.stats.rejected.get(("product", "unknown_product")) == 1, 30)

            def cam1_products() -> list[str]:
                verdicts = [verdict_from_payload(r.payload) for r in journal_records(config.journal_path, "verdict")]
                return [v.product for v in sorted(verdicts, key=lambda v: v.seq) if v.camera == "cam1"]

            _wait_for(lambda: cam1_products().count(SECOND) >= 5, 60)
            thresholds = app.model_state()["thresholds"]
        finally:
            app.stop()
    products = cam1_products()
    switch = products.index(SECOND)
    assert set(products[:switch]) == {FIRST} and set(products[switch:]) == {SECOND}  # one changeover, in order
    verdicts = [verdict_from_payload(r.payload) for r in journal_records(config.journal_path, "verdict")]
    assert {v.product for v in verdicts if v.camera == "cam0"} == {FIRST}
    assert isinstance(thresholds, dict) and thresholds[FIRST] != thresholds[SECOND]
    assert all(v.threshold == thresholds[v.product] for v in verdicts)  # each judged as its own product
    actions = [action_from_payload(r.payload) for r in journal_records(config.journal_path, "action")]
    assert [(a.kind, a.by, a.camera, a.detail) for a in actions] == [
        ("product_selected", "mqtt: plc-7", "cam1", SECOND)
    ]

    again = App(config)  # a restart stays on the product the PLC selected
    again.start()
    try:
        assert again.products == {"cam0": FIRST, "cam1": SECOND}
        assert again.cameras["cam1"].reader.product == SECOND
        with pytest.raises(UnknownProduct, match="knows no product 'bracket C'"):
            again.select_product("cam0", "bracket C", "test")
        with pytest.raises(UnknownProduct, match="no camera 'cam9'"):
            again.select_product("cam9", FIRST, "test")
    finally:
        again.stop()


def test_a_remembered_choice_yields_to_an_edited_config_and_to_a_model_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / SELECTIONS_FILE
    ProductSelections(path).remember("cam1", Selection(SECOND, FIRST, "web: erin", "2026-12-04T09:00:00+00:00"))
    reloaded = ProductSelections(path)
    assert reloaded.start_product("cam1", FIRST, [FIRST, SECOND]) == SECOND
    assert reloaded.start_product("cam1", "bracket Z", [FIRST, SECOND, "bracket Z"]) == "bracket Z"  # config edited
    assert reloaded.start_product("cam1", FIRST, [FIRST]) == FIRST  # the model lost B
    assert reloaded.start_product("cam0", FIRST, [FIRST, SECOND]) == FIRST  # never changed over
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert ProductSelections(path).start_product("cam1", FIRST, [FIRST, SECOND]) == FIRST
    assert "unreadable" in caplog.text


def test_a_camera_whose_product_the_model_lacks_is_named_at_start(two_product_model: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, two_product_model, "[mqtt]\nenabled = false\n\n[http]\nport = 0\n")
    path.write_text(path.read_text().replace(f'product = "{FIRST}"', 'product = "bracket Q"', 1))
    app = App(load_config(path))
    try:
        with pytest.raises(ValueError, match=r"cam0: product 'bracket Q' is not in the model"):
            app.start()
    finally:
        app.stop()
