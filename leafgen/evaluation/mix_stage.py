"""The ``mix`` stage: the train split plus the first ``mix.synthetic_ratio`` x (real target-class train
images) accepted synthetic images, recorded in ``run_dir/mix/mix.csv`` (id, label, source, path).

Only the train split is touched: val and test stay real, which the arms stage relies on and tests check.
"""

from __future__ import annotations

from typing import Any

from leafgen import atomic
from leafgen.config import PipelineConfig
from leafgen.data.images import image_path
from leafgen.data.mixing import mix_train, write_mix
from leafgen.data.split import read_split, split_counts
from leafgen.data.stages import dataset_root
from leafgen.diffusion.generation.manifest import read_manifest
from leafgen.stages import Stage, StageContext

MIX_FILE = "mix.csv"


def _mix(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    images = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    split = read_split(ctx.input_path("split", "split_csv"))
    gated = read_manifest(ctx.input_path("gate", "manifest"))
    synthetic_root = ctx.input_path("generate", "manifest").parent
    mixed = mix_train(
        split["train"],
        lambda image_id: image_path(images, image_id),
        [row for row in gated if row["accepted"]],
        synthetic_root,
        cfg.data.target_class,
        cfg.mix.synthetic_ratio,
    )
    write_mix(ctx.dir / MIX_FILE, mixed)
    real = split_counts(split)["train"][cfg.data.target_class]
    summary = {
        "mix_csv": f"{ctx.dir.name}/{MIX_FILE}",
        "synthetic_ratio": cfg.mix.synthetic_ratio,
        "real_target_images": real,
        "requested": mixed.requested,
        "synthetic": mixed.synthetic,
        "shortfall": mixed.shortfall,
        "accepted_available": sum(1 for row in gated if row["accepted"]),
        "train_images": len(mixed.rows),
    }
    if mixed.shortfall:
        print(
            f"[mix] the ratio {cfg.mix.synthetic_ratio} asks for {mixed.requested} synthetic "
            f"{cfg.data.target_class} images but the gate accepted {mixed.synthetic}: using those; raise "
            "generate.num_images or lower gate.threshold for more",
            flush=True,
        )
    atomic.write_json(ctx.dir / "summary.json", summary)
    return summary


MIX = Stage(
    name="mix",
    summary=lambda o: f"{o['synthetic']} synthetic + {o['train_images'] - o['synthetic']} real train images",
    fn=_mix,
    config_keys=("mix", "data.target_class"),
    inputs=("dataset", "split", "generate", "gate"),
)
