"""The search space of ``tune.space``: dotted config keys mapped to a sampling domain, checked up front.

Every key must name a setting that changes what a trial measures (a config key of one of the trial's
stages) and must not change the data or the split, so every trial is scored on the same validation
images. Each candidate value (a choice, or a range's bounds) is applied to the config and validated
there, so a bad value fails before any trial starts, naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leafgen.config import ArmRecipe, PipelineConfig, from_dict, select, to_dict
from leafgen.config.loader import all_keys, set_dotted
from leafgen.errors import ConfigError
from leafgen.stages import Stage

KINDS = ("choice", "uniform", "loguniform", "randint")
# The data and the split stay fixed: trials are compared on the same validation images.
FIXED_PREFIXES = ("data.", "run_dir", "tune.", "ray.", "eval.")


@dataclass(frozen=True)
class Param:
    """One searched setting."""

    key: str
    """Dotted config key, e.g. ``dreambooth.learning_rate``."""
    kind: str
    """One of KINDS."""
    args: tuple[Any, ...]
    """The choices, or the range's (low, high)."""

    @property
    def values(self) -> tuple[Any, ...]:
        """Every value the domain can produce at its edges (the choices, or both bounds)."""
        if self.kind == "randint":
            return (self.args[0], self.args[1] - 1)
        return self.args


def parse_space(cfg: PipelineConfig, stages: Sequence[Stage]) -> list[Param]:
    """``cfg.tune.space`` as checked :class:`Param` s; ``stages`` are the stages a trial runs."""
    if not cfg.tune.space:
        raise ConfigError(
            "tune.space is empty: name at least one setting to search, e.g. "
            "tune.space={mix.synthetic_ratio: {choice: [0, 1]}}"
        )
    keys = set(all_keys())
    searchable = {k for stage in stages for k in stage.config_keys}
    params = []
    # The recipe of the arm a trial trains is searched like any setting (the data and split stay fixed).
    arm_prefix = f"eval.arms.{trial_arm(cfg).name}."
    for key, domain in cfg.tune.space.items():
        where = f"tune.space.{key}"
        recipe = key.startswith(arm_prefix)
        if key.startswith("eval.arms.") and not recipe:
            raise ConfigError(
                f"{where}: cannot be searched; a trial trains one arm (tune.arm: {arm_prefix[10:-1]}), and "
                f"only its recipe is searchable ({arm_prefix}<field>)"
            )
        if recipe:
            _check_recipe_key(cfg, key, where)
        elif key not in keys:
            raise ConfigError(f"{where}: no such config key (leafgen config explain lists them)")
        if key.startswith(FIXED_PREFIXES) and not recipe:
            raise ConfigError(
                f"{where}: cannot be searched; the data, split, evaluation, Ray and Tune settings stay "
                "fixed so that every trial is measured on the same validation images"
            )
        if not any(key == s or key.startswith(s + ".") for s in searchable):
            raise ConfigError(
                f"{where}: no stage of a trial reads this setting, so searching it changes nothing; "
                "searchable: " + ", ".join(sorted(searchable))
            )
        params.append(_param(key, domain, where))
    if cfg.tune.search_alg == "grid":
        loose = [p.key for p in params if p.kind != "choice"]
        if loose:
            raise ConfigError(f"tune.space.{loose[0]}: grid search takes {{choice: [...]}} only")
    for p in params:
        for value in p.values:
            apply_values(cfg, {p.key: value}, where=f"tune.space.{p.key} value {value!r}")
    return params


def trial_arm(cfg: PipelineConfig) -> ArmRecipe:
    """The arm a trial trains: ``tune.arm``, or the first arm that trains on synthetic images."""
    arms = cfg.eval.arms or ()
    if cfg.tune.arm is not None:
        return cfg.eval.arm(cfg.tune.arm)
    return next((a for a in arms if a.synthetic), arms[0])


def _check_recipe_key(cfg: PipelineConfig, key: str, where: str) -> None:
    field = key.rsplit(".", 1)[-1]
    if key.count(".") != 3 or field == "name":
        raise ConfigError(
            f"{where}: name one field of the arm's recipe, e.g. eval.arms.{trial_arm(cfg).name}.balance"
        )
    select(cfg, key)  # a field the recipe has, or a ConfigError naming the key


def apply_values(cfg: PipelineConfig, values: dict[str, Any], where: str = "trial") -> PipelineConfig:
    """``cfg`` with the dotted ``values`` set, validated as a whole config."""
    raw = to_dict(cfg)
    for key, value in values.items():
        set_dotted(raw, key, value)
    try:
        return from_dict(PipelineConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def grid_size(params: Sequence[Param]) -> int:
    return math.prod(len(p.args) for p in params)


def _param(key: str, domain: Any, where: str) -> Param:
    if not isinstance(domain, dict) or len(domain) != 1:
        raise ConfigError(f"{where}: expected one of {{{': ..., '.join(KINDS)}: ...}}, got {domain!r}")
    ((kind, args),) = domain.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown domain {kind!r}; use one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
    if kind == "choice":
        return Param(key, kind, tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{where}.{kind}: expected [low, high] numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low must be below high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}.randint: bounds must be integers, got {args!r}")
    return Param(key, kind, (low, high))
