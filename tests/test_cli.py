import json
import subprocess
import sys

import pytest

from leafgen.cli import main
from leafgen.labels import CLASSES

TINY = ["data.procedural.scale=0.03", "data.procedural.size=64", "data.procedural.test_fraction=0.2"]
DATA_ONLY = ["--only", "dataset", "--only", "split"]  # the classifier stage has its own Ray tests


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "data", "config"):
        assert cmd in out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--help"],
        ["data", "make-demo", "--help"],
        ["data", "validate", "--help"],
        ["config", "show", "--help"],
    ],
)
def test_subcommand_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "usage: leafgen" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "leafgen.cli", "config", "explain", "data.target"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "data.target_class (str)" in out.stdout


def test_make_demo_prints_counts_and_preview(tmp_path, capsys):
    code = main(
        [
            "data",
            "make-demo",
            "--out",
            str(tmp_path / "d"),
            "--scale",
            "0.03",
            "--size",
            "64",
            "--workers",
            "1",
            "--preview",
            str(tmp_path / "sheet.png"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for c in CLASSES:
        assert c in out
    assert (tmp_path / "sheet.png").is_file()


def test_run_writes_split_and_skips_on_rerun(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", *DATA_ONLY, "--config", "configs/demo.yaml", f"run_dir={run_dir}", *TINY]) == 0
    first = capsys.readouterr().out
    assert "[dataset] done" in first and "[split] done" in first
    assert "multiple_diseases" in first and "val" in first
    assert (run_dir / "config.yaml").is_file() and (run_dir / "provenance.json").is_file()
    split = json.loads((run_dir / "split" / "summary.json").read_text())
    assert all(split[part][c] > 0 for part in ("train", "val", "test") for c in CLASSES)

    assert main(["run", *DATA_ONLY, "--config", "configs/demo.yaml", f"run_dir={run_dir}", *TINY]) == 0
    assert "[dataset] skipped (up to date)" in capsys.readouterr().out

    # Only the split depends on the split seed: the dataset stays, the split is redone.
    assert (
        main(
            [
                "run",
                *DATA_ONLY,
                "--config",
                "configs/demo.yaml",
                f"run_dir={run_dir}",
                *TINY,
                "data.split_seed=5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[dataset] skipped" in out and "[split] done" in out


def test_run_only_unknown_stage_and_bad_key_are_errors(tmp_path, capsys):
    assert main(["run", "--only", "nope", f"run_dir={tmp_path}"]) == 2
    assert "unknown stage 'nope'" in capsys.readouterr().err
    assert main(["run", "classifier.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean classifier.epochs?" in err and "Traceback" not in err


def test_run_on_a_bad_user_folder_fails_cleanly(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["run", f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}"]) == 2
    assert "train.csv: file missing" in capsys.readouterr().err


def test_overrides_may_stand_between_options(capsys):
    assert (
        main(["config", "show", "classifier.epochs=3", "--config", "configs/tiny.yaml", "data.split_seed=4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "split_seed: 4" in out
    with pytest.raises(SystemExit):
        main(["config", "show", "--bogus"])
