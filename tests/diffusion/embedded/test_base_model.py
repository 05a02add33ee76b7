"""A few steps of the real training code on a tiny setting: the loss falls, the folder is a pipeline, a
rerun resumes after the finished autoencoder phase."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file

from leafgen.cli import main
from leafgen.config.loader import field_docs, from_dict, read_yaml
from leafgen.diffusion.embedded.autoencoder import autoencoder_loss
from leafgen.diffusion.embedded.base_model import (
    RECIPE_FILE,
    loss_drop,
    phase_key,
    prompt_table,
    read_history,
    sample_prompts,
    train_base_model,
)
from leafgen.diffusion.embedded.recipe import TinyArchitecture, TinyModelRecipe, TinyTraining
from leafgen.errors import ConfigError

from ..conftest import tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    recipe = tiny_recipe()
    out = train_base_model(recipe, root / "model", root / "work")
    return recipe, out, root / "work"


def test_short_training_lowers_both_losses(trained):
    _, _, work = trained
    history = read_history(work)
    for phase in ("autoencoder", "denoiser", "decoder"):
        first, last = loss_drop(history, phase, window=2)
        assert last < first, (phase, first, last)


def test_output_is_a_pipeline_with_its_recipe(trained):
    recipe, out, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert from_dict(TinyModelRecipe, read_yaml(out / RECIPE_FILE)) == recipe
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on this model's latents, not SD's constant
    assert pipe.tokenizer.model_max_length == recipe.architecture.max_length
    # UNet and autoencoder are stored in float16 to halve the committed bytes, yet load as float32.
    for component in ("unet", "vae"):
        stored = load_file(out / component / "diffusion_pytorch_model.safetensors")
        assert {v.dtype for v in stored.values()} == {torch.float16}
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {torch.float32}
    img = pipe("leaf with scab", num_inference_steps=2, height=16, width=24, output_type="pt").images
    assert img.shape == (1, 3, 16, 24)


def test_rerun_reuses_finished_phases_and_redoes_what_the_recipe_changed(trained, tmp_path):
    recipe, _, work = trained
    before = read_history(work)
    train_base_model(recipe, tmp_path / "again", work)
    new = read_history(work)[len(before) :]
    assert new and {row["phase"] for row in new} == {"decoder"}  # autoencoder and denoiser were reused

    changed = replace(recipe, training=replace(recipe.training, unet_steps=5))
    before = read_history(work)
    train_base_model(changed, tmp_path / "changed", work)
    assert {row["phase"] for row in read_history(work)[len(before) :]} == {"denoiser", "decoder"}


def test_a_second_run_continues_from_an_earlier_denoiser(trained, tmp_path):
    recipe, out, work = trained
    more = replace(recipe, training=replace(recipe.training, unet_steps=3, unet_init=str(work / "denoiser")))
    history_before = len(read_history(work))
    train_base_model(more, tmp_path / "more", work)
    first_loss = read_history(work)[history_before:][0]
    scratch = [row for row in read_history(work)[:history_before] if row["phase"] == "denoiser"][0]
    assert first_loss["phase"] == "denoiser" and first_loss["loss"] < scratch["loss"]  # not random weights

    other = replace(recipe.architecture, text_width=16)
    wrong = replace(more, architecture=other)
    with pytest.raises(ConfigError, match="another architecture"):
        train_base_model(wrong, tmp_path / "wrong", tmp_path / "wrong-work")


def test_a_later_run_reuses_an_earlier_models_autoencoder_without_training_it(trained, tmp_path):
    recipe, out, _ = trained
    later = replace(
        recipe, training=replace(recipe.training, vae_init=str(out), unet_steps=2, decoder_steps=0)
    )
    work = tmp_path / "work"
    model = train_base_model(later, tmp_path / "later", work)
    assert {row["phase"] for row in read_history(work)} == {"denoiser"}
    assert not (work / "vae").exists()
    given = AutoencoderKL.from_pretrained(out / "vae").state_dict()
    kept = AutoencoderKL.from_pretrained(model / "vae").state_dict()
    assert all(torch.equal(kept[k], given[k]) for k in given)

    with pytest.raises(ConfigError, match="training.vae_init: .* is not a saved vae"):
        train_base_model(
            replace(later, training=replace(later.training, vae_init=str(tmp_path))), tmp_path / "x", work
        )


def test_a_new_denoiser_shape_keeps_the_trained_autoencoder():
    base = TinyModelRecipe()
    arch = base.architecture
    for later in (
        replace(base, architecture=replace(arch, unet_cross_attention=(True, True, True))),
        replace(base, architecture=replace(arch, text_width=32)),
        replace(base, training=replace(base.training, unet_batch_size=8)),
    ):
        assert phase_key(later, "autoencoder") == phase_key(base, "autoencoder")
        assert phase_key(later, "denoiser") != phase_key(base, "denoiser")
    narrower = replace(base, architecture=replace(arch, latent_channels=8))
    assert phase_key(narrower, "autoencoder") != phase_key(base, "autoencoder")


def test_decoder_fine_tune_leaves_the_latent_space_alone(trained):
    _, out, work = trained
    trained_vae = AutoencoderKL.from_pretrained(work / "vae").state_dict()
    final = AutoencoderKL.from_pretrained(out / "vae").state_dict()
    frozen = [k for k in final if k.startswith("encoder.")]
    tuned = [k for k in final if k.startswith("decoder.")]
    # The output stores the autoencoder in float16: frozen means equal up to exactly that rounding.
    assert frozen and all(torch.equal(final[k], trained_vae[k].half().float()) for k in frozen)
    means = final["quant_conv.weight"].shape[0] // 2  # the posterior's mean rows, then its log-variances
    for key in ("quant_conv.weight", "quant_conv.bias"):
        assert torch.equal(final[key][:means], trained_vae[key][:means].half().float())
    assert any(not torch.equal(final[k], trained_vae[k]) for k in tuned)


def test_output_posterior_is_a_point_so_sampling_it_gives_the_latents_the_denoiser_learned(trained):
    _, out, work = trained
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        trained_posterior = AutoencoderKL.from_pretrained(work / "vae").encode(x).latent_dist
        posterior = AutoencoderKL.from_pretrained(out / "vae").encode(x).latent_dist
    # Trained on its mode alone, the autoencoder left the variance where the KL term pulls it.
    assert trained_posterior.std.mean() > 0.1
    assert posterior.std.max() < 1e-6
    sample = posterior.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, posterior.mode(), atol=1e-5, rtol=0)
    torch.testing.assert_close(posterior.mean, trained_posterior.mean, atol=2e-2, rtol=2e-2)


def test_cli_trains_with_overrides_and_reports_losses(trained, tmp_path, capsys):
    _, _, work = trained
    recipe_yaml = tmp_path / "recipe.yaml"
    from leafgen.config.loader import dump_yaml

    recipe_yaml.write_text(dump_yaml(tiny_recipe()))
    out = tmp_path / "cli-model"
    assert (
        main(
            [
                "base-model",
                "--out",
                str(out),
                "--config",
                str(recipe_yaml),
                "--work",
                str(work),
                "training.unet_steps=3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "denoiser: loss" in text and (out / "model_index.json").is_file()
    assert main(["base-model", "--out", str(out), "training.unet_stepz=3"]) == 2
    assert "training.unet_steps" in capsys.readouterr().err  # the closest key is suggested


def test_minority_class_prompts_are_refused():
    with pytest.raises(ConfigError, match="minority"):
        from_dict(TinyModelRecipe, {"training": {"class_prompts": {"multiple_diseases": ["x"]}}})


def test_negative_loss_weights_are_refused():
    for key in ("vae_detail_weight", "vae_edge_weight"):
        with pytest.raises(ConfigError, match=f"training.{key}: must be >= 0"):
            from_dict(TinyModelRecipe, {"training": {key: -1.0}})


def test_shapes_must_fit_the_downsampling():
    with pytest.raises(ConfigError, match="multiple of"):
        from_dict(TinyModelRecipe, {"architecture": {"height": 30}})


def test_every_recipe_field_is_documented():
    for cls in (TinyArchitecture, TinyTraining, TinyModelRecipe):
        docs = field_docs(cls)
        assert all(docs.get(f) for f in cls.__dataclass_fields__), cls


def test_prompt_shares_follow_the_recipe():
    import numpy as np

    recipe = TinyModelRecipe()
    table = prompt_table(recipe)
    picks = sample_prompts(["rust"] * 20000, recipe, np.random.default_rng(0))
    prompts = [table[i] for i in picks]
    t = recipe.training
    assert abs(prompts.count("") / 20000 - t.empty_prompt_share) < 0.01
    assert abs(sum(p in t.generic_prompts for p in prompts) / 20000 - t.generic_prompt_share) < 0.015
    assert not any("scab" in p or "healthy" in p for p in prompts)


def test_class_free_prompts_can_be_trained_mostly_on_one_class():
    import numpy as np

    base = TinyModelRecipe()
    t = replace(base.training, generic_prompt_share_by_class={"healthy": 0.6, "rust": 0.1})
    recipe = replace(base, training=t)
    table = prompt_table(recipe)
    for label, share in (("healthy", 0.6), ("rust", 0.1), ("scab", t.generic_prompt_share)):
        picks = [table[i] for i in sample_prompts([label] * 20000, recipe, np.random.default_rng(0))]
        assert abs(sum(p in t.generic_prompts for p in picks) / 20000 - share) < 0.015, label
    with pytest.raises(ConfigError, match="generic_prompt_share_by_class.healthy: empty_prompt_share plus"):
        from_dict(TinyModelRecipe, {"training": {"generic_prompt_share_by_class": {"healthy": 0.95}}})
    with pytest.raises(ConfigError, match="not classes of class_prompts"):
        from_dict(
            TinyModelRecipe, {"training": {"generic_prompt_share_by_class": {"multiple_diseases": 0.1}}}
        )


def test_detail_weight_makes_a_lost_lesion_cost_more_than_an_even_colour_shift():
    leaf = torch.full((1, 3, 24, 24), -0.2)
    leaf[..., 10:13, 10:13] = 0.9  # one small bright lesion
    erased = torch.full_like(leaf, -0.2)  # the round-trip lost it
    shifted = leaf + (erased - leaf).abs().mean()  # the same plain L1 error spread evenly
    assert torch.isclose(autoencoder_loss(erased, leaf, 0.0), autoencoder_loss(shifted, leaf, 0.0))
    assert autoencoder_loss(erased, leaf, 0.0, 2.0) > 2 * autoencoder_loss(shifted, leaf, 0.0, 2.0)


def test_edge_term_penalises_blur_that_pixel_loss_barely_sees():
    target = torch.zeros(1, 3, 8, 8)
    target[..., ::2, :] = 1.0  # stripes: all edges
    blurred = torch.full_like(target, 0.5)
    assert autoencoder_loss(blurred, target, 1.0) > 2 * autoencoder_loss(blurred, target, 0.0)
