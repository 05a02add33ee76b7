"""What output checks cost on a finished run directory, and what the run directory holds.

    python benchmarks/run_integrity.py runs/demo

Prints, per stage: listed files, bytes, the quick check a rerun makes before skipping (existence and size
of every listed file) and the full check ``leafgen verify`` makes (sizes and hashes); then the totals, and
the bytes of Ray checkpoint folders and of exported classifier models. Each check is timed as the median
of ``--repeat`` runs (the files are in the page cache after the first, as on a rerun right after a run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from leafgen.integrity.outputs import FILES, check
from leafgen.integrity.verify import stage_folders
from leafgen.stages import RunDir


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    rows, quick_total, full_total = [], 0.0, 0.0
    for name in stage_folders(run):
        marker = run.marker(name)
        if marker is None or FILES not in marker:
            continue
        quick = _timed(lambda m=marker, n=name: check(run, n, m), args.repeat)
        full = _timed(lambda m=marker, n=name: check(run, n, m, content=True), 1)
        size = sum(e["size"] for e in marker[FILES].values())
        rows.append((name, len(marker[FILES]), size, quick, full))
        quick_total, full_total = quick_total + quick, full_total + full
    print(f"{'stage':<14} {'files':>6} {'MB':>8} {'quick ms':>9} {'full ms':>9}")
    for name, files, size, quick, full in rows:
        print(f"{name:<14} {files:>6} {size / 1e6:>8.1f} {quick * 1e3:>9.1f} {full * 1e3:>9.1f}")
    files, size = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':<14} {files:>6} {size / 1e6:>8.1f} {quick_total * 1e3:>9.1f} {full_total * 1e3:>9.1f}")
    root = run.root
    everything = _bytes(root.rglob("*"))
    checkpoints = _bytes(f for d in root.rglob("checkpoint_*") if d.is_dir() for f in d.rglob("*"))
    models = _bytes(root.rglob("model/model.safetensors"))
    print(
        f"run directory: {everything / 1e6:.1f} MB, of which Ray checkpoints {checkpoints / 1e6:.1f} MB, "
        f"exported classifier weights {models / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
