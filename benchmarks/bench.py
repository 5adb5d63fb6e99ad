"""mlp_sweep's training path against the course's DataLoader pipeline, in one run on this machine.

    make bench            (= .venv/bin/python benchmarks/bench.py)

Prints and writes (benchmarks/results/bench.json and bench.md):
- per pipeline, in its own process: seconds per training epoch (median of the epochs), test
  evaluation time, final test accuracy after the same epochs, peak memory (max RSS), and ratios;
- mlp_sweep's epoch at batch sizes 64, 256 and 1024, against the FLOP-bound floor: the epoch's
  FLOPs divided by this machine's float32 matmul rate (2048x2048), measured in the same run;
- start-up of `python -m mlp_sweep.train` to its first training step, data cached;
- sweep throughput: a 6-trial, 1-epoch Optuna sweep, sequential and with the joblib launcher.
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

SEED = 0
HIDDEN = [128, 64]


def seed_pipeline(root: Path, epochs: int) -> dict:
    """The course's code: DataLoader over datasets.MNIST with per-sample ToTensor + Normalize."""
    from torchvision import datasets, transforms

    class CourseMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(784, 128), nn.Linear(128, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = x.view(x.shape[0], 784)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=True, transform=transform),
                                               batch_size=64, shuffle=True,
                                               generator=torch.Generator().manual_seed(SEED))
    test_loader = torch.utils.data.DataLoader(datasets.MNIST(root, train=False, transform=transform),
                                              batch_size=64, shuffle=False)
    torch.manual_seed(SEED)
    model = CourseMLP()
    criterion, optimizer = nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=0.001)
    epoch_times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    correct = total = 0
    with torch.no_grad():
        for images, labels in test_loader:
            _, predicted = torch.max(model(images).data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return {"epoch_times_s": epoch_times, "eval_s": time.perf_counter() - start,
            "test_accuracy": correct / total}


def mlp_sweep_pipeline(root: Path, epochs: int, batch_size: int = 64, precision: str = "fp32") -> dict:
    """mlp_sweep's own path: cached whole tensors, sliced batches, the optimizer from conf/,
    training passes in `precision` (trainer.precision's fp32 or bf16)."""
    from omegaconf import OmegaConf

    from mlp_sweep.training.data import load_splits
    from mlp_sweep.training.engine import accuracy, train_model_epoch
    from mlp_sweep.training.model import MLP

    conf = Path(__file__).resolve().parents[1] / "conf"
    dataset = OmegaConf.merge(OmegaConf.load(conf / "dataset" / "mnist.yaml"), {"root": str(root)})
    adam = OmegaConf.load(conf / "optimizer" / "adam.yaml")
    splits = load_splits(dataset)
    torch.manual_seed(SEED)
    model = MLP((1, 28, 28), HIDDEN, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=adam.lr, fused=adam.fused)
    epoch_times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_model_epoch(model, optimizer, splits.train, batch_size, SEED + epoch,
                    dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        epoch_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    accuracy_ = accuracy(model, splits.test)
    return {"epoch_times_s": epoch_times, "eval_s": time.perf_counter() - start,
            "test_accuracy": accuracy_}


def matmul_gflops(m: int = 2048, k: int = 2048, n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matrix-multiply rate for (m x k) @ (k x n), best of several runs."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * m * k * n / best / 1e9


def epoch_gflop(samples: int = 60000) -> float:
    """Forward (2 FLOPs per multiply-add) plus backward (about twice the forward) of the MLP."""
    sizes = [784, *HIDDEN, 10]
    macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
    return 3 * 2 * macs * samples / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def in_subprocess(pipeline: str, root: Path, epochs: int, batch_size: int = 64,
                  precision: str = "fp32") -> dict:
    """Run one pipeline in a fresh process so that its peak memory is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", pipeline, "--data", str(root),
                          "--epochs", str(epochs), "--batch-size", str(batch_size),
                          "--precision", precision],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def startup_seconds(root: Path) -> float:
    """From launching `python -m mlp_sweep.train` to its log line just before the first step."""
    with tempfile.TemporaryDirectory() as tmp:
        start = datetime.now()
        subprocess.run([sys.executable, "-m", "mlp_sweep.train", "trainer.epochs=1",
                        "trainer.progress=false", f"dataset.root={root}"], cwd=tmp, check=True,
                       capture_output=True)
        log = next(Path(tmp, "outputs").glob("*/*/train.log")).read_text()
    line = next(l for l in log.splitlines() if "parameters; optimizer" in l)
    stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
    return (stamp - start).total_seconds()


def sweep_throughput(root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_gains import parallel

    results = parallel(root, trials=6)
    return {name: results[name] for name in ("sequential", "joblib_batches_of_2")}


def markdown(r: dict) -> str:
    seed, fast = r["seed"], r["mlp_sweep"]
    lines = [f"Machine: {r['machine']}; torch {r['torch']}; {r['threads']} threads; {r['date']}", "",
             f"Same recipe and seed, {r['epochs']} epochs each (MNIST, MLP 784-128-64-10, Adam 1e-3, batch 64):", "",
             "| pipeline | train s/epoch (median) | test evaluation s | test accuracy | peak memory MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    rows = [("course: DataLoader + ToTensor/Normalize", seed), ("mlp_sweep", fast)]
    if "mlp_sweep_bf16" in r:
        rows.append(("mlp_sweep, trainer.precision=bf16", r["mlp_sweep_bf16"]))
    for name, x in rows:
        lines.append(f"| {name} | {x['epoch_s']:.3f} | {x['eval_s']:.3f} | {x['test_accuracy']:.4f} "
                     f"| {x['peak_rss_mib']:.0f} |")
    lines.append(f"| **ratio (course / mlp_sweep)** | **{r['ratios']['train_epoch']:.1f}x** "
                 f"| **{r['ratios']['eval']:.1f}x** | | |")
    if "train_epoch_bf16" in r["ratios"]:
        lines.append(f"| **ratio (course / mlp_sweep bf16)** | **{r['ratios']['train_epoch_bf16']:.1f}x** "
                     "| | | |")
    lines += ["", f"FLOP-bound floor: {r['epoch_gflop']:.1f} GFLOP per epoch / {r['matmul_gflops']:.0f} "
              f"GFLOP/s measured (2048x2048 matmul) = {r['floor_s']:.3f} s; the model's own largest "
              f"matmul (1024x784 @ 784x128) runs at {r['first_layer_gflops']:.0f} GFLOP/s", "",
              "| batch size | mlp_sweep s/epoch | / floor |", "| ---: | ---: | ---: |"]
    lines += [f"| {b} | {s:.3f} | {s / r['floor_s']:.2f}x |" for b, s in r["batch_sizes"].items()]
    lines += ["", f"Start-up to the first training step (data cached): {r['startup_s']:.2f} s", "",
              "| 6-trial, 1-epoch Optuna sweep | wall s | trials / min | vs sequential |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {n} | {x['wall_s']:.1f} | {x['trials_per_min']:.1f} | {x['speedup_vs_sequential']:.2f}x |"
              for n, x in r["sweeps"].items()]
    return "\n".join(lines) + "\n"


def summarise(result: dict) -> dict:
    return {**result, "epoch_s": statistics.median(result["epoch_times_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=["seed", "mlp_sweep"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help=argparse.SUPPRESS)
    parser.add_argument("--skip-sweeps", action="store_true", help="leave out the sweep throughput")
    args = parser.parse_args()
    root = args.data.absolute()

    if args.child:
        run = seed_pipeline if args.child == "seed" else mlp_sweep_pipeline
        result = (run(root, args.epochs) if args.child == "seed"
                  else run(root, args.epochs, args.batch_size, args.precision))
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    mlp_sweep_pipeline(root, 0)  # make sure MNIST is fetched and cached before timing anything
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} cores",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "epochs": args.epochs}
    print("course pipeline...", flush=True)
    report["seed"] = summarise(in_subprocess("seed", root, args.epochs))
    print("mlp_sweep pipeline...", flush=True)
    report["mlp_sweep"] = summarise(in_subprocess("mlp_sweep", root, args.epochs))
    report["mlp_sweep_bf16"] = summarise(in_subprocess("mlp_sweep", root, args.epochs,
                                                       precision="bf16"))
    report["ratios"] = {"train_epoch": report["seed"]["epoch_s"] / report["mlp_sweep"]["epoch_s"],
                        "eval": report["seed"]["eval_s"] / report["mlp_sweep"]["eval_s"],
                        "train_epoch_bf16": report["seed"]["epoch_s"]
                        / report["mlp_sweep_bf16"]["epoch_s"]}
    print("batch sizes and floor...", flush=True)
    report["batch_sizes"] = {b: summarise(in_subprocess("mlp_sweep", root, 3, b))["epoch_s"]
                             for b in (64, 256, 1024)}
    report["matmul_gflops"] = matmul_gflops()
    report["first_layer_gflops"] = matmul_gflops(1024, 784, 128, repeats=50)  # the model's own shape
    report["epoch_gflop"] = epoch_gflop()
    report["floor_s"] = report["epoch_gflop"] / report["matmul_gflops"]
    print("start-up...", flush=True)
    report["startup_s"] = statistics.median(startup_seconds(root) for _ in range(3))
    report["sweeps"] = {} if args.skip_sweeps else sweep_throughput(root)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
