"""User-facing errors: the command line prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, data, files): the message says what and where."""


class ConfigError(UserError, ValueError):
    """A config field is invalid or disagrees with the data or a checkpoint."""


class DataError(UserError, ValueError):
    """A data file is missing, empty or malformed."""
