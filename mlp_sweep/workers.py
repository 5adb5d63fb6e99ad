"""`python -m mlp_sweep.workers`: asynchronous Optuna sweep workers (mlp_sweep.sweeping.workers)."""

import sys

from mlp_sweep.sweeping.workers import main

if __name__ == "__main__":
    sys.exit(main())
