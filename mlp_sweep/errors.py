"""Errors a user can fix: reported as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the value and what is allowed."""


class ConfigError(UserError):
    """A config value is out of range or names something not allowed."""


class DataError(UserError):
    """A dataset file is missing, truncated, fails its checksum, or cannot be written."""


class MissingExtraError(UserError):
    """The config asks for an optional dependency (a pip extra) that is not installed."""
