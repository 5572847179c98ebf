"""Triton model repository export: layout and config, version numbers, the exported files equal PyTorch's
RemoteGraph with a dynamic batch axis (onnxruntime and OpenVINO), the parity gate, bad arguments, the CLI."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from linewatch.anople.artifact import ArtifactInfo, load_artifact
from linewatch.anople.backbone import Backbone
from linewatch.anople.graph import NO_SHOT_LEFT_OUT, RemoteGraph, ScoringGraph
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings
from linewatch.cli.main import build_parser
from linewatch.model import export, triton_repository
from linewatch.model.export import IR_FILE, ExportError
from linewatch.model.remote_protocol import DEFAULT_MODEL_NAME, decode_versions
from linewatch.model.training import ProductSource, train_artifact
from linewatch.model.triton_repository import (
    CONFIG_FILE,
    ONNX_FILE,
    TritonExport,
    TritonSettings,
    export_triton,
    parse_config,
    render_config,
    repository_versions,
)
from linewatch.retrain.versions import model_version
from tests.cli.test_main import Run, model, models_dir, run, workspace  # noqa: F401
from tests.conftest import image_folder, synthetic_normals

V1 = "model@0123456789"
V2 = "model-b@abcdef0123"


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def quick_gate() -> Iterator[None]:
    """The gate's 200 images per product are tests/model/test_export.py's subject; 24 keep an export here
    to about a second while it still runs every product's normals and simulated anomalies."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "MIN_PARITY_IMAGES", 24)
        yield


