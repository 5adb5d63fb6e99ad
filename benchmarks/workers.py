"""Which arrangement trains a search's trials fastest on this machine's cores: one process giving
all its threads to one trial (hydra.sweeper.workers=1), or one one-thread process per core, each
training its own trial (workers=auto). What `workers: auto` rests on.

    make bench-workers      (= .venv/bin/python benchmarks/workers.py; about 10 minutes on 2 cores)

For kinds of trials the `optuna` preset runs (its recipe, 2 x 256 at batches of 256 and 128; the
wide models its searches find best, with layer norm, at both batch sizes), each trained
`--epochs` epochs on full MNIST as a trial is (the preset's validation split, trainer.precision
as `auto` chooses): one process with every core's thread, then one process per core side by side,
each with one thread, in alternating rounds. Epoch time counts epochs 2 on (the first warms up).
The figure is the machine's epochs per second with one process per core over one process with
every thread: above 1, the workers train more of the search in the same time. The seed's plain
DataLoader pipeline is `make bench`'s baseline; here both arrangements run the project's loop.
Writes benchmarks/results/workers.{json,md}.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from mlp_sweep.sweeping.worker_pool import usable_cores

TRIALS = {  # name: the trial's overrides (the preset's keys)
    "recipe 2x256, batch 256": ["model.depth=2", "model.width=256", "model.norm=none",
                                "trainer.batch_size=256", "augment=shift"],
    "recipe 2x256, batch 128": ["model.depth=2", "model.width=256", "model.norm=none",
                                "trainer.batch_size=128", "augment=shift"],
    "2x768 layer norm, batch 128": ["model.depth=2", "model.width=768", "model.norm=layer",
                                    "trainer.batch_size=128", "augment=shift", "activation=gelu"],
    "3x1024 layer norm, batch 256": ["model.depth=3", "model.width=1024", "model.norm=layer",
                                     "trainer.batch_size=256", "augment=shift", "activation=gelu"],
}


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def train_command(overrides: list[str], threads: int, out: Path, data: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "mlp_sweep.train", "hparams_search=optuna", *overrides,
            f"trainer.epochs={epochs}", f"trainer.threads={threads}", "trainer.progress=false",
            "trainer.precision=auto", "dataset.val_size=10000", f"dataset.root={data}",
            f"hydra.run.dir={out}"]


def epoch_seconds(out: Path) -> tuple[float, str]:
    """The mean epoch time from epoch 2 on, and the precision the run chose."""
    metrics = json.loads((out / "metrics.json").read_text())
    times = [e["epoch_time_s"] for e in metrics["epochs"][1:]]
    return statistics.mean(times), metrics["precision"]


def one_process(overrides: list[str], cores: int, data: Path, epochs: int, scratch: Path) -> dict:
    out = scratch / "alone"
    subprocess.run(train_command(overrides, cores, out, data, epochs), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds, precision = epoch_seconds(out)
    return {"epochs_per_s": 1 / seconds, "precision": precision}


def side_by_side(overrides: list[str], cores: int, data: Path, epochs: int, scratch: Path) -> dict:
    outs = [scratch / f"worker{k}" for k in range(cores)]
    processes = [subprocess.Popen(train_command(overrides, 1, out, data, epochs),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for out in outs]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"a worker's run failed: {process.args}")
    seconds = [epoch_seconds(out)[0] for out in outs]
    return {"epochs_per_s": sum(1 / s for s in seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", nargs="+", choices=list(TRIALS), default=list(TRIALS))
    args = parser.parse_args()
    cores = usable_cores()
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_model(),
              "cores": cores, "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
              "epochs": args.epochs, "rounds": args.rounds, "trials": {}}
    data = args.data.absolute()
    for name in args.trials:
        rounds = []
        for _ in range(args.rounds):  # alternating: a slower minute of the VM hits both
            with tempfile.TemporaryDirectory() as scratch:
                alone = one_process(TRIALS[name], cores, data, args.epochs, Path(scratch))
                workers = side_by_side(TRIALS[name], cores, data, args.epochs, Path(scratch))
            rounds.append({"one_process": alone, "workers": workers,
                           "ratio": workers["epochs_per_s"] / alone["epochs_per_s"]})
        ratio = statistics.median(r["ratio"] for r in rounds)
        report["trials"][name] = {"rounds": rounds, "ratio": ratio,
                                  "precision": rounds[0]["one_process"]["precision"]}
        each = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
        print(f"{name}: {ratio:.2f}x ({each})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "workers.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}`", "",
             f"{report['cpu']}, {report['cores']} cores; {report['date']}; {report['epochs']} "
             f"epochs a run (epochs 2-{report['epochs']} timed), {report['rounds']} alternating "
             "rounds, the median shown.", "",
             f"Epochs per second of the machine: {report['cores']} one-thread processes side by "
             f"side, each training its own trial, against one process of {report['cores']} "
             "threads:", "",
             "| trial | precision | one process (epochs/s) | one per core (epochs/s) | ratio |",
             "| --- | --- | ---: | ---: | ---: |"]
    for name, trial in report["trials"].items():
        alone = statistics.median(r["one_process"]["epochs_per_s"] for r in trial["rounds"])
        workers = statistics.median(r["workers"]["epochs_per_s"] for r in trial["rounds"])
        lines.append(f"| {name} | {trial['precision']} | {alone:.3f} | {workers:.3f} | "
                     f"{trial['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
