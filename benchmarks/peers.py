"""The default search against what its users could run instead: the same space, training code,
validation split, epochs and wall-clock budget, several seeds each, side by side.

    make bench-peers            (= .venv/bin/python benchmarks/peers.py; about 2 hours)
    make bench-peers QUICK=1    (every budget divided by 6: checks that it works)
    .venv/bin/python benchmarks/peers.py --methods ours "Ray Tune"      (a part of it, then
    .venv/bin/python benchmarks/peers.py --resume                          the rest, added)

Methods, each searching hparams_search=optuna's space (benchmarks/peer_trials.py), and each
starting from the preset's first trial (its enqueued recipe) the way its users would give it:
- ours: `--multirun hparams_search=optuna`, as a user runs it (the preset enqueues it);
- ours, random: the same with hydra/sweeper/sampler=random;
- ours, 10 random first: the same with TPE from the 11th trial
  (hydra.sweeper.sampler.n_startup_trials=10);
- stock Hydra sweeper: hydra/sweeper=optuna (TPE, no pruning), the preset's keys and space, the
  recipe enqueued in its study before it starts;
- Ray Tune: ASHA + OptunaSearch (TPE) on a one-CPU local cluster, the recipe as its
  `points_to_evaluate` (benchmarks/peer_ray.py); and without it, as a user who never read the
  presets would run it;
- SMAC3: the multi-fidelity facade, epochs as the budget, the recipe in its initial design
  (benchmarks/peer_smac.py).
Ours (both samplings) and Ray Tune run 5 seeds, the others 3 (SEEDS).

Every search runs in its own process group on one core (affinity and one torch thread), two at a
time, never two of the same method (so never two Ray clusters); each is stopped at its budget, and
every process it started is stopped by its id. Only epochs that ended within the budget count
(benchmarks/peer_curves.py). Then the median seed's final best of each method is refitted
(`python -m mlp_sweep.refit TRIAL_DIR --seeds 1`). Writes benchmarks/results/peers.{json,md} after
every job, and docs/figures/peers.png at the end (`--report` draws them again from the json);
`--resume` keeps the searches that file already holds and runs only the missing ones.

The whole-machine mode (`--whole-machine --regime full|small`, `make bench-peers WHOLE=1
REGIME=full`) gives every method all the machine's cores the way its users would give them, each
search alone on the machine, one after the other (WHOLE_METHODS):
- ours: `--multirun hparams_search=optuna` as a user runs it (the preset's workers: auto, one
  asynchronous worker process a core); ours, one process: hydra.sweeper.workers=1 (torch's own
  threads, all cores; full regime only); ours, MNIST prior and ours, bad prior:
  hydra/sweeper/prior=mnist, =bad;
- Ray Tune: peer_ray.py --head-start --cpus CORES (one trial a CPU, side by side);
- stock Hydra sweeper, joblib: the stock sweeper with hydra/launcher=joblib, CORES jobs a batch.
Regimes: full (full MNIST), small (the first 10000 training images, dataset.train_limit=10000);
5 seeds a method in full, 3 in small. Beside the best so far at 2, 5 and 10 minutes it reports the
time each search took to reach two validation targets (full: 99.0 % and 99.2 %; small: the
preset's recipe trained on the same 10000 images, measured once before the race and kept in the
json, and that + 0.5 point) and where the core-seconds went (training, between epochs, in
trials, idle). Results in benchmarks/results/peers_whole_machine_REGIME.{json,md,png}. It runs
in parts: `--max-minutes M` starts no job that cannot end within M minutes of the part's start,
and the next part (`--resume`) runs what is left.
"""

import argparse
import ast
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path

import optuna
import psutil
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from mlp_sweep.sweeping.optuna_compat import parse_sweep_overrides
from mlp_sweep.sweeping.worker_pool import usable_cores
from mlp_sweep.sweeping.sweep_settings import fits
from mlp_sweep.values import flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_curves import (CORE_USES, ENDINGS, Epoch, Trial, best_by, core_time,  # noqa: E402
                         curve, mean_ranks, median_index, read_trials, spread, time_by_ending,
                         time_to, work_by)

BENCHMARKS = Path(__file__).resolve().parent
PYTHON = sys.executable
TRAIN = [PYTHON, "-m", "mlp_sweep.train", "--multirun"]
MARKER = "MLP_SWEEP_PEER_RUN"   # in the environment of every process a search starts
CHECKPOINTS_MIN = (2, 5, 10)    # the table's budgets, scaled with the run's budget
START_STOP_S = 30               # a search's start-up and stop beyond its budget, for --max-minutes

Command = Callable[[Path, int, float, list[str]], list[str]]


def ours(*extra: str) -> Command:
    def command(out: Path, seed: int, budget: float, overrides: list[str]) -> list[str]:
        return [*TRAIN, "hparams_search=optuna", f"hydra.sweeper.timeout={budget:g}",
                f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.storage=sqlite:///{out}/optuna.db",
                f"hydra.sweep.dir={out}/sweep", *extra, *overrides]
    return command


def stock_sweeper(jobs: int = 1) -> Command:
    """The stock plugin; with `jobs` > 1 through Hydra's joblib launcher, `jobs` trials a batch
    side by side, trainer.threads=0 sharing the cores among them."""
    def command(out: Path, seed: int, budget: float, overrides: list[str]) -> list[str]:
        return stock_command(out, seed, overrides, jobs)
    return command


