"""`ray job submit` entrypoint for the whole pipeline: parse --config plus overrides, run, exit.

python jobs/pipeline.py --config configs/demo.yaml run_dir=runs/demo
"""

from __future__ import annotations

import sys

from leafgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
