"""Errors meant for people: each carries a one-line message that names the offending value.

The CLI prints ``error: <message>`` and exits with code 2 for any ``GHNSError``; anything else
is a bug and keeps its traceback.
"""


class GHNSError(Exception):
    """A user-facing error: bad flag, bad config value, bad path, malformed input file."""


class ConfigError(GHNSError):
    """An invalid configuration key or value."""


class DataError(GHNSError):
    """A dataset that cannot be read: missing root, malformed label file, empty split."""


class StageError(GHNSError):
    """A stage that cannot run: its inputs are missing from the run directory."""


class RunFileError(GHNSError):
    """A file of a run directory that cannot be read back: truncated, empty, or not what ghns
    wrote there. The message names the file and what to do."""
