"""The analysis notebook runs top to bottom against a real (tiny) run directory."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from leafgen.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_run_overview_notebook_executes(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--only",
                "dataset",
                "--only",
                "split",
                "--config",
                "configs/tiny.yaml",
                f"run_dir={run_dir}",
                "data.procedural.scale=0.03",
            ]
        )
        == 0
    )
    capsys.readouterr()
    monkeypatch.setenv("LEAFGEN_RUN_DIR", str(run_dir))
    nb = nbformat.read(REPO / "notebooks" / "run_overview.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "split" in text and "dataset" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
