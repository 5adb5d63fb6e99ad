"""Fused trials (hydra.sweeper.fuse) and bfloat16 against trials trained alone in float32, in one
run on this machine; every figure a ratio measured side by side.

    make bench-fused   (= .venv/bin/python benchmarks/fused.py; about 70 minutes)
    .venv/bin/python benchmarks/fused.py --parts speed stacks      (the first 5 minutes)
    .venv/bin/python benchmarks/fused.py --resume --parts course     (a part, added to the file)

Writes benchmarks/results/fused.{json,md} after each part:
- speed: the course's DataLoader pipeline against mlp_sweep's single run (fp32 and bf16), each in
  its own process, interleaved over 2 rounds: seconds per epoch (median) and the ratios;
- stacks: one epoch (training and evaluation) of K = 1, 4, 8 and 16 course MLPs (batch 64, Adam,
  each its own learning rate) trained as one stack, in fp32 and bf16, against the same models
  trained one after another as single runs; and K = 4 of the `optuna` preset's recipe and of its
  2 x 1024 trial (batch 256, AdamW): seconds per model-epoch and the ratio;
- course, optuna: each preset searched for 5 minutes at sampler seeds 123-125, with the defaults
  before fused trials and bf16 (`hydra.sweeper.fuse=1 trainer.precision=fp32`) and with the
  preset's own; trials per minute, and the best validation accuracy so far at 2 and 5 minutes
  (read from the trials' completion times). Each search runs in its own process, one at a time.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import in_subprocess  # noqa: E402  (the course pipeline and mlp_sweep's, as make bench)
from search import search  # noqa: E402  (one search in its own process, read at given times)

SEEDS = (123, 124, 125)
OLD_DEFAULTS = ["hydra.sweeper.fuse=1", "trainer.precision=fp32"]
READ_AT = {"2 min": 120, "5 min": 300}
STACKS = (  # (label, overrides, K values)
    ("course 128-64, batch 64, Adam", ["model.hidden_sizes=[128,64]"], (1, 4, 8, 16)),
    ("optuna recipe 2 x 256, batch 256, AdamW",
     ["model.hidden_sizes=[256,256]", "trainer.batch_size=256", "optimizer=adamw"], (4,)),
    ("2 x 1024, batch 256, AdamW",
     ["model.hidden_sizes=[1024,1024]", "trainer.batch_size=256", "optimizer=adamw"], (4,)),
)


def speed(data: Path, rounds: int = 2) -> dict:
    runs: dict[str, list[float]] = {"course pipeline": [], "mlp_sweep fp32": [], "mlp_sweep bf16": []}
    for _ in range(rounds):
        runs["course pipeline"] += in_subprocess("seed", data, 2)["epoch_times_s"]
        runs["mlp_sweep fp32"] += in_subprocess("mlp_sweep", data, 3)["epoch_times_s"]
        runs["mlp_sweep bf16"] += in_subprocess("mlp_sweep", data, 3, precision="bf16")["epoch_times_s"]
    epoch = {name: statistics.median(times) for name, times in runs.items()}
    return {"epoch_s": epoch, "ratio_fp32": epoch["course pipeline"] / epoch["mlp_sweep fp32"],
            "ratio_bf16": epoch["course pipeline"] / epoch["mlp_sweep bf16"]}


def stack_epochs(data: Path) -> list[dict]:
    """Seconds per model-epoch, stacked and alone, as fused_run.py and run.py train them."""
    from hydra import compose, initialize_config_module

    from mlp_sweep.training.build import build_training
    from mlp_sweep.training.data import load_splits
    from mlp_sweep.training.engine import fit
    from mlp_sweep.training.fused_fit import Member, fit_stacked

    with initialize_config_module(config_module="mlp_sweep.conf"):
        def cfg(*overrides: str):
            return compose(config_name="train", overrides=[
                f"dataset.root={data}", "dataset.val_size=10000", *overrides])

        splits = load_splits(cfg().dataset)
        rows = []
        for label, overrides, sizes in STACKS:
            warm_up = build_training(cfg(*overrides), len(splits.train))  # untimed: lazy set-up
            fit(warm_up.model, warm_up.optimizer, splits, 1, cfg(*overrides).trainer.batch_size,
                torch.Generator().manual_seed(0), progress=False)
            for precision in ("fp32", "bf16"):
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                for k in sizes:
                    cfgs = [cfg(*overrides, f"optimizer.lr={0.0005 * (i + 1)}") for i in range(k)]
                    built = []
                    for c in cfgs:
                        torch.manual_seed(0)
                        built.append(build_training(c, len(splits.train)))
                    batch = cfgs[0].trainer.batch_size
                    start = time.perf_counter()
                    for b in built[:2]:  # alone: the single run's loop, two of them timed
                        fit(b.model, b.optimizer, splits, 1, batch, torch.Generator().manual_seed(0),
                            progress=False, loss_fn=b.loss_fn, dtype=dtype)
                    alone = (time.perf_counter() - start) / min(k, 2)
                    members = [Member(b.model, b.optimizer, b.schedule, 0.0, lambda h: None)
                               for b in built]
                    start = time.perf_counter()
                    fit_stacked(members, splits, 1, batch, torch.Generator().manual_seed(0),
                                dtype=dtype)
                    stacked = (time.perf_counter() - start) / k
                    rows.append({"model": label, "precision": precision, "k": k,
                                 "alone_s": alone, "stacked_s": stacked})
                    print(rows[-1], flush=True)
        fp32_alone = {row["model"]: row["alone_s"] for row in rows if row["precision"] == "fp32"}
        for row in rows:
            row["gain"] = row["alone_s"] / row["stacked_s"]
            row["gain_vs_fp32_alone"] = fp32_alone[row["model"]] / row["stacked_s"]
        return rows


def searches(preset: str, data: Path, out: Path, budget_s: float) -> dict:
    result = {}
    for seed in SEEDS:
        for label, extra in (("before", OLD_DEFAULTS), ("preset", [])):
            name = f"{preset}-{label}-{seed}"
            print(f"{name}...", flush=True)
            run = search(name, data, out, preset, budget_s, READ_AT,
                         f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.n_trials=100000",
                         *extra)
            run["trials_per_min"] = sum(run["trials"][k] for k in ("complete", "pruned", "failed")) \
                / run["wall_s"] * 60
            result[name] = run
    return result


def median_row(runs: dict, preset: str, label: str) -> dict:
    chosen = [r for name, r in runs.items() if name.startswith(f"{preset}-{label}-")]

    def best(at: str) -> list[float]:
        return [r["at"][at]["val_accuracy"] if r["at"].get(at) else 0.0 for r in chosen]

    return {"trials_per_min": [r["trials_per_min"] for r in chosen],
            **{at: best(at) for at in READ_AT}}


def markdown(report: dict) -> str:
    lines = [f"# Fused trials and bf16 ({report['date']}, {report['machine']}, torch {report['torch']})", ""]
    if "speed" in report:
        s = report["speed"]
        lines += ["## One run against the course's pipeline", "",
                  "| pipeline | s / epoch | course pipeline / this |", "|---|---|---|"]
        for name, seconds in s["epoch_s"].items():
            lines.append(f"| {name} | {seconds:.2f} | {s['epoch_s']['course pipeline'] / seconds:.1f}x |")
        lines.append("")
    if "stacks" in report:
        lines += ["## K models trained as one stack (one epoch, training and evaluation)", "",
                  "| model | precision | K | alone s / model | stacked s / model | gain | gain against fp32 alone |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["stacks"]:
            lines.append(f"| {r['model']} | {r['precision']} | {r['k']} | {r['alone_s']:.2f} | "
                         f"{r['stacked_s']:.2f} | {r['gain']:.2f}x | {r['gain_vs_fp32_alone']:.2f}x |")
        lines.append("")
    for preset, title in (("optuna_course", "hparams_search=optuna_course"),
                          ("optuna", "hparams_search=optuna")):
        runs = report.get(preset)
        if not runs:
            continue
        lines += [f"## {title}, 5 minutes, sampler seeds {', '.join(map(str, SEEDS))}", "",
                  "| defaults | trials / min, median (each seed) | best val at 2 min, median (each) "
                  "| best val at 5 min, median (each) |", "|---|---|---|---|"]
        for label, name in (("before", f"before ({' '.join(OLD_DEFAULTS)})"), ("preset", "the preset's")):
            row = median_row(runs, preset, label)
            cells = [f"{statistics.median(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})"
                     for v in [row["trials_per_min"]]]
            cells += [f"{statistics.median(v):.2%} ({', '.join(f'{x:.2%}' for x in v)})"
                      for v in (row[at] for at in READ_AT)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        before, now = (statistics.median(median_row(runs, preset, k)["trials_per_min"])
                       for k in ("before", "preset"))
        lines += ["", f"Trials per minute, the preset's defaults against before: {now / before:.2f}x.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--runs", type=Path, default=Path("outputs/bench-fused"))
    parser.add_argument("--budget", type=float, default=300, help="seconds per search")
    parser.add_argument("--parts", nargs="+", choices=("speed", "stacks", "course", "optuna"),
                        default=["speed", "stacks", "course", "optuna"])
    parser.add_argument("--resume", action="store_true", help="add to the results file")
    args = parser.parse_args()
    data = args.data.absolute()
    runs = args.runs.absolute() / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    results = args.out / "fused.json"
    report = json.loads(results.read_text()) if args.resume and results.is_file() else {}
    report.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "torch": torch.__version__, "date": datetime.now().strftime("%Y-%m-%d %H:%M")})
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results.write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "fused.md").write_text(markdown(report))

    for part in args.parts:
        print(f"part {part}...", flush=True)
        if part == "speed":
            report["speed"] = speed(data)
        elif part == "stacks":
            report["stacks"] = stack_epochs(data)
        else:
            preset = "optuna_course" if part == "course" else "optuna"
            report[preset] = searches(preset, data, runs, args.budget)
        save()
    print(markdown(report))


if __name__ == "__main__":
    main()
