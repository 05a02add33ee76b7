"""A torchvision backbone with a linear head for the leaf classes, and where its weights come from.

``weights`` is one of:

- ``none``: random initialisation;
- ``embedded``: the ResNet18 backbone the project pretrains on procedural leaves without the minority
  class and commits in ``leafgen/assets`` (``leafgen backbone``): the offline stand-in for ImageNet;
- ``imagenet``: torchvision's ImageNet weights for the architecture. They come from torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``); when the file is absent and downloading is impossible (offline, or
  ``HF_HUB_OFFLINE=1``) this is an error saying which file to put where, never a silent random init;
- a path to a ``.safetensors`` file or a torch state dict (read with ``weights_only=True``), either of the
  full classifier or of an ImageNet backbone whose head is replaced.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from leafgen.errors import LeafgenError

EMBEDDED_BACKBONE = Path(__file__).resolve().parent.parent / "assets" / "leaf-resnet18" / "model.safetensors"
EMBEDDED_ARCH = "resnet18"


def _replace_head(model: nn.Module, num_classes: int) -> tuple[str, nn.Linear]:
    """Swap the last ``nn.Linear`` for one with ``num_classes`` outputs; returns its qualified name."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LeafgenError(f"{type(model).__name__} has no linear classification head to replace")
    name, old = linears[-1]
    head = nn.Linear(old.in_features, num_classes)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], head)
    return name, head


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise LeafgenError(f"classifier.arch={arch!r} has no ImageNet weights in torchvision") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise LeafgenError(_missing_weights_message(cached, weights.url, "offline mode (HF_HUB_OFFLINE=1)"))
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as exc:
        raise LeafgenError(_missing_weights_message(cached, weights.url, f"download failed: {exc}")) from None


def weights_problem(arch: str, weights: str) -> str | None:
    """Why ``weights`` cannot be loaded on this machine, found without reading or downloading anything
    (for the pre-flight check); None when it looks loadable."""
    if weights == "none":
        return None
    if weights == "imagenet":
        try:
            url = torchvision.models.get_model_weights(arch).DEFAULT.url
        except (ValueError, KeyError):
            return f"classifier.arch={arch!r} has no ImageNet weights in torchvision"
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file() and os.environ.get("HF_HUB_OFFLINE") == "1":
            return _missing_weights_message(cached, url, "offline mode (HF_HUB_OFFLINE=1)")
        return None
    if weights == "embedded":
        if arch != EMBEDDED_ARCH:
            return f"classifier.weights=embedded is a {EMBEDDED_ARCH} backbone; classifier.arch is {arch!r}"
        path = EMBEDDED_BACKBONE
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        return (
            f"classifier.weights={weights!r}: no such file {path}; use 'imagenet', 'embedded', 'none' or "
            "a path to a weights file"
        )
    return None


def _missing_weights_message(path: Path, url: str, why: str) -> str:
    return (
        f"classifier.weights=imagenet: {path} is not cached and cannot be fetched ({why}). "
        f"Download {url} on a machine with internet and copy it to {path} (or set TORCH_HOME), "
        "or use classifier.weights=none or a local weights file."
    )


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LeafgenError(
            f"classifier.weights={str(path)!r}: no such file; use 'imagenet', 'embedded', 'none' or a path"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for a corrupt file
        raise LeafgenError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LeafgenError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved dicts carry "module."


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], head: str, source: str) -> None:
    """Load ``state``; a head of another shape (an ImageNet file) is left freshly initialised."""
    own = model.state_dict()
    head_keys = {f"{head}.weight", f"{head}.bias"}
    usable = {k: v for k, v in state.items() if not (k in head_keys and own.get(k, v).shape != v.shape)}
    missing = [k for k in own if k not in usable and k not in head_keys]
    unexpected = [k for k in usable if k not in own]
    wrong = [k for k in usable if k in own and own[k].shape != usable[k].shape]
    if missing or unexpected or wrong:
        raise LeafgenError(
            f"{source}: weights do not fit this architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}); "
            "check classifier.arch"
        )
    model.load_state_dict(usable, strict=False)


def build_classifier(arch: str = "resnet18", weights: str = "none", num_classes: int = 4) -> nn.Module:
    """A torchvision ``arch`` with a ``num_classes`` linear head, initialised as ``weights`` says."""
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError:
        known = ", ".join(
            m
            for m in torchvision.models.list_models(torchvision.models)
            if "resnet" in m or "efficientnet" in m
        )
        raise LeafgenError(
            f"classifier.arch={arch!r} is not a torchvision classification model (e.g. {known})"
        ) from None
    head, _ = _replace_head(model, num_classes)
    if weights == "none":
        return model
    if weights == "imagenet":
        _load_backbone(model, _imagenet_state_dict(arch), head, f"torchvision ImageNet weights for {arch}")
    elif weights == "embedded":
        if arch != EMBEDDED_ARCH:
            raise LeafgenError(
                f"classifier.weights=embedded is a {EMBEDDED_ARCH} backbone; classifier.arch is {arch!r}"
            )
        if not EMBEDDED_BACKBONE.is_file():
            raise LeafgenError(
                f"classifier.weights=embedded: {EMBEDDED_BACKBONE} is missing from this installation; "
                "reinstall leafgen, or pretrain one with `leafgen backbone --out DIR` and pass "
                "classifier.weights=DIR/model.safetensors"
            )
        _load_backbone(model, _read_weights_file(EMBEDDED_BACKBONE), head, str(EMBEDDED_BACKBONE))
    else:
        path = Path(weights).expanduser()
        _load_backbone(model, _read_weights_file(path), head, str(path))
    return model