def stock_command(out: Path, seed: int, overrides: list[str], jobs: int = 1) -> list[str]:
    """The stock plugin with the preset's training keys and space; it has no time limit (the
    benchmark stops it) and no pruning. A later entry for a key replaces an earlier one, as the
    preset's space replaces its base values and the benchmark's overrides both. Its study is
    made first, with the preset's recipe enqueued: the stock sweeper has no key for it, and a
    user of it would enqueue the trial in the study it then loads."""
    layers = preset_layers()
    groups = [f"{key.removeprefix('override /')}={value}" for layer in layers
              for entry in layer.get("defaults", []) if isinstance(entry, dict)
              for key, value in entry.items() if not key.startswith("override /hydra")]
    base = {key: value for layer in layers
            for key, value in flatten({k: v for k, v in layer.items()
                                       if k not in ("defaults", "hydra")}).items()}
    space = layers[-1]["hydra"]["sweeper"]["params"]
    given = dict(o.split("=", 1) for o in overrides)
    entries = {**base, **space, **given}
    storage = f"sqlite:///{out}/optuna.db"
    study = optuna.create_study(study_name="stock", storage=storage, direction="maximize",
                                load_if_exists=True)
    if (recipe := head_start(layers, {k: v for k, v in entries.items() if k in space or k in given})):
        study.enqueue_trial(recipe)
    launcher = [] if jobs == 1 else ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    if jobs > 1:
        entries.setdefault("trainer.threads", "0")  # mlp_sweep gives each job cores / jobs
    return [*TRAIN, "hydra/sweeper=optuna", *launcher, *groups,
            *(f"{k}={v}" for k, v in entries.items()),
            "hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=100000",
            f"hydra.sweeper.n_jobs={jobs}", "hydra.sweeper.max_failure_rate=0.3",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=stock",
            f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweep.dir={out}/sweep"]


def head_start(layers: list[dict], entries: dict[str, str]) -> dict | None:
    """The preset's enqueued recipe for a space given as `key: sweep syntax` entries (a plain
    value fixes its key, left out of the recipe); None when it does not fit that space."""
    enqueued = layers[-1]["hydra"]["sweeper"].get("enqueue_trials") or []
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in entries.items()])
    searched = [o.input_line for o in parsed if o.is_sweep_override()]
    space, _, _ = parse_sweep_overrides(searched)
    recipe = {k: v for k, v in (enqueued[0] if enqueued else {}).items() if k in space}
    ok = recipe.keys() == space.keys() and all(fits(space[k], v) for k, v in recipe.items())
    return recipe if ok else None


def peer_script(name: str, *extra: str) -> Command:
    def command(out: Path, seed: int, budget: float, overrides: list[str]) -> list[str]:
        return [PYTHON, str(BENCHMARKS / name), f"--seed={seed}", f"--budget={budget:g}", *extra,
                str(out), *overrides]
    return command


METHODS: dict[str, Command] = {
    "ours": ours(),
    "ours, random": ours("hydra/sweeper/sampler=random"),
    # TPE from the 11th trial (Optuna's and Ray's OptunaSearch's default), not the 2nd
    "ours, 10 random first": ours("hydra.sweeper.sampler.n_startup_trials=10"),
    "stock Hydra sweeper": stock_sweeper(),
    "Ray Tune": peer_script("peer_ray.py", "--head-start"),
    "Ray Tune, no head start": peer_script("peer_ray.py"),
    "SMAC3": peer_script("peer_smac.py", "--head-start"),
}
# Seeds per method: the comparison the table turns on (ours, and its candidate sampler setting,
# against Ray Tune, all given the head start) at 5, the others at 3.
SEEDS = {"ours": 5, "ours, 10 random first": 5, "Ray Tune": 5}
OTHER_SEEDS = 3


def cores() -> int:
    """The cores this benchmark may use, all of which a whole-machine search gets (as
    workers=auto counts them: the CPU affinity)."""
    return usable_cores()


def ray_whole_machine(out: Path, seed: int, budget: float, overrides: list[str]) -> list[str]:
    return peer_script("peer_ray.py", "--head-start", f"--cpus={cores()}")(out, seed, budget,
                                                                          overrides)


def stock_whole_machine(out: Path, seed: int, budget: float, overrides: list[str]) -> list[str]:
    return stock_sweeper(jobs=cores())(out, seed, budget, overrides)


# The whole-machine mode (--whole-machine): each search alone with all the cores, given them the
# way its users would give them; no trainer.threads=1, no affinity, no OMP_NUM_THREADS.
WHOLE_METHODS: dict[str, Command] = {
    "ours": ours(),                                        # the preset's workers=auto
    "ours, one process": ours("hydra.sweeper.workers=1"),  # torch's own threads: all cores
    "ours, MNIST prior": ours("hydra/sweeper/prior=mnist"),
    "ours, bad prior": ours("hydra/sweeper/prior=bad"),
    "Ray Tune": ray_whole_machine,
    "stock Hydra sweeper, joblib": stock_whole_machine,
}
REGIMES = {"full": [], "small": ["dataset.train_limit=10000"]}  # every trial's overrides
WHOLE_SEEDS = {"full": 5, "small": 3}   # seeds per method, from seeds 0-6
WHOLE_SEED_RANGE = range(7)
FULL_ONLY = {"ours, one process"}
FULL_TARGETS = [0.990, 0.992]           # validation accuracy targets of the full regime
SMALL_MARGIN = 0.005                    # the small regime's second target: the recipe's + 0.5 pt


def whole_methods(regime: str, methods: list[str] | None) -> list[str]:
    """The methods a whole-machine run of `regime` runs: `methods`, or all of WHOLE_METHODS the
    regime has; a method of another mode or regime is one line."""
    allowed = [m for m in WHOLE_METHODS if regime == "full" or m not in FULL_ONLY]
    for method in methods or []:
        if method not in allowed:
            raise SystemExit(f"--methods {method!r} is not in the whole-machine {regime} regime; "
                             f"allowed: {', '.join(allowed)}")
    return list(methods) if methods else allowed


