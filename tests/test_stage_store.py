"""Stage outputs shared by key between run directories: computed once, waited for, never overwritten."""

from __future__ import annotations

import multiprocessing as mp
import time

from leafgen.config import load_config
from leafgen.stage_store import StageStore
from leafgen.stages import RunDir, Stage, run_stage


def _slow_stage(name: str = "fit", inputs: tuple[str, ...] = ()) -> Stage:
    def fn(cfg, ctx):
        time.sleep(1.0)  # long enough for a second process to arrive while this one holds the key
        (ctx.dir / "out.txt").write_text(str(cfg.classifier.epochs))
        return {"epochs": cfg.classifier.epochs}

    return Stage(name=name, fn=fn, config_keys=("classifier.epochs",), inputs=inputs)


def _run_in(store_root: str, run_root: str, epochs: int) -> None:
    cfg = load_config(None, [f"classifier.epochs={epochs}"])
    StageStore(store_root).run(_slow_stage(), cfg, RunDir(run_root))


def test_runs_with_the_same_key_share_one_output(tmp_path):
    store, stage = StageStore(tmp_path / "store"), _slow_stage()
    a, b, c = (RunDir(tmp_path / n) for n in "abc")
    cfg = load_config(None, ["classifier.epochs=2"])
    assert not store.run(stage, cfg, a).skipped
    assert store.run(stage, cfg, b).skipped
    assert not store.run(stage, load_config(None, ["classifier.epochs=3"]), c).skipped
    assert (a.root / "fit").resolve() == (b.root / "fit").resolve() != (c.root / "fit").resolve()
    assert (b.root / "fit" / "out.txt").read_text() == "2"
    assert [r["run"] for r in store.computed("fit")] == [str(a.root), str(c.root)]


def test_concurrent_runs_compute_a_key_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_run_in, args=(str(tmp_path / "store"), str(tmp_path / f"run{i}"), 4))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(StageStore(tmp_path / "store").computed("fit")) == 1
    for i in range(3):
        assert (tmp_path / f"run{i}" / "fit" / "out.txt").read_text() == "4"


def test_a_plain_run_never_writes_through_a_link_to_another_key(tmp_path):
    """`leafgen run` on a run directory made by a search (links into the store) with other settings
    must leave the store's entry alone and write its own folder."""
    store, stage = StageStore(tmp_path / "store"), _slow_stage()
    run = RunDir(tmp_path / "best")
    store.run(stage, load_config(None, ["classifier.epochs=2"]), run)
    shared = (run.root / "fit").resolve()
    assert not run_stage(stage, load_config(None, ["classifier.epochs=5"]), run).skipped
    assert not (run.root / "fit").is_symlink()
    assert (run.root / "fit" / "out.txt").read_text() == "5"
    assert (shared / "out.txt").read_text() == "2"


def test_upstream_keys_resolve_through_links(tmp_path):
    store = StageStore(tmp_path / "store")
    up, down = _slow_stage("up"), _slow_stage("down", inputs=("up",))
    cfg = load_config(None, ["classifier.epochs=1"])
    for name in ("a", "b"):
        run = RunDir(tmp_path / name)
        results = [store.run(s, cfg, run) for s in (up, down)]
        assert all(r.skipped for r in results) == (name == "b")
    assert len(store.computed("down")) == 1
