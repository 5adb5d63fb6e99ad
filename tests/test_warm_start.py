"""`hydra.sweeper.warm_start`: an earlier study's finished trials that fit this space start the
search informed, imported once, not counted in n_trials, never this sweep's best, and shown as
imported by compare; a study that is not there or has no fitting trial is one line."""

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mlp_sweep.analysis.study import StudyRecord
from mlp_sweep.sweeping.trial_attrs import IMPORTED
from test_sweeper_parity import storage_of, sweep

from conftest import SMALL_DATA, run_here

NARROWER = "y=choice(0,5)"  # the earlier study also tried y=-5: those trials do not fit


@pytest.fixture(scope="module")
def earlier_database(tmp_path_factory) -> Path:
    """A finished study `earlier` of 12 sphere trials, complete and pruned."""
    folder = tmp_path_factory.mktemp("earlier")
    with sweep(folder, f"hydra.sweeper.storage={storage_of(folder)}",
               "hydra.sweeper.study_name=earlier", "hydra.sweeper.n_trials=12", "steps=3",
               "hydra/sweeper/pruner=median"):
        pass
    return Path(storage_of(folder)[len("sqlite:///"):])


def earlier_study(tmp_path, earlier_database) -> optuna.Study:
    """A copy of the earlier study in tmp_path's database (storage_of(tmp_path))."""
    shutil.copy(earlier_database, storage_of(tmp_path)[len("sqlite:///"):])
    return optuna.load_study(study_name="earlier", storage=storage_of(tmp_path))


def warm_sweep(tmp_path, *overrides: str):
    return sweep(tmp_path / "warm", f"hydra.sweeper.storage={storage_of(tmp_path)}",
                 "hydra.sweeper.study_name=warm", "hydra.sweeper.n_trials=3", "steps=3",
                 "hydra/sweeper/pruner=median", NARROWER, *overrides)


def test_finished_trials_that_fit_are_imported_once_and_not_counted(tmp_path, earlier_database):
    earlier = earlier_study(tmp_path, earlier_database)
    fitting = [t for t in earlier.trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params["y"] != -5]
    assert fitting and len(fitting) < len(earlier.trials)  # the test needs both kinds
    for _ in range(2):  # the same command again resumes: no second copy, no new trial
        with warm_sweep(tmp_path, "hydra.sweeper.warm_start=earlier"):
            best = yaml.safe_load((tmp_path / "warm" / "sweep" / "best.yaml").read_text())
    warm = optuna.load_study(study_name="warm", storage=storage_of(tmp_path))
    imported = [t for t in warm.trials if IMPORTED in t.user_attrs]
    own = [t for t in warm.trials if IMPORTED not in t.user_attrs]
    assert sorted(t.user_attrs[IMPORTED] for t in imported) == sorted(f"earlier#{t.number}" for t in fitting)
    assert [(t.state, t.params, t.intermediate_values) for t in imported] == \
        [(t.state, t.params, t.intermediate_values) for t in fitting]
    assert len(own) == 3  # n_trials counts this sweep's own trials only
    assert best["trial"] in {t.number for t in own}
    # compare names them as imported, not as runs of this sweep
    record = StudyRecord(tmp_path / "warm" / "sweep", "warm", storage_of(tmp_path), None, {},
                         trials=warm.trials)
    assert f"{len(imported)} imported" in record.summary()
    assert [n for n, _ in record.history([], "value")] == [t.number for t in own]


@pytest.mark.parametrize(("warm_start", "message"), [
    ("nowhere", "Error: hydra.sweeper.warm_start='nowhere': no such study in sqlite:///{tmp}/sphere.db; "
                "allowed: earlier"),
    ("{study_name: earlier, storage: 'sqlite:///{tmp}/none.db'}",
     "Error: hydra.sweeper.warm_start='earlier': its storage sqlite:///{tmp}/none.db does not exist; "
     "allowed: the storage of a finished study"),
])
def test_a_study_that_is_not_there_is_one_line_and_nothing_is_made(tmp_path, earlier_database, capsys,
                                                                    caplog, warm_start, message):
    earlier_study(tmp_path, earlier_database)
    with pytest.raises(SystemExit) as stopped, \
            warm_sweep(tmp_path, f"hydra.sweeper.warm_start={warm_start.replace('{tmp}', str(tmp_path))}"):
        pass
    assert stopped.value.code == 1
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().out + caplog.text
    assert optuna.study.get_all_study_names(storage_of(tmp_path)) == ["earlier"]
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "warm" / "sweep").exists()


def test_a_study_with_no_fitting_trial_is_one_line(tmp_path, earlier_database, capsys, caplog):
    earlier_study(tmp_path, earlier_database)
    with pytest.raises(SystemExit), \
            warm_sweep(tmp_path, "hydra.sweeper.warm_start=earlier", "x=interval(10,20)"):
        pass
    assert ("Error: hydra.sweeper.warm_start='earlier': none of its 12 finished trials fits this "
            "search's space; allowed: a study whose trials set exactly x, y, each within its range"
            ) in capsys.readouterr().out + caplog.text
    assert optuna.study.get_all_study_names(storage_of(tmp_path)) == ["earlier"]


def test_an_enqueued_set_runs_first_even_when_an_imported_trial_has_it(tmp_path, earlier_database):
    earlier = earlier_study(tmp_path, earlier_database)
    known = next(t.params for t in earlier.trials
                 if t.state == TrialState.COMPLETE and t.params["y"] != -5)
    with warm_sweep(tmp_path, "hydra.sweeper.warm_start=earlier",
                    f"hydra.sweeper.enqueue_trials=[{{x: {known['x']}, y: {known['y']}}}]"):
        pass
    warm = optuna.load_study(study_name="warm", storage=storage_of(tmp_path))
    first_own = next(t for t in warm.trials if IMPORTED not in t.user_attrs)
    assert first_own.params == known


def test_trials_of_a_preset_with_conditional_keys_are_imported(tmp_path, small_root):
    # optuna_course's custom search space adds keys by optimizer (optimizer.momentum for SGD,
    # optimizer.betas.0 for Adam, optimizer.alpha for RMSprop): its trials set more than `params`.
    storage = f"sqlite:///{tmp_path}/optuna.db"
    course = ["--multirun", "hparams_search=optuna_course", f"dataset.root={small_root}",
              *SMALL_DATA, "dataset.val_size=500", "trainer.epochs=1",
              f"hydra.sweeper.storage={storage}"]
    first = run_here(*course, "hydra.sweeper.n_trials=4", "hydra.sweep.dir=first", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    earlier = optuna.load_study(study_name="course_fashion_mnist", storage=storage)
    assert any(set(t.params) - {"model.hidden_sizes", "activation", "optimizer", "optimizer.lr",
                                "trainer.batch_size"} for t in earlier.trials)
    warm = run_here(*course, "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=course_again",
                    "hydra.sweeper.warm_start=course_fashion_mnist", "hydra.sweep.dir=warm",
                    cwd=tmp_path)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    again = optuna.load_study(study_name="course_again", storage=storage)
    imported = [t for t in again.trials if IMPORTED in t.user_attrs]
    finished = [t for t in earlier.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert [(t.params, t.state) for t in imported] == [(t.params, t.state) for t in finished]
    assert len(again.trials) == len(imported) + 1
