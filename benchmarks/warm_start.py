"""Warm start against cold: the same short search of hparams_search=optuna, with and without the
finished trials of an earlier study of the same space (hydra.sweeper.warm_start).

    .venv/bin/python benchmarks/warm_start.py               (about 25 minutes)
    .venv/bin/python benchmarks/warm_start.py --budget 60 --seeds 2 trainer.epochs=3   (a check)

1. the earlier study: hparams_search=optuna with sampler seed 1, for --budget seconds;
2. for each seed of --seeds: the same search cold, then warm-started from the earlier study, each
   with that sampler seed and the same budget, one at a time, as a user runs them.
Each search's best validation accuracy so far at every minute, read from its own trials'
completion times (the imported ones left out), and the test accuracy of its final best. Writes
benchmarks/results/warm_start.{json,md} after each search. `--reuse --kinds warm` runs the warm
searches again from the earlier study of the report already there (after a change to the warm
start), keeping its other searches.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from mlp_sweep.sweeping import trial_attrs

# One process, as its recorded results were searched (the whole machine: make bench-peers)
TRAIN = [sys.executable, "-m", "mlp_sweep.train", "--multirun", "hparams_search=optuna",
         "hydra.sweeper.workers=1"]
STUDY = "mlp_mnist"  # the preset's study name on MNIST


def run_search(name: str, data: Path, runs: Path, budget: float, seed: int,
               *extra: str) -> tuple[str, float]:
    """One search in its own process and database; its storage URL and its start (Unix time)."""
    storage = f"sqlite:///{runs / name}.db"
    started = time.time()
    subprocess.run([*TRAIN, f"dataset.root={data}", f"hydra.sweeper.timeout={budget}",
                    f"hydra.sweeper.storage={storage}", f"hydra.sweeper.sampler.seed={seed}",
                    f"hydra.sweep.dir={runs / name}", *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return storage, started


def best_so_far(storage: str, started: float, budget: float) -> dict:
    """The search's own trials (no imported one): counts, best validation accuracy at each
    minute, and its final best's test accuracy (from the trial's metrics.json)."""
    every = optuna.load_study(study_name=STUDY, storage=storage).trials
    trials = [t for t in every if not trial_attrs.imported_from(t)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    imported = len(every) - len(trials)
    curve = {}
    for minute in range(1, int(budget // 60) + 1):
        done = [t.value for t in complete if t.datetime_complete.timestamp() <= started + 60 * minute]
        curve[f"{minute} min"] = max(done) if done else None
    best = max(complete, key=lambda t: t.value) if complete else None
    test = None
    if best is not None:
        metrics = json.loads((trial_attrs.run_dir(best) / "metrics.json").read_text())
        test = metrics["test_accuracy"]
    return {"trials": len(trials), "complete": len(complete), "imported": imported,
            "best_so_far": curve, "best_trial": best and best.number,
            "best_val_accuracy": best and best.value, "best_test_accuracy": test,
            "best_params": best and best.params}


def markdown(report: dict) -> str:
    minutes = list(next(iter(report["searches"].values()))["best_so_far"])
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; {report['date']}; each search "
             f"{report['budget_s']:g} s of wall time on this machine; the earlier study: sampler "
             f"seed 1, {report['earlier']['trials']} trials ({report['earlier']['complete']} "
             "complete)", "",
             "| search | seed | own trials (complete) | imported | "
             + " | ".join(f"best val at {m}" for m in minutes) + " | final best: its test accuracy |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in minutes) + " | ---: |"]
    for name, part in report["searches"].items():
        kind, seed = name.rsplit("_seed", 1)
        cells = " | ".join(f"{v:.2%}" if v is not None else "none" for v in part["best_so_far"].values())
        test = f"{part['best_test_accuracy']:.2%}" if part["best_test_accuracy"] is not None else ""
        lines.append(f"| {kind} | {seed} | {part['trials']} ({part['complete']}) | {part['imported']} "
                     f"| {cells} | {test} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("multirun/bench-warm-start"))
    parser.add_argument("--budget", type=float, default=300, help="seconds per search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--kinds", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument("--reuse", action="store_true",
                        help="the earlier study and searches of the report in --out; run --kinds again")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every search")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = args.data.absolute()
    runs = args.runs.absolute() / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    runs.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.budget == 300 and not args.overrides else "_quick"
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "budget_s": args.budget,
              "overrides": args.overrides, "runs": str(runs), "searches": {}}
    if args.reuse:
        report = {**json.loads((args.out / f"warm_start{suffix}.json").read_text()),
                  "date": report["date"], "rerun": str(runs)}

    def save() -> None:
        (args.out / f"warm_start{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
        if report["searches"]:
            (args.out / f"warm_start{suffix}.md").write_text(markdown(report))

    if args.reuse:
        earlier = f"sqlite:///{report['runs']}/earlier.db"
    else:
        print("earlier study ...", flush=True)
        earlier, started = run_search("earlier", data, runs, args.budget, 1, *args.overrides)
        report["earlier"] = best_so_far(earlier, started, args.budget)
        save()
    warm = [f"hydra.sweeper.warm_start={{study_name: {STUDY}, storage: '{earlier}'}}"]
    for seed in args.seeds:
        for kind, extra in (("cold", []), ("warm", warm)):
            if kind not in args.kinds:
                continue
            name = f"{kind}_seed{seed}"
            print(f"{name} ...", flush=True)
            storage, started = run_search(name, data, runs, args.budget, seed, *extra,
                                          *args.overrides)
            report["searches"][name] = best_so_far(storage, started, args.budget)
            save()
            print(json.dumps(report["searches"][name]["best_so_far"]), flush=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
