"""User-facing errors: each renders as one line the CLI prints without a traceback."""

from __future__ import annotations

import difflib
from typing import Iterable


class MentalGLMError(Exception):
    """Base class for mistakes a user can fix (bad input, unknown names, bad options).

    The CLI prints ``str(error)`` on one line and exits non-zero; anything else is a bug and
    keeps its traceback. Line breaks quoted from a file (a CSV header, a YAML value) are shown as
    ``\n``, so the message stays one line whatever the input held.
    """

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (args[0].replace("\r", "\\r").replace("\n", "\\n"),)
        super().__init__(*args)


class DataError(MentalGLMError):
    """A problem in an input file, located by file, line and field.

    Args:
        path: the file.
        line: 1-based line number (``None`` when the whole file is at fault).
        field: the record field at fault (``None`` when the line itself is malformed).
        message: what is wrong, in a few words.
    """

    def __init__(self, path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class UnknownNameError(MentalGLMError, KeyError):
    """An unknown task, prompt style, backend or option; lists what exists and the closest name."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown {kind} '{name}'.{hint} Available: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class PluginError(MentalGLMError):
    """A plugin broke the contract (duplicate name, bad registration, failed import in strict mode)."""


class OptionsError(MentalGLMError):
    """Backend options that do not validate (misspelt name, wrong type)."""
