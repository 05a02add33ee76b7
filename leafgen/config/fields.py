"""Validation helpers shared by the typed config sections and the base-model recipe."""

from __future__ import annotations

from leafgen.errors import ConfigError


class FieldError(ConfigError):
    """A value that fails validation; ``field`` is relative to the dataclass that raised it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")


def positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise FieldError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def validation_metrics() -> list[str]:
    """The validation metrics a classifier's best epoch can be picked by (maximised)."""
    from leafgen.labels import CLASSES

    metrics = ["val/accuracy", "val/mean_auc", "val/target_recall"]
    return metrics + [f"val/{kind}/{c}" for kind in ("recall", "auc") for c in CLASSES]
