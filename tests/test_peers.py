"""The peers benchmark (benchmarks/peers.py): its best-so-far logic on recorded trials, its
pairing of searches, and every method run for a few seconds on a small real MNIST subset, so that
a peer that stops working is a failing test, not a stale number. The whole-machine mode: its
plan, its parts, each method's command, its targets and where the core-seconds went, on a clock
of the test's own and synthetic trials (no training)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peers  # noqa: E402
from peer_curves import (Epoch, Trial, best_by, core_time, curve, ending,  # noqa: E402
                         mean_ranks, median_index, spread, time_by_ending, time_to, work_by)
from peers import (METHODS, Job, head_start, load_searches, marked_processes,  # noqa: E402
                   next_job, plan, preset_layers, resumed, seeds_of)

SEARCHED = {"model.depth", "model.width", "model.dropout", "model.norm", "activation",
            "optimizer.lr", "optimizer.weight_decay", "trainer.batch_size", "augment",
            "loss.label_smoothing"}


# The preset's recipe as a trial's overrides (the space narrowed to widths 16 and 256).
RECIPE = {f"{k}={v}" for k, v in head_start(preset_layers(), {
    **preset_layers()[-1]["hydra"]["sweeper"]["params"], "model.width": "choice(16,256)"}).items()}


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
    queue = plan({"x": [0, 1], "y": [0, 1], "z": [0, 1]})
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


def test_ours_and_ray_tune_run_five_seeds_and_a_resumed_run_only_the_missing_searches():
    seeds = seeds_of(list(METHODS), None)
    five = ("ours", "ours, 10 random first", "Ray Tune")
    assert all(seeds[m] == [0, 1, 2, 3, 4] for m in five)
    assert all(s == [0, 1, 2] for m, s in seeds.items() if m not in five)
    assert seeds_of(["ours", "SMAC3"], [7]) == {"ours": [7], "SMAC3": [7]}
    queue = plan({"ours": [0, 1, 2], "SMAC3": [0, 1]}, done={"ours": {0, 1}, "SMAC3": {0, 1}})
    assert [(j.method, j.kind, j.seed) for j in queue] == [("ours", "search", 2),
                                                          ("ours", "refit", None)]


def test_a_resume_keeps_the_recorded_searches_and_refuses_another_budget(tmp_path):
    fresh = {"budget_s": 600, "overrides": [], "max_epochs": 27, "date": "2026-12-05 10:00",
             "torch": "2.14.1", "machine": "x86_64, 2 cores", "seeds": {"SMAC3": [0, 1, 2]},
             "methods": {"SMAC3": {"searches": {}, "refit": None}}}
    earlier = {**fresh, "date": "2026-12-04 18:00", "seeds": {"ours": [0, 1]},
               "methods": {"ours": {"searches": {"0": {"trials": []}, "1": {"trials": []}},
                                    "refit": {"test_accuracy_mean": 0.99}}}}
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(earlier))
    report = resumed(path, fresh)
    assert report["methods"]["ours"] == earlier["methods"]["ours"]
    assert report["seeds"] == {"ours": [0, 1], "SMAC3": [0, 1, 2]}
    assert report["dates"] == ["2026-12-04 18:00", "2026-12-05 10:00"]
    with pytest.raises(SystemExit, match="budget_s=600, this run 300"):
        resumed(path, {**fresh, "budget_s": 300})


def test_time_by_how_trials_ended_and_mean_ranks():
    # 9-epoch trials: a pruned at 1, b at 3, c completes, d stopped late, e still runs at 100 s.
    trials = [recorded("a", 0, (10, 0.9)),
              recorded("b", 10, (15, 0.9), (20, 0.9), (30, 0.9)),
              recorded("c", 30, *((30 + 5 * k, 0.95) for k in range(1, 10))),
              recorded("d", 75, *((75 + 2 * k, 0.9) for k in range(1, 8))),
              recorded("e", 90, (95, 0.9))]
    fractions = time_by_ending(trials, 100, 9)
    assert fractions["stopped by 1 epoch"] == pytest.approx(0.10)
    assert fractions["by 3"] == pytest.approx(0.20)
    assert fractions["complete"] == pytest.approx(0.45)
    assert fractions["late (> 2/3 of its epochs)"] == pytest.approx(0.14)
    assert fractions["by the budget"] == pytest.approx(0.10)  # e, the last one begun
    assert sum(fractions.values()) == pytest.approx(0.99)     # 1 s between trials d and e
    budget_cut = Trial("f", [], 0, [Epoch(10, 0.9, 0.9)], "BudgetReached: cannot finish")
    assert ending(budget_cut, 1, 9, last_begun=False) == "by the budget"
    ranks = mean_ranks({"x": {"0": 0.99, "1": 0.97, "2": 0.5},
                        "y": {"0": 0.98, "1": 0.97, "2": None},
                        "z": {"0": 0.97, "1": 0.99}})          # seed 2 is not common to all
    assert ranks == {"x": pytest.approx(1.75), "y": pytest.approx(2.25), "z": pytest.approx(2.0)}


def test_the_stock_sweeper_starts_from_the_presets_recipe_in_its_study(tmp_path):
    command = METHODS["stock Hydra sweeper"](tmp_path, 0, 60, ["model.width=choice(16,256)"])
    assert f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db" in command
    study = optuna.load_study(study_name="stock", storage=f"sqlite:///{tmp_path}/optuna.db")
    (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    recipe = waiting.system_attrs["fixed_params"]
    assert recipe["model.width"] == 256 and recipe["augment"] == "shift"
    assert set(recipe) == SEARCHED
    # a recipe outside the narrowed space is no head start: the search starts as it would
    assert head_start(preset_layers(), {"model.width": "choice(16,32)"}) is None


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
    # The two Ray Tune methods never share the machine: they run one after the other.
    ray = [name for name in METHODS if name.startswith("Ray Tune")]
    reports = [run_peers(tmp_path / "ray", mnist_root, 45, ray),
               run_peers(tmp_path / "others", mnist_root, 22,
                         [name for name in METHODS if name not in ray])]
    methods = {name: (method, report["budget_s"])
               for report in reports for name, method in report["methods"].items()}
    assert set(methods) == set(METHODS)
    for name, (method, budget_s) in methods.items():
        trials = method["searches"]["0"]["trials"]
        counted = [e for t in trials for e in t["epochs"] if e["at_s"] <= budget_s]
        assert counted, f"{name}: no epoch within the budget; {method}"
        assert all(0 < e["val_accuracy"] <= 1 for e in counted)
        if name != "Ray Tune, no head start":
            first = min(trials, key=lambda t: t["started_s"])
            assert RECIPE <= set(first["params"]), f"{name} did not start from the recipe"
        for trial in trials:
            keys = {p.split("=", 1)[0] for p in trial["params"]}
            assert SEARCHED <= keys, f"{name}: {trial['params']}"
            width = next(p for p in trial["params"] if p.startswith("model.width="))
            assert width.split("=")[1] in ("16", "256"), f"{name}: the narrowed space was not used"
        # A trial that trained every epoch read the test set for the weights it kept (Ray Tune
        # ends a trial inside its last report: that report waits for the run's end).
        seed_0 = load_searches(method)["0"]
        trained_through = [t for t in seed_0 if len(t.epochs) == 2]
        assert not trained_through or any(
            e.test_accuracy is not None for t in trained_through for e in t.epochs), name
        # The refit trains the best trial by the budget; better than chance (10 %), whichever
        # trial that is (a method that had time for one poor trial refits that one).
        best = best_by(seed_0, budget_s)
        assert method["refit"]["trial_dir"] == best.run_dir, f"{name}: {method['refit']}"
        assert 0.1 < method["refit"]["test_accuracy_mean"] <= 1, f"{name}: {method['refit']}"
    for name in METHODS:
        assert not marked_processes(f"{name} / seed 0"), f"{name} left processes running"


# The whole-machine mode (--whole-machine): each search alone on every core, in parts.

class Clock:
    """peers.time for a run of the scheduler without waiting: sleep moves the time on."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Ended:
    """A job's process that ends after `seconds` of the clock (a search is stopped at its
    budget before that)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.end, self.returncode = clock, clock.now + seconds, None

    def poll(self) -> int | None:
        if self.clock.now >= self.end:
            self.returncode = 0
        return self.returncode


def whole_machine(tmp_path: Path, *options: str) -> "peers.Benchmark":
    args = peers.arg_parser().parse_args(
        ["--whole-machine", f"--out={tmp_path / 'results'}", f"--runs={tmp_path / 'runs'}",
         f"--data={tmp_path / 'data'}", *options])
    return peers.Benchmark(args, args.scale or 1)


def scheduled(monkeypatch, benchmark: "peers.Benchmark", refit_s: float = 5) -> list[tuple]:
    """Run `benchmark`'s scheduler on a clock of its own, no process started: each job as
    (name, cpu, start, end) in the order they started."""
    clock = Clock()
    monkeypatch.setattr(peers, "time", clock)
    benchmark.started = clock.now
    started, running = [], []

    def start(job, cpu):
        assert not running, f"{job.name} started beside {running}"
        running.append(job.name)
        started.append([job.name, cpu, clock.now, None])
        seconds = benchmark.budget + 60 if job.kind == "search" else refit_s
        return Ended(clock, seconds), clock.now

    def finish(job, began, returncode):
        running.remove(job.name)
        next(s for s in started if s[0] == job.name)[3] = clock.now
        method = benchmark.report["methods"][job.method]
        if job.kind == "search":
            method["searches"][str(job.seed)] = {"trials": []}
        else:
            method["refit"] = {"failed": "not run"}

    monkeypatch.setattr(benchmark, "start", start)
    monkeypatch.setattr(benchmark, "finish", finish)
    monkeypatch.setattr(benchmark, "save", lambda: None)
    monkeypatch.setattr(peers, "stop", lambda process, name: None)
    benchmark.run()
    return [tuple(s) for s in started]


def test_the_whole_machine_runs_one_search_at_a_time_seed_by_seed(tmp_path, monkeypatch):
    full = whole_machine(tmp_path, "--scale=0.05")
    assert full.seeds == {m: [0, 1, 2, 3, 4] for m in peers.WHOLE_METHODS}
    jobs = scheduled(monkeypatch, full)
    assert all(cpu is None for _, cpu, _, _ in jobs)     # no affinity: every core
    assert all(end <= nxt for (_, _, _, end), (_, _, nxt, _) in zip(jobs, jobs[1:]))
    assert [name for name, *_ in jobs[:7]] == [f"{m} / seed 0" for m in peers.WHOLE_METHODS] + [
        "ours / seed 1"]
    assert [name for name, *_ in jobs[-6:]] == [f"refit {m}" for m in peers.WHOLE_METHODS]
    assert len(jobs) == 6 * 5 + 6
    # each search stopped at its budget, counted from its start
    assert all(end - start == pytest.approx(30, abs=1.5) for name, _, start, end in jobs[:30])

    small = whole_machine(tmp_path, "--regime=small")
    assert small.seeds == {m: [0, 1, 2] for m in peers.WHOLE_METHODS if m != "ours, one process"}
    assert "dataset.train_limit=10000" in small.overrides
    with pytest.raises(SystemExit, match="'ours, one process' is not in the whole-machine small"):
        whole_machine(tmp_path, "--regime=small", "--methods", "ours, one process")
    with pytest.raises(SystemExit, match="seeds 0-6"):
        whole_machine(tmp_path, "--seeds", "7")
    assert whole_machine(tmp_path, "--seeds", "5", "6", "--methods", "ours").seeds == {
        "ours": [5, 6]}


def test_max_minutes_starts_no_search_that_cannot_end_within_the_part(tmp_path, monkeypatch):
    # 30-second searches (+ 30 s for start-up and stop): by 1.6 minutes two fit, not a third
    part = whole_machine(tmp_path, "--scale=0.05", "--max-minutes=1.6")
    jobs = scheduled(monkeypatch, part)
    assert [name for name, *_ in jobs] == ["ours / seed 0", "ours, one process / seed 0"]
    assert all(start + part.budget + peers.START_STOP_S <= part.started + 96
               for _, _, start, _ in jobs)
    assert jobs[-1][3] + part.budget + peers.START_STOP_S > part.started + 96
    # a refit is estimated at its trial's pace: the preset's epochs on its images + validation
    trial_dir = tmp_path / "trial"
    (trial_dir / ".hydra").mkdir(parents=True)
    (trial_dir / "metrics.json").write_text(json.dumps({"train_size": 10000}))
    (trial_dir / ".hydra" / "config.yaml").write_text("dataset:\n  val_size: 10000\n")
    part.report["methods"]["ours"]["searches"] = {"0": {"trials": [
        vars(recorded(str(trial_dir), 5, (7, 0.9), (9, 0.95))) | {
            "epochs": [{"at_s": 7, "val_accuracy": 0.9, "test_accuracy": 0.9},
                       {"at_s": 9, "val_accuracy": 0.95, "test_accuracy": 0.95}]}]}}
    refit = Job("ours", "refit")
    assert part.estimate_s(refit) == pytest.approx(peers.START_STOP_S + 2 * 27 * 2)


def test_each_method_gets_every_core_the_way_its_users_give_them(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "usable_cores", lambda: 2)  # a 2-core machine's, in a pinned test
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    benchmark = whole_machine(tmp_path)
    commands = {}
    for name, method in peers.WHOLE_METHODS.items():
        folder = benchmark.folder(Job(name, "search", 3))
        folder.mkdir(parents=True)
        commands[name] = method(folder, 3, 600, benchmark.overrides)
    for name, command in commands.items():
        assert not any(w.startswith("trainer.threads=") and w != "trainer.threads=0"
                       for w in command), f"{name}: {command}"
    ours = commands["ours"]
    assert ours[1:5] == ["-m", "mlp_sweep.train", "--multirun", "hparams_search=optuna"]
    assert {"hydra.sweeper.timeout=600", "hydra.sweeper.sampler.seed=3",
            f"hydra.sweep.dir={benchmark.folder(Job('ours', 'search', 3))}/sweep"} <= set(ours)
    assert not any(w.startswith("hydra.sweeper.workers") for w in ours)  # the preset's: auto
    assert "hydra.sweeper.workers=1" in commands["ours, one process"]
    assert "hydra/sweeper/prior=mnist" in commands["ours, MNIST prior"]
    assert "hydra/sweeper/prior=bad" in commands["ours, bad prior"]
    ray = commands["Ray Tune"]
    assert ray[1].endswith("peer_ray.py") and "--head-start" in ray
    assert "--cpus=2" in ray  # the cores it may use, as workers=auto counts
    stock = commands["stock Hydra sweeper, joblib"]
    jobs = 2
    assert {"hydra/sweeper=optuna", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}",
            f"hydra.sweeper.n_jobs={jobs}", "trainer.threads=0"} <= set(stock)
    assert len({w.split("=", 1)[0] for w in stock if "=" in w}) == sum("=" in w for w in stock)
    # the environment leaves the threads to each method; the one-core mode pins one
    assert "OMP_NUM_THREADS" not in benchmark.environment("x")
    one_core = peers.Benchmark(peers.arg_parser().parse_args(
        [f"--out={tmp_path}", f"--runs={tmp_path}"]), 1)
    assert one_core.environment("x")["OMP_NUM_THREADS"] == "1"
    assert "trainer.threads=1" in one_core.overrides
    assert "trainer.threads=1" not in benchmark.overrides
    (tmp_path / "one").mkdir()
    one_core_stock = METHODS["stock Hydra sweeper"](tmp_path / "one", 0, 60, one_core.overrides)
    assert "hydra.sweeper.n_jobs=1" in one_core_stock and not any(
        "launcher" in w for w in one_core_stock)


def test_ray_tune_on_several_cpus_gives_each_trial_one_thread():
    from peer_ray import trial_overrides
    assert trial_overrides(["a=1"], 1) == ["a=1"]
    assert trial_overrides(["a=1"], 2) == ["a=1", "trainer.threads=1"]
    assert trial_overrides(["trainer.threads=2"], 2) == ["trainer.threads=2"]


def test_the_small_regimes_targets_are_measured_once_and_read_back_on_resume(tmp_path,
                                                                               monkeypatch):
    first = whole_machine(tmp_path, "--regime=small", "--scale=0.05", "--max-minutes=0.01")
    assert "targets" not in first.report
    runs = []

    def trained(command, **kwargs):  # the recipe's run, as mlp_sweep.train writes it
        runs.append(command)
        out = Path(next(w for w in command if w.startswith("hydra.run.dir=")).split("=", 1)[1])
        (out / "metrics.json").write_text(json.dumps({"epochs": [{"val_accuracy": 0.95},
                                                                 {"val_accuracy": 0.97}]}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(peers.subprocess, "run", trained)
    scheduled(monkeypatch, first)
    (command,) = runs
    assert command[1:4] == ["-m", "mlp_sweep.train", "hparams_search=optuna"]
    assert "--multirun" not in command and "dataset.train_limit=10000" in command
    assert {"model.width=256", "augment=shift", "optimizer.lr=0.003"} <= set(command)
    assert first.report["targets"] == [0.97, 0.975]
    peers.Benchmark.save(first)  # scheduled() left the instance's save out
    saved = json.loads(first.path("json").read_text())
    assert saved["targets"] == [0.97, 0.975] and saved["recipe"]["val_accuracy"] == 0.97
    monkeypatch.undo()

    def measured_again(self):
        raise AssertionError("the targets were measured again")

    monkeypatch.setattr(peers.Benchmark, "recipe_targets", measured_again)
    again = whole_machine(tmp_path, "--regime=small", "--scale=0.05", "--resume")
    assert again.report["targets"] == [0.97, 0.975]
    assert [c["command"] for c in again.report["commands"]] == [
        first.report["commands"][0]["command"], again.report["commands"][-1]["command"]]
    assert scheduled(monkeypatch, again)[0][0] == "ours / seed 0"
    with pytest.raises(SystemExit, match="regime"):
        peers.resumed(first.path("json"), {**again.report, "regime": "full"})


def test_training_share_of_the_core_seconds_and_time_to_a_target():
    def trial(name, started, ended, threads, *epochs):  # epochs: (end, val, training seconds)
        return Trial(name, [], started, [Epoch(at, val, val, s) for at, val, s in epochs],
                     "", ended, threads)

    # 2 cores, 100 s: a and b side by side, one thread each; c after a, killed at the budget
    trials = [trial("a", 0, 50, 1, (20, 0.9, 15), (40, 0.95, 15)),
              trial("b", 10, 100, 1, (60, 0.96, 40), (110, 0.99, 40)),  # its 2nd epoch too late
              trial("c", 55, None, 1, (90, 0.97, 30))]
    share = core_time(trials, 100, 2)
    assert share["training"] == pytest.approx((15 + 15 + 40 + 30) / 200)
    # a's second epoch trained from 25 to 40: 20-25 was between its epochs
    assert share["between epochs"] == pytest.approx(5 / 200)
    assert share["in trials, other"] == pytest.approx((50 + 90 + 45 - 100 - 5) / 200)
    assert share["outside trials"] == pytest.approx(1 - 185 / 200)
    # one process of two threads: its epochs count both cores, never more than the machine's
    wide = [trial("d", 0, 80, 2, (30, 0.9, 25), (60, 0.9, 25)),
            trial("e", 0, 80, 2, (30, 0.9, 25))]             # oversubscribed: still 2 cores
    assert core_time(wide, 100, 2)["training"] == pytest.approx((2 * 25 + 2 * 25) / 200)
    assert core_time(wide, 100, 2)["outside trials"] == pytest.approx(0.2)
    # d's gap (30-35) on both cores; the rest of their runs is set-up and end
    assert core_time(wide, 100, 2)["between epochs"] == pytest.approx(2 * 5 / 200)
    assert core_time(wide, 100, 2)["in trials, other"] == pytest.approx((160 - 110) / 200)
    assert time_to(trials, 0.96, 100) == 60 and time_to(trials, 0.99, 100) is None
    assert time_to(trials, 0.99, 120) == 110


def test_the_whole_machine_table_names_its_commands_targets_and_core_time(tmp_path):
    def search(*trials):
        return {"trials": [vars(t) | {"epochs": [vars(e) for e in t.epochs]} for t in trials]}

    def trial(name, at, val):
        return Trial(name, ["model.width=256"], 0, [Epoch(at, val, val, at / 2)], "", at, 1)

    report = {"mode": "whole machine", "regime": "full", "cores": 2, "cpu": "Some CPU",
              "torch": "2.14.1", "date": "2026-12-06 10:00", "dates": ["2026-12-06 10:00"],
              "machine": "x86_64, 2 cores", "budget_s": 600, "scale": 1, "overrides": [],
              "max_epochs": 27, "checkpoints_s": [120, 300, 600], "targets": [0.99, 0.992],
              "seeds": {"ours": [0, 1], "Ray Tune": [0, 1]},
              "commands": [{"command": ".venv/bin/python benchmarks/peers.py --whole-machine",
                            "date": "2026-12-06 10:00"}],
              "methods": {"ours": {"searches": {"0": search(trial("a", 100, 0.991)),
                                                "1": search(trial("b", 400, 0.993))},
                                   "refit": {"test_accuracy_mean": 0.9912, "epochs": 27}},
                          "Ray Tune": {"searches": {"0": search(trial("c", 200, 0.985)),
                                                    "1": search(trial("d", 500, 0.991))},
                                       "refit": None}}}
    table = peers.markdown(report)
    assert table.startswith("```\n.venv/bin/python benchmarks/peers.py --whole-machine    # "
                            "2026-12-06 10:00\n```\n\nCPU: Some CPU; 2 cores; torch 2.14.1;")
    assert "| ours | 2 | 1.7 min (0 of 2 never) | 6.7 min (1 of 2 never) |" in table
    assert "| Ray Tune | 2 | 8.3 min (1 of 2 never) | never (2 of 2 never) |" in table
    assert ("| method | training | between epochs | in trials, other | outside trials |"
            in table)
    assert "| ours | 0 | 99.10% | 99.10% | 99.12% | 27 | model.width=256 |" in table
    peers.figure(report, tmp_path / "whole.png")
    assert (tmp_path / "whole.png").stat().st_size > 10_000

    # A race in parts: a method short of its seeds is not ranked yet; the others are, over theirs.
    report["seeds"]["stock"] = [0, 1]
    report["methods"]["stock"] = {"searches": {"0": search(trial("e", 100, 0.999))}, "refit": None}
    ranks = {name: rows[600]["mean_rank"] for name, rows in peers.summarise(report).items()
             if "mean_rank" in rows[600]}
    assert ranks == {"ours": 1.0, "Ray Tune": 2.0}
    assert "| stock | 1 | 99.90% (99.90%–99.90%); 1 trials, 1 epochs |" in peers.markdown(report)
