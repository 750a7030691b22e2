"""Evaluation: metrics, protocols (k-shot, holdout), comparisons of methods, energy and cost."""
