"""`ray job submit` entrypoint for the hyperparameter search: parse --config plus overrides, run, exit.

python jobs/tune.py --config configs/tune.yaml run_dir=runs/tune
"""

from __future__ import annotations

import sys

from leafgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
