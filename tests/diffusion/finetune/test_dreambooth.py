"""DreamBooth behaviour, option by option, on a tiny random-weight pipeline and procedural leaves."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.finetune.dreambooth import dreambooth_loss, make_noise, prepare_models
from leafgen.diffusion.finetune.output import save_dreambooth, validation_grid
from leafgen.errors import LeafgenError

from ..conftest import IDENTIFIER
from .conftest import resumed_pair, trainer

CFG = DreamBoothConfig(
    num_class_images=4,
    train_batch_size=2,
    learning_rate=1e-3,
    embedding_learning_rate=1e-2,
    max_train_steps=4,
)


def test_prior_preservation_loss_matches_a_hand_computation(tiny_model_dir):
    scheduler = prepare_models(CFG, str(tiny_model_dir)).noise_scheduler
    pred = torch.arange(16.0).reshape(4, 1, 2, 2) / 10
    target = torch.zeros_like(pred)
    t = torch.tensor([10, 500, 10, 500])
    total, instance, prior = dreambooth_loss(pred, target, t, scheduler, 0.5, None, with_prior=True)
    expected_instance = (pred[:2] ** 2).mean()
    expected_prior = (pred[2:] ** 2).mean()
    assert torch.isclose(instance, expected_instance) and torch.isclose(prior, expected_prior)
    assert torch.isclose(total, expected_instance + 0.5 * expected_prior)


def test_snr_gamma_reweights_the_instance_loss(tiny_model_dir):
    scheduler = prepare_models(CFG, str(tiny_model_dir)).noise_scheduler
    pred, target = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    t = torch.tensor([5, 900])  # high SNR early (clamped to gamma), low SNR late (weight 1)
    plain, _, _ = dreambooth_loss(pred, target, t, scheduler, 1.0, None, with_prior=False)
    weighted, _, _ = dreambooth_loss(pred, target, t, scheduler, 1.0, 5.0, with_prior=False)
    alphas = scheduler.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    assert torch.isclose(plain, torch.tensor(1.0))
    assert torch.isclose(weighted, (torch.clamp(snr, max=5.0) / snr).mean())
    assert weighted < plain


def test_offset_noise_moves_the_per_channel_noise_mean():
    latents = torch.zeros(64, 4, 8, 8)
    plain = make_noise(latents, torch.Generator().manual_seed(0))
    offset = make_noise(latents, torch.Generator().manual_seed(0), offset=0.5)
    spread = lambda n: n.mean(dim=(2, 3)).std().item()  # noqa: E731
    assert spread(offset) > 3 * spread(plain)


def test_identifier_is_one_new_token_initialised_from_the_initializer(tiny_model_dir):
    models = prepare_models(CFG, str(tiny_model_dir))
    ids = models.tokenizer(f"{IDENTIFIER} leaf", add_special_tokens=False).input_ids
    assert ids[0] == models.token_id and len(ids) == 2
    table = models.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[models.token_id], table[ids[1]])  # starts as "leaf"
    with pytest.raises(LeafgenError, match=r"identifier_token='zqxwv' is 4 tokens"):
        prepare_models(replace(CFG, identifier_token="zqxwv", new_token=False), str(tiny_model_dir))


def test_lora_step_changes_only_adapters_and_the_identifier_row(tiny_model_dir, image_sets):
    cfg = replace(CFG, lora_rank=4, max_train_steps=2)
    t = trainer(cfg, tiny_model_dir, image_sets)
    unet_before = {k: v.clone() for k, v in t.models.unet.state_dict().items()}
    table_before = t.models.text_encoder.get_input_embeddings().weight.detach().clone()
    text_before = {k: v.clone() for k, v in t.models.text_encoder.state_dict().items()}
    t.train(2)
    changed = {k for k, v in t.models.unet.state_dict().items() if not torch.equal(v, unet_before[k])}
    assert changed and all("lora" in k for k in changed)
    assert any("lora_B" in k for k in changed)
    table = t.models.text_encoder.get_input_embeddings().weight.detach()
    moved = (table != table_before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [t.models.token_id]
    others = {k for k, v in t.models.text_encoder.state_dict().items() if not torch.equal(v, text_before[k])}
    assert len(others) == 1 and others.pop().endswith("token_embedding.weight")


def test_gradient_accumulation_steps_the_optimiser_once_per_k_micro_batches(tiny_model_dir, image_sets):
    t = trainer(replace(CFG, lora_rank=2, gradient_accumulation_steps=3), tiny_model_dir, image_sets)
    micro, steps = [], []
    original = t.micro_step
    t.micro_step = lambda sync: micro.append(sync) or original(sync)  # count micro-batches
    t.optimizer.register_step_post_hook(lambda *args: steps.append(1))
    t.train(2)
    assert len(steps) == 2 and len(micro) == 6
    assert micro == [False, False, True] * 2  # DDP would sync gradients on the last micro-batch only


def test_checkpoint_resume_continues_the_same_run(tiny_model_dir, image_sets, tmp_path):
    cfg = replace(CFG, lora_rank=2, max_train_steps=6, crop="random")
    _, resumed, expected = resumed_pair(cfg, tiny_model_dir, image_sets, tmp_path / "ckpt", 3)
    assert resumed.step == 3
    assert resumed.optimizer_step()["loss"] == pytest.approx(expected, rel=1e-5)


def test_lora_output_reloads_in_plain_diffusers(tiny_model_dir, image_sets, tmp_path):
    cfg = replace(CFG, lora_rank=4)
    t = trainer(cfg, tiny_model_dir, image_sets)
    t.train(2)
    out = save_dreambooth(t.models, cfg, str(tiny_model_dir), tmp_path / "out")
    assert {p.name for p in out.iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "learned_embeds.safetensors",
        "README.md",
    }
    saved = load_file(out / "learned_embeds.safetensors")
    trained_row = t.models.text_encoder.get_input_embeddings().weight[t.models.token_id].detach()
    assert torch.equal(saved[IDENTIFIER], trained_row)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    pipe.load_lora_weights(str(out))
    token_id = pipe.tokenizer.convert_tokens_to_ids(IDENTIFIER)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], trained_row)
    assert all(k.startswith("unet.") for k in load_file(out / "pytorch_lora_weights.safetensors"))
    image = pipe(f"{IDENTIFIER} leaf", height=16, width=24, num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 24)


def test_text_encoder_lora_is_refused_where_transformers_cannot_load_it(tiny_model_dir):
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations.peft import MIN_PEFT_VERSION

    if Version(version("peft")) >= Version(MIN_PEFT_VERSION):
        pytest.skip("this peft supports text-encoder LoRA")
    with pytest.raises(LeafgenError, match="needs peft>="):
        prepare_models(replace(CFG, lora_rank=4, train_text_encoder=True), str(tiny_model_dir))


def test_full_fine_tune_is_a_pipeline_folder(tiny_model_dir, image_sets, tmp_path):
    cfg = replace(CFG, prior_loss_weight=0.0, num_class_images=0, snr_gamma=5.0, noise_offset=0.1)
    cfg = replace(cfg, train_text_encoder=True)
    t = trainer(cfg, tiny_model_dir, image_sets)
    before = t.models.unet.conv_in.weight.detach().clone()
    t.train(2)
    assert not torch.equal(before, t.models.unet.conv_in.weight)
    grid = validation_grid(t.models, ("leaf", f"{IDENTIFIER} leaf"), 3, (16, 24), step=2, steps=2)
    # Rows scaled up to be read beside their prompt; a title line above them.
    assert grid.width > 3 * 24 * 4 and grid.height > 2 * 16 * 4
    out = save_dreambooth(t.models, cfg, str(tiny_model_dir), tmp_path / "full")
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert len(pipe.tokenizer(f"{IDENTIFIER} leaf", add_special_tokens=False).input_ids) == 2
    assert torch.equal(pipe.unet.conv_in.weight, t.models.unet.conv_in.weight.detach())
    assert (out / "learned_embeds.safetensors").is_file() and "full fine-tune" in (
        out / "README.md"
    ).read_text()


def test_a_few_steps_lower_the_loss(tiny_model_dir, image_sets):
    """Fixed noise and timesteps on one batch, measured before and after 25 steps of training."""
    cfg = replace(CFG, lora_rank=8, learning_rate=3e-3, prior_loss_weight=0.0, num_class_images=0)
    t = trainer(cfg, tiny_model_dir, image_sets)

    def fixed_loss() -> float:
        state = t.generator.get_state()
        t.generator.manual_seed(123)
        with torch.no_grad():
            latents, prompts = t._batch()
            noise = make_noise(latents, t.generator)
            steps = torch.randint(100, 900, (len(latents),), generator=t.generator)
            noisy = t.models.noise_scheduler.add_noise(latents, noise, steps)
            loss = F.mse_loss(t.unet(noisy, steps, t._text(prompts)).sample, noise).item()
        t.generator.set_state(state)
        return loss

    before = fixed_loss()
    t.train(25)
    assert fixed_loss() < before


def test_8bit_adam_without_bitsandbytes_says_how_to_get_it():
    import importlib.util

    from leafgen.diffusion.finetune.dreambooth import build_optimizer

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}]
    with pytest.raises(LeafgenError, match="pip install bitsandbytes"):
        build_optimizer(groups, replace(CFG, use_8bit_adam=True))
