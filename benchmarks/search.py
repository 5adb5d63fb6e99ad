"""What a search finds, per minute of this machine: the course recipe against the search presets.

    make bench-search            (= .venv/bin/python benchmarks/search.py; about 2.5 hours)
    make bench-search QUICK=1    (every budget divided by 6: checks that it works)
    .venv/bin/python benchmarks/search.py --parts c --seeds 123       (a part of it; then
    .venv/bin/python benchmarks/search.py --resume                     the rest, added)

Writes benchmarks/results/search.{json,md}, after each part, so a stopped run keeps what it has
(`--resume` runs only the parts that file does not hold yet):
0. the cost of augmentation: one epoch at batch 128 of a 784-1024-1024-10 MLP with
   augment=none, shift and affine (median of 3 epochs each, interleaved);
a. the course recipe as a single run (5 epochs, trained on 50000 images, validated on 10000);
b. hparams_search=optuna_course for 5 minutes;
c. hparams_search=optuna (TPE) for 30 minutes at sampler seeds 123, 124 and 125, each one's best
   so far read at 5, 15 and 30 minutes from the trials' completion times, with the share of its
   time spent on trials pruned late (after two thirds of their epochs);
d. the same preset with the random sampler for 15 minutes.
For each best: its validation accuracy (what chose it), its own test accuracy, and the refit
(python -m mlp_sweep.refit: the same config trained on all 60000 training images) test accuracy,
mean ± std over 3 seeds (--refit-seeds 1: a third of the time, no spread). Every search runs as
a user runs it, in its own process, one at a time.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from mlp_sweep.analysis.refit_best import refit
from mlp_sweep.sweeping import trial_attrs

TRAIN = [sys.executable, "-m", "mlp_sweep.train"]
SEEDS = 3                           # refit seeds
SAMPLER_SEEDS = (123, 124, 125)     # the 30-minute search's
TPE_PART = "(c) optuna, TPE"
LATE = 2 / 3                        # a trial pruned after this share of its epochs was pruned late


def augment_cost(data: Path) -> dict:
    """Seconds per training epoch at batch 128 with each augmentation, in this process."""
    from omegaconf import OmegaConf

    from mlp_sweep.training.augment import build_augment
    from mlp_sweep.training.data import load_splits
    from mlp_sweep.training.engine import train_model_epoch
    from mlp_sweep.training.model import MLP

    conf = Path(__file__).resolve().parents[1] / "conf"
    dataset = OmegaConf.load(conf / "dataset" / "mnist.yaml")
    dataset.root, dataset.val_size = str(data), 10000
    train = load_splits(dataset).train
    augments = {name: build_augment(OmegaConf.load(conf / "augment" / f"{name}.yaml"))
                for name in ("none", "shift", "affine")}
    torch.manual_seed(0)
    model = MLP([1, 28, 28], [1024, 1024], 10, dropout=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    epochs: dict[str, list[float]] = {name: [] for name in augments}
    train_model_epoch(model, optimizer, train, 128, 0)  # warm-up
    for repeat in range(3):  # interleaved, so that a slow minute of the machine hits all three
        for name, augment in augments.items():
            start = time.perf_counter()
            train_model_epoch(model, optimizer, train, 128, repeat,
                        augment=augment)
            epochs[name].append(time.perf_counter() - start)
    times = {name: statistics.median(t) for name, t in epochs.items()}
    print(f"epoch seconds at batch 128: {times}", flush=True)
    return {name: {"epoch_s": t, "vs_none": t / times["none"]} for name, t in times.items()}


def single_run(data: Path, out: Path, *extra: str) -> dict:
    """The course recipe with a validation split, so that it is chosen and scored like a trial."""
    run_dir = out / "course_recipe"
    started = time.time()
    subprocess.run([*TRAIN, f"dataset.root={data}", "dataset.val_size=10000",
                    "objective=val_accuracy", "trainer.progress=false",
                    f"hydra.run.dir={run_dir}", *extra], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": time.time() - started, "trials": {"complete": 1},
            "at": {"end": best_entry(run_dir, metrics["val_accuracy"], 0)}}


def search(name: str, data: Path, out: Path, preset: str, budget_s: float,
           read_at: dict[str, float], *extra: str) -> dict:
    """Run one search for `budget_s` (hydra.sweeper.timeout), then read its best so far at each
    of `read_at` (label -> seconds from the command's start)."""
    storage = f"sqlite:///{out / name}.db"
    started = time.time()
    subprocess.run([*TRAIN, "--multirun", f"hparams_search={preset}", f"dataset.root={data}",
                    f"hydra.sweeper.timeout={budget_s}", f"hydra.sweeper.storage={storage}",
                    f"hydra.sweep.dir={out / name}", "trainer.progress=false",
                    # one process, as its recorded results were searched (workers: make bench-peers)
                    "hydra.sweeper.workers=1", *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - started
    # The search's own database holds its one study, whatever the preset names it.
    trials = optuna.load_study(study_name=None, storage=storage).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    result = {"wall_s": wall, "trials": {
        "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "epochs_trained": sum(len(t.intermediate_values) for t in trials)}, "at": {},
        "time_shares": time_shares(trials, wall, epochs_of(trials))}
    for label, seconds in read_at.items():
        done = [t for t in trials if t.state == TrialState.COMPLETE
                and t.datetime_complete.timestamp() <= started + seconds]
        if done:
            best = max(done, key=lambda t: t.value)
            result["at"][label] = best_entry(trial_attrs.run_dir(best), best.value,
                                              best.number, best.params)
        else:
            result["at"][label] = None
    return result


def epochs_of(trials: list[optuna.trial.FrozenTrial]) -> int:
    """A complete trial's epochs, as its run folder's config says."""
    run_dir = trial_attrs.run_dir(trials[0])
    return int(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]["epochs"])


def time_shares(trials: list[optuna.trial.FrozenTrial], wall_s: float, epochs: int) -> dict:
    """The share of the search's wall time in trials that completed, were pruned by the pruner
    early (by two thirds of their epochs) or late (after), or were stopped by the budget."""
    shares = {"complete": 0.0, "pruned early": 0.0, "pruned late": 0.0, "budget": 0.0}
    for trial in trials:
        if trial.datetime_complete is None:
            continue
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.state == TrialState.COMPLETE:
            kind = "complete"
        elif trial.state != TrialState.PRUNED:
            continue
        elif trial_attrs.pruned_by(trial) == trial_attrs.PRUNED_BY_BUDGET:
            kind = "budget"
        else:
            kind = "pruned late" if len(trial.intermediate_values) > LATE * epochs else "pruned early"
        shares[kind] += seconds / wall_s
    return shares


def best_entry(run_dir: Path, value: float, number: int, params: dict | None = None) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"trial": number, "run_dir": str(run_dir), "val_accuracy": value,
            "test_accuracy": metrics["test_accuracy"], "best_epoch": metrics["best_epoch"],
            "params": params or {}}


def add_refits(result: dict, cache: dict, seeds: int = SEEDS) -> None:
    """The refit of each reported best with `seeds` seeds; a trial that is best at two budgets is
    refitted once."""
    for entry in result["at"].values():
        if entry is None:
            continue
        if entry["run_dir"] not in cache:
            run_dir = Path(entry["run_dir"])
            cache[entry["run_dir"]] = refit(run_dir, seeds, run_dir / "refit")
            print(f"refit of {run_dir}: {cache[entry['run_dir']]['test_accuracy']}", flush=True)
        summary = cache[entry["run_dir"]]
        entry["refit"] = {k: summary[k] for k in ("test_accuracy", "test_accuracy_mean",
                                                   "test_accuracy_std", "epochs")}


def markdown(report: dict) -> str:
    aug = report["augment_cost"]
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; {report['date']}; "
             f"budgets are wall time on this machine (2 cores: 1 minute = 2 CPU-minutes)"
             + (f" (a check: budgets x {report['scale']:.3g}, overrides {report['overrides']})"
                if report["quick"] else ""), "",
             "Augmentation cost, one epoch at batch 128 (784-1024-1024-10, AdamW): "
             + ", ".join(f"{n} {a['epoch_s']:.2f} s ({a['vs_none']:.2f}x)" for n, a in aug.items()),
             "", "| search | budget | trials (complete / pruned / failed) | best val accuracy "
             "| its test accuracy | refit test accuracy, mean ± std (seeds) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, part in sorted(report["searches"].items()):
        t = part["trials"]
        counts = f"{t.get('complete', 0)} / {t.get('pruned', 0)} / {t.get('failed', 0)}"
        for label, entry in part["at"].items():
            if entry is None:
                lines.append(f"| {name} | {label} | {counts} | (none completed) | | |")
                continue
            refitted = entry.get("refit")
            refit_text = (f"{refitted['test_accuracy_mean']:.2%} ± {refitted['test_accuracy_std']:.2%}"
                          f" ({len(refitted['test_accuracy'])})" if refitted else "")
            lines.append(f"| {name} | {label} | {counts} | {entry['val_accuracy']:.2%} "
                         f"| {entry['test_accuracy']:.2%} | {refit_text} |")
    lines += tpe_summary(report)
    lines += ["", "Best configurations:", ""]
    for name, part in sorted(report["searches"].items()):
        for label, entry in part["at"].items():
            if entry and entry["params"]:
                params = ", ".join(f"{k}={_short(v)}" for k, v in entry["params"].items())
                lines.append(f"- {name} at {label}: trial {entry['trial']} (best epoch "
                             f"{entry['best_epoch']}): {params}")
    return "\n".join(lines) + "\n"


def tpe_summary(report: dict) -> list[str]:
    """The 30-minute search over its sampler seeds: the median refit at each reading, and each
    search's share of time by how its trials ended."""
    searches = {n: p for n, p in sorted(report["searches"].items()) if n.startswith(TPE_PART)}
    if not searches:
        return []
    labels = list(next(iter(searches.values()))["at"])
    lines = ["", f"{TPE_PART} over {len(searches)} sampler seeds: median (min–max) refit test "
             "accuracy of each search's best at each reading; where each search's time went:", "",
             "| reading | median refit | min | max |", "| --- | ---: | ---: | ---: |"]
    for label in labels:
        refits = sorted(e["refit"]["test_accuracy_mean"] for p in searches.values()
                        if (e := p["at"].get(label)) and e.get("refit"))
        if refits:
            lines.append(f"| {label} | {statistics.median_low(refits):.2%} | {refits[0]:.2%} | "
                         f"{refits[-1]:.2%} |")
    shares = [p.get("time_shares") for p in searches.values()]
    kinds = list(next((x for x in shares if x), {}))
    if kinds:
        lines += ["", "| search | " + " | ".join(kinds) + " |", "| --- |" + " ---: |" * len(kinds)]
        lines += [f"| {n} | " + " | ".join(f"{p['time_shares'][k]:.0%}" for k in kinds) + " |"
                  for n, p in searches.items() if p.get("time_shares")]
    return lines


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("multirun/bench-search"),
                        help="where the searches' folders and studies go")
    parser.add_argument("--quick", action="store_true", help="every budget divided by 6")
    parser.add_argument("--scale", type=float, help="every budget multiplied by this")
    parser.add_argument("--parts", nargs="+", choices=list("abcd"), default=list("abcd"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SAMPLER_SEEDS),
                        help="the sampler seeds of part c")
    parser.add_argument("--refit-seeds", type=int, default=SEEDS,
                        help="seeds of each best's refit (3: its spread; 1: a third of the time)")
    parser.add_argument("--resume", action="store_true",
                        help="add to the results file: run only the parts it does not hold")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for every run, e.g. trainer.epochs=2 to try it out")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scale = args.scale or (1 / 6 if args.quick else 1)
    data = args.data.absolute()
    runs = args.runs.absolute() / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    runs.mkdir(parents=True)
    minutes = lambda m: 60 * m * scale  # noqa: E731 - a budget in (scaled) minutes
    label = lambda m: f"{m * scale:g} min"  # noqa: E731
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "quick": scale != 1,
              "scale": scale, "overrides": args.overrides,
              "runs": str(runs), "searches": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if scale == 1 and not args.overrides else "_quick"
    results_file = args.out / f"search{suffix}.json"
    if args.resume and results_file.is_file():
        earlier = json.loads(results_file.read_text())
        if (earlier["scale"], earlier["overrides"]) != (scale, args.overrides):
            raise SystemExit(f"--resume: {results_file} was measured with scale "
                             f"{earlier['scale']} and overrides {earlier['overrides']}; allowed: "
                             "the same")
        report["searches"] = earlier["searches"]
        report["augment_cost"] = earlier["augment_cost"]
        report["dates"] = sorted({*earlier.get("dates", [earlier["date"]]), report["date"]})

    def save() -> None:
        (args.out / f"search{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
        if "augment_cost" in report:
            (args.out / f"search{suffix}.md").write_text(markdown(report))

    refits: dict = {}
    if "augment_cost" not in report:
        report["augment_cost"] = augment_cost(data)
    save()
    parts = {
        "(a) course recipe, single run": lambda: single_run(data, runs, *args.overrides),
        "(b) optuna_course, TPE": lambda: search(
            "b_course", data, runs, "optuna_course", minutes(5), {label(5): minutes(5)},
            "hydra.sweeper.n_trials=10000", *args.overrides),
        **{f"{TPE_PART}, seed {seed}": functools.partial(
            search, f"c_tpe_{seed}", data, runs, "optuna", minutes(30),
            {label(5): minutes(5), label(15): minutes(15), label(30): minutes(30)},
            f"hydra.sweeper.sampler.seed={seed}", *args.overrides) for seed in args.seeds},
        "(d) optuna, random sampler": lambda: search(
            "d_random", data, runs, "optuna", minutes(15), {label(15): minutes(15)},
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123", *args.overrides),
    }
    parts = {name: run for name, run in parts.items()
             if name[1] in args.parts and name not in report["searches"]}
    for name, run in parts.items():
        print(f"{name} ...", flush=True)
        report["searches"][name] = run()
        add_refits(report["searches"][name], refits, args.refit_seeds)
        save()
        print(json.dumps(report["searches"][name]["at"], indent=1), flush=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
