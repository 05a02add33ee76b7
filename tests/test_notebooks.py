"""The analysis notebook runs top to bottom against a real run directory: here one with only the data
stages (later sections skip themselves); tests/distributed/test_pipeline.py runs it on a whole run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

from leafgen.cli import main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def run_notebook(run_dir: Path) -> tuple[list[Any], str]:
    """Execute the notebook on ``run_dir``; returns its outputs and their printed text. Fails on an error."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute(env={**os.environ, "LEAFGEN_RUN_DIR": str(run_dir)})  # the kernel's own environment
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs, "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def images_in(outputs: list[Any]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_analysis_notebook_executes_on_a_run_with_only_the_data_stages(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["--config", "configs/tiny.yaml", f"run_dir={run_dir}", "data.procedural.scale=0.03"]
    assert main(["run", "--only", "dataset", "--only", "split", *args]) == 0
    capsys.readouterr()
    outputs, text = run_notebook(run_dir)
    assert "split" in text and "dataset" in text
    assert "the evaluate stage has not run yet" in text
    assert images_in(outputs) == 2  # the class-count bars and the contact sheet
