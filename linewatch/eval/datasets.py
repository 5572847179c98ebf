"""Read the public anomaly-detection datasets' folder layouts into plain, sorted lists of paths.

``linewatch eval`` reproduces published tables, so every number depends on exactly which files count as
train normals, normal test images and anomalous test images. Anything that would silently change those
sets (a missing mask, a csv row pointing nowhere, an empty class) raises :class:`DatasetError` naming the
path instead of being skipped, and every list is sorted so two runs on the same tree see the same order.
No image is decoded here; files are recognised by suffix only.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from linewatch.images import IMAGE_SUFFIXES

_log = logging.getLogger(__name__)

DATASET_KINDS = ("mvtec", "visa", "folder")


GOOD = "good"
# VisA's 1cls.csv carries no defect type per image, so all its anomalies share this one.
VISA_DEFECT_TYPE = "anomaly"

# Only ids whose words the generic rule (underscores/dashes to spaces) gets wrong; "metal_nut", "pipe_fryum",
# "capsules" and the rest come out right without an entry. These are the object words the paper's prompts use.
_PROMPT_NAMES: dict[str, str] = {
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "chewinggum": "chewing gum",
}

_VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_VISA_LABELS = {"normal": 0, "anomaly": 1}
_MASKS = "masks"
_SHOWN_MISSING = 3


class DatasetError(ValueError):
    """A dataset that cannot be evaluated as asked; the message names the path/class and what is wrong."""


@dataclass(frozen=True)
class TestSample:
    """One test image with its ground truth; ``mask`` is None for normals and in mask-less folder datasets."""

    __test__ = False  # the name starts with "Test"; this keeps pytest from trying to collect it where it is imported

    path: Path
    label: int
    defect_type: str
    mask: Path | None


@dataclass(frozen=True)
class ClassSplit:
    """One class ready for the few-shot protocol: the pool shots are drawn from, and the labelled test set."""

    name: str
    prompt_name: str
    train_normals: tuple[Path, ...]
    test: tuple[TestSample, ...]
    has_masks: bool


def prompt_name(class_id: str, overrides: Mapping[str, str] | None = None) -> str:
    """The object words for the text prompt: an override, else the built-in table, else the id made readable.

    Dataset ids are folder names ("pcb3", "chewinggum"); the text encoder needs the words a person would use.
    """
    if overrides and class_id in overrides:
        return overrides[class_id]
    if class_id in _PROMPT_NAMES:
        return _PROMPT_NAMES[class_id]
    return class_id.replace("_", " ").replace("-", " ")


def read_dataset(
    kind: str, root: Path, classes: Sequence[str] | None = None, names: Mapping[str, str] | None = None
) -> list[ClassSplit]:
    """Read the ``kind`` layout under ``root``: one ClassSplit per class (all found, sorted, if ``classes`` is None).

    ``names`` overrides prompt words per class id. Layouts:

    * ``mvtec``: ``root/<class>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png}``.
    * ``visa``: ``root/split_csv/1cls.csv`` (columns object, split, label, image, mask; paths relative to root).
    * ``folder``: ``root`` is one class: ``good/`` normals, any other sub-folder a defect type, optional
      ``masks/<type>/<image stem>.<any image suffix>``. Without ``masks/`` the split has ``has_masks`` False and
      pixel metrics are skipped. There is no separate train folder, so every good image is both in
      ``train_normals`` and in ``test`` as a normal: the protocol removes the drawn shots from the test set,
      which keeps shots and test images disjoint. The class name is the folder name unless ``classes=[name]``.
    """
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    asked = None if classes is None else [classes] if isinstance(classes, str) else list(classes)
    if asked is not None and not asked:
        raise DatasetError(f"{root}: empty class selection; pass None to evaluate every class")
    if kind == "mvtec":
        return _read_mvtec(root, asked, names)
    if kind == "visa":
        return _read_visa(root, asked, names)
    return _read_folder(root, asked, names)


def _read_mvtec(root: Path, asked: list[str] | None, names: Mapping[str, str] | None) -> list[ClassSplit]:
    available = [d.name for d in _subdirs(root) if (d / "train" / GOOD).is_dir()]
    splits = []
    for name in _select(available, asked, root, "a class is a sub-folder holding train/good"):
        class_dir = root / name
        test: list[TestSample] = []
        for type_dir in _subdirs(class_dir / "test"):
            for image in _list_images(type_dir):
                if type_dir.name == GOOD:
                    test.append(TestSample(image, 0, GOOD, None))
                    continue
                mask = class_dir / "ground_truth" / type_dir.name / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(f"{image}: anomalous test image has no mask (expected {mask})")
                test.append(TestSample(image, 1, type_dir.name, mask))
        splits.append(_split(name, class_dir, names, _list_images(class_dir / "train" / GOOD), test, has_masks=True))
    return splits


def _read_visa(root: Path, asked: list[str] | None, names: Mapping[str, str] | None) -> list[ClassSplit]:
    csv_path = root / _VISA_CSV
    rows = _read_visa_csv(csv_path)
    chosen = _select(sorted({row["object"] for _, row in rows}), asked, csv_path, "a class is an object column value")
    train: dict[str, list[Path]] = {name: [] for name in chosen}
    test: dict[str, list[TestSample]] = {name: [] for name in chosen}
    missing: list[Path] = []
    for line, row in rows:
        name = row["object"]
        if name not in train:
            continue
        image = root / row["image"]
        if not image.is_file():
            missing.append(image)
        label = _VISA_LABELS[row["label"]]
        if row["split"] == "train":
            # 1cls.csv has only normals in train; an anomaly there must not leak into the shot pool.
            if label == 0:
                train[name].append(image)
        elif label == 0:
            test[name].append(TestSample(image, 0, GOOD, None))
        else:
            mask = root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                problem = "has an empty mask column" if mask is None else f"has a mask that does not exist: {mask}"
                raise DatasetError(f"{csv_path} line {line}: anomalous test image {image} {problem}")
            test[name].append(TestSample(image, 1, VISA_DEFECT_TYPE, mask))
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        raise DatasetError(f"{csv_path}: {len(missing)} listed image(s) not found on disk: {shown}{more}")
    return [_split(name, csv_path, names, train[name], test[name], has_masks=True) for name in chosen]


def _read_visa_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows as (line number, stripped values of the needed columns); bad header, split or label values raise."""
    if not path.is_file():
        raise DatasetError(f"VisA split file not found: {path} (expected <root>/{_VISA_CSV.as_posix()})")
    # utf-8-sig: a csv saved by a spreadsheet starts with a BOM that would otherwise glue onto "object".
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [field.strip() for field in reader.fieldnames or []]
        absent = [column for column in _VISA_COLUMNS if column not in header]
        if absent:
            raise DatasetError(f"{path}: missing column(s) {', '.join(absent)} (need {', '.join(_VISA_COLUMNS)})")
        reader.fieldnames = header
        rows = []
        for raw in reader:
            row = {column: (raw.get(column) or "").strip() for column in _VISA_COLUMNS}
            if row["split"] not in ("train", "test") or row["label"] not in _VISA_LABELS:
                raise DatasetError(
                    f"{path} line {reader.line_num}: split {row['split']!r} / label {row['label']!r} "
                    "not understood (expected train|test and normal|anomaly)"
                )
            rows.append((reader.line_num, row))
    return rows


