"""Errors are values with a position and a hint, rendered once at the CLI edge."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One problem in one input: where, which field, what was found, what to do."""

    message: str
    file: str = "<input>"
    line: int | None = None
    column: int | None = None
    field: str | None = None
    hint: str | None = None

    def render(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.render()


class AamError(Exception):
    """A user-facing failure carrying one or more diagnostics; never a traceback."""

    def __init__(self, diagnostics, exit_code: int = 1):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        elif isinstance(diagnostics, str):
            diagnostics = [Diagnostic(diagnostics, file="aamctl")]
        self.diagnostics = list(diagnostics)
        self.exit_code = exit_code
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class UsageError(AamError):
    """Bad command line (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(Diagnostic(message, file="aamctl"), exit_code=2)
