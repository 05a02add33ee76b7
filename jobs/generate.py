"""`ray job submit` entrypoint for synthetic images and their quality gate;
parses --config plus overrides, runs, exits.

python jobs/generate.py --config configs/demo.yaml run_dir=runs/demo
"""

from __future__ import annotations

import sys

from leafgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