def _read_folder(root: Path, asked: list[str] | None, names: Mapping[str, str] | None) -> list[ClassSplit]:
    if asked is not None and len(asked) != 1:
        raise DatasetError(f"{root}: a folder dataset is one class; got classes {', '.join(asked)}")
    name = asked[0] if asked else root.name
    good = _list_images(root / GOOD)
    masks_dir = root / _MASKS
    has_masks = masks_dir.is_dir()
    test = [TestSample(image, 0, GOOD, None) for image in good]
    for type_dir in _subdirs(root):
        if type_dir.name in (GOOD, _MASKS):
            continue
        mask_dir = masks_dir / type_dir.name
        masks = _list_images(mask_dir) if has_masks else []
        for image in _list_images(type_dir):
            mask = _folder_mask(image, masks, mask_dir) if has_masks else None
            test.append(TestSample(image, 1, type_dir.name, mask))
    return [_split(name, root, names, good, test, has_masks)]


def _folder_mask(image: Path, masks: list[Path], mask_dir: Path) -> Path:
    """The mask with the image's file name, else the one mask with its stem (a .png mask for a .jpg image)."""
    same_stem = [mask for mask in masks if mask.stem == image.stem]
    for mask in same_stem:
        if mask.name == image.name:
            return mask
    if len(same_stem) == 1:
        return same_stem[0]
    if not same_stem:
        raise DatasetError(f"{image}: anomalous image has no mask (expected {mask_dir / image.stem}.<image suffix>)")
    raise DatasetError(f"{image}: ambiguous masks {', '.join(m.name for m in same_stem)} in {mask_dir}")


def _split(
    name: str, where: Path, names: Mapping[str, str] | None, train: list[Path], test: list[TestSample], has_masks: bool
) -> ClassSplit:
    """Check that the class can be evaluated at all, then freeze it in a deterministic order."""
    if not train:
        raise DatasetError(f"class {name!r} ({where}): no train normal images")
    if not test:
        raise DatasetError(f"class {name!r} ({where}): no test images")
    labels = {sample.label for sample in test}
    if labels != {0, 1}:
        lacking = "anomalous" if 0 in labels else "normal"
        raise DatasetError(f"class {name!r} ({where}): no {lacking} test images; image AUROC needs both")
    return ClassSplit(
        name=name,
        prompt_name=prompt_name(name, names),
        train_normals=tuple(sorted(train)),
        test=tuple(sorted(test, key=lambda sample: (sample.defect_type, sample.path))),
        has_masks=has_masks,
    )


def _select(available: list[str], asked: list[str] | None, where: Path, rule: str) -> list[str]:
    """The asked classes in the asked order (duplicates dropped), or every available one when none was asked."""
    if not available:
        raise DatasetError(f"{where}: no classes found ({rule})")
    if asked is None:
        return available
    unknown = [name for name in asked if name not in available]
    if unknown:
        raise DatasetError(
            f"{where}: unknown class(es) {', '.join(unknown)} ({rule}); available: {', '.join(available)}"
        )
    return list(dict.fromkeys(asked))


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted; a missing folder has none (the caller's emptiness check names the class)."""
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; a missing folder has none.

    Hidden names (.DS_Store, macOS "._x.png" copies) are dropped silently because nobody put them there on
    purpose; anything else that is not an image is counted and reported in one warning per folder, so a
    stray Thumbs.db or notes.txt is visible without flooding the log.
    """
    if not folder.is_dir():
        return []
    images = []
    skipped = 0
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            skipped += 1
    if skipped:
        _log.warning("%s: skipped %d non-image entr%s", folder, skipped, "y" if skipped == 1 else "ies")
    return sorted(images)
