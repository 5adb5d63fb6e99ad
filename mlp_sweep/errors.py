"""Errors a user can fix, and the one line every command prints for them (never a traceback)."""

import importlib.metadata
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: the message names the value and what is allowed."""


class ConfigError(UserError):
    """A config value is out of range or names something not allowed."""


class DataError(UserError):
    """A dataset file is missing, truncated, fails its checksum, or cannot be written."""


class MissingExtraError(UserError):
    """The config asks for an optional dependency (a pip extra) that is not installed."""


def error_line(error: BaseException) -> str:
    """What a command prints when it stops on `error`: `Error: ` and the message."""
    return f"Error: {error}"


def first_line(error: BaseException, with_type: bool = True) -> str:
    """An exception as one line, for a message that quotes it: its type and the first line of
    its text (a database's or a parser's text runs over many)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def install_command(extra: str) -> str:
    """The command that installs a pip extra of this package: the extra itself in a checkout
    (run from its folder), else the requirements the extra names, as an installed wheel has no
    source folder to name."""
    if (Path(__file__).resolve().parents[1] / "pyproject.toml").is_file():
        return f"pip install -e '.[{extra}]'"
    requirements = [requirement.split(";")[0].strip()
                    for requirement in importlib.metadata.requires("mlp_sweep") or ()
                    if requirement.split(";")[-1].strip() == f'extra == "{extra}"']
    return "pip install " + " ".join(f"'{r}'" for r in requirements)
