"""``leafgen run`` end to end on the tiny preset: every stage on real Ray with a tiny random-weight
text-to-image model; a killed run resumes without redoing finished stages; changing only the synthetic
ratio reruns only the stages after the gate; synthetic images reach the augmented arm's train set and
never val or test; the HTML report loads in headless Chromium with every image decoded."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from leafgen.cli import main
from leafgen.data.split import read_split
from leafgen.pipeline import STAGES


def test_rerun_after_a_kill_completes_every_stage_and_prints_the_report(pipeline_run, capsys):
    run_dir, args = pipeline_run
    for stage in STAGES:
        assert (run_dir / stage.name / "_complete.json").is_file(), stage.name
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert all(f"[{s.name}] skipped (up to date)" in out for s in STAGES)
    assert str(run_dir / "report" / "report.html") in out
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    comparison = metrics["comparison"]
    assert comparison["arms"] == ["baseline", "balanced", "augmented", "augmented_balanced"]
    assert set(comparison["deltas"]) == {"baseline", "balanced"}  # every arm against both references
    assert set(comparison["deltas"]["balanced"]) == {"baseline", "augmented", "augmented_balanced"}
    assert set(metrics["stage_seconds"]) >= {s.name for s in STAGES if s.name != "report"}
    # The same settings are not trained again: the gating classifier is the baseline arm's seed 0, the
    # judge (here given the balanced arm's recipe at seed 1) that arm's seed 1.
    for arm, seed, stage in (("baseline", 0, "classifier"), ("balanced", 1, "judge")):
        result = json.loads((run_dir / "arms" / arm / f"seed_{seed}" / "result.json").read_text())
        assert result["reused"] == stage and result["model_dir"] == f"{stage}/model"
    arms = json.loads((run_dir / "arms" / "_complete.json").read_text())["outputs"]
    trained = {(r["arm"], r["seed"]) for r in arms["runs"] if not r["reused"]}
    assert trained == {("baseline", 1), ("balanced", 0)}
    retrain = json.loads((run_dir / "retrain" / "_complete.json").read_text())["outputs"]
    assert retrain["arms"] == ["augmented", "augmented_balanced"] and len(retrain["runs"]) == 4


def test_synthetic_images_reach_only_the_augmented_train_set(pipeline_run):
    run_dir, _ = pipeline_run
    with open(run_dir / "mix" / "mix.csv", newline="") as fh:
        mixed = list(csv.DictReader(fh))
    synthetic = [r for r in mixed if r["source"] == "synthetic"]
    accepted = {
        r["id"] for r in pq.read_table(run_dir / "gate" / "manifest.parquet").to_pylist() if r["accepted"]
    }
    split = read_split(run_dir / "split" / "split.csv")
    n_real_target = sum(1 for _, y in split["train"] if y == 1)
    assert len(synthetic) == n_real_target > 0
    assert {r["image_id"] for r in synthetic} <= accepted
    assert all(r["label"] == "multiple_diseases" and os.path.isfile(r["path"]) for r in synthetic)
    assert all(run_dir / "generate" in Path(r["path"]).parents for r in synthetic)
    held_out = {i for part in ("val", "test") for i, _ in split[part]}
    assert not held_out & {r["image_id"] for r in synthetic}
    retrain = run_dir / "retrain"
    assert len(np.load(retrain / "arrays" / "mix" / "train_labels.npy")) == len(mixed)
    result = json.loads((retrain / "augmented" / "seed_0" / "result.json").read_text())
    assert result["train_images"] == len(split["train"]) + len(synthetic)
    base = json.loads((run_dir / "arms" / "balanced" / "seed_0" / "result.json").read_text())
    assert base["train_images"] == len(split["train"])
    for part in ("val", "test"):  # every arm is measured on the same real images
        probs = np.load(retrain / "augmented" / "seed_0" / f"{part}_probs.npy")
        assert len(probs) == len(split[part])


def test_changing_only_the_ratio_reruns_only_the_stages_after_the_gate(pipeline_run, capsys, tmp_path):
    src, args = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    args = [a for a in args if not a.startswith(("run_dir=", "mix.synthetic_ratio="))]
    capsys.readouterr()
    assert main(["run", *args, f"run_dir={run_dir}", "mix.synthetic_ratio=0.5"]) == 0
    out = capsys.readouterr().out
    redone = {s.name for s in STAGES if f"[{s.name}] done in" in out}
    assert redone == {"mix", "retrain", "evaluate", "report"}
    mix = json.loads((run_dir / "mix" / "summary.json").read_text())
    assert mix["synthetic_ratio"] == 0.5 and mix["synthetic"] == mix["requested"]


ARMS_WITH_CAS = (
    "eval.arms=[{name: baseline}, {name: balanced, balance: sampling},"
    " {name: augmented, train: mix, synthetic_mode: swap, swap_probability: 0.5},"
    " {name: augmented_balanced, train: mix, balance: sampling}, {name: cas, train: synthetic_only}]"
)


def test_changing_one_arm_and_adding_another_trains_only_those(pipeline_run, capsys, tmp_path):
    src, args = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    kept = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/*/seed_*/result.json")}
    args = [*[a for a in args if not a.startswith("run_dir=")], f"run_dir={run_dir}", ARMS_WITH_CAS]
    assert main(["run", *args]) == 0
    arms = json.loads((run_dir / "arms" / "_complete.json").read_text())["outputs"]
    assert arms["trained"] == []  # the stage's key moved with eval.arms; none of its runs' keys did
    retrain = json.loads((run_dir / "retrain" / "_complete.json").read_text())["outputs"]
    assert retrain["arms"] == ["augmented", "augmented_balanced", "cas"]
    assert sorted(retrain["trained"]) == ["augmented/seed_0", "augmented/seed_1", "cas/seed_0", "cas/seed_1"]
    for path, mtime in kept.items():
        changed = path.stat().st_mtime_ns != mtime
        assert changed == (path.parent.parent.name == "augmented"), path  # only augmented retrained
    # The synthetic_only arm sees the target class only through synthetic images.
    folder = run_dir / "retrain" / "arrays" / "synthetic_only"
    labels, synthetic = np.load(folder / "train_labels.npy"), np.load(folder / "train_synthetic.npy")
    assert synthetic.any() and synthetic[labels == 1].all() and not synthetic[labels != 1].any()
    comparison = json.loads((run_dir / "evaluate" / "comparison.json").read_text())
    assert comparison["arms"][-1] == "cas" and "cas" in comparison["deltas"]["balanced"]


def test_the_same_arm_and_seed_trained_again_gives_identical_probabilities(pipeline_run, tmp_path):
    src, args = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    again = run_dir / "arms" / "balanced" / "seed_0"
    shutil.rmtree(again)
    (run_dir / "arms" / "_complete.json").unlink()
    args = [*[a for a in args if not a.startswith("run_dir=")], f"run_dir={run_dir}"]
    assert main(["run", "--only", "arms", *args]) == 0
    arms = json.loads((run_dir / "arms" / "_complete.json").read_text())["outputs"]
    assert arms["trained"] == ["balanced/seed_0"]
    for name in ("test_probs.npy", "val_probs.npy"):
        first = np.load(src / "arms" / "balanced" / "seed_0" / name)
        assert np.array_equal(np.load(again / name), first), name  # bit for bit, in another fit


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path and shutil.which("chromedriver"):
            return path
    if os.environ.get("CI"):
        pytest.fail("CI must have Chromium and chromedriver (.ci/run installs Debian's packages)")
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")


def test_report_loads_in_headless_chromium_with_every_image_decoded(pipeline_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    run_dir, _ = pipeline_run
    options = Options()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((run_dir / "report" / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        headings = driver.execute_script(
            "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
        )
    finally:
        driver.quit()
    html = (run_dir / "report" / "report.html").read_text()
    assert len(images) == html.count("<img ") >= 8
    assert all(ok for _, ok in images), [alt for alt, ok in images if not ok]
    assert 'src="data:image/png;base64,' in html and "file:" not in html
    sections = (
        "What happened",
        "The arms on the held-out test split",
        "Synthetic images and the quality gate",
        "DreamBooth",
        "DreamBooth's effect and language drift",
        "Run",
    )
    assert [h for h in headings if h in sections] == list(sections)  # the summary first, in this order
    for words in ("Against baseline", "Against balanced", "The judge of generated images"):
        assert words in html, words  # the first screen says what happened, from the numbers
    for table in (
        "gate decision",
        "img2img strength",
        "the generated set",
        "the judge on the held-out test split",
    ):
        assert table in html, table


def test_analysis_notebook_draws_the_comparison_and_grids_of_the_run(pipeline_run):
    from ..test_notebooks import images_in, run_notebook

    run_dir, _ = pipeline_run
    outputs, text = run_notebook(run_dir)
    assert "augmented - baseline" in text and "gate accepted" in text and "before" in text
    # bars + contact sheet, recall bars + confusion + ROC, gate grid, validation grids, drift grid
    assert images_in(outputs) >= 9
