"""Painted kinds of the class: the same pictures on every call, and a rerun keeps what is there."""

import numpy as np
from PIL import Image

from leafgen.data.leaf_painter import KINDS, paint_kinds, render


def test_paint_kinds_draws_each_kind_reproducibly_and_a_rerun_keeps_the_files(tmp_path):
    paths, kinds = paint_kinds(tmp_path, per_kind=2, width=96)
    assert kinds.tolist() == [0, 0, 1, 1] and len(set(paths)) == 4
    scab_dominant = list(KINDS.values())[1]
    again = render("multiple_diseases", np.random.default_rng([77, 1, 0]), 96, scab_dominant)
    assert (np.asarray(Image.open(paths[2])) == np.asarray(again)).all()

    written = {p: p.stat().st_mtime_ns for p in paths}
    assert paint_kinds(tmp_path, per_kind=2, width=96)[0] == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == written
    assert not [p for p in tmp_path.iterdir() if p not in written]  # no temporary file left behind
