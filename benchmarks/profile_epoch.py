"""Where one training epoch of a run's config goes, by torch.profiler.

    .venv/bin/python benchmarks/profile_epoch.py RUN_DIR [--top 12]

Builds the run's model, optimizer, loss, schedule and augmentation from RUN_DIR/.hydra/config.yaml,
trains one warm-up epoch, then profiles one epoch and prints the share of CPU time of the largest
operators and of three groups: matrix multiplies, the optimizer step, the augmentation.
"""

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile, record_function

from mlp_sweep.training.build import build_training
from mlp_sweep.training.data import load_splits
from mlp_sweep.training.engine import train_model_epoch
from mlp_sweep.training.model import parameter_count

OPERATOR_GROUPS = {"matrix multiplies": ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear"),
                   "optimizer step": ("Optimizer.step", "aten::_fused_adam", "aten::_foreach")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    train = load_splits(cfg.dataset).train
    # Built for 2 epochs: the warm-up epoch and the profiled one.
    cfg.trainer.epochs = 2
    model, optimizer, loss_fn, plain, schedule = build_training(cfg, len(train))

    def augment(x, generator):
        with record_function("augment"):
            return plain(x, generator)

    def epoch() -> float:
        start = time.perf_counter()
        train_model_epoch(model, optimizer, train, cfg.trainer.batch_size, 0, loss_fn=loss_fn,
                          augment=augment if plain else None, schedule=schedule)
        return time.perf_counter() - start

    warm = epoch()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = epoch()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.run_dir}: {parameter_count(model):,} parameters, batch {cfg.trainer.batch_size}, "
          f"{len(train)} images; epoch {warm:.2f} s (warm-up), {profiled:.2f} s under the profiler")
    for name, prefixes in OPERATOR_GROUPS.items():  # self time of the group's operators
        share = sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes))
        print(f"  {name}: {share / total:.0%} of CPU time")
    # The augmentation is a range around its operators: its total time, children included.
    share = sum(e.cpu_time_total for e in events if e.key == "augment")
    print(f"  augmentation: {share / total:.0%} of CPU time")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]:
        print(f"  {event.key:40s} {event.self_cpu_time_total / total:6.1%}  ({event.count} calls)")


if __name__ == "__main__":
    main()
