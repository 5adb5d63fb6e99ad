"""What trainer.precision=bf16 does to speed and to accuracy, against fp32 in the same run.

    make bench-precision   (= .venv/bin/python benchmarks/precision.py; about 30 minutes)
    .venv/bin/python benchmarks/precision.py --seeds 1 --parts speed    (a quicker look)

Writes benchmarks/results/precision.{json,md}:
- speed: seconds per training epoch on MNIST's 50000 training images of the course MLP
  (batch 64, Adam) and of the `optuna` preset's widths (batch 256, AdamW), fp32 and bf16
  interleaved, the median of 2 epochs each after a warm-up;
- accuracy: the `optuna` preset's first trial (its enqueued recipe) and the best of the README's
  30-minute search (benchmarks/results/search.json, sampler seed 123), refitted as
  `python -m mlp_sweep.refit` does (all 60000 training images, 27 epochs) at seeds 0..N-1 in
  each precision: the test accuracies, their mean and spread, and the wall time of each refit.
Each refit is `python -m mlp_sweep.train` in its own process, one at a time.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

TRAIN = [sys.executable, "-m", "mlp_sweep.train"]
PRECISIONS = ("fp32", "bf16")
# (label, hidden sizes, norm, batch size, optimizer): the course recipe, then the preset's widths
# from its recipe to its widest corner
SPEED_MODELS = (
    ("course 128-64, batch 64", [128, 64], "none", 64, "adam"),
    ("2 x 256 (the preset's recipe)", [256, 256], "none", 256, "adamw"),
    ("2 x 1024", [1024, 1024], "none", 256, "adamw"),
    ("3 x 1105, layer norm (30-minute best)", [1105] * 3, "layer", 256, "adamw"),
    ("3 x 1622, layer norm", [1622] * 3, "layer", 256, "adamw"),
    ("4 x 2048, layer norm (the space's widest)", [2048] * 4, "layer", 256, "adamw"),
)
SEARCH_RESULTS = Path("benchmarks/results/search.json")
SEARCH_BEST = ("(c) optuna, TPE, seed 123", "30 min")


def epoch_times(data: Path, repeats: int = 2) -> dict:
    """Seconds per training epoch of each SPEED_MODELS entry in each precision, this process."""
    from omegaconf import OmegaConf

    from mlp_sweep.training.data import load_splits
    from mlp_sweep.training.engine import train_model_epoch
    from mlp_sweep.training.model import MLP

    dataset = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/dataset/mnist.yaml")
    dataset.root, dataset.val_size = str(data), 10000
    train = load_splits(dataset).train
    result = {}
    for label, sizes, norm, batch, optimizer_name in SPEED_MODELS:
        torch.manual_seed(0)
        model = MLP([1, 28, 28], sizes, 10, norm=norm)
        # fused, as conf/optimizer/ has them: the step is the same in both precisions
        optimizer = (torch.optim.Adam if optimizer_name == "adam" else torch.optim.AdamW)(
            model.parameters(), 1e-3, fused=True)
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for precision in PRECISIONS:  # warm-up, on a tenth of an epoch
            train_model_epoch(model, optimizer, train.head(len(train) // 10), batch, 0,
                              dtype=dtype_of(precision))
        for repeat in range(repeats):  # interleaved: a slow minute of the machine hits both
            for precision in PRECISIONS:
                start = time.perf_counter()
                train_model_epoch(model, optimizer, train, batch, repeat,
                            dtype=dtype_of(precision))
                times[precision].append(time.perf_counter() - start)
        medians = {p: statistics.median(t) for p, t in times.items()}
        result[label] = {"epoch_s": medians, "speedup": medians["fp32"] / medians["bf16"]}
        print(f"{label}: {result[label]}", flush=True)
    return result


def dtype_of(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def refit_configs() -> dict[str, list[str]]:
    """The two configs refitted, as overrides of `hparams_search=optuna`'s single run."""
    from omegaconf import OmegaConf

    preset = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/hparams_search/optuna.yaml")
    recipe = dict(preset.hydra.sweeper.enqueue_trials[0])
    searches = json.loads(SEARCH_RESULTS.read_text())["searches"]
    best = searches[SEARCH_BEST[0]]["at"][SEARCH_BEST[1]]
    return {"the preset's first trial (2 x 256)": as_overrides(recipe),
            f"the 30-minute search's best (trial {best['trial']})": as_overrides(best["params"])}


