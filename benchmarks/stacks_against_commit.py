"""One epoch of one course MLP alone and of K stacked, by this checkout's training loop and by an
earlier commit's, alternating in one run: has the loop become slower?

    .venv/bin/python benchmarks/stacks_against_commit.py d15f73d   (about 5 minutes)

The earlier commit is checked out into a temporary git worktree and imported first on the path
(its configs come from this checkout's install). Writes benchmarks/results/stacks_against_commit.md.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = r'''
import sys, time, torch
from hydra import compose, initialize_config_module
from mlp_sweep.training import engine
from mlp_sweep.training.build import build_training
from mlp_sweep.training.data import load_splits
k, precision, data = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
initialize_config_module(config_module="mlp_sweep.conf").__enter__()  # for the whole process
def cfg(*o):
    return compose(config_name="train", overrides=[f"dataset.root={data}",
                   "dataset.val_size=10000", "model.hidden_sizes=[128,64]", *o])
splits = load_splits(cfg().dataset)
def built(n):
    out = []
    for i in range(n):
        torch.manual_seed(0)
        out.append(build_training(cfg(f"optimizer.lr={0.0005 * (i + 1)}"), len(splits.train)))
    return out
if hasattr(engine, "fit_model"):  # the one loop
    def alone(b):
        engine.fit_model(b.model, b.optimizer, splits, 1, 64, loss_fn=b.loss_fn, dtype=dtype)
    def stacked(bs):
        engine.fit([engine.Member(b.model, b.optimizer, engine.RandomStreams.from_seed(0, torch.device("cpu")),
                                  loss_fn=b.loss_fn) for b in bs], splits, 1, 64, progress=False, dtype=dtype)
else:  # a single run's loop and the fused one beside it
    from mlp_sweep.training.fused_fit import Member, fit_stacked
    def alone(b):
        engine.fit(b.model, b.optimizer, splits, 1, 64, torch.Generator().manual_seed(0),
                   progress=False, loss_fn=b.loss_fn, dtype=dtype)
    def stacked(bs):
        fit_stacked([Member(b.model, b.optimizer, b.schedule, 0.0, lambda h: None) for b in bs],
                    splits, 1, 64, torch.Generator().manual_seed(0), dtype=dtype)
alone(built(1)[0])  # untimed: lazy set-up
b = built(1)[0]; start = time.perf_counter(); alone(b); alone_s = time.perf_counter() - start
bs = built(k); start = time.perf_counter(); stacked(bs); stacked_s = (time.perf_counter() - start) / k
print(f"{alone_s:.4f} {stacked_s:.4f}")
'''


def measure(k: int, precision: str, data: Path, path: str | None) -> tuple[float, float]:
    """(seconds alone, seconds per stacked model), in a new process that imports mlp_sweep from
    `path` first, if given, from a folder holding no checkout."""
    env = {**os.environ, "PYTHONPATH": path} if path else dict(os.environ)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(k), precision, str(data)],
                         capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    alone, stacked = map(float, out.stdout.split()[-2:])
    return alone, stacked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit", help="the earlier commit, e.g. d15f73d")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "earlier"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree),
                        args.commit], check=True, capture_output=True)
        try:
            for k, precision in ((8, "fp32"), (16, "fp32"), (8, "bf16"), (16, "bf16")):
                runs = {"earlier": [], "this": []}
                for _ in range(args.rounds):  # alternating: a slow minute hits both
                    runs["earlier"].append(measure(k, precision, args.data.absolute(), str(worktree)))
                    runs["this"].append(measure(k, precision, args.data.absolute(), None))
                for name, values in runs.items():  # the fastest round: the least disturbed
                    alone = min(a for a, _ in values)
                    stacked = min(s for _, s in values)
                    rows.append(f"| {name} | {k} | {precision} | {alone:.3f} | {stacked:.3f} | "
                                f"{alone / stacked:.2f}x |")
                    print(rows[-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(worktree)], check=True, capture_output=True)
    text = "\n".join([
        f"# The training loop against commit {args.commit} ({datetime.now():%Y-%m-%d %H:%M}, "
        f"{platform.machine()}, {os.cpu_count()} cores; the fastest of {args.rounds} "
        "alternating rounds)", "",
        "One epoch (training and evaluation) of the course MLP (batch 64, Adam) alone, and of K "
        "stacked, per model.", "",
        "| loop | K | precision | alone s | stacked s / model | gain |", "|---|---|---|---|---|---|",
        *rows, ""])
    (REPO / "benchmarks" / "results" / "stacks_against_commit.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
