"""``leafgen verify`` on a small run of stand-in stages: one row per stage folder with its status, each
damaged file named, exit 1 only when something is damaged."""

from __future__ import annotations

import json

from leafgen.cli import main
from leafgen.config import load_config
from leafgen.stages import COMPLETE, STARTED, RunDir, Stage, run_stage


def _writer(name):
    def fn(cfg, ctx):
        (ctx.dir / "a.txt").write_text(name)
        (ctx.dir / "b.txt").write_text(name * 2)
        return {}

    return Stage(name, fn, ())


def _rows(out):
    return {
        line.split()[0]: line.split() for line in out.splitlines()[2:] if line and not line.startswith(" ")
    }


def test_each_status_and_the_exit_code(tmp_path, capsys):
    run, cfg = RunDir(tmp_path), load_config()
    run.start(cfg)
    for name in ("intact", "damaged", "older", "broken"):
        run_stage(_writer(name), cfg, run)
    assert main(["verify", str(tmp_path)]) == 0
    assert {row[-1] for row in _rows(capsys.readouterr().out).values()} == {"ok"}

    (tmp_path / "damaged" / "a.txt").unlink()
    (tmp_path / "damaged" / "b.txt").write_text("d" * 14)  # the same size: the hash tells
    marker = json.loads((tmp_path / "older" / COMPLETE).read_text())
    (tmp_path / "older" / COMPLETE).write_text(
        json.dumps({k: marker[k] for k in ("key", "stage", "outputs")})
    )
    (tmp_path / "broken" / COMPLETE).write_text("{")
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / STARTED).write_text("{}")
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["intact"][1:] == ["2", "2", "0", "0", "ok"]
    assert rows["damaged"][1:] == ["2", "0", "1", "1", "damaged"]
    assert rows["older"][-1] == "unverified" and rows["started"][-1] == "incomplete"
    assert rows["broken"][-2:] == ["broken", "marker"]
    assert "  damaged/a.txt is missing" in out
    assert "  damaged/b.txt has other content than the stage wrote (its hash differs)" in out
    assert "damaged: damaged, broken; redo them" in out


def test_a_folder_leafgen_did_not_write_is_an_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a run directory (no config.yaml)" in capsys.readouterr().err
