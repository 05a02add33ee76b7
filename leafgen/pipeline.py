"""The pipeline: stages in order, run through the stage contract with a one-line summary each."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from leafgen.classifier.stage import CLASSIFIER, JUDGE
from leafgen.config import PipelineConfig
from leafgen.data.stages import DATASET, SPLIT
from leafgen.diffusion.finetune.stages import CLASS_IMAGES, DREAMBOOTH, DREAMBOOTH_AFTER_CLASSIFIER
from leafgen.diffusion.generation.stages import GATE, GENERATE, GENERATE_FINETUNED
from leafgen.diffusion.probes.drift import DRIFT
from leafgen.diffusion.probes.generated_set import MEASURE
from leafgen.errors import StageError
from leafgen.evaluation.arms import ARMS_STAGE, RETRAIN
from leafgen.evaluation.mix_stage import MIX
from leafgen.evaluation.stage import EVALUATE
from leafgen.integrity.preflight import preflight
from leafgen.report.stage import REPORT
from leafgen.stage_store import StageStore
from leafgen.stages import RunDir, Stage, StageResult, run_stage

# The main job (`leafgen run`): data, baseline classifier and judge, DreamBooth and its drift probe,
# synthetic images from the fine-tuned model, the gate, the generated set measured, mixing, the arms over
# seeds, comparison, report.
STAGES: tuple[Stage, ...] = (
    DATASET,
    SPLIT,
    CLASSIFIER,
    JUDGE,
    CLASS_IMAGES,
    DREAMBOOTH_AFTER_CLASSIFIER,
    DRIFT,
    GENERATE_FINETUNED,
    GATE,
    MEASURE,
    MIX,
    ARMS_STAGE,
    RETRAIN,
    EVALUATE,
    REPORT,
)
# ``leafgen generate``: synthetic images from base_model (plus generate.adapter), gated.
GENERATION_STAGES: tuple[Stage, ...] = (DATASET, SPLIT, CLASSIFIER, GENERATE, GATE)
# ``leafgen dreambooth``: class images from base_model, then the fine-tune on the target class.
DREAMBOOTH_STAGES: tuple[Stage, ...] = (DATASET, SPLIT, CLASS_IMAGES, DREAMBOOTH)


def select_stages(
    only: Sequence[str] = (), start: str | None = None, stages: Sequence[Stage] = STAGES
) -> list[Stage]:
    names = [s.name for s in stages]
    for name in [*only, *([start] if start else [])]:
        if name not in names:
            raise StageError(f"unknown stage {name!r}; stages are: {', '.join(names)}")
    if only:
        return [s for s in stages if s.name in only]
    if start:
        return list(stages[names.index(start) :])
    return list(stages)


def run_pipeline(
    cfg: PipelineConfig,
    only: Sequence[str] = (),
    start: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    argv: list[str] | None = None,
    stages: Sequence[Stage] = STAGES,
    store: StageStore | None = None,
    checked: bool = False,
    redo: Collection[str] = (),
) -> list[StageResult]:
    """Run the selected stages in order; ``force`` redoes them even when their markers match, ``redo``
    names stages to redo that way. With a ``store``, stage outputs live there and are shared with every
    run of the same stage key. First, every selected stage's check and outside input is checked at once
    (``leafgen.integrity.preflight``), unless the caller did (``checked``)."""
    selected = select_stages(only, start, stages)
    if not checked:
        preflight(cfg, selected)
    run = RunDir(cfg.run_dir)
    run.start(cfg, argv)
    if store is not None:
        store.attach(run)
    results = []
    for stage in selected:
        again = force or stage.name in redo
        if store is not None:
            result = store.run(stage, cfg, run, force=again, log=log)
        else:
            result = run_stage(stage, cfg, run, force=again, log=log)
        how = "skipped (up to date)" if result.skipped else f"done in {result.seconds:.1f}s"
        if stage.summary is not None:
            how += f": {stage.summary(result.outputs)}"
        log(f"[{stage.name}] {how}")
        results.append(result)
    return results
