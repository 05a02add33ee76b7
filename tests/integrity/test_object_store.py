"""Output checks on a run kept in object storage (a real S3 API, moto's server): what the bucket holds is
what counts, whatever this machine's mirror holds."""

from __future__ import annotations

import pyarrow.fs as pafs

from leafgen.config import load_config
from leafgen.distributed.torch_trainer import prune_checkpoints
from leafgen.integrity.verify import verify_run
from leafgen.run_storage import MIRROR_ENV
from leafgen.stages import RunDir, Stage, run_stage


def _split_like(calls):
    def fn(cfg, ctx):  # named like a pipeline stage, so verify knows it
        calls.append(1)
        (ctx.dir / "split.csv").write_text("image_id,label\na,0\n")
        (ctx.dir / "ray" / "fit").mkdir(parents=True)
        (ctx.dir / "ray" / "fit" / "history.jsonl").write_text("{}\n")
        return {"split_csv": "split/split.csv"}

    return Stage("split", fn, ("data.split_seed",))


def _node(monkeypatch, tmp_path, uri, name) -> RunDir:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / name))
    return RunDir(uri)


def test_the_bucket_decides_whether_a_stage_is_intact(s3_run_uri, monkeypatch, tmp_path):
    calls, cfg = [], load_config()
    first = _node(monkeypatch, tmp_path, s3_run_uri, "a")
    run_stage(_split_like(calls), cfg, first)
    fs, csv = first.storage.fs, first.storage.remote_path(first.root / "split" / "split.csv")
    assert [s.status for s in verify_run(first, progress=False)] == ["ok"]

    with fs.open_output_stream(csv) as out:  # same size, other bytes, in the bucket only
        out.write(b"image_id,label\nb,0\n")
    statuses = verify_run(_node(monkeypatch, tmp_path, s3_run_uri, "b"), progress=False)
    assert statuses[0].status == "damaged"
    assert [str(p) for p in statuses[0].problems] == [
        "split/split.csv has other content than the stage wrote (its hash differs)"
    ]

    fs.delete_file(csv)  # the mirror of node a still holds it; the bucket does not
    logged = []
    assert not run_stage(_split_like(calls), cfg, first, log=logged.append).skipped
    assert logged == ["[split] redoing: split/split.csv is missing"] and len(calls) == 2
    assert fs.get_file_info(csv).type == pafs.FileType.File


def test_pruning_removes_ray_checkpoints_from_the_bucket(s3_run_uri, monkeypatch, tmp_path):
    run = _node(monkeypatch, tmp_path, s3_run_uri, "a")
    storage = run.root / "classifier" / "ray"
    fs, base = run.storage.fs, run.storage.remote_path(storage)
    for path in ("fit/checkpoint_1/model.safetensors", "fit/checkpoint_2/model.safetensors"):
        with fs.open_output_stream(f"{base}/{path}") as out:
            out.write(b"weights")
    for path in ("fit/checkpoint_manager_snapshot.json", "history.jsonl"):
        with fs.open_output_stream(f"{base}/{path}") as out:
            out.write(b"{}")
    (storage / "fit" / "checkpoint_0").mkdir(parents=True)  # one Ray wrote to the mirror's disk
    prune_checkpoints(storage, run.storage)
    left = [
        i.path
        for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
        if i.type == pafs.FileType.File
    ]
    assert left == [f"{base}/history.jsonl"]
    assert not (storage / "fit" / "checkpoint_0").exists()
