import csv
import hashlib
import json

import pytest
from PIL import Image

from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import ProceduralSpec, contact_sheet, make_dataset
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES, KAGGLE_TRAIN_COUNTS, TRAIN_COLUMNS

from ..conftest import TINY_SPEC


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").iterdir())}


def test_folder_is_in_kaggle_format(tiny_dataset):
    with open(tiny_dataset / "train.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == TRAIN_COLUMNS
    assert all(sorted(r[1:]) == ["0", "0", "0", "1"] for r in rows[1:])
    with open(tiny_dataset / "test.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["image_id"]
    folder = read_folder(tiny_dataset, progress=False)  # decodes every image
    assert folder.counts() == TINY_SPEC.class_counts()
    assert len(folder.test_ids) == round(len(folder.image_ids) * TINY_SPEC.test_fraction)
    with Image.open(folder.path(folder.image_ids[0])) as img:
        assert img.format == "JPEG" and img.size == (64, 43)
    assert json.loads((tiny_dataset / "procedural.json").read_text())["seed"] == TINY_SPEC.seed


def test_full_scale_counts_match_kaggle():
    assert ProceduralSpec(scale=1.0).class_counts() == KAGGLE_TRAIN_COUNTS
    assert min(ProceduralSpec(scale=0.001).class_counts().values()) == 3


def test_same_seed_same_bytes_other_seed_other_images(tiny_dataset, tmp_path):
    again = make_dataset(tmp_path / "again", TINY_SPEC, workers=2, progress=False)  # process pool path
    assert _digest(again) == _digest(tiny_dataset)
    other = make_dataset(
        tmp_path / "other",
        ProceduralSpec(scale=0.03, size=64, seed=124, test_fraction=0.2),
        workers=1,
        progress=False,
    )
    assert set(_digest(other).values()).isdisjoint(_digest(tiny_dataset).values())


def test_rerun_resumes_only_missing_images(kaggle_folder):
    images = kaggle_folder / "images"
    before = _digest(kaggle_folder)
    (images / "Train_3.jpg").unlink()
    (kaggle_folder / "train.csv").unlink()
    kept = images / "Train_4.jpg"
    mtime = kept.stat().st_mtime_ns
    make_dataset(kaggle_folder, TINY_SPEC, workers=1, progress=False)
    assert _digest(kaggle_folder) == before
    assert kept.stat().st_mtime_ns == mtime  # finished images are left untouched
    assert (kaggle_folder / "train.csv").is_file()


def test_other_settings_or_foreign_folder_are_refused(kaggle_folder, tmp_path):
    with pytest.raises(LeafgenError, match="made with other settings"):
        make_dataset(kaggle_folder, ProceduralSpec(scale=0.03, size=64, seed=999), progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LeafgenError, match="is not a leafgen procedural dataset"):
        make_dataset(tmp_path / "mine", TINY_SPEC, progress=False)


def test_contact_sheet_has_a_row_per_class(tiny_dataset, tmp_path):
    out = contact_sheet(tiny_dataset, tmp_path / "sheet.png", per_class=3, thumb=60)
    with Image.open(out) as img:
        assert img.width > 3 * 60 and img.height >= len(CLASSES) * 40
