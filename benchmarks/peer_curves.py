"""Best-so-far curves from recorded trials: what a search had found at each moment of its budget.

A trial is what its run folder recorded: when it started (and ended, unless it still ran), its
torch threads, and each epoch's validation and test accuracy with the time the epoch ended and the
seconds it trained. At a time t only epochs that ended by t count, so a trial still running at t
counts with the epochs it had, and nothing reported after a budget helps.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Epoch:
    at_s: float           # when it ended, in seconds from the search's start
    val_accuracy: float
    test_accuracy: float | None  # read for the epoch a run keeps (or for every epoch)
    seconds: float | None = None  # its training time (metrics.json's epoch_time_s), no evaluation


@dataclass
class Trial:
    run_dir: str
    params: list[str]     # its overrides, as the sweeper or the peer wrote them
    started_s: float      # when its run began, in seconds from the search's start
    epochs: list[Epoch] = field(default_factory=list)
    stopped_by: str = ""  # its status.json's error, when it raised to stop ("BudgetReached: ...")
    ended_s: float | None = None  # when its run ended (status.json), None while it still ran
    threads: int | None = None    # its torch threads (metrics.json)

    def epochs_by(self, at_s: float) -> list[Epoch]:
        return [e for e in self.epochs if e.at_s <= at_s]


@dataclass
class Best:
    val_accuracy: float
    test_accuracy: float | None  # that epoch's test accuracy: reported, never chosen on
    epoch: int
    run_dir: str
    params: list[str]


def read_trials(folder: Path, started: float) -> list[Trial]:
    """Every trial under `folder` whose run began (a status.json), `started` being the search's
    start as Unix time; a trial stopped before its first epoch has no epochs."""
    trials = []
    for status_file in sorted(folder.rglob("status.json")):
        run_dir = status_file.parent
        if "refit" in run_dir.relative_to(folder).parts:
            continue  # a refit of a trial is no trial of the search
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {"epochs": []}
        status = json.loads(status_file.read_text())
        overrides = run_dir / ".hydra" / "overrides.yaml"
        params = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
        ended = status["updated"] - started if status.get("state") != "running" else None
        trials.append(Trial(str(run_dir), params, status["started"] - started, [
            Epoch(e["ended_at"] - started, e["val_accuracy"], e["test_accuracy"],
                  e.get("epoch_time_s")) for e in metrics["epochs"]], status.get("error", ""),
            ended, metrics.get("threads")))
    return sorted(trials, key=lambda t: t.started_s)


def best_by(trials: list[Trial], at_s: float) -> Best | None:
    """The best validation accuracy reported by `at_s` (the first to reach it), or None."""
    best, first_at = None, None
    for trial in trials:
        for number, epoch in enumerate(trial.epochs, start=1):
            if epoch.at_s > at_s:
                break
            if best is None or (epoch.val_accuracy, -epoch.at_s) > (best.val_accuracy, -first_at):
                best, first_at = Best(epoch.val_accuracy, epoch.test_accuracy, number,
                                      trial.run_dir, trial.params), epoch.at_s
    return best


def work_by(trials: list[Trial], at_s: float) -> dict:
    """What a one-trial-at-a-time search had spent by `at_s`: trials started, epochs trained,
    seconds in its three most expensive trials, and seconds outside any trial's run (start-up,
    sampling, between trials)."""
    seconds = sorted(seconds_by(trials, at_s).values(), reverse=True)
    return {"trials": len(seconds),
            "epochs": sum(len(t.epochs_by(at_s)) for t in trials if t.started_s <= at_s),
            "top3_trials_s": sum(seconds[:3]), "outside_trials_s": max(at_s - sum(seconds), 0.0)}


def seconds_by(trials: list[Trial], at_s: float) -> dict[str, float]:
    """Each trial begun by `at_s` (by run folder) and the seconds it had run by then: from its
    start to its last epoch, or to `at_s` while it has epochs still to come or is the last one
    started."""
    begun = [t for t in trials if t.started_s <= at_s]

    def spent(trial: Trial) -> float:
        done = trial.epochs_by(at_s)
        running = trial is begun[-1] or len(done) < len(trial.epochs)
        end = at_s if running else (done[-1].at_s if done else trial.started_s)
        return end - max(trial.started_s, 0.0)

    return {t.run_dir: spent(t) for t in begun}


# How a trial ended, by the epochs it trained out of `max_epochs` (successive halving's rungs at
# 1, 3 and 9 epochs, then the rest), in the order the table shows them.
ENDINGS = ("stopped by 1 epoch", "by 3", "by 9", "later", "late (> 2/3 of its epochs)",
           "by the budget", "complete")


def ending(trial: Trial, epochs: int, max_epochs: int, last_begun: bool) -> str:
    """Which of ENDINGS a trial that trained `epochs` epochs reached: complete at `max_epochs`;
    stopped by the budget when it says so (the sweeper's BudgetReached) or still ran at the end;
    else by the epoch it was stopped at (a pruned trial, or a peer's lower-fidelity run)."""
    if epochs >= max_epochs:
        return "complete"
    if trial.stopped_by.startswith("BudgetReached") or last_begun:
        return "by the budget"
    if epochs > max_epochs * 2 / 3:
        return "late (> 2/3 of its epochs)"
    return next((name for name, rung in zip(ENDINGS, (1, 3, 9)) if epochs <= rung), "later")


def time_by_ending(trials: list[Trial], at_s: float, max_epochs: int) -> dict[str, float]:
    """The fraction of `at_s` spent in trials by how they ended (ENDINGS)."""
    spent = seconds_by(trials, at_s)
    begun = [t for t in trials if t.run_dir in spent]
    fractions = dict.fromkeys(ENDINGS, 0.0)
    for trial in begun:
        name = ending(trial, len(trial.epochs_by(at_s)), max_epochs, trial is begun[-1])
        fractions[name] += spent[trial.run_dir] / at_s
    return fractions


def time_to(trials: list[Trial], target: float, at_s: float) -> float | None:
    """When the search first reported a validation accuracy of at least `target`, within `at_s`;
    None if it never did."""
    reached = [e.at_s for t in trials for e in t.epochs_by(at_s) if e.val_accuracy >= target]
    return min(reached, default=None)


# Where a whole machine's core time went (core_time), in the order the table shows it.
CORE_USES = ("training", "between epochs", "in trials, other", "outside trials")


def core_time(trials: list[Trial], at_s: float, cores: int) -> dict[str, float]:
    """The fractions of `cores` x `at_s` core-seconds spent training (each epoch that ended by
    `at_s`: its training seconds before its end), between epochs (from one epoch's end to the
    next one's training: that epoch's records and reports, the next one's evaluation), in trials
    otherwise (a trial's run from its start to its end, or to `at_s` while it ran: set-up, the
    first epoch's evaluation, an epoch cut by the budget, the end) and outside any trial
    (start-up, sampling, waiting, idle cores). A trial occupies its torch threads' cores; at any
    moment at most `cores` count, training first, then time between epochs, then the rest."""
    training, between, running = [], [], []
    for trial in trials:
        threads = trial.threads or 1
        epochs = [e for e in trial.epochs_by(at_s) if e.seconds]
        training += [(max(e.at_s - e.seconds, 0.0), e.at_s, threads) for e in epochs]
        between += [(before.at_s, after.at_s - after.seconds, threads)
                    for before, after in zip(epochs, epochs[1:])]
        if trial.started_s < at_s:
            end = at_s if trial.ended_s is None else min(max(trial.ended_s, trial.started_s), at_s)
            running.append((max(trial.started_s, 0.0), end, threads))
    total = cores * at_s
    trained = busy(training, cores) / total
    stepped = max(busy(training + between, cores) / total, trained)
    ran = max(busy(running, cores) / total, stepped)
    return {"training": trained, "between epochs": stepped - trained,
            "in trials, other": ran - stepped, "outside trials": 1 - ran}


def busy(intervals: list[tuple[float, float, int]], cores: int) -> float:
    """Core-seconds of (start, end, cores) intervals, at most `cores` at any moment."""
    events = sorted([(start, n) for start, end, n in intervals if end > start]
                    + [(end, -n) for start, end, n in intervals if end > start])
    total, level, last = 0.0, 0, 0.0
    for moment, change in events:
        total += min(level, cores) * (moment - last)
        level, last = level + change, moment
    return total


def mean_ranks(values: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """Each method's mean rank (1 = best) over the seeds every method ran, from each method's
    value per seed: the higher value ranks first, a seed with nothing yet last, ties share their
    mean rank. None where no seed is common to all."""
    seeds = set.intersection(*(set(v) for v in values.values())) if values else set()
    if not seeds:
        return dict.fromkeys(values)
    totals = dict.fromkeys(values, 0.0)
    for seed in seeds:
        scores = {name: _rank(v[seed]) for name, v in values.items()}
        for name, score in scores.items():
            above = sum(other > score for other in scores.values())
            tied = sum(other == score for other in scores.values())
            totals[name] += above + (tied + 1) / 2
    return {name: total / len(seeds) for name, total in totals.items()}


def curve(trials: list[Trial], times: list[float]) -> list[float | None]:
    """The best validation accuracy so far at each of `times`."""
    return [b.val_accuracy if (b := best_by(trials, t)) else None for t in times]


def spread(values: list[float | None]) -> tuple[float | None, float | None, float | None]:
    """(median, min, max) over seeds. A seed with nothing yet ranks lowest, so the median exists
    once most seeds have a value; an even count takes the lower middle, as `median_index`."""
    ranked = sorted(values, key=_rank)
    present = [v for v in ranked if v is not None]
    return (ranked[(len(ranked) - 1) // 2] if ranked else None,
            min(present) if present else None, max(present) if present else None)


def median_index(values: list[float | None]) -> int:
    """Which seed's value is the median (the lower middle for an even count)."""
    order = sorted(range(len(values)), key=lambda i: _rank(values[i]))
    return order[(len(values) - 1) // 2]


def _rank(value: float | None) -> float:
    return float("-inf") if value is None else value
