"""Synthetic images: the prompt table, the generation worker, its manifest, the quality gate and the
generate and gate stages."""
