"""After the gate: mix real and synthetic images, retrain the classifier arms and compare them honestly."""
