"""The peers benchmark (benchmarks/peers.py): its best-so-far logic on recorded trials, its
pairing of searches, and every method run for a few seconds on a small real MNIST subset, so that
a peer that stops working is a failing test, not a stale number."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from peer_curves import Epoch, Trial, best_by, curve, median_index, spread, work_by  # noqa: E402
from peers import METHODS, Job, load_searches, marked_processes, next_job, plan  # noqa: E402

SEARCHED = {"model.depth", "model.width", "model.dropout", "model.norm", "activation",
            "optimizer.lr", "optimizer.weight_decay", "trainer.batch_size", "scheduler",
            "augment", "loss.label_smoothing"}


def recorded(name: str, started: float, *epochs: tuple[float, float]) -> Trial:
    return Trial(name, [f"trial={name}"], started,
                 [Epoch(at, val, val - 0.01) for at, val in epochs])


TRIALS = [recorded("a", 0, (10, 0.90), (20, 0.95), (30, 0.97)),
          recorded("b", 31, (40, 0.96), (50, 0.97), (200, 0.99)),  # its last epoch after 60 s
          recorded("c", 55, (70, 0.98))]


def test_best_so_far_counts_only_epochs_reported_by_then():
    assert best_by(TRIALS, 5) is None
    assert best_by(TRIALS, 25).val_accuracy == 0.95
    at_60 = best_by(TRIALS, 60)
    # A tie goes to the first epoch that reached it: trial a's epoch 3, at 30 s, not b's at 50 s.
    assert (at_60.run_dir, at_60.epoch, at_60.val_accuracy) == ("a", 3, 0.97)
    assert at_60.test_accuracy == pytest.approx(0.96)
    assert best_by(TRIALS, 100).run_dir == "c"
    assert best_by(TRIALS, 200).run_dir == "b" and best_by(TRIALS, 200).epoch == 3
    assert curve(TRIALS, [5, 25, 60, 100]) == [None, 0.95, 0.97, 0.98]


def test_work_counts_a_running_trial_with_the_epochs_it_had():
    one_at_a_time = [recorded("a", 0, (10, 0.9), (20, 0.9), (30, 0.9)),
                     recorded("b", 32, (40, 0.9), (50, 0.9), (70, 0.9)),
                     recorded("c", 72, (90, 0.9))]
    # By 60 s: a ran 0-30 s; b from 32 s on, its third epoch still to come: 30 + 28 s in trials.
    assert work_by(one_at_a_time, 60) == {"trials": 2, "epochs": 5, "top3_trials_s": 58,
                                          "outside_trials_s": 2}
    # By 100 s: b ended at 70 s; c, the last one started, still runs: 30 + 38 + 28 s.
    assert work_by(one_at_a_time, 100) == {"trials": 3, "epochs": 7, "top3_trials_s": 96,
                                           "outside_trials_s": 4}


def test_spread_over_seeds_ranks_a_seed_with_nothing_yet_lowest():
    assert spread([0.97, 0.95, 0.99]) == (0.97, 0.95, 0.99)
    assert spread([None, 0.95, 0.99]) == (0.95, 0.95, 0.99)
    assert spread([None, None, 0.99]) == (None, 0.99, 0.99)
    assert median_index([0.97, 0.95, 0.99]) == 0 and median_index([None, 0.95, 0.99]) == 1


def test_pairs_never_run_two_searches_of_one_method_and_refits_wait_for_their_seeds():
    queue = plan(["x", "y", "z"], [0, 1])
    assert [(j.method, j.seed) for j in queue[:6]] == [
        ("x", 0), ("y", 0), ("z", 0), ("x", 1), ("y", 1), ("z", 1)]
    running = [queue.pop(0)]
    assert next_job(queue, running).method == "y"
    running.append(queue.pop(0))                       # x/0 and y/0 run
    assert next_job(queue, running).method == "z"
    x0 = running.pop(0)
    x0.done = True
    queue.remove(next(j for j in queue if j.method == "z"))
    assert (next_job(queue, running).method, next_job(queue, running).seed) == ("x", 1)
    refits = [j for j in queue if j.kind == "refit"]
    assert [r.method for r in refits] == ["x", "y", "z"] and len(refits[0].needs) == 2
    only_refits = refits
    assert next_job(only_refits, []) is None            # no seed of any method is done yet
    for job in refits[1].needs:
        job.done = True
    assert next_job(only_refits, []).name == "refit y"
    assert next_job(only_refits, [Job("y", "search", 1)]) is None


def run_peers(folder: Path, mnist_root: Path, budget_s: int, methods: list[str]) -> dict:
    out = folder / "results"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), f"--data={mnist_root}", f"--out={out}",
         f"--runs={folder / 'runs'}", f"--figure={folder / 'peers.png'}",
         f"--scale={budget_s / 600}", "--seeds", "0", f"--slots={min(2, len(methods))}",
         "--methods", *methods, "--",
         "trainer.epochs=2", "dataset.train_limit=3000", "dataset.val_size=1000",
         "dataset.test_limit=1000", "model.width=choice(16,256)"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "peers_quick.json").read_text())
    assert report["budget_s"] == pytest.approx(budget_s) and set(report["methods"]) == set(methods)
    assert report["torch"] == torch.__version__  # with its build tag, read without importing it
    table = (out / "peers_quick.md").read_text()
    assert all(f"| {name} |" in table for name in methods)
    assert (folder / "peers_quick.png").stat().st_size > 10_000
    return report


@pytest.mark.slow
def test_every_method_searches_the_preset_space_within_its_budget(tmp_path, mnist_root):
    # Ray Tune alone on one core, with the budget its local cluster needs to report a first epoch
    # (10-30 s here); the other methods, which report theirs within 5-15 s, two at a time on less.
    reports = [run_peers(tmp_path / "ray", mnist_root, 45, ["Ray Tune"]),
               run_peers(tmp_path / "others", mnist_root, 22,
                         [name for name in METHODS if name != "Ray Tune"])]
    methods = {name: (method, report["budget_s"])
               for report in reports for name, method in report["methods"].items()}
    assert set(methods) == set(METHODS)
    for name, (method, budget_s) in methods.items():
        trials = method["searches"]["0"]["trials"]
        counted = [e for t in trials for e in t["epochs"] if e["at_s"] <= budget_s]
        assert counted, f"{name}: no epoch within the budget; {method}"
        assert all(0 < e["val_accuracy"] <= 1 for e in counted)
        for trial in trials:
            keys = {p.split("=", 1)[0] for p in trial["params"]}
            assert SEARCHED <= keys, f"{name}: {trial['params']}"
            width = next(p for p in trial["params"] if p.startswith("model.width="))
            assert width.split("=")[1] in ("16", "256"), f"{name}: the narrowed space was not used"
        # The refit trains the best trial by the budget; better than chance (10 %), whichever
        # trial that is (a method that had time for one poor trial refits that one).
        best = best_by(load_searches(method)["0"], budget_s)
        assert method["refit"]["trial_dir"] == best.run_dir, f"{name}: {method['refit']}"
        assert 0.1 < method["refit"]["test_accuracy_mean"] <= 1, f"{name}: {method['refit']}"
    for name in METHODS:
        assert not marked_processes(f"{name} / seed 0"), f"{name} left processes running"
