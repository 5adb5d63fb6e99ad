"""The one training loop, for one model and for K stacked (hydra.sweeper.fuse), against a bare
loop and against trials trained alone, in one run on this machine; every figure a ratio measured
side by side.

    make bench-fused   (= .venv/bin/python benchmarks/fused.py; about 12 minutes)
    .venv/bin/python benchmarks/fused.py --parts loop stacks         (the first 5 minutes)
    .venv/bin/python benchmarks/fused.py --resume --parts end-to-end   (a part, added to the file)
    .venv/bin/python benchmarks/fused.py --resume --parts course optuna (5-minute searches, 60 min)

Writes benchmarks/results/fused.{json,md} after each part:
- loop: one epoch (training and the test evaluation) of the course MLP (batch 64, Adam with
  torch's fused kernel) through the training loop (engine.fit, one member) against a bare loop of
  the same math (index_select, forward, cross-entropy, zero_grad, backward, step; the same
  evaluation), interleaved over 5 rounds: seconds (median) and the ratio;
- stacks: one epoch (training and evaluation) of K = 4, 8 and 16 course MLPs (batch 64, Adam,
  each its own learning rate) trained as one stack, in fp32 and bf16, against one such model
  trained alone; and K = 4 of the `optuna` preset's recipe and of its 2 x 1024 trial (batch 256,
  AdamW): seconds per model-epoch (median of 3 interleaved rounds) and the ratio;
- end-to-end: 8 trials of `hparams_search=optuna_course` (3 epochs, [128,64], batch 64, pruning
  off, the optimizers and rates the preset samples) as a user runs them, with
  `hydra.sweeper.fuse=8` against `fuse=1`, one command after the other, 3 rounds (`--rounds`)
  in alternating order: wall seconds of the whole command (median) and the ratio;
- course, optuna: each preset searched for 5 minutes at sampler seeds 123-125, with fuse=1 fp32
  and with the preset's own defaults; trials per minute, and the best validation accuracy so far
  at 2 and 5 minutes (read from the trials' completion times). Not run by default.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import search  # noqa: E402  (one search in its own process, read at given times)

SEEDS = (123, 124, 125)
OLD_DEFAULTS = ["hydra.sweeper.fuse=1", "trainer.precision=fp32"]
READ_AT = {"2 min": 120, "5 min": 300}
STACKS = (  # (label, overrides, K values)
    ("course 128-64, batch 64, Adam", ["model.hidden_sizes=[128,64]"], (4, 8, 16)),
    ("optuna recipe 2 x 256, batch 256, AdamW",
     ["model.hidden_sizes=[256,256]", "trainer.batch_size=256", "optimizer=adamw"], (4,)),
    ("2 x 1024, batch 256, AdamW",
     ["model.hidden_sizes=[1024,1024]", "trainer.batch_size=256", "optimizer=adamw"], (4,)),
)


def loop_speed(data: Path, rounds: int = 5) -> dict:
    """One epoch of one course MLP: the training loop against a bare loop of the same math."""
    from hydra import compose, initialize_config_module

    from mlp_sweep.training.build import build_training
    from mlp_sweep.training.data import Splits, load_splits
    from mlp_sweep.training.engine import accuracy, fit_model

    with initialize_config_module(config_module="mlp_sweep.conf"):
        cfg = compose(config_name="train", overrides=[f"dataset.root={data}"])
    splits = load_splits(cfg.dataset)
    splits = Splits(splits.train, None, splits.test)

    def built():
        torch.manual_seed(0)
        return build_training(cfg, len(splits.train))

    def bare_epoch() -> float:
        model, optimizer = built()[:2]
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))
        for first in range(0, len(order), 64):
            batch = order[first:first + 64]
            x = splits.train.inputs.index_select(0, batch)
            y = splits.train.labels.index_select(0, batch)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        accuracy(model, splits.test)
        return time.perf_counter() - start

    def loop_epoch() -> float:
        training = built()
        start = time.perf_counter()
        fit_model(training.model, training.optimizer, splits, 1, 64, loss_fn=training.loss_fn)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"bare loop": [], "the training loop": []}
    bare_epoch(), loop_epoch()  # untimed: lazy set-up
    for _ in range(rounds):  # interleaved: a slow minute of the machine hits both
        times["bare loop"].append(bare_epoch())
        times["the training loop"].append(loop_epoch())
    epoch = {name: statistics.median(t) for name, t in times.items()}
    result = {"epoch_s": epoch, "each_s": times,
              "loop_over_bare": epoch["the training loop"] / epoch["bare loop"]}
    print(result, flush=True)
    return result


END_TO_END = ["hparams_search=optuna_course", "model.hidden_sizes=[128,64]",
              "trainer.batch_size=64", "trainer.epochs=3", "hydra/sweeper/pruner=none",
              "hydra.sweeper.n_trials=8", "hydra.sweeper.storage=null"]


def end_to_end(data: Path, runs: Path, rounds: int = 3) -> dict:
    """8 optuna_course trials as a user runs them, fused by 8 and alone: whole-command seconds."""
    times: dict[str, list[float]] = {"fuse=1": [], "fuse=8": []}
    for round_ in range(rounds):
        for fuse in ((8, 1) if round_ % 2 == 0 else (1, 8)):
            out = runs / f"end-to-end-{round_}-fuse{fuse}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlp_sweep.train", "--multirun", *END_TO_END,
                            f"dataset.root={data}", f"hydra.sweeper.fuse={fuse}",
                            f"hydra.sweep.dir={out}"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times[f"fuse={fuse}"].append(time.perf_counter() - start)
            completed = [json.loads(p.read_text())["state"] for p in out.glob("*/status.json")]
            assert completed == ["completed"] * 8, completed
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {"command_s": median, "each_s": times, "gain": median["fuse=1"] / median["fuse=8"]}
    print(result, flush=True)
    return result


def stack_epochs(data: Path, rounds: int = 3) -> list[dict]:
    """Seconds per model-epoch, stacked and alone, as the training loop trains them."""
    from hydra import compose, initialize_config_module

    from mlp_sweep.training.build import build_training
    from mlp_sweep.training.data import load_splits
    from mlp_sweep.training.engine import Member, RandomStreams, fit, fit_model

    with initialize_config_module(config_module="mlp_sweep.conf"):
        def cfg(*overrides: str):
            return compose(config_name="train", overrides=[
                f"dataset.root={data}", "dataset.val_size=10000", *overrides])

        splits = load_splits(cfg().dataset)
        cpu = torch.device("cpu")
        rows = []
        for label, overrides, sizes in STACKS:
            warm_up = build_training(cfg(*overrides), len(splits.train))  # untimed: lazy set-up
            fit_model(warm_up.model, warm_up.optimizer, splits, 1,
                      cfg(*overrides).trainer.batch_size)
            for precision in ("fp32", "bf16"):
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32

                def built(k: int) -> list:
                    out = []
                    for i in range(k):
                        torch.manual_seed(0)
                        out.append(build_training(
                            cfg(*overrides, f"optimizer.lr={0.0005 * (i + 1)}"),
                            len(splits.train)))
                    return out

                batch = cfg(*overrides).trainer.batch_size
                times: dict[int | str, list[float]] = {"alone": [], **{k: [] for k in sizes}}
                for _ in range(rounds):  # interleaved: a slow minute of the machine hits all
                    b = built(1)[0]
                    start = time.perf_counter()
                    fit_model(b.model, b.optimizer, splits, 1, batch, loss_fn=b.loss_fn,
                              dtype=dtype)
                    times["alone"].append(time.perf_counter() - start)
                    for k in sizes:
                        members = [Member(b.model, b.optimizer, RandomStreams.from_seed(0, cpu),
                                          loss_fn=b.loss_fn, schedule=b.schedule)
                                   for b in built(k)]
                        start = time.perf_counter()
                        fit(members, splits, 1, batch, progress=False, dtype=dtype)
                        times[k].append((time.perf_counter() - start) / k)
                alone = statistics.median(times["alone"])
                for k in sizes:
                    rows.append({"model": label, "precision": precision, "k": k,
                                 "alone_s": alone, "stacked_s": statistics.median(times[k])})
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
    lines = [f"# The training loop, alone and stacked ({report['date']}, {report['machine']}, "
             f"torch {report['torch']})", ""]
    if "loop" in report:
        s = report["loop"]
        lines += [f"## One model: the training loop against a bare loop (one epoch, median of "
                  f"{len(s['each_s']['bare loop'])})", "",
                  "| loop | s / epoch |", "|---|---|"]
        lines += [f"| {name} | {seconds:.3f} |" for name, seconds in s["epoch_s"].items()]
        lines += ["", f"The training loop / the bare loop: {s['loop_over_bare']:.3f}.", ""]
    if "stacks" in report:
        lines += ["## K models trained as one stack (one epoch, training and evaluation; median "
                  "of 3 interleaved rounds)", "",
                  "| model | precision | K | alone s / model | stacked s / model | gain | gain against fp32 alone |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["stacks"]:
            lines.append(f"| {r['model']} | {r['precision']} | {r['k']} | {r['alone_s']:.2f} | "
                         f"{r['stacked_s']:.2f} | {r['gain']:.2f}x | {r['gain_vs_fp32_alone']:.2f}x |")
        lines.append("")
    if "end-to-end" in report:
        e = report["end-to-end"]
        lines += [f"## 8 `optuna_course` trials end to end (whole command, median of "
                  f"{len(e['each_s']['fuse=1'])} rounds)", "",
                  f"`python -m mlp_sweep.train --multirun {' '.join(END_TO_END)} "
                  "hydra.sweeper.fuse=K`", "", "| fuse | s (each round) |", "|---|---|"]
        lines += [f"| {name} | {e['command_s'][name]:.1f} ({', '.join(f'{t:.1f}' for t in e['each_s'][name])}) |"
                  for name in ("fuse=1", "fuse=8")]
        lines += ["", f"fuse=8 against fuse=1: {e['gain']:.2f}x.", ""]
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
    parser.add_argument("--parts", nargs="+",
                        choices=("loop", "stacks", "end-to-end", "course", "optuna"),
                        default=["loop", "stacks", "end-to-end"])
    parser.add_argument("--resume", action="store_true", help="add to the results file")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the end-to-end part")
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
        if part == "loop":
            report["loop"] = loop_speed(data)
        elif part == "stacks":
            report["stacks"] = stack_epochs(data)
        elif part == "end-to-end":
            report["end-to-end"] = end_to_end(data, runs, args.rounds)
        else:
            preset = "optuna_course" if part == "course" else "optuna"
            report[preset] = searches(preset, data, runs, args.budget)
        save()
    print(markdown(report))


if __name__ == "__main__":
    main()
