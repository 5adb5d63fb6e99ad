"""What a sweep shows while it runs: a line each time a trial ends, a bar for the whole search,
and the best trial at the end.

    trial 17 COMPLETE val_accuracy 98.91 % (epoch 27) · best 99.02 % (trial 11) · 17 trials: 5 complete, 11 pruned, 1 failed · 6:12 of 30:00

The lines go to the console (through tqdm, so that they never cut the bar) and to the sweep
folder's `sweep.log`, which another terminal can follow (`tail -f`). The bar runs over the time
budget, or over `n_trials` without one; it shows only on a terminal.
"""

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from mlp_sweep.sweeping import trial_attrs
from mlp_sweep.sweeping.results import best_of, better_of
from mlp_sweep.sweeping.warm_start import own_trials

LOG_FILE = "sweep.log"
STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
               TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def clock(seconds: float) -> str:
    """Seconds as a user reads a duration: 6:12, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SweepProgress:
    """The progress of one sweep command; `trial_ended` after every trial, `ended` at the end.
    `settings` is `hydra.sweeper.progress` (sweeper_plugin.ProgressConf)."""

    def __init__(self, settings: Any, *, sweep_dir: Path, n_trials: int,
                 timeout: float | None, started: float, bar: bool = True) -> None:
        self.settings, self.sweep_dir = settings, sweep_dir
        self.n_trials, self.timeout, self.started = n_trials, timeout, started
        self.best_text, self.finished = "", 0
        self.bar = tqdm(total=int(timeout) if timeout else n_trials, file=sys.stderr,
                        bar_format="search {percentage:3.0f}%|{bar}| {postfix}",
                        # None: off unless a terminal
                        disable=None if settings.bar and bar else True,
                        dynamic_ncols=True, leave=False)
        self._stop = threading.Event()
        self._ticker = None
        if timeout and not self.bar.disable:  # the time moves on between trials too
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        self._refresh()

    def value_text(self, value: float | None) -> str:
        if value is None or not math.isfinite(value):
            return str(value)
        return f"{value:.2%}".replace("%", " %") if self.settings.percent else f"{value:.4g}"

    def trial_ended(self, study: optuna.Study, trial_number: int) -> None:
        trials = own_trials(study)  # read once: a database storage answers each read anew
        trial = next(t for t in trials if t.number == trial_number)
        best = best_of(study, trials)
        self.best_text = f"best {self.value_text(best.value)} (trial {best.number})" if best else ""
        counts = ", ".join(f"{n} {STATE_WORDS[state]}" for state, n in _counts(trials).items())
        parts = [self._trial_text(study, trial), self.best_text,
                 f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: {counts}", self._time_text()]
        self.write(" · ".join(p for p in parts if p))
        self.finished = sum(t.state.is_finished() for t in trials)
        self._refresh()

    def ended(self, study: optuna.Study, best: dict | None) -> None:
        """The sweep's last lines: the best trial, its parameters, the next command to run.
        `best` is best.yaml's record (sweeping/results.py), None when there is none."""
        self.close()
        head = f"search ended after {self._time_text()}"
        if len(study.directions) > 1:
            self.write(f"{head}: the Pareto front is in {self.sweep_dir / 'best.yaml'}")
            return
        if best is None:
            self.write(f"{head}: no trial completed")
            return
        self.write(f"{head}: best trial {best['trial']}, {self.settings.metric} "
                   f"{self.value_text(best['value'])}")
        self.write("  params: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in best["params"].items()))
        next_command = (self.settings.next_command or "").replace("{sweep_dir}", str(self.sweep_dir)) \
            or best["command"]
        if next_command:
            self.write(f"  next: {next_command}")

    def write(self, line: str) -> None:
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(self.sweep_dir / LOG_FILE, "a", encoding="utf-8") as log_file:
            log_file.write(line + "\n")

    def close(self) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join()
        self.bar.close()

    def _trial_text(self, study: optuna.Study, trial: FrozenTrial) -> str:
        resumed = trial_attrs.resumed_after(trial)
        text = self._outcome_text(study, trial)
        return text + (f" (resumed after epoch {resumed})" if resumed else "")

    def _outcome_text(self, study: optuna.Study, trial: FrozenTrial) -> str:
        state, metric = trial.state.name, self.settings.metric
        steps = trial.intermediate_values
        if trial.state == TrialState.COMPLETE:
            epoch = ""
            if steps and len(study.directions) == 1:  # the best report's step: the kept epoch
                epoch = f" (epoch {better_of(study)(steps, key=steps.get)})"
            values = trial.values or []
            shown = " ".join(self.value_text(v) for v in values)
            return f"trial {trial.number} {state} {metric} {shown}{epoch}"
        if trial.state == TrialState.PRUNED:
            reason = trial_attrs.pruned_by(trial)
            at = f" at epoch {max(steps)} ({self.value_text(steps[max(steps)])})" if steps else ""
            return f"trial {trial.number} {state}{at}" + (f" by the {reason}" if reason else "")
        reason = trial_attrs.fail_reason(trial).strip().splitlines()
        return f"trial {trial.number} {state}" + (f": {reason[0]}" if reason else "")

    def _time_text(self) -> str:
        elapsed = clock(self._elapsed())
        return f"{elapsed} of {clock(self.timeout)}" if self.timeout else elapsed

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _refresh(self) -> None:
        if self.bar.disable:
            return
        self.bar.n = min(int(self._elapsed()), self.bar.total) if self.timeout else self.finished
        self.bar.set_postfix_str(" · ".join(p for p in (self._time_text(), self.best_text) if p),
                                 refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._refresh()


def _counts(trials: list[FrozenTrial]) -> dict[TrialState, int]:
    counts = {state: sum(t.state == state for t in trials) for state in STATE_WORDS}
    return {state: n for state, n in counts.items() if n}
