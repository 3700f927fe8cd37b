"""The errors latentbeam raises for problems a user can fix (config, bundle, input, output).

Each is also a ValueError, so callers that catch ValueError keep working. The command
line prints a LatentbeamError as one line and exits with 2; any other exception is a
bug in latentbeam or a library and is shown with its traceback.
"""
from __future__ import annotations


class LatentbeamError(ValueError):
    """A problem the user can fix; the message says what was expected, what was received
    and how to fix it."""


class ConfigError(LatentbeamError):
    """A training config, a command-line setting or an API argument is invalid."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type (also a TypeError, as before)."""


class BundleError(LatentbeamError):
    """A model bundle is missing, incomplete, malformed or does not fit the request."""


class InputError(LatentbeamError):
    """Input data cannot be used: nothing matches, unreadable, missing or wrong columns."""


class InputTypeError(InputError, TypeError):
    """An input element has the wrong type (also a TypeError, as before)."""


class OutputError(LatentbeamError):
    """An output location is refused: not empty, overlaps the inputs, not a directory."""


BUG_HINT = ("This is a bug in latentbeam or a library it uses, not a problem with your input: "
            "please report it to the latentbeam issue tracker with the command line and the "
            "traceback above.")


def is_user_error(error: BaseException) -> bool:
    """True for errors a user can fix (printed as one line); False for bugs (traceback)."""
    return isinstance(error, LatentbeamError)
