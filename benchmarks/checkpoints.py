"""What a checkpoint after every epoch costs, and what it saves when a trial is killed.

    make bench-checkpoints   (= .venv/bin/python benchmarks/checkpoints.py; about 18 minutes)

For the `optuna` preset's recipe, its 30-minute best's shape and its widest trials (4 x 2048,
layer norm, AdamW), each trained as a trial trains (precision auto, batch 256, MNIST's 54000
training images and 6000 for validation): EPOCHS epochs with trainer.checkpoint=true and false,
interleaved, REPEATS times. Measured, in this process:
- the wall time from one epoch's end to the next (training, evaluation, the checkpoint), median;
- each checkpoint's save (written whole, then renamed) and its size; its copy to an artifact
  store in a local folder (as hydra.sweeper.artifacts=FOLDER does; a network folder or S3 is
  slower); loading it back;
Derived, and labelled so: what a kill at epoch K of a 27-epoch trial costs the search without
checkpoints (the retry trains those K epochs again) and with them (the epoch under way, at most
one, and the load).

Part `kill` measures one real kill of a 27-epoch trial of the 30-minute best's shape: the whole
run, the run killed with SIGKILL after epoch 25, and its resume from the checkpoint, each in its
own process (about 6 minutes). `--parts speed` or `--parts kill` runs one part and keeps the
other's earlier results.

Writes benchmarks/results/checkpoints.{json,md}.
"""

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EPOCHS, REPEATS, TRIAL_EPOCHS, KILL_AT = 3, 2, 27, 25
# Checkpoints off; on (the run folder); on and copied to an artifact store (hydra.sweeper.artifacts)
MODES = ("on", "off", "store")
# (label, depth, width, norm): the preset's enqueued recipe, the 30-minute best's shape, its widest
MODELS = (("2 x 256 (the preset's recipe)", 2, 256, "none"),
          ("3 x 1105, layer norm (30-minute best)", 3, 1105, "layer"),
          ("4 x 2048, layer norm (the space's widest)", 4, 2048, "layer"))


def compose_trial(data: Path, depth: int, width: int, norm: str, checkpoint: bool):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="mlp_sweep.conf"):
        return compose(config_name="train", overrides=[
            "hparams_search=optuna", f"dataset.root={data}", f"trainer.epochs={EPOCHS}",
            f"model.depth={depth}", f"model.width={width}", f"model.norm={norm}",
            "trainer.batch_size=256", "trainer.progress=false", f"trainer.checkpoint={checkpoint}"])


class SaveTimer:
    """Times each Checkpoints.save of this process (the copy to a store, if any, included) and
    each copy to a store alone, and keeps the size of what was written; the methods are the
    project's own again when the `with` block ends."""

    def __init__(self) -> None:
        from mlp_sweep.job import CheckpointForRetry
        from mlp_sweep.training.checkpoint import Checkpoints

        self.seconds: list[float] = []
        self.copy_seconds: list[float] = []
        self.bytes = 0
        save, copy = Checkpoints.save, CheckpointForRetry.saved

        def timed_save(checkpoints, state):
            start = time.perf_counter()
            save(checkpoints, state)
            self.seconds.append(time.perf_counter() - start)
            self.bytes = checkpoints.current.stat().st_size

        def timed_copy(stored, path, epoch):
            start = time.perf_counter()
            copy(stored, path, epoch)
            self.copy_seconds.append(time.perf_counter() - start)

        self.originals = save, copy
        Checkpoints.save, CheckpointForRetry.saved = timed_save, timed_copy

    def __enter__(self) -> "SaveTimer":
        return self

    def __exit__(self, *exc) -> None:
        from mlp_sweep.job import CheckpointForRetry
        from mlp_sweep.training.checkpoint import Checkpoints

        Checkpoints.save, CheckpointForRetry.saved = self.originals


