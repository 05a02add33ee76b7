from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from leafgen.diffusion.embedded.tokenizer import clip_tokenizer

PROMPTS = [
    "<disease-leaf> leaf",
    "a photo of a leaf with rust",
    "Pirate ship, illustration!",
    "wallpaper",
    "héllo wörld 1234 — naïve café",
    "",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_open_clip_reference_tokenizer(prompt):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    expected = [ref.sot_token_id, *ref.encode(prompt), ref.eot_token_id]
    assert clip_tokenizer()(prompt).input_ids == expected


def test_vocabulary_is_clips_and_known_ids_match_sd():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok("leaf").input_ids == [49406, 7232, 49407]  # SD v1.5's tokenizer gives these ids


def test_padding_length_survives_save_and_load(tmp_path):
    clip_tokenizer(model_max_length=16).save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    ids = loaded("a leaf", padding="max_length", truncation=True).input_ids
    assert loaded.model_max_length == 16 and len(ids) == 16 and ids[-1] == 49407
    assert len(loaded(" ".join(["leaf"] * 40), padding="max_length", truncation=True).input_ids) == 16
    assert (
        loaded.decode(loaded("a photo of a leaf").input_ids, skip_special_tokens=True) == "a photo of a leaf"
    )
