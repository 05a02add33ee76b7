"""`ray job submit` entrypoint for the baseline classifier (data stages first);
parses --config plus overrides, runs, exits.

python jobs/train_classifier.py --config configs/demo.yaml run_dir=runs/demo
"""

from __future__ import annotations

import sys

from leafgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-classifier", *sys.argv[1:]]))
