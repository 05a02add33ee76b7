"""Run directories on object storage, against a real S3 endpoint (moto's server): every node works in its
own mirror and the run's copy is the one that counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from leafgen.config import load_config
from leafgen.errors import LeafgenError
from leafgen.run_storage import MIRROR_ENV, RunStorage
from leafgen.stages import COMPLETE, RunDir, Stage, run_stage


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """``node(name)``: the run as a node whose mirror root is ``tmp_path/<name>`` sees it."""

    def node(uri: str, name: str) -> RunStorage:
        monkeypatch.setenv(MIRROR_ENV, str(tmp_path / name))
        return RunStorage.open(uri)

    return node


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_path_is_used_as_it_is(tmp_path):
    storage = RunStorage.open(str(tmp_path / "run"))
    assert not storage.remote and storage.local == tmp_path / "run"
    assert storage.localize(tmp_path / "x") == tmp_path / "x"
    assert storage.push(tmp_path) == 0 and storage.pull(tmp_path) == 0
    assert storage.ray_storage(tmp_path / "run" / "ray") == (str(tmp_path / "run" / "ray"), None)


def test_what_one_node_pushes_another_pulls_and_nothing_is_copied_twice(s3_run_uri, mirrors):
    a = mirrors(s3_run_uri, "a")
    stage = a.local / "generate"
    (stage / "images").mkdir(parents=True)
    for i in range(3):
        (stage / "images" / f"{i}.png").write_bytes(bytes([i]) * (100 + i))
    (stage / COMPLETE).write_text('{"key": "k"}')
    assert a.push(stage) == 4
    assert a.push(stage) == 0  # in sync: the mirror took the store's times

    b = mirrors(s3_run_uri, "b")
    assert b.local != a.local and b.local.name == a.local.name
    assert b.pull(b.local / "generate") == 4
    assert _tree(b.local / "generate") == _tree(stage)
    assert b.pull(b.local / "generate") == 0 and b.push(b.local / "generate") == 0

    # A path from node a's mirror means the same run file on node b.
    assert b.localize(stage / "images" / "1.png") == b.local / "generate" / "images" / "1.png"
    assert b.localize("/models/base") == Path("/models/base")


def test_a_newer_copy_wins_both_ways_and_an_exact_push_deletes_what_the_mirror_dropped(s3_run_uri, mirrors):
    a = mirrors(s3_run_uri, "a")
    folder = a.local / "stage"
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("one")
    (folder / "_started.json").write_text("{}")
    a.push(folder)
    b = mirrors(s3_run_uri, "b")
    b.pull(b.local / "stage")

    (folder / "keep.txt").write_text("three")  # within the second of the first upload, maybe
    (folder / "_started.json").unlink()
    a.push(folder, exact=True)
    assert b.pull(b.local / "stage") == 1
    assert (b.local / "stage" / "keep.txt").read_text() == "three"
    assert not b.exists(b.local / "stage" / "_started.json")
    assert b.exists(b.local / "stage" / "keep.txt")


def test_ray_checkpoints_stay_in_the_bucket_and_an_exact_push_keeps_them(s3_run_uri, mirrors):
    a = mirrors(s3_run_uri, "a")
    ray_dir = a.local / "classifier" / "ray"
    (ray_dir / "classifier" / "checkpoint_2026-11-26_10-00-00.000000").mkdir(parents=True)
    (ray_dir / "history.jsonl").write_text("{}\n")
    # Ray wrote this one itself, through its storage_filesystem.
    with a.fs.open_output_stream(f"{a.remote_path(ray_dir)}/classifier/checkpoint_x/model.safetensors") as f:
        f.write(b"weights")
    assert a.push(a.local / "classifier", exact=True) == 1  # history.jsonl; the checkpoint stays
    assert a.exists(ray_dir / "classifier" / "checkpoint_x" / "model.safetensors")
    b = mirrors(s3_run_uri, "b")
    assert b.pull(b.local / "classifier") == 1
    assert not (b.local / "classifier" / "ray" / "classifier").exists()


def test_atomic_writes_in_progress_are_never_pushed(s3_run_uri, mirrors):
    a = mirrors(s3_run_uri, "a")
    (a.local / "s").mkdir(parents=True)
    (a.local / "s" / ".image.png.x1y2.tmp.png").write_bytes(b"half")
    (a.local / "s" / "image.png").write_bytes(b"whole")
    assert a.push(a.local / "s") == 1


def test_an_unreachable_or_malformed_run_dir_is_a_clear_error():
    with pytest.raises(LeafgenError, match="run_dir 'nosuchscheme://x'.*credentials"):
        RunStorage.open("nosuchscheme://x")


def _count_stage(calls: list):
    def fn(cfg, ctx):
        calls.append(ctx.dir)
        (ctx.dir / "out.txt").write_text("made")
        return {"file": "count/out.txt"}

    return Stage("count", fn, config_keys=("classifier.seed",))


def test_a_stage_done_on_one_machine_is_skipped_on_another_with_its_files(s3_run_uri, monkeypatch, tmp_path):
    cfg = load_config(None, [f"run_dir={s3_run_uri}"])
    calls: list = []
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "first"))
    first = RunDir(cfg.run_dir)
    first.start(cfg)
    assert not run_stage(_count_stage(calls), cfg, first).skipped

    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "second"))
    second = RunDir(cfg.run_dir)
    result = run_stage(_count_stage(calls), cfg, second)
    assert result.skipped and len(calls) == 1
    assert (second.root / "count" / "out.txt").read_text() == "made"
    assert second.storage.exists(second.root / "config.yaml")

    # A marker only a mirror holds (never pushed, e.g. the driver died uploading) does not count.
    second.storage.delete(second.root / "count")
    assert not run_stage(_count_stage(calls), cfg, second).skipped and len(calls) == 2


def test_a_search_refuses_an_object_store_run_dir(s3_run_uri):
    from leafgen.errors import ConfigError
    from leafgen.tuning.search import run_search

    cfg = load_config(None, [f"run_dir={s3_run_uri}", "tune.space={mix.synthetic_ratio: {choice: [0, 1]}}"])
    with pytest.raises(ConfigError, match="file locks and links"):
        run_search(cfg)