def whole_seeds(regime: str, methods: list[str], seeds: list[int] | None) -> dict[str, list[int]]:
    """The seeds each method runs in a whole-machine race: `seeds` when given (from 0-6), else
    the regime's first WHOLE_SEEDS."""
    if seeds is not None and not set(seeds) <= set(WHOLE_SEED_RANGE):
        raise SystemExit(f"--seeds {seeds}: allowed in the whole-machine mode: seeds 0-6")
    return {m: list(seeds) if seeds is not None else list(range(WHOLE_SEEDS[regime]))
            for m in methods}


@dataclass
class Job:
    method: str
    kind: str                   # "search" or "refit"
    seed: int | None = None
    needs: list["Job"] = field(default_factory=list)
    done: bool = False

    @property
    def name(self) -> str:
        return f"{self.method} / seed {self.seed}" if self.kind == "search" else f"refit {self.method}"


def next_job(queue: list[Job], running: list[Job]) -> Job | None:
    """The first queued job whose prerequisites are done and whose method is not running: two
    searches of one method never share the machine, nor a refit its method's searches, nor two
    Ray Tune searches (each starts a local cluster)."""
    busy = {family(job.method) for job in running}
    return next((job for job in queue
                 if all(n.done for n in job.needs) and family(job.method) not in busy), None)


def family(method: str) -> str:
    return "Ray Tune" if method.startswith("Ray Tune") else method


def plan(seeds: dict[str, list[int]], done: dict[str, set[int]] = {},
         unrefitted: set[str] = set()) -> list[Job]:
    """Each method's searches (`seeds`, by method) seed by seed across the methods, so that
    side-by-side pairs mix methods, less those `done` already holds; then the refit of each
    method that has a new search, or searches but no refit yet (`unrefitted`: a part ended
    before it)."""
    searches = {m: [Job(m, "search", s) for s in ss if s not in done.get(m, set())]
                for m, ss in seeds.items()}
    depth = max((len(jobs) for jobs in searches.values()), default=0)
    order = [jobs[i] for i in range(depth) for jobs in searches.values() if i < len(jobs)]
    return order + [Job(m, "refit", needs=jobs) for m, jobs in searches.items()
                    if jobs or m in unrefitted]


def seeds_of(methods: list[str], seeds: list[int] | None) -> dict[str, list[int]]:
    """The seeds each method runs: `seeds` for all when given, else SEEDS (OTHER_SEEDS)."""
    return {m: list(seeds) if seeds is not None else list(range(SEEDS.get(m, OTHER_SEEDS)))
            for m in methods}


def torch_version() -> str:
    """torch's version with its build tag (2.14.1+cu130), read from torch/version.py: the package
    metadata drops the tag, and importing torch costs this process, which trains nothing, 3 s."""
    version_file = Path(importlib.util.find_spec("torch").submodule_search_locations[0], "version.py")
    assignments = ast.parse(version_file.read_text()).body
    return next(ast.literal_eval(node.value) for node in assignments if isinstance(node, ast.Assign)
                and [target.id for target in node.targets] == ["__version__"])