def one_run(cfg, run_dir: Path, store: Path | None) -> list[float]:
    """Seconds from each epoch's end to the next one's (the first from the start); with `store`,
    each checkpoint is copied to an artifact store in that folder, as a sweep with
    hydra.sweeper.artifacts does (a real trial of an in-memory study records it)."""
    import optuna

    from mlp_sweep.job import CheckpointForRetry
    from mlp_sweep.sweeping.trial_link import TrialLink
    from mlp_sweep.sweeping.trial_spec import TrialSpec
    from mlp_sweep.training.run import train_run

    copy = None
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        spec = TrialSpec("bench", None, 0, 0, str(run_dir), artifacts=f"file://{store}")
        copy = CheckpointForRetry(TrialLink(spec, optuna.create_study().ask()))
    ends = [time.perf_counter()]
    train_run(cfg, run_dir, on_epoch=lambda metrics: ends.append(time.perf_counter()),
              checkpoint_copy=copy)
    return [b - a for a, b in zip(ends, ends[1:])]


def load_seconds(run_dir: Path, cfg) -> float:
    """A checkpoint of `cfg`'s run after its first epoch, loaded back: the median of 3 loads."""
    from mlp_sweep.training.checkpoint import Checkpoints
    from mlp_sweep.training.run import train_run

    def stop_in_second_epoch(metrics) -> None:
        if metrics.epoch == 2:  # told before epoch 2's checkpoint: epoch 1's is the newest
            raise KeyboardInterrupt  # an interrupted run keeps its checkpoint

    try:
        train_run(cfg, run_dir, on_epoch=stop_in_second_epoch)
    except KeyboardInterrupt:
        pass
    times = []
    for _ in range(3):
        start = time.perf_counter()
        assert Checkpoints(run_dir).load() is not None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(data: Path, scratch: Path) -> dict:
    with SaveTimer() as timer:
        return _measure(data, scratch, timer)


def _measure(data: Path, scratch: Path, timer: SaveTimer) -> dict:
    result = {}
    for label, depth, width, norm in MODELS:
        gaps: dict[str, list[float]] = {mode: [] for mode in MODES}
        saves: list[float] = []
        copies_before = len(timer.copy_seconds)
        for repeat in range(REPEATS):  # interleaved: a slow minute of the machine hits all
            for mode in MODES:
                cfg = compose_trial(data, depth, width, norm, mode != "off")
                saves_before = len(timer.seconds)
                folder = scratch / f"{depth}x{width}_{mode}_{repeat}"
                # The first epoch's gap holds the data loading: the later ones are the trial's pace.
                gaps[mode] += one_run(cfg, folder, folder / "store" if mode == "store" else None)[1:]
                if mode == "on":
                    saves += timer.seconds[saves_before:]
        copies = timer.copy_seconds[copies_before:]
        load = load_seconds(scratch / f"{depth}x{width}_load",
                            compose_trial(data, depth, width, norm, True))
        on, off = statistics.median(gaps["on"]), statistics.median(gaps["off"])
        save = statistics.median(saves)
        result[label] = {
            "epoch_s_with": on, "epoch_s_without": off,
            "epoch_s_with_store": statistics.median(gaps["store"]), "save_s": save,
            "saves": saves, "copy_s": statistics.median(copies), "copies": copies,
            "checkpoint_mb": timer.bytes / 1e6, "load_s": load,
            "save_share": save / on, "epoch_gaps": gaps,
            # Derived: a kill at epoch K of a 27-epoch trial.
            "kill_cost_s": {str(k): {"without": k * off, "with_at_most": on + load}
                            for k in (9, 25)}}
        shown = {k: v for k, v in result[label].items()
                 if k not in ("saves", "copies", "epoch_gaps")}
        print(f"{label}: {json.dumps(shown)}", flush=True)
    return result


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; {report['date']}", "",
             f"Each model {EPOCHS} epochs with and without a checkpoint after each, interleaved, "
             f"{REPEATS} times (precision auto, batch 256, 54000 training images):", "",
             "| model | checkpoint | save | save / epoch | copy to a store | load | "
             "epoch without | with | with, copied |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in report["models"].items():
        lines.append(f"| {label} | {r['checkpoint_mb']:.0f} MB | {r['save_s']:.2f} s | "
                     f"{100 * r['save_share']:.1f} % | {r['copy_s']:.2f} s | {r['load_s']:.2f} s | "
                     f"{r['epoch_s_without']:.2f} s | {r['epoch_s_with']:.2f} s | "
                     f"{r['epoch_s_with_store']:.2f} s |")
    lines += ["", f"A kill at epoch K of a {TRIAL_EPOCHS}-epoch trial (derived from the times "
              "above: without checkpoints the retry trains K epochs again; with them, it loses the "
              "epoch under way, at most one, and loads the checkpoint):", "",
              "| model | K | lost without | lost with, at most |", "| --- | ---: | ---: | ---: |"]
    for label, r in report["models"].items():
        for k, cost in r["kill_cost_s"].items():
            lines.append(f"| {label} | {k} | {cost['without']:.0f} s | "
                         f"{cost['with_at_most']:.0f} s |")
    if "kill" in report:
        kill = report["kill"]
        lines += ["", f"A real kill ({kill['date']}): {kill['model']}, {TRIAL_EPOCHS} epochs, "
                  f"SIGKILL after epoch {kill['kill_after_epochs']}, each run its own process:", "",
                  "| whole run | killed run | resumed from its checkpoint | lost without checkpoints "
                  "| lost with them |", "| ---: | ---: | ---: | ---: | ---: |",
                  f"| {kill['whole_s']:.0f} s | {kill['killed_s']:.0f} s | "
                  f"{kill['resumed_s']:.0f} s | {kill['lost_without_s']:.0f} s | "
                  f"{kill['lost_with_s']:.0f} s |"]
    return "\n".join(lines) + "\n"


