"""SD v1.5's architecture with random weights: the configs have the hub model's parameter counts, and a
written folder (scaled down here: the real one is 2 GB) loads and runs like any diffusers folder."""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from leafgen.diffusion.embedded.tokenizer import clip_tokenizer
from leafgen.diffusion.sd15_architecture import (
    PARAMETERS,
    build_components,
    parameter_counts,
    sd15_configs,
    write_random_pipeline,
)


def test_configs_have_sd15_parameter_counts():
    # Built on the meta device: shapes only, no memory, instant.
    assert parameter_counts(build_components(sd15_configs(), "meta")) == PARAMETERS


def test_a_written_folder_loads_with_from_pretrained_and_generates(tmp_path):
    configs = sd15_configs()
    # Narrower and shallower; every block type, the tokenizer and the special-token ids stay SD's.
    configs["unet"].update(block_out_channels=[32, 64, 64, 64], cross_attention_dim=48, layers_per_block=1)
    configs["vae"].update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    configs["text_encoder"].update(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, projection_dim=48
    )
    folder = write_random_pipeline(tmp_path / "sd15-small", configs, dtype=torch.float16)
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor("conv_in.weight").dtype == torch.float16

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    assert list(pipe.unet.config.down_block_types) == configs["unet"]["down_block_types"]
    assert pipe.text_encoder.config.eos_token_id == 2 and pipe.text_encoder.config.vocab_size == 49408
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    prompt = "a photo of a leaf with rust"
    assert pipe.tokenizer(prompt).input_ids == clip_tokenizer(77)(prompt).input_ids
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3)