class Benchmark:
    def __init__(self, args: argparse.Namespace, scale: float) -> None:
        self.args, self.scale = args, scale
        self.whole = args.whole_machine
        self.started = time.time()  # the part's start, for --max-minutes
        self.ran_any = False        # whether this part started a job
        self.commands: dict[str, str] = {}  # each started job's command line
        self.budget = 600 * scale
        self.runs = args.runs.absolute() / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        if self.whole:
            self.runs = self.runs.with_name(f"{self.runs.name}_whole_machine_{args.regime}")
            methods = whole_methods(args.regime, args.methods)
            self.seeds = whole_seeds(args.regime, methods, args.seeds)
            self.overrides = [f"dataset.root={args.data.absolute()}", "trainer.progress=false",
                              *REGIMES[args.regime], *args.overrides]
        else:
            methods = args.methods or list(METHODS)
            self.seeds = seeds_of(methods, args.seeds)
            self.overrides = [f"dataset.root={args.data.absolute()}", "trainer.threads=1",
                              "trainer.progress=false", *args.overrides]
        self.report = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch_version(),
            "date": datetime.now().strftime("%Y-%m-%d %H:%M"), "budget_s": self.budget,
            "scale": scale, "seeds": self.seeds, "overrides": args.overrides,
            "max_epochs": max_epochs([*REGIMES[args.regime], *args.overrides]
                                     if self.whole else args.overrides),
            "runs": str(self.runs), "checkpoints_s": [60 * m * scale for m in CHECKPOINTS_MIN],
            "methods": {m: {"searches": {}, "refit": None} for m in methods}}
        if self.whole:
            self.report |= {
                "mode": "whole machine", "regime": args.regime, "cores": cores(),
                "cpu": cpu_model(), "commands": [{"command": command_line(),
                                                 "date": self.report["date"]}]}
            if args.regime == "full":
                self.report["targets"] = FULL_TARGETS
        if args.resume:
            self.report = resumed(self.path("json"), self.report)

    def run_queue(self, queue: list[Job], running: list, free_cpus: list[int | None]) -> None:
        """Start the queue's jobs as cores free up and record each as it ends; `running` holds
        those under way (job, cpu, process, start), for the caller to stop if it is stopped."""
        closed = False  # --max-minutes: the next job cannot end within the part
        while (queue and not closed) or running:
            while not closed and free_cpus and (job := next_job(queue, [r[0] for r in running])):
                if not self.fits_in_part(job, started_any=bool(running) or self.ran_any):
                    closed = True
                    left = len(queue)
                    print(f"{datetime.now():%H:%M:%S} --max-minutes {self.args.max_minutes:g}: "
                          f"{job.name} cannot end within the part; {left} jobs left for the next "
                          "part (the same command with --resume)", flush=True)
                    break
                queue.remove(job)
                cpu = free_cpus.pop(0)
                running.append((job, cpu, *self.start(job, cpu)))
                self.ran_any = True
            time.sleep(1)
            for entry in list(running):
                job, cpu, process, started = entry
                # At the budget, counted from the process's start: nothing after it counts, and a
                # search's own time limit starts later (after its imports, its cluster).
                over = job.kind == "search" and time.time() > started + self.budget
                if process.poll() is None and not over:
                    continue
                stop(process, job.name)
                self.finish(job, started, process.returncode)
                job.done = True
                running.remove(entry)
                free_cpus.append(cpu)
                self.save()

    def run(self) -> None:
        if self.whole and "targets" not in self.report:
            self.report["targets"] = self.recipe_targets()
            self.save()
        methods = self.report["methods"]
        done = {m: {int(s) for s in method["searches"]} for m, method in methods.items()}
        unrefitted = {m for m in self.seeds if methods[m]["searches"] and not methods[m]["refit"]}
        queue, running = plan(self.seeds, done, unrefitted), []
        # whole machine: one job at a time, on every core
        free_cpus = [None] if self.whole else sorted(os.sched_getaffinity(0))[:self.args.slots]
        # A stopped race (Ctrl-C, a kill) stops the search it runs, every process by its id
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            self.run_queue(queue, running, free_cpus)
        finally:
            for job, _, process, _ in running:
                stop(process, job.name)
        if not queue:
            print(f"{datetime.now():%H:%M:%S} nothing left to run: every search and refit is in "
                  f"{self.path('json')}", flush=True)

    def fits_in_part(self, job: Job, started_any: bool) -> bool:
        """With --max-minutes, whether `job` can end within the part (a refit whose estimate
        exceeds a whole part still starts first in one)."""
        if self.args.max_minutes is None:
            return True
        ends = time.time() + self.estimate_s(job)
        return ends <= self.started + 60 * self.args.max_minutes or (
            job.kind == "refit" and not started_any)

    def estimate_s(self, job: Job) -> float:
        """How long `job` takes: a search its budget and START_STOP_S; a refit the preset's
        epochs at its trial's pace (seconds an epoch, evaluation included) on the refit's
        training images (the trial's + its validation images)."""
        if job.kind == "search":
            return self.budget + START_STOP_S
        target = self.refit_target(job.method)
        trial = next((t for ts in load_searches(self.report["methods"][job.method]).values()
                      for t in ts if t.run_dir == target), None)
        if trial is None or not trial.epochs:
            return START_STOP_S
        per_epoch = (trial.epochs[-1].at_s - max(trial.started_s, 0.0)) / len(trial.epochs)
        return START_STOP_S + per_epoch * self.report["max_epochs"] * refit_ratio(Path(target))

    def recipe_targets(self) -> list[float]:
        """The small regime's targets: the preset's recipe (its enqueue_trials[0]) trained as
        the preset trains it on the regime's images, its last epoch's validation accuracy, and
        that + SMALL_MARGIN. Measured once (a --resume reuses the json's)."""
        out = self.runs / "recipe_target"
        recipe = preset_layers()[-1]["hydra"]["sweeper"]["enqueue_trials"][0]
        fixed = [o for o in self.overrides
                 if not OverridesParser.create().parse_overrides([o])[0].is_sweep_override()]
        given = {o.split("=", 1)[0] for o in fixed}  # a key the benchmark fixes wins
        command = [PYTHON, "-m", "mlp_sweep.train", "hparams_search=optuna",
                   *(f"{k}={v}" for k, v in recipe.items() if k not in given), *fixed,
                   f"hydra.run.dir={out}"]
        out.mkdir(parents=True, exist_ok=True)
        print(f"{datetime.now():%H:%M:%S} the small regime's target: the recipe on the regime's "
              "images", flush=True)
        with open(out / "command.log", "w") as log:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.environment("recipe target")).returncode
        metrics = out / "metrics.json"
        if returncode or not metrics.is_file():
            raise SystemExit(f"the recipe's run failed (exit {returncode}); see {out}/command.log")
        accuracy = json.loads(metrics.read_text())["epochs"][-1]["val_accuracy"]
        self.report["recipe"] = {"command": shlex.join(command), "val_accuracy": accuracy,
                                 "date": datetime.now().strftime("%Y-%m-%d %H:%M")}
        print(f"  recipe: {accuracy:.2%} validation accuracy", flush=True)
        return [accuracy, round(accuracy + SMALL_MARGIN, 6)]

    def environment(self, name: str) -> dict[str, str]:
        """A job's environment: the marker; one thread (one core) unless the whole machine."""
        env = {**os.environ, MARKER: name,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCHMARKS),
                                                           os.environ.get("PYTHONPATH")]))}
        if self.whole:  # the methods' own thread counts
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.pop(key, None)
        else:
            env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return env

    def command(self, job: Job, out: Path) -> list[str]:
        if job.kind == "search":
            methods = WHOLE_METHODS if self.whole else METHODS
            return methods[job.method](out, job.seed, self.budget, self.overrides)
        if (target := self.refit_target(job.method)) is not None:
            return [PYTHON, "-m", "mlp_sweep.refit", target, "--seeds=1"]
        # no seed reported an epoch: nothing to refit, and the table says so
        return [PYTHON, "-c", "raise SystemExit('no epoch within the budget')"]

    def start(self, job: Job, cpu: int | None) -> tuple[subprocess.Popen, float]:
        out = self.folder(job)
        out.mkdir(parents=True, exist_ok=True)
        command = self.command(job, out)
        self.commands[job.name] = shlex.join(command)
        where = "every core" if cpu is None else f"cpu {cpu}"
        print(f"{datetime.now():%H:%M:%S} start {job.name} on {where}", flush=True)
        log = open(out / "command.log", "w")
        started = time.time()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.environment(job.name),
            start_new_session=True,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))
        log.close()
        return process, started

    def folder(self, job: Job) -> Path:
        slug = job.method.replace(", ", "_").replace(" ", "_").lower()
        return self.runs / (f"{slug}_seed{job.seed}" if job.kind == "search" else f"refit_{slug}")

    def finish(self, job: Job, started: float, returncode: int | None) -> None:
        method = self.report["methods"][job.method]
        if job.kind == "search":
            trials = read_trials(self.folder(job), started)
            method["searches"][str(job.seed)] = {
                "returncode": returncode, "wall_s": time.time() - started,
                "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
                # the CPU of each search: a race run in parts may span sessions, and machines
                **({"command": self.commands[job.name], "cpu": self.report["cpu"]}
                   if self.whole else {}),
                "trials": [vars(t) | {"epochs": [vars(e) for e in t.epochs]} for t in trials]}
            method["refit"] = None  # the median seed's best may have changed
            best = best_by(trials, self.budget)
            print(f"  {job.name}: {len(trials)} trials, best {best and best.val_accuracy}",
                  flush=True)
        else:
            target = self.refit_target(job.method)
            refit_file = Path(target) / "refit.json" if target else None
            method["refit"] = (json.loads(refit_file.read_text())
                               if refit_file and refit_file.is_file() else
                               {"failed": f"exit {returncode}; see {self.folder(job) / 'command.log'}"})

    def refit_target(self, method: str) -> str | None:
        """The final best trial of the method's median seed (None if it has none)."""
        searches = load_searches(self.report["methods"][method])
        finals = [best_by(trials, self.budget) for trials in searches.values()]
        median = finals[median_index([f and f.val_accuracy for f in finals])]
        return median and median.run_dir

    def save(self) -> None:
        self.args.out.mkdir(parents=True, exist_ok=True)
        self.path("json").write_text(json.dumps(self.report, indent=1) + "\n")
        self.path("md").write_text(markdown(self.report))

    def path(self, extension: str) -> Path:
        return self.args.out / f"{self.stem}.{extension}"

    @property
    def stem(self) -> str:
        """peers, or peers_whole_machine_REGIME; _quick added for a check's scale or overrides."""
        name = f"peers_whole_machine_{self.args.regime}" if self.whole else "peers"
        return name + ("" if self.scale == 1 and not self.args.overrides else "_quick")


