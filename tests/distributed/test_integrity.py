"""A finished tiny run, damaged the ways users damage one (a crash, a half-finished copy, a sync that broke
off): ``leafgen verify`` names each file, a rerun or ``verify --fix`` redoes the damaged stages and exactly
those dependants whose inputs came out different, a reader refuses a damaged input, and a run written
before markers listed their files still skips. Every test works on a copy of the session's tiny run."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
from safetensors import safe_open

from leafgen.cli import main
from leafgen.config import fingerprint, load_config
from leafgen.integrity.outputs import DIGEST, FILES
from leafgen.pipeline import STAGES
from leafgen.stages import COMPLETE, RunDir, _keyed


def _copy(pipeline_run, tmp_path):
    src, args = pipeline_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, symlinks=True)
    return run_dir, [*(a for a in args if not a.startswith("run_dir=")), f"run_dir={run_dir}"]


def _markers(run_dir):
    return {s.name: json.loads((run_dir / s.name / COMPLETE).read_text()) for s in STAGES}


def test_an_intact_run_verifies_clean_and_keeps_no_checkpoints(pipeline_run, capsys):
    run_dir, _ = pipeline_run
    assert main(["verify", str(run_dir)]) == 0
    table = capsys.readouterr().out
    for stage in STAGES:
        assert any(line.startswith(stage.name + " ") and line.endswith("  ok") for line in table.splitlines())
    # Pruned after export, including the run killed mid-training and resumed; models stored as float16.
    assert not [p for p in run_dir.rglob("checkpoint_*") if p.is_dir()]
    assert (run_dir / "arms" / "balanced" / "seed_0" / "model" / "model.safetensors").is_file()
    with safe_open(run_dir / "classifier" / "model" / "model.safetensors", "pt") as f:
        assert str(f.get_slice("fc.weight").get_dtype()) == "F16"


def test_verify_names_each_damage_and_fix_redoes_exactly_what_it_must(pipeline_run, tmp_path, capsys):
    run_dir, _ = _copy(pipeline_run, tmp_path)
    before = _markers(run_dir)
    (run_dir / "split" / "split.csv").unlink()
    marker = run_dir / "gate" / COMPLETE
    marker.write_text(marker.read_text()[:40])
    comparison = run_dir / "evaluate" / "comparison.json"  # the same size: a rerun alone would trust it
    comparison.write_text(comparison.read_text().replace('"seeds"', '"seedz"', 1))

    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "split/split.csv is missing" in out
    assert "evaluate/comparison.json has other content than the stage wrote" in out
    assert any(line.startswith("gate ") and line.endswith("broken marker") for line in out.splitlines())

    assert main(["verify", "--fix", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "[split] redoing: split/split.csv is missing" in out
    assert "[evaluate] redoing: evaluate/comparison.json has other content" in out
    after = _markers(run_dir)
    changed = {s for s in after if after[s][DIGEST] != before[s][DIGEST]}
    for stage in STAGES:  # redone: damaged, or an input's files came out different
        redone = f"[{stage.name}] done in" in out
        damaged = stage.name in {"split", "gate", "evaluate"}
        assert redone == (damaged or bool(changed & set(stage.inputs))), stage.name
    assert "split" not in changed and "[classifier] skipped (up to date)" in out  # the split is deterministic
    assert main(["verify", str(run_dir)]) == 0


def test_a_rerun_redoes_a_damaged_stage_and_a_reader_refuses_a_damaged_input(pipeline_run, tmp_path, capsys):
    run_dir, args = _copy(pipeline_run, tmp_path)
    (run_dir / "mix" / "mix.csv").write_text("")
    assert main(["run", "--only", "mix", *args]) == 0
    assert "[mix] redoing: mix/mix.csv is 0 bytes; the stage wrote" in capsys.readouterr().out

    model = run_dir / "classifier" / "model" / "model.safetensors"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[:1000])
    rows = pq.read_table(run_dir / "gate" / "manifest.parquet").to_pylist()
    image = next(r["file"] for r in rows if r["accepted"])
    (run_dir / "generate" / image).unlink()
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert (
        "classifier/model/model.safetensors is 1,000 bytes" in out and f"generate/{image} is missing" in out
    )

    gate = _markers(run_dir)["gate"]
    assert main(["run", "--only", "gate", "--force", *args]) == 2  # refused before anything is cleared
    err = capsys.readouterr().err
    assert "classifier/model/model.safetensors is 1,000 bytes" in err and "stage 'gate' cannot use" in err
    assert f"leafgen verify --fix {run_dir}" in err and "Traceback" not in err
    assert _markers(run_dir)["gate"] == gate

    assert main(["run", "--only", "generate", *args]) == 0
    assert f"[generate] redoing: generate/{image} is missing" in capsys.readouterr().out
    assert main(["train-classifier", *args]) == 0
    out = capsys.readouterr().out
    redone = (
        f"[classifier] redoing: classifier/model/model.safetensors is 1,000 bytes; the stage wrote {size:,}"
    )
    assert redone in out and "[split] skipped (up to date)" in out and model.stat().st_size == size
    # The gate's redone inputs came out different (a new manifest, a retrained model), so its key did.
    assert main(["run", "--only", "gate", *args]) == 0
    out = capsys.readouterr().out
    assert "[gate] done in" in out and "[gate] redoing" not in out

    split = run_dir / "split" / "split.csv"  # the same size, other rows: only a hash tells
    split.write_text(split.read_text().replace(",train", ",xtrai", 1))
    assert main(["run", "--only", "mix", "--force", *args]) == 2
    assert "split/split.csv has other content than the stage wrote" in capsys.readouterr().err


def test_a_run_written_before_markers_listed_files_still_skips(pipeline_run, tmp_path, capsys):
    run_dir, args = _copy(pipeline_run, tmp_path)
    cfg, run = load_config(run_dir / "config.yaml", [f"run_dir={run_dir}"]), RunDir(run_dir)
    keys = {}
    for stage in STAGES:  # markers as the code before this change wrote them, with its keys
        old = {k: v for k, v in run.marker(stage.name).items() if k not in (FILES, DIGEST)}
        keys[stage.name] = old["key"] = fingerprint(
            {
                "stage": stage.name,
                "version": stage.version,
                "config": {key: _keyed(cfg, key) for key in stage.config_keys},  # as that code's config
                "inputs": {name: keys[name] for name in stage.inputs},
                "fingerprint": stage.fingerprint_inputs(cfg) if stage.fingerprint_inputs else None,
            }
        )
        (run_dir / stage.name / COMPLETE).write_text(json.dumps(old))
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert all(f"[{s.name}] skipped (up to date)" in out for s in STAGES)
    assert main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(line.endswith("unverified") for line in out.splitlines()[2 : 2 + len(STAGES)])
