"""Which fine-tune teaches one token per kind of the class: chosen on some judges, measured on others.

Two kinds of multiple_diseases leaf are painted (benchmarks/finetune_judges.py's ``KINDS``: many rust spots
and one scab blotch, or the reverse; 16 each) and each kind is given its own token, the kinds standing in
for clusters (k-means on these judges' or the committed backbone's features does not recover them, so the
question here is only whether the tokens learn their kind). Candidate fine-tunes (two-token textual
inversion at 400 and 1200 steps, DreamBooth LoRA with two tokens and no prior) each draw ``--samples``
images per token; every sample is assigned to the nearer kind centroid (cosine) in a judge's features.

Judges are the demo's recipe on the demo's leaves, trained as finetune_judges.py trains them (and reused
from its ``--work`` when given the same one): seeds 1005-1007 *select* (the candidate whose smaller
own-kind share is highest on their mean), seeds 1000-1004 *measure* the selected one, so the setting is
not picked on the figures that report it.

    python benchmarks/finetune_judges.py --work runs/judges --judges 5
    python benchmarks/cluster_tokens.py --work runs/judges --out docs/finetune_judges/cluster_tokens.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from finetune_judges import SIZE, fine_tune, load_world, nearest_group, paint_kinds, train_judges

from leafgen.config import load_config
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.identifier import cluster_tokens, identifier_prompts
from leafgen.diffusion.probes.evaluate import generate


def own_kind_shares(judge, kind_paths, kinds, samples) -> list[float]:
    """Per token, the share of its samples nearer its own kind's centroid in ``judge``'s features."""
    nearest = nearest_group(judge, kind_paths, kinds, samples)
    return [float((groups == kind).mean()) for kind, groups in enumerate(nearest)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/judges"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = load_config("configs/demo.yaml")
    (images, labels, _), (train, val, _) = load_world(args.work, "demo")
    selectors = train_judges(args.work, [1005, 1006, 1007], images, labels, train, val)
    measurers = train_judges(args.work, [1000, 1001, 1002, 1003, 1004], images, labels, train, val)
    kind_paths, kinds = paint_kinds(args.work / "kinds")

    db = replace(cfg.dreambooth, validation_steps=10**6, checkpointing_steps=10**6, clusters=2)
    candidates = {
        "textual_inversion_400": replace(db, method="textual_inversion"),
        "textual_inversion_1200": replace(db, method="textual_inversion", textual_inversion_steps=1200),
        "dreambooth_lora_no_prior": replace(db, prior_loss_weight=0.0),
    }
    prompts = identifier_prompts(
        db.instance_prompt, db.identifier_token, cluster_tokens(db.identifier_token, 2)
    )
    result = {}
    for name, candidate in candidates.items():
        model = fine_tune(candidate, kind_paths, [], args.work / f"tokens_{name}", clusters=kinds.tolist())
        pipe = load_generation_pipeline(EngineSettings(EMBEDDED_NAME, adapter=model), torch.device("cpu"))
        samples = [generate(pipe, p, args.samples, 0, 32, 20, 3.0, SIZE) for p in prompts]
        select = [own_kind_shares(j["model"], kind_paths, kinds, samples) for j in selectors]
        result[name] = {
            "select": select,
            "score": float(np.mean([min(s) for s in select])),
            "measure": [own_kind_shares(j["model"], kind_paths, kinds, samples) for j in measurers],
        }
        print(name, json.dumps(result[name]), flush=True)
    chosen = max(result, key=lambda n: result[n]["score"])
    print(f"chosen on judges 1005-1007: {chosen}; measured on 1000-1004: {result[chosen]['measure']}")
    if args.out:
        args.out.write_text(json.dumps({"chosen": chosen, "candidates": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
