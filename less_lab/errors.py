"""One family of errors, so callers (the CLI, a notebook) can tell "your input or settings
are wrong" (print it plainly) from a bug (show the traceback).

Every error less_lab raises on purpose derives from :class:`LessLabError`; each also
derives from the builtin a caller would expect (``ValueError``, ``OSError``), so code that
caught those before keeps working. This module imports nothing from less_lab.
"""

from __future__ import annotations

from pathlib import Path


class LessLabError(Exception):
    """Base of every error less_lab raises on purpose."""


class ConfigError(LessLabError, ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names the key,
    the value given and what is allowed. ``key`` is the dotted name of the setting."""

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key (and message) prefixed by a section path."""
        if not prefix or self.key.startswith(prefix):
            return self
        message = str(self)
        if self.key and message.startswith(self.key):
            message = prefix + message
        return ConfigError(message, key=prefix + self.key)


class SettingsMismatchError(LessLabError, ValueError):
    """An artifact on disk was made with other settings than the ones asked for; the
    message names the file and every differing setting with both values."""


class DataError(LessLabError, ValueError):
    """Bad input data. The message reads ``{path}:{line}: {what}; expected {expected}``."""

    def __init__(
        self,
        what: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = what if expected is None else f"{what}; expected {expected}"
        where = "" if self.path is None else self.path + ("" if line is None else f":{line}")
        super().__init__(f"{where}: {self.reason}" if where else self.reason)


class StoreCorruptError(LessLabError, ValueError):
    """A stored file is truncated, unreadable or fails its checksum; the message names it."""


class StorageError(LessLabError, OSError):
    """Writing an artifact failed (disk full, permissions); the message names the path."""
