"""Training: the synthetic dataset, training loops and evaluation."""
