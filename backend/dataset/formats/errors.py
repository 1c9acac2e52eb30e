"""Problems found in an uploaded file, each located by line (or row) and field."""

from typing import Any


class FormatError(ValueError):
    """A problem in an uploaded file, located by line (or parquet row, 1-based) and field."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None, unit: str = "line") -> None:
        message = _printable(message, 600)
        super().__init__(message)
        self.message, self.line, self.unit = message, line, unit
        self.field = _printable(field, 200) if field is not None else None

    def at(self, line: int, unit: str = "line") -> "FormatError":
        """This error, placed at `line` unless it already names one."""
        if self.line is None:
            self.line, self.unit = line, unit
        return self

    def __str__(self) -> str:
        where = f"{self.unit} {self.line}: " if self.line is not None else ""
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}{what}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


def _printable(text: str, chars: int) -> str:
    """Text from the file, safe to send back: valid UTF-8 (lone surrogates escaped), bounded."""
    text = text if len(text) <= chars else text[:chars] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class LimitExceeded(FormatError):
    """The file goes past a size limit from the settings (the message names it): HTTP 413."""


class UnsupportedFile(FormatError):
    """Not a file type we read: HTTP 415."""


class ProblemLog:
    """The first `keep` problems in file order, and how many there were in all."""

    def __init__(self, keep: int = 50) -> None:
        self.keep, self.count = keep, 0
        self.first: list[dict[str, Any]] = []

    def add(self, problem: dict[str, Any], *, front: bool = False) -> None:
        """Count `problem`; keep it if among the first (`front`: a file-wide one, shown before the rest)."""
        self.count += 1
        if front:
            self.first.insert(0, problem)
            del self.first[self.keep :]
        elif len(self.first) < self.keep:
            self.first.append(problem)
