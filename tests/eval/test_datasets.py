"""Dataset layouts read into splits: MVTec-AD, VisA (1cls.csv) and plain folders, plus every broken tree named."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from linewatch.eval.datasets import (
    DATASET_KINDS,
    DatasetError,
    TestSample,
    prompt_name,
    read_dataset,
)

LOGGER = "linewatch.eval.datasets"
VISA_HEADER = "object,split,label,image,mask"


def touch(path: Path) -> Path:
    """This module never decodes images, so empty files with the right names are enough."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def mvtec_class(root: Path, name: str, defects: dict[str, int] | None = None, train: int = 3, good: int = 2) -> Path:
    """One MVTec class; every defect image gets its ``<stem>_mask.png`` unless removed afterwards."""
    cls = root / name
    for i in range(train):
        touch(cls / "train" / "good" / f"{i:03d}.png")
    for i in range(good):
        touch(cls / "test" / "good" / f"{i:03d}.png")
    for defect, count in (defects if defects is not None else {"crack": 2}).items():
        for i in range(count):
            touch(cls / "test" / defect / f"{i:03d}.png")
            touch(cls / "ground_truth" / defect / f"{i:03d}_mask.png")
    return cls


def visa_tree(root: Path, rows: list[str], header: str = VISA_HEADER) -> Path:
    """Write 1cls.csv with ``rows`` and create every image and mask it names."""
    for row in rows:
        for value in row.split(",")[3:]:
            if value:
                touch(root / value)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join([header, *rows]) + "\n")
    return csv_path


def visa_rows(name: str, train: int = 2, normal: int = 1, anomaly: int = 1) -> list[str]:
    base = f"{name}/Data"
    rows = [f"{name},train,normal,{base}/Images/Normal/t{i}.JPG," for i in range(train)]
    rows += [f"{name},test,normal,{base}/Images/Normal/n{i}.JPG," for i in range(normal)]
    rows += [
        f"{name},test,anomaly,{base}/Images/Anomaly/a{i}.JPG,{base}/Masks/Anomaly/a{i}.png" for i in range(anomaly)
    ]
    return rows


def folder_tree(root: Path, masks: bool = True) -> Path:
    touch(root / "good" / "b.jpg")
    touch(root / "good" / "a.jpg")
    touch(root / "scratch" / "s1.jpg")
    touch(root / "dent" / "d1.png")
    if masks:
        touch(root / "masks" / "scratch" / "s1.png")  # a .png mask for a .jpg image
        touch(root / "masks" / "dent" / "d1.png")
    return root


def error(kind: str, root: Path, classes: list[str] | None = None, names: dict[str, str] | None = None) -> str:
    with pytest.raises(DatasetError) as caught:
        read_dataset(kind, root, classes, names)
    return str(caught.value)


# --- MVTec-AD ---


