"""Everything a run needs, checked before its first stage, so a run that cannot finish fails in seconds.

Two kinds of problem are collected, all of them, then reported together (one ``leafgen: error:`` line
each, exit 2), before any stage clears or writes anything:

- each selected stage's own ``check`` (cross-section rules such as ``eval.judge.seed`` differing from
  ``classifier.seed``, or ``generate.adapter`` refused by the pipeline);
- what the selected stages will load from outside the run, found without reading it whole or going online:
  ``data.root`` (a folder), ``base_model.name_or_path`` (the embedded model, a local diffusers folder, or,
  with ``HF_HUB_OFFLINE=1``, a complete snapshot in the Hugging Face cache) and ``classifier.weights``
  (a file, or torchvision's ImageNet file when offline). A stage needs an outside input when it is keyed
  on its config key (or the key's section), since that is what its outputs depend on.

Whether a file's content loads is still the loading stage's business: a corrupt weights file passes here
and is reported by the worker that reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from leafgen.config import PipelineConfig
from leafgen.errors import LeafgenError, PreflightError

# Components leafgen loads from a base model (no safety checker or feature extractor), and which of them
# carry weights.
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHTED = ("unet", "vae", "text_encoder")


def _data_root(cfg: PipelineConfig) -> list[str]:
    """The folder and its CSVs; the dataset stage validates every row and image."""
    root = cfg.data.root
    if root is None:
        return []
    folder = Path(root).expanduser()
    if not folder.is_dir():
        return [
            f"data.root {root}: no such folder; point it at a Kaggle-format folder (train.csv, test.csv, "
            "images/) or leave it null for the embedded procedural dataset"
        ]
    if not (folder / "train.csv").is_file():
        return [f"data.root {root}: train.csv: file missing (a Kaggle-format folder holds train.csv)"]
    return []


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def hub_snapshot_problem(
    repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None
) -> str | None:
    """Why the Hugging Face cache (``cache_dir``, default the hub's) holds no complete snapshot of
    ``repo_id`` (what leafgen loads of a diffusers pipeline), read from the cache alone; None when it
    does."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        index = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir, revision=revision)
    except ValueError as exc:  # not a valid repo id either
        return f"neither a local folder nor a valid hub id ({exc})"
    if not isinstance(index, str):
        return f"not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE})"
    snapshot = Path(index).parent
    listed = json.loads(Path(index).read_text())
    missing = []
    for name in _COMPONENTS:
        if name not in listed or listed[name][0] is None:
            continue
        folder = snapshot / name
        if not folder.is_dir() or not any(p.suffix == ".json" for p in folder.iterdir()):
            missing.append(f"{name}/ config")
        elif name in _WEIGHTED and not any(p.suffix in (".safetensors", ".bin") for p in folder.iterdir()):
            missing.append(f"{name}/ weights")
    if missing:
        return f"an incomplete snapshot in the Hugging Face cache ({snapshot}: no {', '.join(missing)})"
    return None


def _base_model(cfg: PipelineConfig) -> list[str]:
    from leafgen.diffusion.components import resolve_model_path

    name = cfg.base_model.name_or_path
    try:
        source = resolve_model_path(name)  # the embedded folder, or a local folder with model_index.json
    except LeafgenError as exc:
        return [str(exc)]
    if Path(source).expanduser().exists():
        return []
    if name.startswith(("/", "./", "../", "~")):
        return [f"base_model.name_or_path {name}: no such folder"]
    if not _offline():
        return []  # a hub id that from_pretrained downloads; only the download can tell
    why = hub_snapshot_problem(name, cfg.base_model.revision)
    if why is None:
        return []
    return [
        f"base_model.name_or_path {name!r} is {why}, and HF_HUB_OFFLINE=1 allows no download: run "
        f"`huggingface-cli download {name}` on a connected machine (or copy its cache here), or point "
        "base_model.name_or_path at a local diffusers folder"
    ]


def _classifier_weights(cfg: PipelineConfig) -> list[str]:
    from leafgen.classifier.model import weights_problem

    problem = weights_problem(cfg.classifier.arch, cfg.classifier.weights)
    return [problem] if problem else []


# Outside input -> its check, run when a selected stage is keyed on that config key.
OUTSIDE: dict[str, Callable[[PipelineConfig], list[str]]] = {
    "data.root": _data_root,
    "base_model.name_or_path": _base_model,
    "classifier.weights": _classifier_weights,
}


def _keyed_on(stage_keys: Sequence[str], key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in stage_keys)


def problems(cfg: PipelineConfig, stages: Sequence) -> list[str]:
    """Every problem that would stop ``stages``, in stage order, each once."""
    found: list[str] = []
    for stage in stages:
        if stage.check is not None:
            try:
                stage.check(cfg)
            except LeafgenError as exc:
                found.append(str(exc))
    for key, check in OUTSIDE.items():
        if any(_keyed_on(stage.config_keys, key) for stage in stages):
            found += check(cfg)
    return list(dict.fromkeys(found))


def preflight(cfg: PipelineConfig, stages: Sequence) -> None:
    """Raise one :class:`PreflightError` listing every problem of ``stages``; nothing is touched."""
    found = problems(cfg, stages)
    if found:
        raise PreflightError(found)
