"""CLIP's real BPE vocabulary as a transformers ``CLIPTokenizer``, built offline.

Stable Diffusion v1.5 tokenizes with OpenAI CLIP's 49,408-token vocabulary. open_clip_torch ships that
vocabulary as ``bpe_simple_vocab_16e6.txt.gz``; rebuilding the tokenizer from it gives the embedded model
exactly SD's token ids for any prompt, without a download.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from leafgen.errors import LeafgenError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 48,894 merges of the file: 49,408 tokens = 512 byte tokens + merges + 2 specials.
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_path() -> Path:
    """The BPE file inside the installed open_clip package (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise LeafgenError(
            "open_clip_torch is not installed; it ships CLIP's vocabulary. Run: pip install open_clip_torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise LeafgenError(f"{path} is missing from the open_clip_torch install; reinstall open_clip_torch")
    return path


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """CLIP's tokenizer padding and truncating to ``model_max_length`` tokens (SD v1.5 uses 77)."""
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
