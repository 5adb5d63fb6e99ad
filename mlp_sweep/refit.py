"""`python -m mlp_sweep.refit`: the best trial trained again on train + validation
(mlp_sweep.analysis.refit)."""

import sys

from mlp_sweep.analysis.refit import main

if __name__ == "__main__":
    sys.exit(main())
