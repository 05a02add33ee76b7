"""Text-to-image side of leafgen: base-model components, the embedded tiny model and its training."""
