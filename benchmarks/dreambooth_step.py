"""DreamBooth step time and peak memory: leafgen's trainer against a plain diffusers-style training step.

Both do identical work per step: encode ``--batch`` instance and ``--batch`` class images with the frozen
autoencoder, reuse the frozen text encoder's states of the two prompts (computed once, as train_dreambooth.py
does with --pre_compute_text_embeddings), predict noise with the UNet (full fine-tune),
take the prior-preservation MSE, step AdamW at the same learning rate, in the same precision. The plain
step is the minimal loop of diffusers' train_dreambooth.py; leafgen's runs ``DreamBoothTrainer`` with
random crops (so it encodes every step too). A third line shows leafgen's default, centre crops with the
latents cached once. Each variant runs in its own process (peak memory is per process): median seconds
per step over ``--repeats`` blocks of ``--steps`` steps after a warm-up, peak RSS on CPU or peak CUDA
memory on a GPU.

    python benchmarks/dreambooth_step.py                # demo shape (64x96), random weights, CPU
    python benchmarks/dreambooth_step.py --sd15-shape   # SD v1.5 shapes, 512x512 (for a GPU)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leafgen.config import DreamBoothConfig
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.diffusion.components import build_pipeline
from leafgen.diffusion.embedded.recipe import SD15_SHAPES, TinyArchitecture
from leafgen.diffusion.finetune.data import ImageSet
from leafgen.diffusion.finetune.dreambooth import prepare_models, tokenize
from leafgen.diffusion.finetune.loop import DreamBoothTrainer


def _config(args: argparse.Namespace, crop: str) -> DreamBoothConfig:
    # A full UNet fine-tune with an existing token and a frozen text encoder: the plain loop's setting.
    return DreamBoothConfig(
        identifier_token="sks",
        new_token=False,
        instance_prompt="sks leaf",
        train_batch_size=args.batch,
        learning_rate=5e-6,
        mixed_precision="fp16" if torch.cuda.is_available() else "no",
        crop=crop,
        num_class_images=args.batch,
    )


def plain_step_fn(cfg, models, instance, classes, device):
    """diffusers' train_dreambooth.py step, reduced to what it computes."""
    unet, vae, text_encoder, scheduler = models.unet, models.vae, models.text_encoder, models.noise_scheduler
    unet.to(device).train()
    vae.to(device)
    text_encoder.to(device)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=cfg.learning_rate)
    prompts = [cfg.instance_prompt] * cfg.train_batch_size + [cfg.class_prompt] * cfg.train_batch_size
    with torch.no_grad():  # the prompts never change: train_dreambooth.py's --pre_compute_text_embeddings
        states = text_encoder(tokenize(models.tokenizer, prompts).to(device))[0]
    amp = torch.float16 if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is not None)
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, len(instance), (cfg.train_batch_size,), generator=gen).tolist()
        pixels = torch.cat([instance.pixels(idx), classes.pixels(idx)]).to(device)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = unet(scheduler.add_noise(latents, noise, t), t, states).sample
        pred, pred_prior = pred.float().chunk(2)
        target, target_prior = noise.chunk(2)
        loss = F.mse_loss(pred, target) + cfg.prior_loss_weight * F.mse_loss(pred_prior, target_prior)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def measure(variant: str, args: argparse.Namespace, model: str, instance_paths, class_paths, queue) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    crop = "center" if variant == "leafgen, cached latents" else "random"
    cfg = _config(args, crop)
    models = prepare_models(cfg, model)
    h, w = args.size
    instance, classes = ImageSet(instance_paths, h, w, crop), ImageSet(class_paths, h, w, crop)
    if variant == "plain":
        step = plain_step_fn(cfg, models, instance, classes, device)
    else:
        trainer = DreamBoothTrainer(cfg, models, instance, classes, device)
        step = trainer.optimizer_step
    step()  # warm-up: allocator, thread pools, cuDNN autotuning
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / args.steps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((statistics.median(times), peak))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sd15-shape", action="store_true", help="SD v1.5-shaped random model at 512x512")
    parser.add_argument(
        "--batch", type=int, default=4, help="instance images per step (as many class images)"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    arch = SD15_SHAPES if args.sd15_shape else TinyArchitecture()
    args.size = (arch.height, arch.width)
    work = Path(tempfile.mkdtemp(prefix="leafgen-dbbench-"))
    model = work / "model"
    build_pipeline(arch, seed=0).save_pretrained(model, safe_serialization=True)
    data = make_dataset(
        work / "data", ProceduralSpec(scale=0.05, size=192, seed=7), workers=1, progress=False
    )
    images = sorted((data / "images").glob("Train_*.jpg"))
    instance_paths, class_paths = images[:8], images[8:16]
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{arch.height}x{arch.width}, batch {args.batch} + {args.batch} prior, {device}")

    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("plain", "leafgen", "leafgen, cached latents"):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=measure, args=(variant, args, str(model), instance_paths, class_paths, queue)
        )
        proc.start()
        results[variant] = queue.get()
        proc.join()
        seconds, peak = results[variant]
        print(f"{variant:>24}: {seconds:.4f} s/step   peak memory {peak:,.0f} MiB")
    (plain_s, plain_m), (ours_s, ours_m) = results["plain"], results["leafgen"]
    print(
        f"leafgen / plain: time {ours_s / plain_s:.2f}x (target <= 1.0x), "
        f"memory {ours_m / plain_m:.2f}x (target <= 1.1x)"
    )


if __name__ == "__main__":
    main()