def refit_ratio(trial_dir: Path) -> float:
    """The refit's training images over the trial's: a refit trains on its training and
    validation images (1.2 for full MNIST's 50000 + 10000)."""
    try:
        train = json.loads((trial_dir / "metrics.json").read_text())["train_size"]
        val = yaml.safe_load((trial_dir / ".hydra" / "config.yaml").read_text())["dataset"].get(
            "val_size") or 0
        return (train + val) / train
    except (OSError, KeyError, TypeError, ZeroDivisionError, yaml.YAMLError, json.JSONDecodeError):
        return 1.2


def cpu_model() -> str:
    """lscpu's Model name (the CPU), or /proc/cpuinfo's, or the platform's processor."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name:"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        try:
            return next(line.split(":", 1)[1].strip()
                        for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            return platform.processor() or "unknown"


def command_line() -> str:
    """This process's command line as typed in the repository (.venv/bin/python benchmarks/...)."""
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith(
        "..") else sys.executable
    return shlex.join([python, *sys.argv])


def max_epochs(overrides: list[str]) -> int:
    """A complete trial's epochs: the preset's, unless the benchmark's overrides set them."""
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    preset = {k: v for layer in preset_layers() for k, v in flatten(
        {k: v for k, v in layer.items() if k not in ("defaults", "hydra")}).items()}
    return int(given.get("trainer.epochs", preset["trainer.epochs"]))


def resumed(path: Path, fresh: dict) -> dict:
    """The report at `path`, to add this run's searches to: its searches and refits kept, and
    the methods and seeds this run asks for added. One measured with another budget, epochs or
    overrides cannot be added to: that is one line, and nothing runs."""
    if not path.is_file():
        return fresh
    report = json.loads(path.read_text())
    for key in ("budget_s", "overrides", "max_epochs", "regime"):
        if report.get(key) != fresh.get(key):
            raise SystemExit(f"--resume: {path} has {key}={report.get(key)!r}, this run "
                             f"{fresh.get(key)!r}; allowed: the same budget, epochs, overrides "
                             "and regime")
    for name, seeds in fresh["seeds"].items():
        report["methods"].setdefault(name, {"searches": {}, "refit": None})
        report["seeds"][name] = sorted({*report["seeds"].get(name, []), *seeds})
    report["dates"] = sorted({*report.get("dates", [report["date"]]), fresh["date"]})
    report["torch"], report["machine"] = fresh["torch"], fresh["machine"]
    if "commands" in fresh:  # the whole-machine mode: each part's command line, its CPU
        report["commands"] = [*report.get("commands", []), *fresh["commands"]]
        report["cpu"], report["cores"] = fresh["cpu"], fresh["cores"]
        # the small regime's targets, measured once: the json's, as it holds them
        report.setdefault("targets", fresh.get("targets"))
        if report["targets"] is None:
            del report["targets"]
    return report