def cli_run(args: list[str], kill_after: int | None = None) -> float:
    """`python -m mlp_sweep.train ARGS` in its own process: its wall time, from start to exit or
    to the SIGKILL sent once `kill_after` epochs are in its metrics.json."""
    run_dir = Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1])
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mlp_sweep.train", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while kill_after is not None and process.poll() is None:
        try:
            if len(json.loads((run_dir / "metrics.json").read_text())["epochs"]) >= kill_after:
                process.send_signal(signal.SIGKILL)
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    code = process.wait()
    if kill_after is None and code != 0:
        raise RuntimeError(f"{args} exited with {code}")
    return time.perf_counter() - start


def measured_kill(data: Path, scratch: Path) -> dict:
    """A real kill, measured: the 30-minute best's shape (3 x 1105, layer norm) as a 27-epoch
    trial, run whole; run again and killed with SIGKILL once KILL_AT epochs are done; then the
    killed run resumed from its checkpoint (`trainer.resume`, what a retried trial does). The
    time lost without checkpoints is the killed run's whole wall time (its retry starts over);
    with them, the killed run and the resumed one together, less the whole run."""
    depth, width, norm = 3, 1105, "layer"
    base = ["hparams_search=optuna", f"dataset.root={data}", f"model.depth={depth}",
            f"model.width={width}", f"model.norm={norm}", "trainer.batch_size=256",
            "trainer.progress=false"]
    whole = cli_run([*base, f"hydra.run.dir={scratch / 'whole'}"])
    killed = cli_run([*base, f"hydra.run.dir={scratch / 'killed'}"], kill_after=KILL_AT)
    resumed = cli_run([*base, f"hydra.run.dir={scratch / 'resumed'}",
                       f"trainer.resume={scratch / 'killed'}"])
    result = {"model": f"{depth} x {width}, layer norm", "kill_after_epochs": KILL_AT,
              "whole_s": whole, "killed_s": killed, "resumed_s": resumed,
              "lost_without_s": killed, "lost_with_s": killed + resumed - whole}
    print(f"measured kill: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="speed,kill", help="speed, kill or both (default)")
    parts = parser.parse_args().parts.split(",")
    os.chdir(ROOT)
    data = ROOT / "data"  # where `make train` puts MNIST
    earlier = RESULTS / "checkpoints.json"
    report = json.loads(earlier.read_text()) if earlier.is_file() else {}
    report.update({"machine": f"{platform.machine()}, {os.cpu_count()} cores; "
                              f"torch {torch.__version__}"})
    with tempfile.TemporaryDirectory(prefix="bench_checkpoints_") as scratch:
        if "speed" in parts:
            report.update({"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "epochs": EPOCHS,
                           "repeats": REPEATS, "models": measure(data, Path(scratch))})
        if "kill" in parts:
            report["kill"] = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"),
                              **measured_kill(data, Path(scratch))}
    RESULTS.mkdir(exist_ok=True)
    earlier.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "checkpoints.md").write_text(markdown(report))
    sys.stdout.write(markdown(report))


if __name__ == "__main__":
    main()
