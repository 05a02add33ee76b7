"""Measuring what a text-to-image model draws with a classifier: sampling and scoring helpers, and the
language-drift probe."""
