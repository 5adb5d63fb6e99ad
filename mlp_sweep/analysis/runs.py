"""Reading run folders back: each run's saved config, metrics and state, and its sweep's study.

A run folder is one that holds `.hydra/config.yaml`; a sweep folder holds numbered run folders.
Everything is taken from the files a run wrote, never from folder names.
"""

import glob
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from mlp_sweep.errors import UserError
from mlp_sweep.files import load_json, load_yaml
from mlp_sweep.training.run_record import METRICS_FILE, STATUS_FILE
from mlp_sweep.values import flatten

# Keys that say how a run was executed rather than what was trained.
NOT_COMPARED = {"trainer.progress"}


@dataclass
class Run:
    folder: Path
    params: dict          # group choices (optimizer=adam) and flattened config values
    metrics: dict | None  # metrics.json, or None when missing or unreadable
    state: str            # completed, failed, pruned, running, broken
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    sweeper: dict | None = None  # the sweep's hydra.sweeper config, for Optuna sweeps


def find_runs(paths: list[str]) -> list[Run]:
    """The runs in `paths` (run folders, sweep folders, globs); with none, the newest sweep
    under `multirun/`, or else every run under `outputs/`."""
    if not paths:
        paths = _default_paths()
    folders: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for match in matches:
            found = _run_folders(Path(match))
            if not found:
                raise UserError(f"{match} holds no runs (no .hydra/config.yaml below it)")
            folders += found
    unique = list(dict.fromkeys(f.resolve() for f in folders))
    return [read_run(folder) for folder in unique]


def read_run(folder: Path) -> Run:
    hydra_dir = folder / ".hydra"
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
    hydra_cfg = load_yaml(hydra_dir / "hydra.yaml").get("hydra", {})
    choices = {k: v for k, v in (hydra_cfg.get("runtime", {}).get("choices") or {}).items()
               if not k.startswith("hydra/")}
    params = {**choices, **flatten(config)}
    params = {k: v for k, v in params.items() if k not in NOT_COMPARED
              and not k.endswith(("._target_", "._partial_"))}
    overrides = load_yaml(hydra_dir / "overrides.yaml") or []
    sweeper = _optuna_sweeper(hydra_cfg, config)

    metrics, state, error = None, "broken", None
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
    except FileNotFoundError:
        error = f"no {METRICS_FILE}"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        error = f"{METRICS_FILE} is corrupt ({exc})"
    status = load_json(folder / STATUS_FILE)
    if status:
        state = status.get("state", "broken")
        error = status.get("error", error)
    elif metrics is not None:
        state = "completed"
    if state == "completed" and metrics is None:
        state = "broken"
    return Run(folder, params, metrics, state, error, overrides, sweeper)


def _optuna_sweeper(hydra_cfg: dict, config: dict) -> dict | None:
    """The run's `hydra.sweeper` config when it is Optuna's, else None. `hydra.yaml` keeps
    interpolations as written (`study_name: mlp_${dataset.name}`): they are resolved against the
    run's config, as Hydra did when the sweep ran."""
    sweeper = dict(hydra_cfg.get("sweeper") or {})
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    root = None
    for key, value in list(sweeper.items()):
        if isinstance(value, str) and "${" in value:
            if root is None:
                root = OmegaConf.create({**config, "hydra": hydra_cfg})
            try:
                sweeper[key] = OmegaConf.select(root, f"hydra.sweeper.{key}",
                                                throw_on_resolution_failure=True)
            except Exception:  # a resolver only Hydra registers while it runs: kept as written
                pass
    return sweeper


def newest_sweep() -> Path | None:
    """The sweep folder under `multirun/` (here) changed last; None when there is none."""
    sweeps = {p.parent.parent.parent for p in Path("multirun").glob("**/.hydra/config.yaml")}
    return max(sweeps, key=lambda p: (p.stat().st_mtime, str(p))) if sweeps else None


def _default_paths() -> list[str]:
    if (sweep := newest_sweep()) is not None:
        return [str(sweep)]
    if Path("outputs").is_dir():
        return ["outputs"]
    raise UserError("no runs found: no multirun/ or outputs/ folder here; "
                    "pass run or sweep folders, e.g. multirun/2026-11-24/10-00-00")


def _run_folders(path: Path) -> list[Path]:
    if (path / ".hydra" / "config.yaml").is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted((p.parent.parent for p in path.rglob(".hydra/config.yaml")),
                  key=lambda p: (str(p.parent), _numeric(p.name)))


def _numeric(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def reproduce_command(overrides: list[str]) -> str:
    """The command line that runs a single run with the same overrides."""
    return shlex.join(["python", "-m", "mlp_sweep.train", *overrides])
