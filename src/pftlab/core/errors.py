"""Errors that stop a stage with a one-line message instead of a traceback."""


class PftlabError(Exception):
    """Base class: the stage prints the message and exits with status 1."""


class ParamError(PftlabError):
    """A value in params.yaml is missing, misspelt or out of range; the message names the key."""


class DataError(PftlabError):
    """An input file is unreadable or has too many bad rows; the message names the file and rows."""
