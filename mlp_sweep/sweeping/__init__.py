"""Sweeping: the Hydra Optuna sweeper plugin, the job's link to its trial, search spaces,
storages and asynchronous workers."""
