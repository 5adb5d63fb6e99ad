"""The search benchmark (benchmarks/search.py): where a search's time went and its summary over
sampler seeds, on recorded trials."""

import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from search import TPE_PART, markdown, time_shares, tpe_summary  # noqa: E402

START = datetime(2026, 12, 4, 18, 0, 0)


def recorded(number: int, state: TrialState, begin_s: float, end_s: float, epochs: int,
             **user_attrs) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=0.9 if state == TrialState.COMPLETE else None,
                       values=None, datetime_start=START + timedelta(seconds=begin_s),
                       datetime_complete=START + timedelta(seconds=end_s), params={},
                       distributions={}, user_attrs=user_attrs, system_attrs={},
                       intermediate_values={e: 0.9 for e in range(1, epochs + 1)}, trial_id=number)


def test_time_shares_tell_late_pruning_from_early_and_from_the_budget():
    trials = [recorded(0, TrialState.COMPLETE, 0, 40, 27),
              recorded(1, TrialState.PRUNED, 40, 45, 9, pruned_by="pruner"),   # 9 of 27: early
              recorded(2, TrialState.PRUNED, 45, 75, 19, pruned_by="pruner"),  # 19 > 18: late
              recorded(3, TrialState.PRUNED, 75, 95, 4, pruned_by="budget"),
              recorded(4, TrialState.FAIL, 95, 96, 0)]
    shares = time_shares(trials, 100, 27)
    assert shares == pytest.approx({"complete": 0.40, "pruned early": 0.05, "pruned late": 0.30,
                                    "budget": 0.20})


def test_the_summary_gives_the_median_refit_over_seeds_at_each_reading():
    def part(refit_15: float, refit_30: float, late: float) -> dict:
        entry = lambda refit: {"refit": {"test_accuracy_mean": refit}}  # noqa: E731
        return {"at": {"15 min": entry(refit_15), "30 min": entry(refit_30)},
                "time_shares": {"complete": 0.5, "pruned early": 0.3, "pruned late": late,
                                "budget": 0.0}}
    report = {"searches": {f"{TPE_PART}, seed 123": part(0.9931, 0.9940, 0.02),
                           f"{TPE_PART}, seed 124": part(0.9925, 0.9936, 0.0),
                           f"{TPE_PART}, seed 125": part(0.9940, 0.9930, 0.12),
                           "(a) course recipe, single run": part(0.5, 0.5, 0.5)}}
    lines = tpe_summary(report)
    assert "| 15 min | 99.31% | 99.25% | 99.40% |" in lines
    assert "| 30 min | 99.36% | 99.30% | 99.40% |" in lines
    assert f"| {TPE_PART}, seed 125 | 50% | 30% | 12% | 0% |" in lines
    assert not any("course recipe" in line for line in lines)


def test_each_refit_shows_how_many_seeds_it_ran():
    def best(*accuracies: float) -> dict:
        mean = sum(accuracies) / len(accuracies)
        return {"trial": 2, "val_accuracy": 0.993, "test_accuracy": 0.992, "best_epoch": 25,
                "params": {}, "refit": {"test_accuracy": list(accuracies),
                                        "test_accuracy_mean": mean,
                                        "test_accuracy_std": max(accuracies) - mean}}
    report = {"machine": "x86_64, 2 cores", "torch": "2.14.1", "date": "2026-12-04 20:29",
              "quick": False, "augment_cost": {"none": {"epoch_s": 4.6, "vs_none": 1.0}},
              "searches": {f"{TPE_PART}, seed 123": {
                  "trials": {"complete": 4, "pruned": 30},
                  "at": {"15 min": best(0.9932, 0.9932, 0.9931), "30 min": best(0.9935)}}}}
    text = markdown(report)
    assert "| 99.32% ± 0.00% (3) |" in text and "| 99.35% ± 0.00% (1) |" in text
