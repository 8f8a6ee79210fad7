"""Exception types of ctdose.

Every error a user can cause (bad profile, bad file, missing chain step) is a
:class:`CtdoseError`; the command line prints its message as one line instead of a
traceback. Messages name the file or key and the problem.
"""


class CtdoseError(Exception):
    """Base class of all errors that are the user's to fix."""


class ConfigError(CtdoseError):
    """Unknown profile, unknown override key or a value of the wrong type."""


class InputError(CtdoseError, ValueError):
    """An input file or array is malformed (shape, affine, NaN, truncated, ...)."""


class OutputError(CtdoseError, OSError):
    """A file cannot be written: a folder or write-protected file in the way, no permission, disk full.

    The message names the target file, never the temporary file beside it, and says whether an
    existing file is unchanged. Also an :class:`OSError`, so ``except OSError`` still catches it.
    """


class MissingStepError(CtdoseError):
    """A chain step's inputs are missing: the message says which step to run."""
