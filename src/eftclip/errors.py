"""Errors a user is meant to read.

``EftclipError`` carries a message that names the culprit (file, row, flag).
The command line prints it as ``eftclip: error: <message>`` and exits with 2,
without a traceback; everything else is a bug and keeps its traceback.
"""


class EftclipError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class MissingExtraError(EftclipError):
    """An optional backend needs a package extra that is not installed."""

    def __init__(self, what: str, extra: str, module: str):
        super().__init__(
            f"{what} needs the optional package '{module}', which is not installed; "
            f"install it with: pip install 'eftclip[{extra}]'"
        )
        self.extra = extra
        self.module = module
