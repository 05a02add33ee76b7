"""The DreamBooth identifier token: one token, its embedding trained alone, saved as diffusers saves
textual-inversion embeddings.

A new token (``<disease-leaf>``) is added to the tokenizer, the embedding table grows by one row, and that
row starts as a copy of an existing word's embedding (``leaf``), as textual inversion does. While the rest
of the text encoder stays frozen, a gradient mask lets only the new row learn. The row is saved as
``learned_embeds.safetensors`` ({token: vector}), which ``StableDiffusionPipeline.load_textual_inversion``
loads back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from leafgen import atomic
from leafgen.errors import LeafgenError

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


def add_identifier(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, token: str, initializer: str, new: bool
) -> int:
    """Make ``token`` one token of the tokenizer and return its id; a new token's embedding starts as the
    initializer's. With ``new`` False the token must already be a single token of the vocabulary."""
    if not new:
        return single_token_id(tokenizer, token, "dreambooth.identifier_token")
    if token in tokenizer.get_vocab():
        raise LeafgenError(
            f"dreambooth.identifier_token={token!r} already exists in the tokenizer; choose a new string "
            "(such as <disease-leaf>) or set dreambooth.new_token=false to use it as it is"
        )
    init_id = single_token_id(tokenizer, initializer, "dreambooth.initializer_token")
    tokenizer.add_tokens([token])
    token_id = single_token_id(tokenizer, token, "dreambooth.identifier_token")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
    with torch.no_grad():
        table = text_encoder.get_input_embeddings().weight
        table[token_id] = table[init_id].clone()
    return token_id


def train_only_rows(embedding: torch.nn.Embedding, rows: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Make ``embedding`` trainable but mask the gradient of every row except ``rows``.

    Use it with weight decay 0 on the table: Adam then moves no other row (zero gradient, zero moments).
    """
    mask = torch.zeros(embedding.num_embeddings, 1)
    mask[rows] = 1
    embedding.weight.requires_grad_(True)
    # The mask follows the gradient: the text encoder is usually moved to the GPU after this call.
    return embedding.weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))


def save_learned_embeds(text_encoder: CLIPTextModel, token: str, token_id: int, folder: Path) -> Path:
    vector = text_encoder.get_input_embeddings().weight[token_id].detach().float().cpu().clone()
    target = folder / EMBEDS_FILE
    with atomic.atomic_path(target) as tmp:
        save_file({token: vector}, str(tmp))
    return target
