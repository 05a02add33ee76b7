"""The embedded tiny text-to-image model: its tokenizer, recipe, training and checks."""
