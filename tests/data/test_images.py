"""Reading one image outside dataset validation: a bad file is a clear error naming it."""

from __future__ import annotations

import pytest
from PIL import Image

from leafgen.data.images import open_rgb
from leafgen.errors import LeafgenError


def test_open_rgb_names_the_file_and_its_purpose(tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (6, 4), 128).save(good)
    assert open_rgb(good, "a test image").mode == "RGB"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(LeafgenError, match=r"bad\.jpg: cannot read a test image: unreadable"):
        open_rgb(bad, "a test image")
    with pytest.raises(LeafgenError, match="decompression-bomb guard"):
        open_rgb(good, "a test image", max_pixels=10)
