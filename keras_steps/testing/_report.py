"""What the conformance kit reports: each check's outcome and every defect."""

from __future__ import annotations

import dataclasses
import traceback


class ConformanceError(AssertionError):
    """A step failed the conformance kit; the message lists every defect."""

    def __init__(self, report: ConformanceReport):
        super().__init__(str(report))
        self.report = report


class ConformanceWarning(UserWarning):
    """A conformance check could not run here (for example ``save_load``)."""


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        status: ``"passed"``, ``"failed"`` or ``"skipped"``.
        messages: what failed, or why the check was skipped.
    """

    status: str
    messages: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConformanceReport:
    """What :func:`check_step` found.

    Attributes:
        step: the step name.
        results: check name to :class:`CheckResult`, for the checks run.
    """

    step: str
    results: dict[str, CheckResult] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no check failed (skipped checks do not count)."""
        return all(r.status != "failed" for r in self.results.values())

    @property
    def failures(self) -> list[str]:
        """Every defect, as ``"[check] message"``."""
        return [
            f"[{name}] {msg}"
            for name, r in self.results.items()
            if r.status == "failed"
            for msg in r.messages
        ]

    def __str__(self) -> str:
        if self.ok:
            head = f"Step {self.step!r} passes the keras-steps conformance kit."
        else:
            head = f"Step {self.step!r} fails the keras-steps conformance kit:"
        lines = [head]
        for name, result in self.results.items():
            lines.append(f"  {name}: {result.status}")
            lines.extend(f"    - {m}" for m in result.messages)
        return "\n".join(lines)


class Failed(Exception):
    """A check found defects: one message each."""

    def __init__(self, *messages: str):
        super().__init__(*messages)
        self.messages = list(messages)


class Skipped(Exception):
    """A check cannot run here; the message says why."""


def one_line(text: str) -> str:
    """``text`` with its whitespace runs, newlines included, made single spaces."""
    return " ".join(str(text).split())


def describe(exc: BaseException) -> str:
    """``exc``'s type and message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {one_line(exc)}{where}"
