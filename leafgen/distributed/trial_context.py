"""Whether this process is running a Tune trial, and the Ray Train callbacks a trial's trainings need.

``leafgen.distributed.tune`` marks the trial while it runs the pipeline; a training started inside it (the
trial's classifier, ``leafgen.tuning.trial``) asks for :func:`trial_callbacks` so its epochs reach Tune.
Kept apart from the Tune driver so the trial's stages need not import the driver that imports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_in_trial = False


@contextlib.contextmanager
def trial_running() -> Iterator[None]:
    """Mark this process as running a trial for the duration of the block."""
    global _in_trial
    _in_trial = True
    try:
        yield
    finally:
        _in_trial = False


def trial_callbacks() -> list:
    """Train callbacks for a classifier run: inside a trial, forward its reports to Tune."""
    if not _in_trial:
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]
