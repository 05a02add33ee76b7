"""DreamBooth step time and peak memory: leafgen's trainer against a plain diffusers-style training step,
and each of the trainer's speed levers.

Both do identical work per step: encode ``--batch`` instance and ``--batch`` class images with the frozen
autoencoder, reuse the frozen text encoder's states of the two prompts (computed once, as train_dreambooth.py
does with --pre_compute_text_embeddings), predict noise with the UNet (full fine-tune),
take the prior-preservation MSE, step AdamW at the same learning rate, in the same precision. The plain
step is the minimal loop of diffusers' train_dreambooth.py; leafgen's runs ``DreamBoothTrainer`` with
random crops (so it encodes every step too). The other lines are levers on top of leafgen's default,
centre crops with the latents cached once: bf16 autocast instead of fp16, fused AdamW, 8-bit AdamW
(bitsandbytes, when installed), classic attention instead of SDPA (what SDPA is worth), and bf16 + fused
with and without ``torch.compile`` of the UNet. Median seconds per step over ``--repeats`` blocks of
``--steps`` steps after a warm-up step (which compiles, when asked), peak RSS on CPU or peak CUDA memory
on a GPU. On CPU each variant runs in its own process (peak RSS is per process); on a GPU all run in
this process, each from a fresh model, with CUDA's peak counter reset after its warm-up.

    python benchmarks/dreambooth_step.py                # demo shape (64x96), random weights, CPU
    python benchmarks/dreambooth_step.py --sd15-shape   # SD v1.5 (random weights), 512x512 (for a GPU)
    python benchmarks/dreambooth_step.py --sd15-shape --model DIR --steps 5 --repeats 2   # gpu_checks.sh
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from leafgen.config import DreamBoothConfig
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.diffusion.components import build_pipeline
from leafgen.diffusion.embedded.recipe import SD15_SHAPES, TinyArchitecture
from leafgen.diffusion.finetune.data import ImageSet
from leafgen.diffusion.finetune.dreambooth import prepare_models, tokenize
from leafgen.diffusion.finetune.loop import DreamBoothTrainer
from leafgen.diffusion.sd15_architecture import write_random_pipeline

# Each variant: the plain step, or leafgen's trainer with these DreamBoothConfig changes (the benchmark's
# own "sdpa" switch swaps in diffusers' classic attention processor).
CACHED = {"crop": "center"}
FAST = {**CACHED, "mixed_precision": "bf16", "fused_adam": True}
VARIANTS: dict[str, dict | None] = {
    "plain": None,
    "leafgen": {"crop": "random"},
    "leafgen, cached latents": CACHED,
    "+ bf16": {**CACHED, "mixed_precision": "bf16"},
    "+ fused AdamW": {**CACHED, "fused_adam": True},
    "+ 8-bit AdamW": {**CACHED, "use_8bit_adam": True},
    "- SDPA (classic attention)": {**CACHED, "sdpa": False},
    "+ bf16 + fused": FAST,
    "+ bf16 + fused + compile": {**FAST, "compile": True},
}


def _config(args: argparse.Namespace, changes: dict) -> DreamBoothConfig:
    # A full UNet fine-tune with an existing token and a frozen text encoder: the plain loop's setting.
    cuda = torch.cuda.is_available()
    return DreamBoothConfig(
        identifier_token="sks",
        new_token=False,
        instance_prompt="sks leaf",
        train_batch_size=args.batch,
        learning_rate=5e-6,
        mixed_precision="fp16" if cuda else "no",
        num_class_images=args.batch,
        **{k: v for k, v in changes.items() if k != "sdpa" and (cuda or k != "mixed_precision")},
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


def measure(variant: str, args: argparse.Namespace, model: str, instance_paths, class_paths, queue=None):
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    changes = VARIANTS[variant] or {"crop": "random"}
    cfg = _config(args, changes)
    models = prepare_models(cfg, model)
    if changes.get("sdpa") is False:
        models.unet.set_attn_processor(AttnProcessor())
    h, w = args.size
    instance, classes = ImageSet(instance_paths, h, w, cfg.crop), ImageSet(class_paths, h, w, cfg.crop)
    if VARIANTS[variant] is None:
        step = plain_step_fn(cfg, models, instance, classes, device)
    else:
        trainer = DreamBoothTrainer(cfg, models, instance, classes, device)
        step = trainer.optimizer_step
    t0 = time.perf_counter()
    step()  # warm-up: allocator, thread pools, cuDNN autotuning, compilation
    warmup = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
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
    result = (statistics.median(times), peak, warmup)
    if queue is not None:
        queue.put(result)
    return result


def run_variant(variant: str, args, model: str, instance_paths, class_paths) -> tuple[float, float, float]:
    if torch.cuda.is_available():
        try:
            return measure(variant, args, model, instance_paths, class_paths)
        finally:  # the next variant starts from an empty GPU and uncompiled modules
            gc.collect()
            torch.cuda.empty_cache()
            torch._dynamo.reset()
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(
        target=measure, args=(variant, args, model, instance_paths, class_paths, queue)
    )
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sd15-shape", action="store_true", help="SD v1.5-shaped random model at 512x512")
    parser.add_argument("--model", help="a diffusers folder of that shape (default: written here)")
    parser.add_argument(
        "--batch", type=int, default=4, help="instance images per step (as many class images)"
    )
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="default: all")
    args = parser.parse_args()
    arch = SD15_SHAPES if args.sd15_shape else TinyArchitecture()
    args.size = (arch.height, arch.width)
    work = Path(tempfile.mkdtemp(prefix="leafgen-dbbench-"))
    model = args.model
    if model is None and args.sd15_shape:
        cuda = torch.cuda.is_available()
        model = str(write_random_pipeline(work / "model", device="cuda" if cuda else "cpu"))
    elif model is None:
        model = str(work / "model")
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
    print(f"{'variant':>28} {'s/step':>8} {'x plain':>8} {'peak MiB':>9} {'x plain':>8} {'warm-up s':>9}")
    results = {}
    for variant in args.variants:
        eight_bit = (VARIANTS[variant] or {}).get("use_8bit_adam")
        if eight_bit and importlib.util.find_spec("bitsandbytes") is None:
            print(f"{variant:>28}  skipped: bitsandbytes is not installed", flush=True)
            continue
        try:
            results[variant] = run_variant(variant, args, model, instance_paths, class_paths)
        except Exception as exc:  # one broken lever must not hide the others
            print(f"{variant:>28}  failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        seconds, peak, warmup = results[variant]
        plain_s, plain_m, _ = results.get("plain", (seconds, peak, 0))
        print(
            f"{variant:>28} {seconds:8.4f} {seconds / plain_s:7.2f}x {peak:9,.0f} {peak / plain_m:7.2f}x "
            f"{warmup:9.1f}",
            flush=True,
        )
    if "plain" in results and "leafgen" in results:
        (plain_s, plain_m, _), (ours_s, ours_m, _) = results["plain"], results["leafgen"]
        print(
            f"leafgen / plain: time {ours_s / plain_s:.2f}x (target <= 1.0x), "
            f"memory {ours_m / plain_m:.2f}x (target <= 1.1x)"
        )
        best = min((r[0], name) for name, r in results.items() if name != "plain")
        print(f"fastest: {best[1]}, {best[0] / plain_s:.2f}x the plain step (issue 25's target <= 0.45x)")


if __name__ == "__main__":
    main()
