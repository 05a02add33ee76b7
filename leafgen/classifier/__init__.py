"""The disease classifier: model and weights policy, metrics (training and prediction follow)."""
