"""The ``leafgen`` command: each subcommand parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from leafgen.errors import LeafgenError, message_lines


def _run_root(cfg) -> Path:
    """Where this machine reads the run: ``run_dir``, or its local mirror when it is a URI."""
    from leafgen.stages import RunDir

    return RunDir(cfg.run_dir).root


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (configs/demo.yaml is the embedded default)")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. classifier.epochs=3"
    )


def _cmd_run(args: argparse.Namespace) -> None:
    from leafgen.config import load_config
    from leafgen.pipeline import run_pipeline
    from leafgen.report.summary import (
        print_classifier_summary,
        print_comparison_summary,
        print_data_summary,
    )

    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, only=args.only or (), start=args.start, force=args.force, argv=sys.argv)
    root = _run_root(cfg)
    print_data_summary(root)
    print_classifier_summary(root)
    print_comparison_summary(root)


def _cmd_tune(args: argparse.Namespace) -> None:
    from leafgen.config import load_config
    from leafgen.tuning.search import run_search

    outcome = run_search(load_config(args.config, args.overrides), argv=sys.argv)
    print(f"results table: {outcome.results_csv}")
    print(f"best config:   {outcome.best_config}")
    print(f"search report: {outcome.report}")
    print(f"best run:      {outcome.best_run / 'report' / 'report.html'}")


def _cmd_train_classifier(args: argparse.Namespace) -> None:
    from leafgen.config import load_config
    from leafgen.pipeline import run_pipeline
    from leafgen.report.summary import print_classifier_summary

    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, only=("dataset", "split", "classifier"), force=args.force, argv=sys.argv)
    print_classifier_summary(_run_root(cfg))


def _run_stage_group(args: argparse.Namespace, group: str, targets: tuple[str, ...]) -> Path:
    """Run a command's prerequisite stages when missing (skipped when complete), then its own ``targets``;
    ``--force`` redoes only the targets. ``group`` names the stage list in ``leafgen.pipeline``."""
    from leafgen import pipeline
    from leafgen.config import load_config

    cfg = load_config(args.config, args.overrides)
    stages = getattr(pipeline, group)
    pipeline.preflight(cfg, stages)  # the targets' checks too, before the first prerequisite runs
    before = tuple(s.name for s in stages if s.name not in targets)
    pipeline.run_pipeline(cfg, only=before, argv=sys.argv, stages=stages, checked=True)
    pipeline.run_pipeline(cfg, only=targets, force=args.force, argv=sys.argv, stages=stages, checked=True)
    return _run_root(cfg)


def _cmd_generate(args: argparse.Namespace) -> None:
    from leafgen.report.summary import print_generation_summary

    print_generation_summary(_run_stage_group(args, "GENERATION_STAGES", ("generate", "gate")))


def _cmd_dreambooth(args: argparse.Namespace) -> None:
    from leafgen.report.summary import print_dreambooth_summary

    print_dreambooth_summary(_run_stage_group(args, "DREAMBOOTH_STAGES", ("dreambooth",)))


def _cmd_probe_drift(args: argparse.Namespace) -> None:
    from leafgen.config import load_config
    from leafgen.diffusion.probes.drift import DriftSettings, format_drift, probe_run
    from leafgen.errors import LeafgenError
    from leafgen.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, only=("dataset", "split", "judge"), argv=sys.argv)
    after = args.after or _run_root(cfg) / "dreambooth" / "model"
    if not Path(after).exists():
        raise LeafgenError(f"{after} does not exist: pass --after, or run leafgen dreambooth first")
    before = args.before or cfg.base_model.name_or_path
    # Not the drift stage's own folder: that holds what the pipeline's probe wrote, and stays so.
    out = args.out or _run_root(cfg) / "drift-probe"
    settings = DriftSettings(
        samples=args.samples, other_samples=args.other_samples, steps=args.steps, guidance=args.guidance
    )
    print(format_drift(probe_run(cfg, before, str(after), out, settings)))
    print(f"grids and {out / 'drift.json'} written")


def _cmd_verify(args: argparse.Namespace) -> int:
    from leafgen.integrity.verify import fix_run, format_table, open_run, verify_run

    run = open_run(args.run_dir)
    if args.fix:
        fix_run(args.run_dir, args.overrides)
    statuses = verify_run(run)
    print(format_table(statuses))
    wrong = [s.stage for s in statuses if s.wrong]
    if wrong:
        print(
            f"damaged: {', '.join(wrong)}; redo them (and what depends on them) with: "
            f"leafgen verify --fix {args.run_dir}"
        )
        return 1
    unverified = [s.stage for s in statuses if s.status == "unverified"]
    if unverified:
        print(f"unverified (written before markers listed their files): {', '.join(unverified)}")
    return 0


def _cmd_base_model(args: argparse.Namespace) -> None:
    from leafgen.config.loader import apply_overrides, from_dict, read_yaml
    from leafgen.diffusion.embedded.base_model import loss_drop, read_history, train_base_model
    from leafgen.diffusion.embedded.recipe import TinyModelRecipe

    raw = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides)
    recipe = from_dict(TinyModelRecipe, raw)
    work = args.work or args.out.with_name(args.out.name + ".work")
    out = train_base_model(recipe, args.out, work)
    history = read_history(work)
    for phase in ("autoencoder", "denoiser", "decoder"):
        if any(row["phase"] == phase for row in history):
            first, last = loss_drop(history, phase)
            print(f"{phase}: loss {first:.4f} -> {last:.4f}")
    print(f"base model written: {out} (load it with StableDiffusionPipeline.from_pretrained)")


def _cmd_backbone(args: argparse.Namespace) -> None:
    from leafgen.classifier.backbone import BackboneRecipe, pretrain_backbone
    from leafgen.config.loader import apply_overrides, from_dict, read_yaml

    raw = apply_overrides(read_yaml(args.config) if args.config else {}, args.overrides)
    weights = pretrain_backbone(from_dict(BackboneRecipe, raw), args.out, args.work)
    print(f"backbone written: {weights} (use it with classifier.weights={weights})")


def _cmd_check_base_model(args: argparse.Namespace) -> None:
    from leafgen.config import load_config
    from leafgen.diffusion.embedded.check import CheckSettings, check_base_model, format_check
    from leafgen.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, only=("dataset", "split", "classifier", "judge"), argv=sys.argv)
    settings = CheckSettings(samples=args.samples, steps=args.steps, guidance=args.guidance)
    print(format_check(check_base_model(cfg, args.out, settings)))
    print(f"grids and {args.out / 'base_model_check.json'} written")


def _cmd_predict(args: argparse.Namespace) -> None:
    from leafgen.classifier.predict import write_submission

    out = write_submission(args.model, args.folder, args.out, flip_tta=args.tta)
    print(f"submission written: {out}")


def _cmd_make_demo(args: argparse.Namespace) -> None:
    from leafgen.data.plant_pathology import read_folder
    from leafgen.data.procedural import ProceduralSpec, contact_sheet, make_dataset
    from leafgen.report.summary import format_counts

    spec = ProceduralSpec(scale=args.scale, size=args.size, seed=args.seed, test_fraction=args.test_fraction)
    out = make_dataset(args.out, spec, workers=args.workers)
    folder = read_folder(out, check_images=False, progress=False)
    print(f"{out}: {len(folder.image_ids)} training images, {len(folder.test_ids)} test images")
    print(format_counts({"train.csv": folder.counts()}))
    if args.preview:
        print(f"contact sheet: {contact_sheet(out, args.preview)}")


def _cmd_validate(args: argparse.Namespace) -> None:
    from leafgen.data.plant_pathology import read_folder
    from leafgen.report.summary import format_counts

    folder = read_folder(
        args.folder,
        on_bad_image=args.on_bad_image,
        max_image_pixels=args.max_image_pixels,
        decode_workers=args.workers,
        check_images=not args.no_images,
    )
    print(
        f"{folder.root}: valid Plant Pathology folder, {len(folder.image_ids)} training and "
        f"{len(folder.test_ids)} test images"
    )
    print(format_counts({"train.csv": folder.counts()}))
    if folder.skipped:
        print(f"skipped {len(folder.skipped)} bad image(s):")
        for line in folder.skipped:
            print(f"  - {line}")


def _cmd_config_show(args: argparse.Namespace) -> None:
    from leafgen.config import dump_yaml, load_config

    print(dump_yaml(load_config(args.config, args.overrides)), end="")


def _cmd_config_explain(args: argparse.Namespace) -> None:
    from leafgen.config import explain

    for key, type_name, doc in explain():
        if not args.prefix or key.startswith(args.prefix):
            print(f"{key} ({type_name})\n    {doc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leafgen", description="DreamBooth-augmented apple-leaf disease classification on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline stages (skipping those already complete)")
    _add_config_args(run)
    run.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    run.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and the ones after it")
    run.add_argument("--force", action="store_true", help="redo the selected stages even if complete")
    run.set_defaults(func=_cmd_run)

    tune = sub.add_parser(
        "tune", help="search tune.space on validation with Ray Tune, then test the best config"
    )
    _add_config_args(tune)
    tune.set_defaults(func=_cmd_tune)

    train = sub.add_parser("train-classifier", help="train and test the baseline classifier on Ray Train")
    _add_config_args(train)
    train.add_argument("--force", action="store_true", help="retrain even if a complete run exists")
    train.set_defaults(func=_cmd_train_classifier)

    for name, func, what, again in (
        ("generate", _cmd_generate, "generate synthetic images on Ray Data and gate them", "regenerate"),
        (
            "dreambooth",
            _cmd_dreambooth,
            "teach base_model the target class with DreamBooth",
            "fine-tune again",
        ),
    ):
        cmd = sub.add_parser(name, help=what)
        _add_config_args(cmd)
        cmd.add_argument("--force", action="store_true", help=f"{again} even if complete")
        cmd.set_defaults(func=func)

    verify = sub.add_parser(
        "verify", help="check every complete stage's files against the hashes its marker recorded"
    )
    verify.add_argument("run_dir", help="run directory: a path or an object-store URI (s3://...)")
    verify.add_argument(
        "--fix",
        action="store_true",
        help="first rerun the pipeline (the run's config.yaml) to redo damaged stages and their dependants",
    )
    verify.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="with --fix: overrides, e.g. ray.num_cpus=2"
    )
    verify.set_defaults(func=_cmd_verify)

    drift = sub.add_parser(
        "probe-drift", help="language-drift probe: the same prompts and seeds before and after DreamBooth"
    )
    _add_config_args(drift)
    drift.add_argument("--before", help="base model (default: base_model.name_or_path)")
    drift.add_argument("--after", type=Path, help="DreamBooth output (default: <run_dir>/dreambooth/model)")
    drift.add_argument(
        "--out", type=Path, help="folder for grids and drift.json (default: <run_dir>/drift-probe)"
    )
    drift.add_argument(
        "--samples", type=int, default=128, help="samples per model of the instance and class prompts"
    )
    drift.add_argument("--other-samples", type=int, default=8, help="samples per model of every other prompt")
    drift.add_argument("--steps", type=int, default=20, help="sampler steps")
    drift.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    drift.set_defaults(func=_cmd_probe_drift)

    base = sub.add_parser("base-model", help="train the embedded tiny text-to-image model from scratch")
    base.add_argument("--out", type=Path, required=True, help="diffusers pipeline folder to write")
    base.add_argument("--config", type=Path, help="recipe YAML (default: the built-in recipe)")
    base.add_argument("--work", type=Path, help="working folder kept for resuming (default: <out>.work)")
    base.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. training.unet_steps=100")
    base.set_defaults(func=_cmd_base_model)

    backbone = sub.add_parser(
        "backbone", help="pretrain the embedded ResNet18 backbone on procedural leaves (no minority class)"
    )
    backbone.add_argument("--out", type=Path, required=True, help="folder for model.safetensors")
    backbone.add_argument("--config", type=Path, help="recipe YAML (default: the built-in recipe)")
    backbone.add_argument("--work", type=Path, help="working folder kept for resuming (default: <out>.work)")
    backbone.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. classifier.epochs=2")
    backbone.set_defaults(func=_cmd_backbone)

    check = sub.add_parser(
        "check-base-model", help="measure base_model: autoencoder round-trips and samples per prompt"
    )
    _add_config_args(check)
    check.add_argument("--out", type=Path, required=True, help="folder for grids and base_model_check.json")
    check.add_argument("--samples", type=int, default=128, help="samples per prompt")
    check.add_argument("--steps", type=int, default=20, help="sampler steps")
    check.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    check.set_defaults(func=_cmd_check_base_model)

    predict = sub.add_parser("predict", help="write a Kaggle submission CSV for a folder's test.csv")
    predict.add_argument(
        "--model", type=Path, required=True, help="model folder, e.g. runs/demo/classifier/model"
    )
    predict.add_argument("--folder", type=Path, required=True, help="Kaggle-format folder holding test.csv")
    predict.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    predict.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    predict.set_defaults(func=_cmd_predict)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    demo = data.add_parser("make-demo", help="write the embedded procedural dataset in Kaggle format")
    demo.add_argument(
        "--out", type=Path, required=True, help="output folder (resumed if it holds the same settings)"
    )
    demo.add_argument(
        "--scale", type=float, default=1.0, help="size relative to Kaggle's 1821 training images"
    )
    demo.add_argument("--size", type=int, default=192, help="image width in pixels (height is 2/3)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--test-fraction", type=float, default=1.0, help="test.csv images per training image")
    demo.add_argument("--workers", type=int, default=None, help="drawing processes (default: CPU count)")
    demo.add_argument("--preview", type=Path, help="also write a PNG contact sheet here")
    demo.set_defaults(func=_cmd_make_demo)

    val = data.add_parser("validate", help="check a Kaggle-format folder and print its class counts")
    val.add_argument("folder", type=Path)
    val.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail")
    val.add_argument("--max-image-pixels", type=int, default=60_000_000)
    val.add_argument("--workers", type=int, default=4, help="decoding threads")
    val.add_argument("--no-images", action="store_true", help="check the CSVs only, not the image files")
    val.set_defaults(func=_cmd_validate)

    config = sub.add_parser("config", help="inspect configuration").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    show = config.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    show.set_defaults(func=_cmd_config_show)
    exp = config.add_parser("explain", help="list every config key with its type and meaning")
    exp.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. data.")
    exp.set_defaults(func=_cmd_config_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere among the options (argparse only takes them in one run).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        code = args.func(args)
    except LeafgenError as exc:
        for line in message_lines(exc):
            print(f"leafgen: error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("leafgen: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
