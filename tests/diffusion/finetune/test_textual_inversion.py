"""Textual inversion (``dreambooth.method: textual_inversion``) on the tiny random-weight pipeline: only the
identifier rows learn, a checkpoint resumes the same run, and the output is learned embeddings that plain
diffusers loads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.output import save_dreambooth

from ..conftest import IDENTIFIER
from .conftest import resumed_pair, trainer

TI = DreamBoothConfig(
    method="textual_inversion",
    num_class_images=4,
    train_batch_size=2,
    textual_inversion_learning_rate=5e-2,
    textual_inversion_steps=4,
    lora_rank=4,  # a DreamBooth setting; textual inversion trains no LoRA whatever it says
)
TOKENS = ["<disease-leaf-0>", "<disease-leaf-1>"]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_the_identifier_rows_learn_and_everything_else_stays_bit_identical(tiny_model_dir, image_sets):
    clusters = [min(i, 1) for i in range(len(image_sets[0]))]  # 0, 1, 1: both drawn within 3 steps
    t = trainer(replace(TI, clusters=2), tiny_model_dir, image_sets, instance_clusters=clusters)
    assert t.models.tokens == TOKENS
    assert not any(p.requires_grad for p in (*t.models.unet.parameters(), *t.models.vae.parameters()))
    assert [g["lr"] for g in t.optimizer.param_groups] == [5e-2]  # the embedding table alone
    unet, vae, text = (snapshot(m) for m in (t.models.unet, t.models.vae, t.models.text_encoder))
    t.train(3)
    assert all(torch.equal(v, unet[k]) for k, v in t.models.unet.state_dict().items())
    assert all(torch.equal(v, vae[k]) for k, v in t.models.vae.state_dict().items())
    changed = [k for k, v in t.models.text_encoder.state_dict().items() if not torch.equal(v, text[k])]
    assert len(changed) == 1 and changed[0].endswith("token_embedding.weight")
    table = t.models.text_encoder.get_input_embeddings().weight.detach()
    moved = (table != text[changed[0]]).any(dim=1).nonzero().flatten().tolist()
    assert moved == t.models.token_ids  # both clusters' rows, and no other row


def test_prior_preservation_does_not_apply(tiny_model_dir, image_sets):
    t = trainer(replace(TI, prior_loss_weight=1.0), tiny_model_dir, image_sets)
    assert not t.with_prior and t.classes is not None
    assert t.optimizer_step()["loss/prior"] == 0.0


def test_a_checkpoint_resumes_the_same_run(tiny_model_dir, image_sets, tmp_path):
    cfg = replace(TI, crop="random", textual_inversion_steps=6)
    straight, resumed, expected = resumed_pair(cfg, tiny_model_dir, image_sets, tmp_path / "ckpt", 2)
    assert resumed.step == 2
    assert resumed.optimizer_step()["loss"] == pytest.approx(expected, rel=1e-5)
    row = straight.models.token_id
    assert torch.equal(
        resumed.models.text_encoder.get_input_embeddings().weight[row],
        straight.models.text_encoder.get_input_embeddings().weight[row],
    )


def test_the_output_is_learned_embeddings_that_plain_diffusers_loads(tiny_model_dir, image_sets, tmp_path):
    t = trainer(TI, tiny_model_dir, image_sets)
    t.train(2)
    out = save_dreambooth(t.models, TI, str(tiny_model_dir), tmp_path / "ti")
    assert {p.name for p in out.iterdir()} == {"learned_embeds.safetensors", "README.md"}
    card = (out / "README.md").read_text()
    assert card.startswith("# Textual inversion of") and "prior preservation does not apply" in card
    trained = t.models.text_encoder.get_input_embeddings().weight[t.models.token_id].detach()
    assert torch.equal(load_file(out / "learned_embeds.safetensors")[IDENTIFIER], trained)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    token_id = pipe.tokenizer.convert_tokens_to_ids(IDENTIFIER)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], trained)
    image = pipe(f"{IDENTIFIER} leaf", height=16, width=24, num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 24) and torch.isfinite(image).all()


def test_every_cluster_token_loads_in_plain_diffusers_and_in_generation(tiny_model_dir, image_sets, tmp_path):
    cfg = replace(TI, clusters=2)
    clusters = [min(i, 1) for i in range(len(image_sets[0]))]
    t = trainer(cfg, tiny_model_dir, image_sets, instance_clusters=clusters)
    t.train(2)
    out = save_dreambooth(t.models, cfg, str(tiny_model_dir), tmp_path / "ti2")
    embeds = load_file(out / "learned_embeds.safetensors")
    assert list(embeds) == TOKENS and "`<disease-leaf-1>`" in (out / "README.md").read_text()
    table = t.models.text_encoder.get_input_embeddings().weight.detach()
    # diffusers 0.42 loads one token per state dict: several go in as tensors with their names.
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.load_textual_inversion(list(embeds.values()), token=list(embeds))
    engine = load_generation_pipeline(
        EngineSettings(str(tiny_model_dir), adapter=str(out)), torch.device("cpu")
    )
    for loaded in (pipe, engine):
        for token, row in zip(TOKENS, t.models.token_ids):
            token_id = loaded.tokenizer.convert_tokens_to_ids(token)
            assert torch.equal(loaded.text_encoder.get_input_embeddings().weight[token_id], table[row])
