"""leafgen: DreamBooth-augmented apple-leaf disease classification on Ray."""

__version__ = "0.1.0"
