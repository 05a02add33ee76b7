"""The fine-tuning loop of both methods (DreamBooth, textual inversion), without Ray: one process (or one
DDP rank, given a ``wrap``).

Each optimiser step accumulates ``gradient_accumulation_steps`` micro-batches of ``train_batch_size``
instance images (plus as many class images with prior preservation), each instance image paired with its
cluster's prompt; under DDP the micro-batches before the last skip the gradient all-reduce. Checkpoints
hold only what trains (LoRA or full weights, the identifiers' embedding rows) plus optimiser, schedule and
random state, so a resumed run continues the same sequence of steps. The methods differ only in what
``prepare_models`` leaves trainable and in prior preservation, which needs a UNet that learns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.compilation import compile_module
from leafgen.diffusion.finetune.data import ImageSet, LatentCache
from leafgen.diffusion.finetune.dreambooth import (
    DreamBoothModels,
    autocast_dtype,
    build_optimizer,
    dreambooth_loss,
    make_noise,
    parameter_groups,
    prediction_target,
    tokenize,
)
from leafgen.diffusion.finetune.identifier import identifier_prompts

WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.pt"
EMBEDDING_KEY = "identifier_embedding"


class DreamBoothTrainer:
    """Holds models, optimiser and data of one rank; ``train`` runs optimiser steps up to a given one."""

    def __init__(
        self,
        cfg: DreamBoothConfig,
        models: DreamBoothModels,
        instance: ImageSet,
        classes: ImageSet | None,
        device: torch.device,
        rank: int = 0,
        wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda module: module,
        instance_clusters: Sequence[int] | None = None,
    ):
        """``instance_clusters``: each instance image's cluster (its prompt names ``models.tokens[c]``);
        None: cluster 0 for every image."""
        self.cfg, self.models, self.device = cfg, models, device
        self.instance, self.classes = instance, classes
        self.with_prior = cfg.with_prior and classes is not None
        models.vae.to(device).eval()
        self.text_trains = any(p.requires_grad for p in models.text_encoder.parameters())
        unet_trains = any(p.requires_grad for p in models.unet.parameters())
        models.unet.to(device).train(unet_trains)
        models.text_encoder.to(device).train(self.text_trains)
        self.groups = parameter_groups(models, cfg)
        if cfg.compile and unet_trains:
            compile_module(models.unet)  # in place: a DDP wrapper calls the compiled forward
        # DDP refuses a module with nothing to train: textual inversion's UNet only passes gradients on.
        self.unet = wrap(models.unet) if unet_trains else models.unet
        self.text_encoder = wrap(models.text_encoder) if self.text_trains else models.text_encoder
        self.optimizer = build_optimizer(self.groups, cfg)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.train_steps,
        )
        self.amp = autocast_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.generator = torch.Generator().manual_seed(cfg.seed * 1009 + rank)
        self.step = 0
        sets = [instance, *([classes] if self.with_prior else [])]
        self.caches = [LatentCache(models.vae, s, device) for s in sets] if cfg.crop == "center" else None
        # Prompt i is cluster i's instance prompt; the class prompt, with prior preservation, comes last.
        prompts = identifier_prompts(cfg.instance_prompt, cfg.identifier_token, models.tokens)
        self.image_prompt = torch.as_tensor(
            list(instance_clusters) if instance_clusters is not None else [0] * len(instance)
        )
        if len(self.image_prompt) != len(instance) or int(self.image_prompt.min()) < 0:
            raise ValueError("instance_clusters needs one cluster index per instance image")
        if int(self.image_prompt.max()) >= len(prompts):
            raise ValueError(f"instance_clusters names a cluster beyond the {len(prompts)} tokens")
        self.class_prompt = len(prompts)
        prompts += [cfg.class_prompt] if self.with_prior else []
        self.prompt_ids = tokenize(models.tokenizer, prompts).to(device)
        self.frozen_text = None
        if not self.text_trains:
            with torch.no_grad():
                self.frozen_text = models.text_encoder(self.prompt_ids)[0]

    # --- one optimiser step -------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of ``train_batch_size`` random instance images (then as many class images) and the index
        of each one's prompt in ``prompt_ids``."""
        n = self.cfg.train_batch_size
        parts, prompts = [], []
        for k, images in enumerate([self.instance, *([self.classes] if self.with_prior else [])]):
            idx = torch.randint(0, len(images), (n,), generator=self.generator).tolist()
            prompts.append(self.image_prompt[idx] if k == 0 else torch.full((n,), self.class_prompt))
            if self.caches is not None:
                parts.append(self.caches[k].sample(idx, self.generator))
            else:
                with torch.no_grad():
                    x = images.pixels(idx).to(self.device)
                    parts.append(self.models.vae.encode(x).latent_dist.sample(self.generator))
        return torch.cat(parts) * self.models.vae.config.scaling_factor, torch.cat(prompts)

    def _text(self, prompts: torch.Tensor) -> torch.Tensor:
        """The text encoder's states of each sample's prompt (encoded once per step, when it trains)."""
        states = self.frozen_text if self.frozen_text is not None else self.text_encoder(self.prompt_ids)[0]
        return states[prompts.to(states.device)]

    def micro_step(self, sync: bool) -> dict[str, float]:
        latents, prompts = self._batch()
        noise = make_noise(latents, self.generator, self.cfg.noise_offset)
        timesteps = torch.randint(
            0,
            self.models.noise_scheduler.config.num_train_timesteps,
            (len(latents),),
            generator=self.generator,
        ).to(self.device)
        noisy = self.models.noise_scheduler.add_noise(latents, noise, timesteps)
        modules = [m for m in (self.unet, self.text_encoder) if hasattr(m, "no_sync")]
        with contextlib.ExitStack() as stack:
            if not sync:
                for module in modules:
                    stack.enter_context(module.no_sync())
            with torch.autocast(
                self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
            ):
                pred = self.unet(noisy, timesteps, self._text(prompts)).sample
            target = prediction_target(self.models.noise_scheduler, latents, noise, timesteps)
            loss, instance, prior = dreambooth_loss(
                pred,
                target,
                timesteps,
                self.models.noise_scheduler,
                self.cfg.prior_loss_weight,
                self.cfg.snr_gamma,
                self.with_prior,
            )
            self.scaler.scale(loss / self.cfg.gradient_accumulation_steps).backward()
        return {"loss": loss.item(), "loss/instance": instance.item(), "loss/prior": prior.item()}

    def optimizer_step(self) -> dict[str, float]:
        k = self.cfg.gradient_accumulation_steps
        rows = [self.micro_step(sync=i == k - 1) for i in range(k)]
        params = [p for group in self.groups for p in group["params"]]
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {key: sum(r[key] for r in rows) / k for key in rows[0]}
        return {**metrics, "lr": self.lr_scheduler.get_last_lr()[0], "step": self.step}

    def train(self, until: int, on_step: Callable[[dict[str, float]], None] = lambda m: None) -> None:
        while self.step < until:
            on_step(self.optimizer_step())

    # --- checkpoints --------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        embedding = self.models.text_encoder.get_input_embeddings().weight
        state = {}
        for prefix, module in (("unet", self.models.unet), ("text_encoder", self.models.text_encoder)):
            for name, param in module.named_parameters():
                if param.requires_grad and param is not embedding:
                    state[f"{prefix}.{name}"] = param.detach().cpu().contiguous()
        if self.models.new_token:
            state[EMBEDDING_KEY] = embedding[self.models.token_ids].detach().cpu().clone()
        return state

    def save_checkpoint(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(folder / WEIGHTS_FILE))
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(),
            },
            folder / STATE_FILE,
        )

    def load_checkpoint(self, folder: Path) -> None:
        apply_trainable_state(self.models, load_file(str(folder / WEIGHTS_FILE)))
        state: dict[str, Any] = torch.load(folder / STATE_FILE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]


def apply_trainable_state(models: DreamBoothModels, weights: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's trained tensors (``DreamBoothTrainer.trainable_state``) into ``models``."""
    params = {
        f"{prefix}.{name}": p
        for prefix, module in (("unet", models.unet), ("text_encoder", models.text_encoder))
        for name, p in module.named_parameters()
    }
    with torch.no_grad():
        for key, value in weights.items():
            if key == EMBEDDING_KEY:  # one row per token; a checkpoint of one token may hold it flat
                table = models.text_encoder.get_input_embeddings().weight
                rows = value.reshape(len(models.token_ids), -1)
                table[models.token_ids] = rows.to(table.device, table.dtype)
            else:
                params[key].copy_(value)
