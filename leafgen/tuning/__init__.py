"""Hyperparameter search over the pipeline (``leafgen tune``): space, trial stages, results, report.

Ray-free; the Tune wiring lives in :mod:`leafgen.distributed.tune`.
"""
