# my_app.py -- python my_app.py --multirun hydra/sweeper=mlp_optuna hydra/sweeper/pruner=median \
#     hydra.sweeper.storage=sqlite:///my.db '+x=interval(-5,5)'
import hydra
from mlp_sweep.sweeping.trial_link import report

@hydra.main(config_path=None, config_name=None)
def task(cfg) -> float:
    x = cfg.get("x", 0.0)
    for step in range(10):  # report raises optuna.TrialPruned when pruned, never at the last step
        report((x - 2) ** 2 + 1 / (step + 1), step, last=step == 9)
    return (x - 2) ** 2

if __name__ == "__main__":
    task()
