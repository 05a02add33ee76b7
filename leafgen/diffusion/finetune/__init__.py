"""Teaching the base model the target class: DreamBooth (full or LoRA), its identifier token, data,
loop, outputs and stages, and loading a fine-tune the way a diffusers user would (adapters)."""
