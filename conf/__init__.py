"""The configs, installed as the package mlp_sweep.conf: Hydra reads them as pkg://mlp_sweep.conf."""
