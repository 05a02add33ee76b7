"""The only package that imports Ray: runtime set-up and the Ray Train / Data / Tune wiring."""
