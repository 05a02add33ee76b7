import os

import numpy as np
from PIL import Image

from leafgen.data.cache import cached_images, decode_resized
from leafgen.data.plant_pathology import read_folder


def _paths(dataset, n=6):
    folder = read_folder(dataset, check_images=False, progress=False)
    return [folder.path(i) for i in folder.image_ids[:n]]


def test_decoded_once_then_served_from_the_cache(tiny_dataset, tmp_path):
    paths = _paths(tiny_dataset)
    first = cached_images(paths, (32, 48), tmp_path, workers=2, progress=False)
    assert first.shape == (6, 32, 48, 3) and first.dtype == np.uint8
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1
    stamp = entries[0].stat().st_mtime_ns
    again = cached_images(paths, (32, 48), tmp_path, progress=False)
    assert np.array_equal(first, again)
    assert entries[0].stat().st_mtime_ns == stamp and list(tmp_path.iterdir()) == entries
    expected = np.asarray(
        Image.open(paths[2]).convert("RGB").resize((48, 32), Image.BILINEAR), dtype=np.int16
    )
    assert np.abs(first[2].astype(np.int16) - expected).mean() < 6  # same picture, up to resampling


def test_other_size_or_edited_file_is_a_new_entry(kaggle_folder, tmp_path):
    paths = _paths(kaggle_folder)
    cached_images(paths, (32, 48), tmp_path, progress=False)
    cached_images(paths, (64, 96), tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    Image.new("RGB", (64, 43), (255, 0, 0)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    edited = cached_images(paths, (32, 48), tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert edited[0, :, :, 0].mean() > 240 and edited[0, :, :, 1].mean() < 15


def test_portrait_photo_is_turned_landscape(tmp_path):
    img = Image.new("RGB", (40, 60), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 40, 10))  # white band at the top
    img.save(tmp_path / "p.png")
    arr = decode_resized(tmp_path / "p.png", (40, 60), 10**6)
    assert arr.shape == (40, 60, 3)
    assert arr[:, :8].mean() > 200  # rotated counter-clockwise: the top band is now on the left
