"""Exceptions that carry enough context for a user to fix their input."""

from __future__ import annotations


class LmrecError(Exception):
    """Base class for every error lmrec raises on purpose."""


class DataError(LmrecError):
    """Bad input data: the message names the file, line, column and value where known."""

    def __init__(
        self,
        problem: str,
        *,
        path: object | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.hint = hint
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        message = (", ".join(where) + ": " if where else "") + problem
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class ConfigError(LmrecError):
    """An invalid model or run configuration."""


class MissingExtraError(LmrecError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: pip install 'lmrec[{extra}]'")
