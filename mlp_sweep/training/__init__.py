"""Training: data, the model, the loop, augmentations and schedules, and the run's own record."""
