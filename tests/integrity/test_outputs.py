"""Completion markers list the files a stage wrote; a rerun trusts a stage only while they are intact, and
a dependant is redone exactly when a redone upstream's files differ."""

from __future__ import annotations

import io
import json

import pytest

from leafgen.config import fingerprint, load_config, select
from leafgen.errors import StageError
from leafgen.integrity.outputs import DIGEST, FILES, LARGE_FILE, SAMPLE, hash_file
from leafgen.stage_store import StageStore
from leafgen.stages import COMPLETE, RunDir, Stage, StageContext, run_stage, stage_key


def _stage(calls, name="up", inputs=(), content=lambda cfg: str(cfg.classifier.epochs)):
    """A stage writing ``out.txt`` (``content(cfg)``) and ``sub/more.bin``; ``calls`` records each run."""

    def fn(cfg, ctx):
        calls.append(name)
        (ctx.dir / "out.txt").write_text(content(cfg))
        (ctx.dir / "sub").mkdir(exist_ok=True)
        (ctx.dir / "sub" / "more.bin").write_bytes(b"x" * 100)
        return {"out": f"{name}/out.txt"}

    return Stage(name=name, fn=fn, config_keys=("classifier.epochs",), inputs=inputs)


def _marker(root, name):
    return json.loads((root / name / COMPLETE).read_text())


def test_the_marker_lists_every_file_with_size_and_hash(tmp_path):
    run_stage(_stage([]), load_config(), RunDir(tmp_path))
    marker = _marker(tmp_path, "up")
    assert set(marker[FILES]) == {"out.txt", "sub/more.bin"}  # not the marker, not _started.json
    assert marker[FILES]["sub/more.bin"]["size"] == 100
    assert len(marker[FILES]["out.txt"]["blake2b"]) == 32
    assert marker[DIGEST] == fingerprint(marker[FILES])


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda d: (d / "sub" / "more.bin").unlink(), "up/sub/more.bin is missing"),
        (lambda d: (d / "out.txt").write_text(""), "up/out.txt is 0 bytes; the stage wrote 2"),
    ],
)
def test_a_missing_or_resized_output_redoes_the_stage_and_says_which_file(tmp_path, damage, said):
    calls, logged, cfg = [], [], load_config(None, ["classifier.epochs=10"])
    stage, run = _stage(calls), RunDir(tmp_path)
    run_stage(stage, cfg, run)
    damage(tmp_path / "up")
    assert not run_stage(stage, cfg, run, log=logged.append).skipped
    assert logged == [f"[up] redoing: {said}"]
    assert run_stage(stage, cfg, run).skipped and calls == ["up", "up"]


def test_dependants_are_redone_exactly_when_the_redone_outputs_differ(tmp_path):
    calls, seed = [], {"value": "a"}
    up = _stage(calls, "up", content=lambda cfg: seed["value"])
    down = _stage(calls, "down", inputs=("up",))
    run, cfg = RunDir(tmp_path), load_config()
    for stage in (up, down):
        run_stage(stage, cfg, run)

    (tmp_path / "up" / "out.txt").unlink()  # redone byte-identical: the dependant stays up to date
    assert [run_stage(s, cfg, run).skipped for s in (up, down)] == [False, True]

    (tmp_path / "up" / "out.txt").unlink()
    seed["value"] = "b"  # redone with other bytes: the dependant is redone
    assert [run_stage(s, cfg, run).skipped for s in (up, down)] == [False, False]
    assert calls == ["up", "down", "up", "up", "down"]


def test_an_older_marker_keeps_its_key_and_counts_as_done(tmp_path):
    calls = []
    up, down = _stage(calls, "up"), _stage(calls, "down", inputs=("up",))
    run, cfg = RunDir(tmp_path), load_config()
    for stage in (up, down):
        run_stage(stage, cfg, run)
    old_key = fingerprint(  # the key formula before markers listed files, spelled out
        {
            "stage": "down",
            "version": 1,
            "config": {"classifier.epochs": select(cfg, "classifier.epochs")},
            "inputs": {"up": _marker(tmp_path, "up")["key"]},
            "fingerprint": None,
        }
    )
    for name in ("up", "down"):  # as that code wrote them
        marker = {k: _marker(tmp_path, name)[k] for k in ("key", "stage", "outputs")}
        (tmp_path / name / COMPLETE).write_text(
            json.dumps({**marker, "key": old_key} if name == "down" else marker)
        )
    assert stage_key(down, cfg, run) == old_key
    (tmp_path / "up" / "out.txt").unlink()  # nothing to check it against: still done
    assert all(run_stage(s, cfg, run).skipped for s in (up, down)) and calls == ["up", "down"]


def test_the_check_works_through_a_stage_store_link(tmp_path):
    calls, cfg = [], load_config()
    store, stage = StageStore(tmp_path / "store"), _stage(calls)
    run = RunDir(tmp_path / "run")
    store.run(stage, cfg, run)
    assert (run.root / "up").is_symlink()
    (run.root / "up" / "sub" / "more.bin").write_bytes(b"short")
    logged = []
    assert not store.run(stage, cfg, run, log=logged.append).skipped
    assert logged == ["[up] redoing: up/sub/more.bin is 5 bytes; the stage wrote 100"]
    assert (run.root / "up").is_symlink() and (run.root / "up" / "sub" / "more.bin").stat().st_size == 100


def test_a_reader_refuses_an_input_whose_content_changed(tmp_path):
    run, cfg = RunDir(tmp_path), load_config(None, ["classifier.epochs=10"])
    run_stage(_stage([]), cfg, run)
    ctx = StageContext(run, tmp_path / "down", {"up": run.marker("up")["outputs"]})
    assert ctx.input_path("up", "out") == tmp_path / "up" / "out.txt"
    (tmp_path / "up" / "out.txt").write_text("99")  # same size: only the hash tells
    with pytest.raises(StageError) as info:
        ctx.input_path("up", "out")
    assert "up/out.txt has other content than the stage wrote" in str(info.value)
    assert f"leafgen verify --fix {tmp_path}" in str(info.value)


def test_retention_settings_are_not_part_of_stage_keys(tmp_path):
    stage, run = Stage("classify", lambda cfg, ctx: {}, ("classifier", "dreambooth")), RunDir(tmp_path)
    keep = ["classifier.keep_checkpoints_after_export=true", "dreambooth.keep_checkpoints_after_export=true"]
    assert stage_key(stage, load_config(), run) == stage_key(stage, load_config(None, keep), run)
    assert stage_key(stage, load_config(), run) != stage_key(
        stage, load_config(None, ["classifier.seed=3"]), run
    )


def test_a_large_file_is_hashed_from_three_samples_and_its_size():
    size = LARGE_FILE + SAMPLE
    entry = hash_file(io.BytesIO(b"\0" * size), size)
    assert set(entry) == {"size", "blake2b_sampled"}
    data = bytearray(size)
    data[size // 2] = 1  # inside the middle sample
    assert hash_file(io.BytesIO(bytes(data)), size) != entry
