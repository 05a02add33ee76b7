"""Validation of Kaggle-format folders: every kind of bad input gives a clear, located error."""

import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from leafgen.cli import main
from leafgen.data.images import load_rgb
from leafgen.data.plant_pathology import read_folder
from leafgen.errors import DataValidationError
from leafgen.labels import CLASSES

HEADER = "image_id,healthy,multiple_diseases,rust,scab"


def _rewrite_train(folder, edit):
    path = folder / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _validate(folder, capsys, *extra):
    code = main(["data", "validate", str(folder), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_valid_folder_prints_class_counts(kaggle_folder, capsys):
    code, text = _validate(kaggle_folder, capsys)
    assert code == 0
    assert "valid Plant Pathology folder" in text
    for c in CLASSES:
        assert c in text
    folder = read_folder(kaggle_folder, progress=False)
    assert sum(folder.counts().values()) == len(folder.image_ids)
    assert all(n > 0 for n in folder.counts().values())


def _swap_header(lines, header):
    return [header, *lines[1:]]


CSV_CASES = {
    "missing column": (
        lambda ls: _swap_header(
            [ln.rsplit(",", 1)[0] for ln in ls], "image_id,healthy,multiple_diseases,rust"
        ),
        r"train\.csv header: missing column\(s\) scab",
    ),
    "extra column": (
        lambda ls: [ls[0] + ",notes"] + [ln + ",x" for ln in ls[1:]],
        r"train\.csv header: unexpected column\(s\) 'notes'",
    ),
    "not one-hot": (
        lambda ls: [ls[0], ls[1].split(",")[0] + ",1,0,1,0", *ls[2:]],
        r"train\.csv line 2 \(image_id Train_0\): labels are not one-hot \(set: healthy, rust\)",
    ),
    "all zero": (
        lambda ls: [ls[0], ls[1].split(",")[0] + ",0,0,0,0", *ls[2:]],
        r"train\.csv line 2 \(image_id Train_0\): labels are not one-hot \(set: none\)",
    ),
    "non-numeric label": (
        lambda ls: [ls[0], ls[1].split(",")[0] + ",yes,0,0,0", *ls[2:]],
        r"train\.csv line 2 \(image_id Train_0\): label values must be 0 or 1",
    ),
    "duplicate id": (lambda ls: [*ls, ls[1]], r"duplicate image_id 'Train_0' \(first on line 2\)"),
    "short row": (lambda ls: [ls[0], "Train_0,1,0", *ls[2:]], r"train\.csv line 2: expected 5 fields, got 3"),
    "parent escape": (
        lambda ls: [ls[0], "../etc/passwd,1,0,0,0", *ls[2:]],
        r"train\.csv line 2: image_id '\.\./etc/passwd' contains a path separator",
    ),
    "absolute path": (
        lambda ls: [ls[0], "/abs,1,0,0,0", *ls[2:]],
        r"train\.csv line 2: image_id '/abs' contains a path separator",
    ),
    "backslash": (
        lambda ls: [ls[0], "a\\b,1,0,0,0", *ls[2:]],
        r"train\.csv line 2: image_id 'a\\\\b' contains a path separator",
    ),
    "dot-dot id": (
        lambda ls: [ls[0], "..,1,0,0,0", *ls[2:]],
        r"train\.csv line 2: image_id '\.\.' is not a plain file name",
    ),
    "empty id": (lambda ls: [ls[0], ",1,0,0,0", *ls[2:]], r"train\.csv line 2: image_id is empty"),
    "empty class": (
        lambda ls: [ls[0]] + [ln for ln in ls[1:] if not ln.endswith(",0,1,0,0")],
        r"class 'multiple_diseases' has no images",
    ),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_train_csv_names_file_and_row(kaggle_folder, capsys, case):
    edit, message = CSV_CASES[case]
    _rewrite_train(kaggle_folder, edit)
    code, text = _validate(kaggle_folder, capsys)
    assert code == 2
    assert "Traceback" not in text
    assert text.startswith("leafgen: error: ")
    import re

    assert re.search(message, text), text


def test_missing_csvs_and_images_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, text = _validate(tmp_path / "empty", capsys)
    assert code == 2
    assert "train.csv: file missing; expected a CSV with header " + HEADER in text
    assert "test.csv: file missing" in text
    assert "images/: folder missing" in text


def test_not_a_directory(tmp_path, capsys):
    code, text = _validate(tmp_path / "nope", capsys)
    assert code == 2 and "not a directory" in text


def test_non_utf8_and_empty_csv(kaggle_folder, capsys):
    (kaggle_folder / "train.csv").write_bytes(b"image_id,healthy\n\xff\xfe,1\n")
    (kaggle_folder / "test.csv").write_text("")
    code, text = _validate(kaggle_folder, capsys)
    assert code == 2
    assert "train.csv: not UTF-8 text" in text
    assert "test.csv: empty; expected header image_id" in text


def test_bad_test_csv(kaggle_folder, capsys):
    (kaggle_folder / "test.csv").write_text("image_id\nTest_0\nTest_0\n../up\nTrain_0\n")
    code, text = _validate(kaggle_folder, capsys)
    assert code == 2
    assert "test.csv line 3: duplicate image_id 'Test_0' (first on line 2)" in text
    assert "test.csv line 4: image_id '../up' contains a path separator" in text
    assert "test.csv: image_id 'Train_0' also appears in train.csv" in text


def test_bad_images_are_all_listed(kaggle_folder, capsys):
    images = kaggle_folder / "images"
    (images / "Train_0.jpg").unlink()
    data = (images / "Train_1.jpg").read_bytes()
    (images / "Train_1.jpg").write_bytes(data[: len(data) // 2])
    (images / "Train_2.jpg").write_bytes(b"this is not a jpeg")
    (images / "Test_0.jpg").unlink()
    code, text = _validate(kaggle_folder, capsys)
    assert code == 2
    assert "images/Train_0.jpg: image file is missing" in text
    assert "images/Train_1.jpg: unreadable or truncated image" in text
    assert "images/Train_2.jpg: unreadable or truncated image" in text
    assert "images/Test_0.jpg: image file is missing" in text
    assert "data.on_bad_image=skip" in text


def test_skip_policy_drops_and_counts_bad_images(kaggle_folder, capsys):
    (kaggle_folder / "images" / "Train_0.jpg").write_bytes(b"garbage")
    folder = read_folder(kaggle_folder, on_bad_image="skip", progress=False)
    assert "Train_0" not in folder.image_ids
    assert len(folder.skipped) == 1 and folder.skipped[0].startswith("Train_0: unreadable")
    code, text = _validate(kaggle_folder, capsys, "--on-bad-image", "skip")
    assert code == 0 and "skipped 1 bad image(s)" in text


def test_decompression_bomb_guard(kaggle_folder, capsys):
    Image.new("RGB", (3000, 2000)).save(kaggle_folder / "images" / "Train_0.jpg")
    code, text = _validate(kaggle_folder, capsys, "--max-image-pixels", "1000000")
    assert code == 2
    assert "images/Train_0.jpg: 3000x2000 = 6000000 pixels exceeds data.max_image_pixels=1000000" in text


def test_symlink_out_of_the_images_folder_is_refused(kaggle_folder, tmp_path, capsys):
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    target = kaggle_folder / "images" / "Train_0.jpg"
    target.unlink()
    os.symlink(outside, target)
    code, text = _validate(kaggle_folder, capsys)
    assert code == 2 and "resolves outside" in text


def test_exif_orientation_and_modes_are_normalised(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg", 10**6).size == (20, 40)
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        path = tmp_path / f"m{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
        Image.new(mode, (6, 4)).save(path)
        out = load_rgb(path, 10**6)
        assert out.mode == "RGB" and out.size == (6, 4)


_CELL = st.text(alphabet=string.ascii_letters + string.digits + "._-/\\ \"'\n,01", max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_CELL, min_size=0, max_size=7), max_size=8), header=st.booleans())
def test_fuzzed_train_csv_gives_a_result_or_a_validation_error(tiny_dataset, tmp_path_factory, rows, header):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "images").mkdir()
    (folder / "test.csv").write_text("image_id\n")
    lines = ([HEADER] if header else []) + [",".join(r) for r in rows]
    (folder / "train.csv").write_text("\n".join(lines))
    try:
        result = read_folder(folder, check_images=False, progress=False)
    except DataValidationError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
    else:
        assert len(result.image_ids) == len(set(result.image_ids))
        assert np.all(np.bincount(result.labels, minlength=4) > 0)
