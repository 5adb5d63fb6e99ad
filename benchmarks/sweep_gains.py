"""What pruning and parallel trials gain, measured on this machine in one run.

    .venv/bin/python benchmarks/sweep_gains.py [--data ./data] [--out benchmarks/results]

1. Pruning: the same Optuna search (same sampler seed, same n_trials, same epochs) with
   `hydra/sweeper/pruner=none` and with the preset's median pruner: wall time, best value, states.
2. Parallel: the same search run sequentially (basic launcher), in joblib batches of 2
   (hydra/launcher=joblib) and as 2 asynchronous workers (python -m mlp_sweep.workers 2):
   trials per minute, whole command included (process start-up, data loading).
Each sweep runs in a fresh temporary folder; MNIST comes from --data.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mlp_sweep.sweeping.storage import load_study

TRAIN = [sys.executable, "-m", "mlp_sweep.train", "--multirun"]


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def study_summary(storage: str) -> dict:
    trials = load_study("course_mnist", storage).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "best_value": max(t.value for t in complete),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
    }


def pruning(data: Path, trials: int, epochs: int) -> dict:
    results = {}
    for pruner in ("none", "median"):
        with tempfile.TemporaryDirectory() as tmp:
            storage = f"sqlite:///{tmp}/optuna.db"
            wall = timed([*TRAIN, "hparams_search=optuna_course", f"hydra/sweeper/pruner={pruner}",
                          f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.storage={storage}",
                          f"trainer.epochs={epochs}", "trainer.progress=false",
                          f"dataset.root={data}"], Path(tmp))
            results[pruner] = {"wall_s": wall, **study_summary(storage)}
        print(f"pruner={pruner}: {results[pruner]}", flush=True)
    return results


def parallel(data: Path, trials: int) -> dict:
    common = [f"hydra.sweeper.n_trials={trials}", "trainer.epochs=1", "trainer.progress=false",
              f"dataset.root={data}"]
    modes = {
        "sequential": lambda s: [*TRAIN, "hparams_search=optuna_course", f"hydra.sweeper.storage={s}", *common],
        "joblib_batches_of_2": lambda s: [*TRAIN, "hparams_search=optuna_course",
                                          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                          "hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage={s}",
                                          *common],
        "async_workers_2": lambda s: [sys.executable, "-m", "mlp_sweep.workers", "2",
                                      "hparams_search=optuna_course", f"hydra.sweeper.storage={s}",
                                      *common],
    }
    results = {}
    for name, command in modes.items():
        with tempfile.TemporaryDirectory() as tmp:
            storage = f"journal:{tmp}/optuna.journal"
            wall = timed(command(storage), Path(tmp))
            summary = study_summary(storage)
            done = summary["complete"] + summary["pruned"]
            results[name] = {"wall_s": wall, "trials": done, "trials_per_min": 60 * done / wall, **summary}
        print(f"{name}: {results[name]}", flush=True)
    base = results["sequential"]["trials_per_min"]
    for result in results.values():
        result["speedup_vs_sequential"] = result["trials_per_min"] / base
    return results


def markdown(report: dict) -> str:
    p, q = report["pruning"], report["parallel"]
    lines = [f"Pruning: {report['pruning_setup']}", "",
             "| pruner | wall time (s) | best val accuracy | complete | pruned | epochs trained |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['wall_s']:.1f} | {r['best_value']:.4f} | {r['complete']} | {r['pruned']} "
              f"| {r['epochs_trained']} |" for name, r in p.items()]
    lines += ["", f"Median pruning: {p['none']['wall_s'] / p['median']['wall_s']:.2f}x less wall time, "
              f"best value {p['median']['best_value'] - p['none']['best_value']:+.4f}.", "",
              f"Parallel trials: {report['parallel_setup']}", "",
              "| mode | wall time (s) | trials | trials / min | vs sequential |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r['wall_s']:.1f} | {r['trials']} | {r['trials_per_min']:.1f} "
              f"| {r['speedup_vs_sequential']:.2f}x |" for name, r in q.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--trials", type=int, default=20, help="trials of the pruning comparison")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--parallel-trials", type=int, default=12)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = args.data.absolute()
    report = {
        "pruning_setup": f"hparams_search=optuna_course, {args.trials} trials, {args.epochs} epochs, "
                         "TPE seed 123, MNIST with a 10000-image validation split",
        "pruning": pruning(data, args.trials, args.epochs),
        "parallel_setup": f"hparams_search=optuna_course, {args.parallel_trials} trials, 1 epoch each",
        "parallel": parallel(data, args.parallel_trials),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_gains.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "sweep_gains.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