def test_mvtec_splits_labels_masks_and_order(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "metal_nut", {"scratch": 2, "bent": 1})
    mvtec_class(tmp_path, "bottle")
    touch(tmp_path / "license.txt")  # the download ships this next to the classes; it is not a class
    splits = read_dataset("mvtec", tmp_path)
    assert [s.name for s in splits] == ["bottle", "metal_nut"]
    nut = splits[1]
    assert nut.prompt_name == "metal nut" and nut.has_masks
    assert nut.train_normals == tuple(tmp_path / "metal_nut" / "train" / "good" / f"{i:03d}.png" for i in range(3))
    assert [(s.defect_type, s.path.name, s.label) for s in nut.test] == [
        ("bent", "000.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("scratch", "000.png", 1),
        ("scratch", "001.png", 1),
    ]
    truth = tmp_path / "metal_nut" / "ground_truth"
    expected = [truth / s.defect_type / f"{s.path.stem}_mask.png" if s.label else None for s in nut.test]
    assert [s.mask for s in nut.test] == expected


def test_mvtec_class_selection_keeps_asked_order(tmp_path: Path) -> None:
    for name in ("bottle", "cable", "zipper"):
        mvtec_class(tmp_path, name)
    splits = read_dataset("mvtec", tmp_path, classes=["zipper", "bottle", "zipper"])
    assert [s.name for s in splits] == ["zipper", "bottle"]


def test_mvtec_unknown_class_is_named_with_the_available_ones(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "bottle")
    mvtec_class(tmp_path, "cable")
    (tmp_path / "half" / "test").mkdir(parents=True)  # no train/good: not a class
    message = error("mvtec", tmp_path, classes=["bottle", "screw", "half"])
    assert "screw" in message and "half" in message and "bottle, cable" in message


def test_mvtec_missing_mask_names_image_and_expected_mask(tmp_path: Path) -> None:
    cls = mvtec_class(tmp_path, "bottle", {"broken": 2})
    (cls / "ground_truth" / "broken" / "001_mask.png").unlink()
    message = error("mvtec", tmp_path)
    assert str(cls / "test" / "broken" / "001.png") in message
    assert str(cls / "ground_truth" / "broken" / "001_mask.png") in message


def test_mvtec_class_without_test_images(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "bottle")
    mvtec_class(tmp_path, "grid", defects={}, good=0)
    message = error("mvtec", tmp_path)
    assert "'grid'" in message and "no test images" in message


def test_mvtec_class_without_train_normals(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "tile", train=0)
    (tmp_path / "tile" / "train" / "good").mkdir(parents=True)
    message = error("mvtec", tmp_path)
    assert "'tile'" in message and "no train normal" in message


def test_class_without_anomalies_cannot_be_evaluated(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "wood", defects={})
    message = error("mvtec", tmp_path)
    assert "'wood'" in message and "no anomalous test images" in message


def test_root_without_classes(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    message = error("mvtec", tmp_path)
    assert str(tmp_path) in message and "no classes found" in message


# --- common rules ---


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_missing_root(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "nowhere"
    assert error(kind, missing) == f"dataset root not found: {missing}"


def test_unknown_kind_lists_the_kinds(tmp_path: Path) -> None:
    message = error("coco", tmp_path)
    assert "'coco'" in message and "mvtec, visa, folder" in message


def test_empty_class_selection(tmp_path: Path) -> None:
    mvtec_class(tmp_path, "bottle")
    assert "empty class selection" in error("mvtec", tmp_path, classes=[])


def test_non_images_skipped_with_one_warning_per_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cls = mvtec_class(tmp_path, "bottle")
    touch(cls / "train" / "good" / "Thumbs.db")
    touch(cls / "train" / "good" / "notes.txt")
    touch(cls / "train" / "good" / ".DS_Store")  # hidden: silent
    touch(cls / "test" / "crack" / "readme.txt")
    touch(cls / "test" / "good" / "._000.png")  # macOS resource fork copy: hidden, silent
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (split,) = read_dataset("mvtec", tmp_path)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2
    assert any(str(cls / "train" / "good") in m and "skipped 2 " in m for m in messages)
    assert any(str(cls / "test" / "crack") in m and "skipped 1 " in m for m in messages)
    assert all(p.suffix == ".png" for p in split.train_normals) and len(split.train_normals) == 3
    assert len(split.test) == 4


def test_upper_case_suffixes_are_images(tmp_path: Path) -> None:
    cls = mvtec_class(tmp_path, "bottle")
    touch(cls / "train" / "good" / "extra.PNG")
    (split,) = read_dataset("mvtec", tmp_path)
    assert cls / "train" / "good" / "extra.PNG" in split.train_normals


# --- prompt names ---


@pytest.mark.parametrize(
    ("class_id", "words"),
    [
        ("metal_nut", "metal nut"),
        ("pcb1", "printed circuit board"),
        ("pcb4", "printed circuit board"),
        ("macaroni2", "macaroni"),
        ("chewinggum", "chewing gum"),
        ("pipe_fryum", "pipe fryum"),
        ("capsules", "capsules"),
        ("bottle", "bottle"),
        ("gear-wheel", "gear wheel"),
    ],
)
def test_prompt_name_table_and_fallback(class_id: str, words: str) -> None:
    assert prompt_name(class_id) == words


def test_prompt_name_overrides_win(tmp_path: Path) -> None:
    assert prompt_name("pcb1", {"pcb1": "circuit board"}) == "circuit board"
    assert prompt_name("pcb2", {"pcb1": "circuit board"}) == "printed circuit board"
    mvtec_class(tmp_path, "metal_nut")
    (split,) = read_dataset("mvtec", tmp_path, names={"metal_nut": "hex nut"})
    assert split.prompt_name == "hex nut"


def test_test_sample_is_not_collected_by_pytest() -> None:
    assert TestSample.__test__ is False


# --- VisA ---


def test_visa_splits(tmp_path: Path) -> None:
    visa_tree(tmp_path, visa_rows("pcb1", train=3, normal=2, anomaly=2) + visa_rows("candle"))
    splits = read_dataset("visa", tmp_path)
    assert [s.name for s in splits] == ["candle", "pcb1"]
    pcb = splits[1]
    assert pcb.prompt_name == "printed circuit board" and pcb.has_masks
    assert pcb.train_normals == tuple(tmp_path / f"pcb1/Data/Images/Normal/t{i}.JPG" for i in range(3))
    assert [(s.defect_type, s.path.name, s.label) for s in pcb.test] == [
        ("anomaly", "a0.JPG", 1),
        ("anomaly", "a1.JPG", 1),
        ("good", "n0.JPG", 0),
        ("good", "n1.JPG", 0),
    ]
    assert pcb.test[0].mask == tmp_path / "pcb1/Data/Masks/Anomaly/a0.png"
    assert pcb.test[2].mask is None
    assert [s.name for s in read_dataset("visa", tmp_path, classes=["pcb1"])] == ["pcb1"]


def test_visa_unknown_class(tmp_path: Path) -> None:
    visa_tree(tmp_path, visa_rows("candle") + visa_rows("fryum"))
    message = error("visa", tmp_path, classes=["pcb9"])
    assert "pcb9" in message and "candle, fryum" in message


def test_visa_missing_csv(tmp_path: Path) -> None:
    message = error("visa", tmp_path)
    assert str(tmp_path / "split_csv" / "1cls.csv") in message


@pytest.mark.parametrize("column", ["object", "split", "label", "image", "mask"])
def test_visa_csv_missing_column(tmp_path: Path, column: str) -> None:
    header = ",".join(c for c in VISA_HEADER.split(",") if c != column)
    csv_path = visa_tree(tmp_path, [], header=header)
    message = error("visa", tmp_path)
    assert str(csv_path) in message and f"missing column(s) {column} " in message


def test_visa_csv_with_bom_and_spaces_in_header(tmp_path: Path) -> None:
    csv_path = visa_tree(tmp_path, visa_rows("cashew"))
    text = csv_path.read_text().replace(VISA_HEADER, "object, split, label, image, mask")
    csv_path.write_text("\ufeff" + text, encoding="utf-8")
    assert [s.name for s in read_dataset("visa", tmp_path)] == ["cashew"]


def test_visa_anomaly_with_empty_mask(tmp_path: Path) -> None:
    rows = [*visa_rows("fryum"), "fryum,test,anomaly,fryum/Data/Images/Anomaly/x.JPG,"]
    visa_tree(tmp_path, rows)
    message = error("visa", tmp_path)
    assert str(tmp_path / "fryum/Data/Images/Anomaly/x.JPG") in message and "empty mask" in message


def test_visa_anomaly_with_missing_mask_file(tmp_path: Path) -> None:
    visa_tree(tmp_path, visa_rows("fryum", anomaly=2))
    (tmp_path / "fryum/Data/Masks/Anomaly/a1.png").unlink()
    message = error("visa", tmp_path)
    assert str(tmp_path / "fryum/Data/Images/Anomaly/a1.JPG") in message
    assert str(tmp_path / "fryum/Data/Masks/Anomaly/a1.png") in message


def test_visa_missing_images_named_first_few_and_counted(tmp_path: Path) -> None:
    visa_tree(tmp_path, visa_rows("candle", train=6))
    for i in range(5):
        (tmp_path / f"candle/Data/Images/Normal/t{i}.JPG").unlink()
    message = error("visa", tmp_path)
    assert "5 listed image(s) not found" in message and "and 2 more" in message
    assert str(tmp_path / "candle/Data/Images/Normal/t0.JPG") in message
    assert str(tmp_path / "candle/Data/Images/Normal/t4.JPG") not in message


def test_visa_missing_images_of_unselected_classes_do_not_matter(tmp_path: Path) -> None:
    visa_tree(tmp_path, visa_rows("candle") + visa_rows("cashew"))
    (tmp_path / "cashew/Data/Images/Normal/t0.JPG").unlink()
    assert [s.name for s in read_dataset("visa", tmp_path, classes=["candle"])] == ["candle"]


def test_visa_bad_label_names_the_line(tmp_path: Path) -> None:
    csv_path = visa_tree(tmp_path, [*visa_rows("candle"), "candle,test,defect,candle/x.JPG,"])
    message = error("visa", tmp_path)
    assert f"{csv_path} line 6" in message and "'defect'" in message


# --- plain folder ---


def test_folder_with_masks(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "gear-wheel")
    (split,) = read_dataset("folder", root)
    assert split.name == "gear-wheel" and split.prompt_name == "gear wheel" and split.has_masks
    assert split.train_normals == (root / "good" / "a.jpg", root / "good" / "b.jpg")
    assert split.test == (
        TestSample(root / "dent" / "d1.png", 1, "dent", root / "masks" / "dent" / "d1.png"),
        TestSample(root / "good" / "a.jpg", 0, "good", None),
        TestSample(root / "good" / "b.jpg", 0, "good", None),
        TestSample(root / "scratch" / "s1.jpg", 1, "scratch", root / "masks" / "scratch" / "s1.png"),
    )


def test_folder_mask_with_the_same_file_name_is_preferred(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "part")
    touch(root / "masks" / "scratch" / "s1.jpg")
    (split,) = read_dataset("folder", root)
    assert split.test[-1].mask == root / "masks" / "scratch" / "s1.jpg"


def test_folder_ambiguous_masks(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "part")
    touch(root / "masks" / "dent" / "d1.bmp")
    touch(root / "dent" / "d1.png").rename(root / "dent" / "d1.jpg")
    message = error("folder", root)
    assert str(root / "dent" / "d1.jpg") in message and "ambiguous" in message


def test_folder_without_masks(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "part", masks=False)
    (split,) = read_dataset("folder", root)
    assert not split.has_masks
    assert all(s.mask is None for s in split.test) and sum(s.label for s in split.test) == 2


def test_folder_missing_mask_when_masks_exist(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "part")
    (root / "masks" / "scratch" / "s1.png").unlink()
    message = error("folder", root)
    assert str(root / "scratch" / "s1.jpg") in message and str(root / "masks" / "scratch" / "s1") in message


def test_folder_class_name_from_classes(tmp_path: Path) -> None:
    root = folder_tree(tmp_path / "batch_07")
    (split,) = read_dataset("folder", root, classes=["pcb3"])
    assert split.name == "pcb3" and split.prompt_name == "printed circuit board"
    assert "one class" in error("folder", root, classes=["a", "b"])


def test_folder_without_good_images(tmp_path: Path) -> None:
    root = tmp_path / "part"
    touch(root / "scratch" / "s1.png")
    message = error("folder", root)
    assert "'part'" in message and str(root) in message and "no train normal" in message