def stop(process: subprocess.Popen, name: str) -> None:
    """Stop a search's process group, then any process still carrying its marker (a local Ray
    cluster's daemons), each by its id."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for leftover in marked_processes(name):
        try:
            leftover.kill()
            leftover.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass  # it ended on its own since it was listed (a resource tracker after its parent)


def marked_processes(name: str) -> list[psutil.Process]:
    found = []
    for candidate in psutil.process_iter():
        try:
            if candidate.environ().get(MARKER) == name:
                found.append(candidate)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def load_searches(method: dict) -> dict[str, list[Trial]]:
    """A method's recorded searches, by seed, as trials again."""
    return {seed: [Trial(**(t | {"epochs": [Epoch(**e) for e in t["epochs"]]}))
                   for t in search["trials"]] for seed, search in method["searches"].items()}


def summarise(report: dict) -> dict:
    """Per method and checkpoint: best validation accuracy, trials and epochs over seeds, the
    mean rank among the methods, and (at the budget) the time by how trials ended."""
    summary, searches = {}, {name: load_searches(m) for name, m in report["methods"].items()}
    searches = {name: by_seed for name, by_seed in searches.items() if by_seed}
    for name, by_seed in searches.items():
        rows = {}
        for at_s in report["checkpoints_s"] + [report["budget_s"]]:
            bests = [best_by(trials, at_s) for trials in by_seed.values()]
            work = [work_by(trials, at_s) for trials in by_seed.values()]
            rows[at_s] = {"best": spread([b and b.val_accuracy for b in bests]),
                          **{k: spread([w[k] for w in work]) for k in work[0]}}
        endings = [time_by_ending(trials, report["budget_s"], report.get("max_epochs", 0))
                   for trials in by_seed.values()]
        rows["endings"] = {k: sum(e[k] for e in endings) / len(endings) for k in ENDINGS}
        if report.get("mode") == "whole machine":
            rows |= whole_machine_rows(report, list(by_seed.values()))
        summary[name] = rows
    # Ranked: the methods that have run every seed planned for them, over the seeds they share;
    # a method still short of seeds (a race run in parts) is ranked once it has them all
    ranked = {name: by_seed for name, by_seed in searches.items()
              if {str(seed) for seed in report["seeds"].get(name, [])} <= set(by_seed)}
    for at_s in report["checkpoints_s"]:
        values = {name: {seed: (b.val_accuracy if (b := best_by(trials, at_s)) else None)
                         for seed, trials in by_seed.items()} for name, by_seed in ranked.items()}
        for name, rank in mean_ranks(values).items():
            summary[name][at_s]["mean_rank"] = rank
    return summary


