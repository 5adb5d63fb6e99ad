"""`python -m mlp_sweep.compare`: the comparison of runs and sweeps (mlp_sweep.analysis.compare)."""

import sys

from mlp_sweep.analysis.compare import main

if __name__ == "__main__":
    sys.exit(main())
