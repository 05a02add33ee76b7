"""`ray job submit` entrypoint for DreamBooth on the target class (class images first);
parses --config plus overrides, runs, exits.

python jobs/dreambooth.py --config configs/demo.yaml run_dir=runs/demo
"""

from __future__ import annotations

import sys

from leafgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["dreambooth", *sys.argv[1:]]))