def whole_machine_rows(report: dict, searches: list[list[Trial]]) -> dict:
    """A method's time to each target, (median, seeds that never reached it, seeds), and the
    mean share of its core-seconds by CORE_USES, over its searches."""
    budget = report["budget_s"]
    rows = {"time_to": {}}
    for target in report.get("targets") or []:
        times = [time_to(trials, target, budget) for trials in searches]
        ordered = sorted(times, key=lambda t: float("inf") if t is None else t)
        rows["time_to"][str(target)] = (ordered[(len(ordered) - 1) // 2],
                                        sum(t is None for t in times), len(times))
    shares = [core_time(trials, budget, report["cores"]) for trials in searches]
    rows["core_time"] = {k: sum(s[k] for s in shares) / len(shares) for k in CORE_USES}
    return rows


def minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def markdown(report: dict) -> str:
    if report.get("mode") == "whole machine":
        return markdown_whole(report)
    summary = summarise(report)
    seeds = report["seeds"]
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; "
             f"{', '.join(report.get('dates', [report['date']]))}; one core per search, two "
             f"searches side by side; seeds per method: "
             + ", ".join(f"{name} {len(s)}" for name, s in seeds.items())
             + f"; budget {minutes(report['budget_s'])} of wall time per search"
             + (f" (a check: budgets x {report['scale']:.3g}, overrides {report['overrides']})"
                if report["scale"] != 1 or report["overrides"] else ""), "",
             *best_table(report, summary)]
    lines += ["", f"Where the budget went, by how each trial ended (mean fraction of "
              f"{minutes(report['budget_s'])} over seeds; trials of "
              f"{report.get('max_epochs')} epochs; a trial stopped at a lower epoch count was "
              "pruned, or for SMAC3 run at a lower budget):", "",
              "| method | " + " | ".join(ENDINGS) + " |", "| --- |" + " ---: |" * len(ENDINGS)]
    for name, rows in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{rows['endings'][k]:.0%}" for k in ENDINGS)
                     + " |")
    lines += ["", f"Where the time went by {minutes(report['budget_s'])} (medians over seeds): "
              "seconds in the three most expensive trials, and outside any trial's run (start-up, "
              "sampling, between trials):", "",
              "| method | trials | epochs | top-3 trials (s) | outside trials (s) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, rows in summary.items():
        row = rows[report["budget_s"]]
        if row:
            lines.append(f"| {name} | {row['trials'][0]:.0f} | {row['epochs'][0]:.0f} | "
                         f"{row['top3_trials_s'][0]:.0f} | {row['outside_trials_s'][0]:.0f} |")
    lines += ["", *refit_table(report)]
    return "\n".join(lines) + "\n"


def best_table(report: dict, summary: dict) -> list[str]:
    """The best so far at each checkpoint, with its rank, trials and epochs."""
    lines = ["Best validation accuracy so far, median (min–max) over seeds, with the trials run and "
             "epochs trained by then (medians), and the mean rank (1 = best) among the methods that "
             "have run all their seeds, over the seeds they share (none yet for a method short "
             "of seeds):", "",
             "| method | seeds | " + " | ".join(minutes(s) for s in report["checkpoints_s"]) + " |",
             "| --- | ---: |" + " ---: |" * len(report["checkpoints_s"])]
    for name, rows in summary.items():
        cells = []
        for at_s in report["checkpoints_s"]:
            row = rows[at_s]
            median, low, high = row["best"]
            rank = row.get("mean_rank")
            cells.append(f"{pct(median)} ({pct(low)}–{pct(high)}); "
                         + (f"rank {rank:.1f}; " if rank is not None else "")
                         + f"{row['trials'][0]:.0f} trials, {row['epochs'][0]:.0f} epochs")
        searched = len(report["methods"][name]["searches"])
        lines.append(f"| {name} | {searched} | " + " | ".join(cells) + " |")
    return lines


def refit_table(report: dict) -> list[str]:
    """Each method's median seed's final best, and its refit."""
    images = ("all 60000 training images" if not report.get("regime") == "small" else
              "its training and validation images: the first 10000 and the last 10000")
    lines = ["The final best of each method's median seed: its validation accuracy (what chose "
             "it), that epoch's test accuracy, and the refit (the trial's config trained on "
             f"{images}, `python -m mlp_sweep.refit TRIAL_DIR --seeds 1`):", "",
             "| method | seed | best val | its test | refit test | epochs | trial |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, method in report["methods"].items():
        searches = load_searches(method)
        if not searches:
            continue
        seeds = list(searches)
        finals = [best_by(searches[s], report["budget_s"]) for s in seeds]
        index = median_index([f and f.val_accuracy for f in finals])
        final, refit = finals[index], method.get("refit") or {}
        if final is None:
            continue
        refit_text = pct(refit["test_accuracy_mean"]) if "test_accuracy_mean" in refit else \
            refit.get("failed", "")
        lines.append(f"| {name} | {seeds[index]} | {pct(final.val_accuracy)} | "
                     f"{pct(final.test_accuracy)} | {refit_text} | {refit.get('epochs', '')} | "
                     f"{searched_params(final.params)} |")
    return lines


def markdown_whole(report: dict) -> str:
    """The whole-machine race's table: the command lines that made it and where, the best so
    far, the time to each target, where the core-seconds went, and the refits."""
    summary = summarise(report)
    budget, cores_n, targets = report["budget_s"], report["cores"], report.get("targets") or []
    regime = report["regime"]
    parts = report["commands"]
    lines = ["```", *(f"{c['command']}    # " + (f"part {i} of {len(parts)}, " if len(parts) > 1
                                                  else "") + c["date"]
                      for i, c in enumerate(parts, start=1)), "```", "",
             f"CPU: {report['cpu']}; {cores_n} cores; torch {report['torch']}; "
             f"{', '.join(report.get('dates', [report['date']]))}.", "",
             f"Each search alone on the machine with all {cores_n} cores, one after the other, "
             f"{minutes(budget)} of wall time each; regime {regime}: "
             + ("full MNIST (50000 training images, the last 10000 for validation)"
                if regime == "full" else
                "MNIST's first 10000 training images (dataset.train_limit=10000), the last 10000 "
                "for validation")
             + "; seeds per method: "
             + ", ".join(f"{n} {len(s)}" for n, s in report["seeds"].items())
             + (f" (a check: budgets x {report['scale']:.3g}, overrides {report['overrides']})"
                if report["scale"] != 1 or report["overrides"] else "") + ".", "",
             *best_table(report, summary)]
    if targets:
        source = (f"the preset's recipe trained as the preset trains it on the regime's images: "
                  f"{pct(targets[0])} at its last epoch (`{report['recipe']['command']}`), and "
                  f"that + {100 * SMALL_MARGIN:g} point" if "recipe" in report else "fixed")
        lines += ["", f"Time to reach each validation target ({source}): the median over seeds "
                  "(a seed that never reached it counts as later than any), and the seeds that "
                  f"never did within {minutes(budget)}:", "",
                  "| method | seeds | " + " | ".join(f"to {pct(t)}" for t in targets) + " |",
                  "| --- | ---: |" + " ---: |" * len(targets)]
        for name, rows in summary.items():
            cells = []
            for target in targets:
                median, never, seeds = rows["time_to"][str(target)]
                cells.append(("never" if median is None else f"{median / 60:.1f} min")
                             + f" ({never} of {seeds} never)")
            lines.append(f"| {name} | {len(report['methods'][name]['searches'])} | "
                         + " | ".join(cells) + " |")
    lines += ["", f"Where the core-seconds went ({cores_n} cores x {minutes(budget)}; means over "
              "seeds): training (each epoch's training seconds that ended within the budget, "
              "times its trial's torch threads), between a trial's epochs (an epoch's records "
              "and reports, the next one's evaluation), in trials otherwise (set-up, the first "
              "epoch's evaluation, an epoch cut by the budget, the end), and outside any trial "
              "(start-up, sampling, waiting, idle cores):", "",
              "| method | " + " | ".join(CORE_USES) + " |", "| --- |" + " ---: |" * len(CORE_USES)]
    for name, rows in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{rows['core_time'][k]:.0%}" for k in CORE_USES)
                     + " |")
    lines += ["", *refit_table(report)]
    return "\n".join(lines) + "\n"


def searched_params(overrides: list[str]) -> str:
    """A trial's searched values, short: `model.depth=2 model.width=256 optimizer.lr=0.003 ...`."""
    space = preset_layers()[-1]["hydra"]["sweeper"]["params"]
    shown = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key in space:
            try:
                value = f"{float(value):.3g}" if "." in value or "e" in value else value
            except ValueError:
                pass
            shown[key] = value
    return " ".join(f"{key}={value}" for key, value in shown.items())


def preset_layers(name: str = "optuna") -> list[dict]:
    """The preset's file after the files its defaults list names in its own group
    (base/optuna_study), as Hydra merges them."""
    folder = files("mlp_sweep.conf") / "hparams_search"
    preset = yaml.safe_load((folder / f"{name}.yaml").read_text())
    bases = [entry for entry in preset.get("defaults", []) if isinstance(entry, str)]
    return [layer for base in bases for layer in preset_layers(base)] + [preset]


def figure(report: dict, path: Path) -> None:
    """Best validation accuracy so far against minutes: per method the median and the min–max
    band over seeds, with ours' lead over the best other median at each checkpoint."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report["budget_s"]
    times = [budget * i / 240 for i in range(1, 241)]
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    medians = {}
    for name, method in report["methods"].items():
        curves = [curve(trials, times) for trials in load_searches(method).values()]
        if not curves:
            continue
        spreads = [spread([c[i] for c in curves]) for i in range(len(times))]
        shown = [(t / 60, *(100 * v if v is not None else float("nan") for v in s))
                 for t, s in zip(times, spreads)]
        x, mid, low, high = zip(*shown)
        line, = ax.step(x, mid, where="post", label=name, linewidth=2 if name == "ours" else 1.3)
        ax.fill_between(x, low, high, step="post", alpha=0.15, color=line.get_color())
        medians[name] = dict(zip(times, mid))
    # From the lowest median a fifth into the budget: the first minute's climb would flatten the
    # differences that matter.
    shown = [v for m in medians.values() for t, v in m.items() if t >= budget / 5 and v == v]
    shown += [100 * t for t in report.get("targets") or []]
    if shown:
        ax.set_ylim(max(min(shown) - 0.3, 90), max(shown) + 0.15)
    for at_s in report["checkpoints_s"]:
        ax.axvline(at_s / 60, color="grey", linestyle=":", linewidth=1)
        if "ours" in medians and len(medians) > 1:
            at = min(times, key=lambda t: abs(t - at_s))
            others = [m[at] for n, m in medians.items() if n != "ours" and m[at] == m[at]]
            if others and medians["ours"][at] == medians["ours"][at]:
                lead = medians["ours"][at] - max(others)
                # at the top, clear of the legend; the last one left of its line, inside
                last = at_s == max(report["checkpoints_s"])
                colour = "grey" if round(lead, 2) == 0 else "green" if lead > 0 else "red"
                ax.annotate(f"ours {lead:+.2f} pt", (at_s / 60, 1),
                            xycoords=("data", "axes fraction"), xytext=(-3 if last else 3, -4),
                            textcoords="offset points", ha="right" if last else "left",
                            va="top", fontsize=8, color=colour)
    whole = report.get("mode") == "whole machine"
    for target in report.get("targets") or []:
        ax.axhline(100 * target, color="black", linestyle="--", linewidth=0.8, alpha=0.5)
    ax.set_xlabel(f"minutes of wall time (each search alone, {report['cores']} cores)" if whole
                  else "minutes of wall time (one core per search)")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title("Best so far on hparams_search=optuna's space: median and min–max over seeds"
                 + (f"\nwhole machine, {report['regime']} regime" if whole else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--figure", type=Path,
                        help="the figure (default docs/figures/peers.png; whole machine: "
                             "OUT/peers_whole_machine_REGIME.png); a check's gets _quick")
    parser.add_argument("--runs", type=Path, default=Path("multirun/bench-peers"),
                        help="where the searches' folders go")
    parser.add_argument("--quick", action="store_true", help="every budget divided by 6")
    parser.add_argument("--scale", type=float, help="every budget multiplied by this")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="the same seeds for every method (default: SEEDS, 3 for the others; "
                             "whole machine: 0-4 in full, 0-2 in small)")
    parser.add_argument("--resume", action="store_true",
                        help="add to the results file's searches instead of starting anew")
    parser.add_argument("--methods", nargs="+",
                        choices=list(dict.fromkeys([*METHODS, *WHOLE_METHODS])),
                        help="default: every method of the mode (and regime)")
    parser.add_argument("--slots", type=int, default=2, help="searches side by side, one core each")
    parser.add_argument("--whole-machine", action="store_true",
                        help="every method on all the cores, each search alone (WHOLE_METHODS)")
    parser.add_argument("--regime", choices=list(REGIMES), default="full",
                        help="whole machine: full MNIST, or its first 10000 training images")
    parser.add_argument("--max-minutes", type=float,
                        help="start no job that cannot end within this many minutes of the start "
                             "(a part of the race; the next part: the same command with --resume)")
    parser.add_argument("--report", type=Path, help="draw the table and figure again from this json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every trial")
    return parser


def main() -> None:
    parser = arg_parser()
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
        print(markdown(report))
        figure(report, args.figure or (args.report.with_suffix(".png")
                                       if report.get("mode") == "whole machine"
                                       else Path("docs/figures/peers.png")))
        return
    if args.regime != "full" and not args.whole_machine:
        parser.error(f"--regime {args.regime}: allowed with --whole-machine only")
    benchmark = Benchmark(args, args.scale or (1 / 6 if args.quick else 1))
    benchmark.run()
    print(markdown(benchmark.report))
    default = args.out / "peers.png" if args.whole_machine else Path("docs/figures/peers.png")
    figure(benchmark.report, (args.figure or default).with_name(f"{benchmark.stem}.png"))


if __name__ == "__main__":
    main()
