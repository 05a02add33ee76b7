"""The identifier tokens: one per cluster of the target class (one in all unless ``dreambooth.clusters``),
their embeddings trained alone, saved as diffusers saves textual-inversion embeddings.

A new token (``<disease-leaf>``, or ``<disease-leaf-0>``, ``<disease-leaf-1>``, ... with clusters) is added
to the tokenizer, the embedding table grows by one row per token, and each row starts as a copy of an
existing word's embedding (``leaf``), as textual inversion does. While the rest of the text encoder stays
frozen, a gradient mask lets only the new rows learn. The rows are saved as ``learned_embeds.safetensors``
({token: vector}). diffusers 0.42's ``load_textual_inversion`` reads a file of one token by path and
refuses a file of several (it wants one key per state dict), so several tokens load as
``load_textual_inversion(list(embeds.values()), token=list(embeds))``: :func:`load_learned_embeds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from leafgen import atomic
from leafgen.errors import ConfigError, LeafgenError

EMBEDS_FILE = "learned_embeds.safetensors"


def single_token_id(tokenizer: CLIPTokenizer, word: str, key: str) -> int:
    """The id of ``word`` if it is exactly one token, else an error naming the config ``key``."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise LeafgenError(
            f"{key}={word!r} is {len(ids)} tokens ({tokenizer.convert_ids_to_tokens(ids)}); DreamBooth needs "
            "one token: pick a rare single-token word, or let dreambooth.new_token add it"
        )
    return ids[0]


def cluster_tokens(identifier: str, k: int) -> list[str]:
    """The identifier tokens of ``k`` clusters: the identifier itself for one, else one derived token per
    cluster, numbered inside the identifier's brackets (``<disease-leaf-0>``) or appended (``sks-0``)."""
    if k == 1:
        return [identifier]
    stem, close = (identifier[:-1], ">") if identifier.endswith(">") else (identifier, "")
    return [f"{stem}-{i}{close}" for i in range(k)]


def identifier_prompts(prompt: str, identifier: str, tokens: Sequence[str]) -> list[str]:
    """``prompt`` once per token, the identifier replaced by it (the prompt alone if it lacks it)."""
    if identifier not in prompt:
        return [prompt]
    return [prompt.replace(identifier, token) for token in tokens]


def expand_prompts(prompts: Sequence[str], identifier: str, tokens: Sequence[str]) -> list[str]:
    """Every prompt naming the identifier once per cluster token; the others as they are."""
    return [p for prompt in prompts for p in identifier_prompts(prompt, identifier, tokens)]


def check_new_tokens(tokenizer: CLIPTokenizer, tokens: Sequence[str]) -> None:
    """Refuse tokens the vocabulary already holds: a new token must start from the initializer's meaning."""
    taken = [t for t in tokens if t in tokenizer.get_vocab()]
    if taken:
        raise ConfigError(
            f"dreambooth.identifier_token: {taken[0]!r} already exists in the tokenizer (new_token is "
            "true); choose a new string (such as <disease-leaf>) or set dreambooth.new_token=false to use "
            "it as it is"
        )


def add_identifiers(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, tokens: Sequence[str], initializer: str, new: bool
) -> list[int]:
    """Make each of ``tokens`` one token of the tokenizer and return their ids; a new token's embedding
    starts as the initializer's. With ``new`` False the token must already be a single vocabulary token."""
    if not new:
        return [single_token_id(tokenizer, token, "dreambooth.identifier_token") for token in tokens]
    check_new_tokens(tokenizer, tokens)
    init_id = single_token_id(tokenizer, initializer, "dreambooth.initializer_token")
    tokenizer.add_tokens(list(tokens))
    ids = [single_token_id(tokenizer, token, "dreambooth.identifier_token") for token in tokens]
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the rows are set below
    with torch.no_grad():
        table = text_encoder.get_input_embeddings().weight
        table[ids] = table[init_id].clone()
    return ids


def train_only_rows(embedding: torch.nn.Embedding, rows: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Make ``embedding`` trainable but mask the gradient of every row except ``rows``.

    Use it with weight decay 0 on the table: Adam then moves no other row (zero gradient, zero moments).
    """
    mask = torch.zeros(embedding.num_embeddings, 1)
    mask[rows] = 1
    embedding.weight.requires_grad_(True)
    # The mask follows the gradient: the text encoder is usually moved to the GPU after this call.
    return embedding.weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))


def save_learned_embeds(
    text_encoder: CLIPTextModel, tokens: Sequence[str], token_ids: Sequence[int], folder: Path
) -> Path:
    table = text_encoder.get_input_embeddings().weight
    vectors = {t: table[i].detach().float().cpu().clone() for t, i in zip(tokens, token_ids)}
    target = folder / EMBEDS_FILE
    with atomic.atomic_path(target) as tmp:
        save_file(vectors, str(tmp))
    return target


def load_learned_embeds(pipe: Any, path: Path) -> list[str]:
    """Add every token of a ``learned_embeds.safetensors`` to ``pipe`` with diffusers' own loader; returns
    the tokens. One token loads by path, as a diffusers user would; several as tensors with their names."""
    embeds = load_file(str(path))
    if len(embeds) == 1:
        pipe.load_textual_inversion(str(path))
    else:
        pipe.load_textual_inversion(list(embeds.values()), token=list(embeds))
    return list(embeds)
