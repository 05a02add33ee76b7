"""Typed pipeline configuration: sections, YAML loading, dotted overrides."""

from leafgen.config.evaluation import ArmRecipe, JudgeConfig
from leafgen.config.loader import (
    apply_overrides,
    dump_yaml,
    explain,
    fingerprint,
    from_dict,
    load_config,
    select,
    to_dict,
)
from leafgen.config.sections import (
    BaseModelConfig,
    ClassifierConfig,
    DataConfig,
    DreamBoothConfig,
    EvalConfig,
    GateConfig,
    GenerateConfig,
    MixConfig,
    PipelineConfig,
    ProceduralConfig,
    RayConfig,
    TuneConfig,
)

__all__ = [
    "ArmRecipe",
    "JudgeConfig",
    "BaseModelConfig",
    "ClassifierConfig",
    "DataConfig",
    "DreamBoothConfig",
    "EvalConfig",
    "GateConfig",
    "GenerateConfig",
    "MixConfig",
    "PipelineConfig",
    "ProceduralConfig",
    "RayConfig",
    "TuneConfig",
    "apply_overrides",
    "dump_yaml",
    "explain",
    "fingerprint",
    "from_dict",
    "load_config",
    "select",
    "to_dict",
]