@pytest.fixture(scope="module")
def two_products(tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as `linewatch train` writes it, of two products with 3 shots and 2 held-out normals each
    (3 training steps: what is tested is parity, not accuracy)."""
    root = tmp_path_factory.mktemp("triton")
    sources = [
        ProductSource(product, sorted(image_folder(root / product, synthetic_normals(style, 5, style)).glob("*.png")))
        for product, style in (("plate", 3), ("screw", 4))
    ]
    settings = AnoPLeSettings(steps=3)
    train_artifact(sources, tiny_backbone, settings, root / "model", shots=3, seed=0, target_frr=0.05, log=quiet)
    return root / "model"


@pytest.fixture(scope="module")
def loaded(two_products: Path, tiny_backbone: Backbone) -> tuple[AnoPLe, ArtifactInfo]:
    return load_artifact(two_products, lambda _spec: tiny_backbone)


@pytest.fixture(scope="module")
def first(
    two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path_factory: pytest.TempPathFactory
) -> TritonExport:
    """Version V1 exported with the default settings into a new repository. Copy it before changing it."""
    anople, info = loaded
    return export_triton(two_products, anople, info, V1, tmp_path_factory.mktemp("repository"), log=quiet)


def mixed_batch(anople: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]) -> list[np.ndarray]:
    """Five frames as a line PC sends them (resized, uint8), of both products, one with a shot left out."""
    size = anople.input_size
    frames = [*normal_images[8:11], *defect_images[:2]]
    images = np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])
    ids = np.array([[0], [1], [1], [0], [1]], dtype=np.int64)
    left_out = np.array([[NO_SHOT_LEFT_OUT], [NO_SHOT_LEFT_OUT], [2], [1], [NO_SHOT_LEFT_OUT]], dtype=np.int64)
    return [images, ids, left_out]


def assert_equals_pytorch(anople: AnoPLe, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
    """Scores and probabilities within 1e-5; the grid, in multiples of the normals' mean, within 1e-5 of its size."""
    remote = RemoteGraph(ScoringGraph(anople)).eval()
    with torch.inference_mode():
        expected = [t.numpy() for t in remote(*(torch.from_numpy(a) for a in inputs))]
    batch = inputs[0].shape[0]
    assert [o.shape for o in outputs] == [(batch, 1), (batch, 1), (batch, anople.grid, anople.grid)]
    assert all(o.dtype == np.float32 for o in outputs)
    np.testing.assert_allclose(outputs[0], expected[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs[1], expected[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs[2], expected[2], rtol=1e-5, atol=1e-5)


def test_the_repository_holds_a_config_triton_reads_and_version_1(
    first: TritonExport, loaded: tuple[AnoPLe, ArtifactInfo]
) -> None:
    anople, _ = loaded
    size, grid = anople.input_size, anople.grid
    model_dir = first.model_dir
    assert model_dir.name == DEFAULT_MODEL_NAME and first.number == 1 and first.versions == {1: V1}
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", CONFIG_FILE]  # no staging left behind
    assert [p.name for p in (model_dir / "1").iterdir()] == [ONNX_FILE]
    text = (model_dir / CONFIG_FILE).read_text()
    config = parse_config(text)
    assert config["name"] == [DEFAULT_MODEL_NAME] and config["backend"] == ["onnxruntime"]
    assert config["max_batch_size"] == [64] and config["version_policy"] == [{"all": [{}]}]
    assert config["dynamic_batching"] == [
        {
            "max_queue_delay_microseconds": [2000],
            "default_queue_policy": [{"timeout_action": ["REJECT"], "allow_timeout_override": ["true"]}],
        }
    ]
    assert config["instance_group"] == [{"count": [1], "kind": ["KIND_GPU"]}]
    assert {t["name"][0]: (t["data_type"][0], t["dims"]) for t in config["input"]} == {
        "images": ("TYPE_UINT8", [size, size, 3]),
        "product_ids": ("TYPE_INT64", [1]),
        "left_out_shot": ("TYPE_INT64", [1]),
    }
    assert {t["name"][0]: (t["data_type"][0], t["dims"]) for t in config["output"]} == {
        "image_score": ("TYPE_FP32", [1]),
        "global_probability": ("TYPE_FP32", [1]),
        "fused_grid": ("TYPE_FP32", [grid, grid]),
    }
    (parameter,) = config["parameters"]
    assert parameter["key"] == ["linewatch_versions"]
    assert decode_versions(parameter["value"][0]["string_value"][0]) == {1: V1}
    assert 'value { string_value: "{\\"1\\": \\"model@0123456789\\"}" }' in text  # JSON quotes escaped
    assert repository_versions(model_dir) == {1: V1}


def test_the_configs_parse_as_tritons_own_model_config(first: TritonExport) -> None:
    """Triton's schema, from the client library's copy of model_config.proto: a field name or an enum value
    wrong here would fail there too, where the server reads the file."""
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    config = text_format.Parse((first.model_dir / CONFIG_FILE).read_text(), model_config.ModelConfig())
    assert config.backend == "onnxruntime" and config.max_batch_size == 64 and config.version_policy.HasField("all")
    assert [model_config.DataType.Name(i.data_type) for i in config.input] == ["TYPE_UINT8", "TYPE_INT64", "TYPE_INT64"]
    assert config.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_GPU
    assert decode_versions(config.parameters["linewatch_versions"].string_value) == {1: V1}
    openvino = render_config("cpu_model", TritonSettings("openvino"), 224, 14, {1: V1, 3: 'odd"name\\@x'})
    config = text_format.Parse(openvino, model_config.ModelConfig())
    assert config.instance_group[0].kind == model_config.ModelInstanceGroup.KIND_CPU
    assert config.parameters["ENABLE_BATCH_PADDING"].string_value == "YES"
    assert decode_versions(config.parameters["linewatch_versions"].string_value) == {1: V1, 3: 'odd"name\\@x'}


def test_the_onnx_file_equals_pytorch_with_a_dynamic_batch_axis(
    first: TritonExport,
    loaded: tuple[AnoPLe, ArtifactInfo],
    normal_images: list[np.ndarray],
    defect_images: list[np.ndarray],
) -> None:
    import onnx
    import onnxruntime

    anople, _ = loaded
    path = first.model_dir / "1" / ONNX_FILE
    graph = onnx.load(str(path)).graph
    shapes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in (*graph.input, *graph.output)
    }
    assert shapes["images"] == ["batch", anople.input_size, anople.input_size, 3]
    assert shapes["product_ids"] == ["batch", 1] and shapes["fused_grid"][1:] == [anople.grid, anople.grid]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = mixed_batch(anople, normal_images, defect_images)
    for batch in (1, 5):
        part = [a[:batch] for a in inputs]
        feed = dict(zip(("images", "product_ids", "left_out_shot"), part, strict=True))
        assert_equals_pytorch(anople, part, session.run(None, feed))


def test_another_version_gets_the_next_number_and_an_exported_one_keeps_its_own(
    first: TritonExport, two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path: Path
) -> None:
    anople, info = loaded
    shutil.copytree(first.model_dir.parent, tmp_path / "repo")
    model_dir = tmp_path / "repo" / DEFAULT_MODEL_NAME
    second = export_triton(two_products, anople, info, V2, tmp_path / "repo", log=quiet)
    assert second.number == 2 and second.versions == {1: V1, 2: V2}
    assert (model_dir / "1" / ONNX_FILE).is_file() and (model_dir / "2" / ONNX_FILE).is_file()
    folders = {name: (model_dir / name).stat().st_ino for name in ("1", "2")}
    again = export_triton(
        two_products, anople, info, V1, tmp_path / "repo", settings=TritonSettings(max_batch=8), log=quiet
    )
    assert again.number == 1 and repository_versions(model_dir) == {1: V1, 2: V2}
    assert (model_dir / "1").stat().st_ino != folders["1"] and (model_dir / "2").stat().st_ino == folders["2"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", CONFIG_FILE]
    assert parse_config((model_dir / CONFIG_FILE).read_text())["max_batch_size"] == [8]  # the latest settings


def test_the_openvino_ir_equals_pytorch_with_a_dynamic_batch_axis(
    two_products: Path,
    loaded: tuple[AnoPLe, ArtifactInfo],
    normal_images: list[np.ndarray],
    defect_images: list[np.ndarray],
    tmp_path: Path,
) -> None:
    from linewatch.model.openvino_graph import ov

    anople, info = loaded
    result = export_triton(two_products, anople, info, V1, tmp_path, "cpu_model", TritonSettings("openvino"), quiet)
    folder = tmp_path / "cpu_model" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", IR_FILE] and result.backend == "openvino"
    config = parse_config((tmp_path / "cpu_model" / CONFIG_FILE).read_text())
    assert config["backend"] == ["openvino"] and config["instance_group"] == [{"count": [1], "kind": ["KIND_CPU"]}]
    parameters = {p["key"][0]: p["value"][0]["string_value"][0] for p in config["parameters"]}
    assert parameters["ENABLE_BATCH_PADDING"] == "YES" and decode_versions(parameters["linewatch_versions"]) == {1: V1}
    ir = ov.Core().read_model(str(folder / IR_FILE))
    size = anople.input_size
    assert [str(port.get_partial_shape()) for port in ir.inputs] == [f"[?,{size},{size},3]", "[?,1]", "[?,1]"]
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = mixed_batch(anople, normal_images, defect_images)
    for batch in (1, 5):
        part = [a[:batch] for a in inputs]
        results = compiled.create_infer_request().infer(part)
        assert_equals_pytorch(
            anople, part, [results[name] for name in ("image_score", "global_probability", "fused_grid")]
        )


def test_a_file_that_misses_the_tolerance_is_refused_and_nothing_is_written(
    two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_repository, "FP32_TOLERANCE", 1e-12)  # float rounding alone now fails it
    anople, info = loaded
    with pytest.raises(ExportError) as refused:
        export_triton(two_products, anople, info, V1, tmp_path / "repo", log=quiet)
    assert re.search(
        r"Triton export refused, onnxruntime fp32 vs PyTorch on \d+ images: worst difference \S+ on the "
        r"(image score|grid) of '(plate|screw)' (calibration normal|simulated anomaly) \d+ \(needs <= 1e-12\)",
        str(refused.value),
    ), refused.value
    assert not (tmp_path / "repo").exists()


def test_a_model_of_another_backend_or_shape_is_refused(
    first: TritonExport, two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path: Path
) -> None:
    anople, info = loaded
    shutil.copytree(first.model_dir.parent, tmp_path / "repo")
    config = (tmp_path / "repo" / DEFAULT_MODEL_NAME / CONFIG_FILE).read_bytes()
    with pytest.raises(ExportError, match="its versions have another backend"):
        export_triton(two_products, anople, info, V2, tmp_path / "repo", settings=TritonSettings("openvino"), log=quiet)
    assert (tmp_path / "repo" / DEFAULT_MODEL_NAME / CONFIG_FILE).read_bytes() == config
    assert sorted(p.name for p in (tmp_path / "repo" / DEFAULT_MODEL_NAME).iterdir()) == ["1", CONFIG_FILE]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "tensorrt"}, "Triton backend must be one of onnxruntime, openvino, got 'tensorrt'"),
        ({"max_batch": 0}, "max batch must be at least 1, got 0"),
        ({"instances": 0}, "instances must be at least 1, got 0"),
        ({"queue_delay_us": -1}, "queue delay .microseconds. must be at least 0, got -1"),
        ({"instance_kind": "tpu"}, "instance kind must be one of cpu, gpu, got 'tpu'"),
        ({"backend": "openvino", "instance_kind": "gpu"}, "OpenVINO backend runs on the CPU only"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        TritonSettings(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("version", "name", "message"),
    [("model", DEFAULT_MODEL_NAME, "NAME@HASH, got 'model'"), (V1, "../up", "plain folder name, got '../up'")],
)
def test_a_bad_version_id_or_model_name_is_named_before_anything_runs(
    two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path: Path, version: str, name: str, message: str
) -> None:
    anople, info = loaded
    with pytest.raises(ExportError, match=message):
        export_triton(two_products, anople, info, version, tmp_path / "repo", name, log=quiet)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("config", ['name: "linewatch"\nbackend: "onnxruntime"\n', "input [ {", "{ }"])
def test_a_config_linewatch_did_not_write_is_left_alone(
    two_products: Path, loaded: tuple[AnoPLe, ArtifactInfo], tmp_path: Path, config: str
) -> None:
    anople, info = loaded
    (tmp_path / DEFAULT_MODEL_NAME).mkdir()
    (tmp_path / DEFAULT_MODEL_NAME / CONFIG_FILE).write_text(config)
    with pytest.raises(ExportError, match=r"not a config that linewatch wrote .*; export to another --triton-model"):
        export_triton(two_products, anople, info, V1, tmp_path, log=quiet)
    assert [p.name for p in (tmp_path / DEFAULT_MODEL_NAME).iterdir()] == [CONFIG_FILE]


def test_the_cli_exports_the_model_as_its_registry_version(
    run: Run,  # noqa: F811
    model: Path,  # noqa: F811
    models_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repo"
    code, out, err = run(
        "model", "export", model, "--format", "triton", "--repository", repository, "--triton-model", "press3",
        "--instance-kind", "cpu", "--max-batch", "16", "--models-dir", models_dir,
    )  # fmt: skip
    assert code == 0, err
    version = model_version(model)
    assert repository_versions(repository / "press3") == {1: version}
    assert f"{version} as Triton version 1 (onnxruntime)" in out
    assert f"--model-repository {repository} --model-control-mode explicit --load-model press3" in out
    config = parse_config((repository / "press3" / CONFIG_FILE).read_text())
    assert config["max_batch_size"] == [16] and config["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert "RANDOM" in err  # the random backbone is announced here too


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "--format triton needs --repository DIR"),
        (["--repository", "REPO", "--precision", "int8"], "a Triton export is fp32"),
        (["--repository", "REPO", "--backend", "openvino", "--instance-kind", "gpu"], "CPU only"),
        (["--repository", "REPO", "--max-batch", "0"], "must be at least 1, got 0"),
        (["--repository", "REPO", "--backend", "tensorrt"], "invalid choice: 'tensorrt'"),
    ],
)
def test_the_cli_names_a_bad_argument(
    run: Run,  # noqa: F811
    model: Path,  # noqa: F811
    tmp_path: Path,
    arguments: list[str],
    message: str,
) -> None:
    code, out, err = run(
        "model", "export", model, "--format", "triton", *(a.replace("REPO", str(tmp_path / "r")) for a in arguments)
    )
    assert code == 2 and out == "" and message in err and "linewatch: error:" in err
    assert not (tmp_path / "r").exists()


def test_the_cli_defaults_are_the_library_defaults() -> None:
    args = build_parser().parse_args(["model", "export", "m", "--format", "triton", "--repository", "r"])
    cli = TritonSettings(args.backend, args.max_batch, args.instances, args.instance_kind, args.queue_delay_us)
    assert cli == TritonSettings()
