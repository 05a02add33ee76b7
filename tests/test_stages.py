import json

import pytest

from leafgen.config import load_config
from leafgen.errors import StageError
from leafgen.stages import COMPLETE, STARTED, RunDir, Stage, run_stage


def _recording_stage(calls, name="alpha", keys=("classifier.epochs",), inputs=()):
    def fn(cfg, ctx):
        calls.append(name)
        (ctx.dir / "out.txt").write_text(str(cfg.classifier.epochs))
        return {"epochs": cfg.classifier.epochs}

    return Stage(name=name, fn=fn, config_keys=keys, inputs=inputs)


def test_matching_marker_skips_and_changed_config_part_redoes(tmp_path):
    calls = []
    stage = _recording_stage(calls)
    run = RunDir(tmp_path)
    first = run_stage(stage, load_config(None, ["classifier.epochs=1"]), run)
    assert not first.skipped and first.outputs == {"epochs": 1}
    again = run_stage(stage, load_config(None, ["classifier.epochs=1"]), run)
    assert again.skipped and again.outputs == {"epochs": 1}
    # A key the stage does not depend on does not invalidate it.
    assert run_stage(stage, load_config(None, ["classifier.epochs=1", "mix.synthetic_ratio=2"]), run).skipped
    changed = run_stage(stage, load_config(None, ["classifier.epochs=2"]), run)
    assert not changed.skipped
    assert calls == ["alpha", "alpha"]
    assert (tmp_path / "alpha" / "out.txt").read_text() == "2"
    assert not (tmp_path / "alpha" / STARTED).exists()


def test_force_redoes_a_complete_stage(tmp_path):
    calls = []
    stage, run, cfg = _recording_stage(calls), RunDir(tmp_path), load_config()
    run_stage(stage, cfg, run)
    assert not run_stage(stage, cfg, run, force=True).skipped
    assert calls == ["alpha", "alpha"]


def test_upstream_change_cascades_downstream(tmp_path):
    calls = []
    up = _recording_stage(calls, "up", keys=("classifier.epochs",))
    down = _recording_stage(calls, "down", keys=(), inputs=("up",))
    run = RunDir(tmp_path)
    for stage in (up, down):
        run_stage(stage, load_config(None, ["classifier.epochs=1"]), run)
    for stage in (up, down):
        run_stage(stage, load_config(None, ["classifier.epochs=3"]), run)
    assert calls == ["up", "down", "up", "down"]


def test_missing_upstream_is_a_clear_error(tmp_path):
    down = _recording_stage([], "down", keys=(), inputs=("up",))
    with pytest.raises(StageError, match="needs stage 'up', which has not completed"):
        run_stage(down, load_config(), RunDir(tmp_path))


def test_interrupted_stage_resumes_with_same_key_and_restarts_with_another(tmp_path):
    seen = []

    def fn(cfg, ctx):
        seen.append(sorted(p.name for p in ctx.dir.iterdir()))
        partial = ctx.dir / "partial.txt"
        if not partial.exists():
            partial.write_text("half")
            raise KeyboardInterrupt  # simulated kill after writing a checkpoint
        return {}

    stage, run = Stage("resumable", fn, ("classifier.epochs",)), RunDir(tmp_path)
    cfg = load_config()
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, cfg, run)
    assert (tmp_path / "resumable" / STARTED).exists() and not (tmp_path / "resumable" / COMPLETE).exists()
    run_stage(stage, cfg, run)  # same key: the checkpoint is still there, so it completes
    assert "partial.txt" in seen[1]

    with pytest.raises(KeyboardInterrupt):  # another key: the old checkpoint is cleared first
        run_stage(stage, load_config(None, ["classifier.epochs=9"]), run)
    assert "partial.txt" not in seen[2]


def test_corrupt_marker_means_redo(tmp_path):
    calls = []
    stage, run, cfg = _recording_stage(calls), RunDir(tmp_path), load_config()
    run_stage(stage, cfg, run)
    (tmp_path / "alpha" / COMPLETE).write_text("{not json")
    assert not run_stage(stage, cfg, run).skipped
    assert json.loads((tmp_path / "alpha" / COMPLETE).read_text())["stage"] == "alpha"


def test_run_start_writes_config_and_provenance(tmp_path):
    cfg = load_config(None, ["classifier.epochs=4"])
    RunDir(tmp_path).start(cfg, ["leafgen", "run"])
    assert "epochs: 4" in (tmp_path / "config.yaml").read_text()
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["command"] == ["leafgen", "run"]
    assert prov["packages"]["torch"].startswith("2.14.1")
    assert {"hostname", "cpu_count", "platform"} <= set(prov["machine"])
    assert "git_commit" in prov and "started_at" in prov


def test_relative_run_dir_is_made_absolute(tmp_path, monkeypatch):
    # Ray workers run in other working directories, so paths handed to them must not be relative.
    monkeypatch.chdir(tmp_path)
    assert RunDir("runs/x").root == tmp_path / "runs" / "x"


def test_an_input_some_settings_need_is_required_and_keyed_only_with_those_settings(tmp_path):
    from dataclasses import replace

    calls = []
    up = _recording_stage(calls, "up", keys=("classifier.epochs",))
    down = replace(
        _recording_stage(calls, "down", keys=("mix.synthetic_ratio",)),
        inputs_when=lambda cfg: ("up",) if cfg.mix.synthetic_ratio > 1 else (),
    )
    run = RunDir(tmp_path)
    plain = load_config(None, ["classifier.epochs=1"])
    assert run_stage(down, plain, run).outputs == {"epochs": 1}  # needs no "up"
    with pytest.raises(StageError, match="needs stage 'up'"):
        run_stage(down, load_config(None, ["mix.synthetic_ratio=2"]), run)
    run_stage(up, plain, run)
    assert run_stage(down, plain, run).skipped  # "up" finishing changes nothing it is not keyed on
    needing = load_config(None, ["mix.synthetic_ratio=2"])
    assert not run_stage(down, needing, run).skipped
    assert run_stage(down, needing, run).skipped
    run_stage(up, load_config(None, ["classifier.epochs=3"]), run)  # now its upstream changed
    changed = load_config(None, ["classifier.epochs=3", "mix.synthetic_ratio=2"])
    assert not run_stage(down, changed, run).skipped