def as_overrides(params: dict) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]


def refit_run(data: Path, out: Path, params: list[str], precision: str, seed: int) -> dict:
    """One refit: the preset's config with `params`, trained on all training images."""
    run_dir = out / f"{precision}_seed{seed}"
    started = time.time()
    subprocess.run([*TRAIN, "hparams_search=optuna", f"dataset.root={data}", "dataset.val_size=0",
                    "objective=test_accuracy", f"trainer.seed={seed}",
                    f"trainer.precision={precision}", "trainer.progress=false",
                    f"hydra.run.dir={run_dir}", *params],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == precision, metrics["precision"]
    return {"test_accuracy": metrics["test_accuracy"], "wall_s": time.time() - started,
            "train_time_s": metrics["train_time_s"]}


def accuracy_cost(data: Path, out: Path, seeds: int) -> dict:
    result = {}
    for name, params in refit_configs().items():
        runs: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
        for seed in range(seeds):  # the two precisions of one seed side by side
            for precision in PRECISIONS:
                runs[precision].append(refit_run(data, out / folder_name(name), params,
                                                 precision, seed))
                print(f"{name} {precision} seed {seed}: {runs[precision][-1]}", flush=True)
        result[name] = {"params": params, "runs": runs}
    return result


def folder_name(name: str) -> str:
    """A config's label as a folder name that Hydra's override grammar takes."""
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def summary(runs: list[dict]) -> dict:
    accuracies = [r["test_accuracy"] for r in runs]
    return {"mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "train_time_s": statistics.fmean(r["train_time_s"] for r in runs)}


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; {report['date']}", ""]
    if "speed" in report:
        lines += ["Seconds per training epoch (50000 images), median of 2, fp32 and bf16 "
                  "interleaved:", "", "| model | fp32 s/epoch | bf16 s/epoch | bf16 speed-up |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {label} | {r['epoch_s']['fp32']:.2f} | {r['epoch_s']['bf16']:.2f} "
                  f"| {r['speedup']:.2f}x |" for label, r in report["speed"].items()]
    if "accuracy" in report:
        lines += ["", "Refit test accuracy (60000 training images, 27 epochs), mean ± std over "
                  "seeds, and training time per refit:", "",
                  "| config | seeds | fp32 | bf16 | bf16 - fp32 | training time bf16 / fp32 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in report["accuracy"].items():
            fp32, bf16 = summary(r["runs"]["fp32"]), summary(r["runs"]["bf16"])
            lines.append(f"| {name} | {len(r['runs']['fp32'])} | {fp32['mean']:.2%} ± "
                         f"{fp32['std']:.2%} | {bf16['mean']:.2%} ± {bf16['std']:.2%} | "
                         f"{(bf16['mean'] - fp32['mean']) * 100:+.2f} point | "
                         f"{bf16['train_time_s'] / fp32['train_time_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("outputs/bench-precision"))
    parser.add_argument("--seeds", type=int, default=3, help="refit seeds per precision")
    parser.add_argument("--parts", nargs="+", choices=("speed", "accuracy"),
                        default=["speed", "accuracy"])
    args = parser.parse_args()
    data = args.data.absolute()
    runs = args.runs.absolute() / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "date": datetime.now().strftime("%Y-%m-%d %H:%M")}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "precision.md").write_text(markdown(report))

    if "speed" in args.parts:
        report["speed"] = epoch_times(data)
        save()
    if "accuracy" in args.parts:
        report["accuracy"] = accuracy_cost(data, runs, args.seeds)
        save()
    print(markdown(report))


if __name__ == "__main__":
    main()
