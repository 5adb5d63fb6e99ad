"""mlp_sweep: Hydra-configured MLP training and hyperparameter sweeps on PyTorch."""
