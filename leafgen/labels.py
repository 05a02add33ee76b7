"""The Plant Pathology 2020 label space, in the column order of Kaggle's train.csv."""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("healthy", "multiple_diseases", "rust", "scab")
TRAIN_COLUMNS: tuple[str, ...] = ("image_id", *CLASSES)
TEST_COLUMNS: tuple[str, ...] = ("image_id",)
# Class sizes of Kaggle's train.csv; the procedural set reproduces these proportions.
KAGGLE_TRAIN_COUNTS: dict[str, int] = {"healthy": 516, "multiple_diseases": 91, "rust": 622, "scab": 592}
