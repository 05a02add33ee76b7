"""User-facing errors.

Everything a user can cause (a bad config key, a broken CSV, a missing model) raises a subclass of
:class:`LeafgenError`. The CLI prints these as plain messages with a non-zero exit code; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class LeafgenError(Exception):
    """An error caused by input the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(LeafgenError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class DataValidationError(LeafgenError):
    """A dataset folder breaks the Plant Pathology format; lists every problem found."""

    def __init__(self, root: str, problems: Sequence[str], hint: str = ""):
        self.root = root
        self.problems = list(problems)
        shown = self.problems[:50]
        lines = [f"{root}: {len(self.problems)} problem(s) found:"]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class StageError(LeafgenError):
    """A pipeline stage cannot run, e.g. because a stage it needs has not completed."""


class PreflightError(LeafgenError):
    """Problems found before the first stage ran; the CLI prints one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):  # crosses Ray's process boundaries whole (a Tune trial raises it)
        return type(self), (self.problems,), self.__dict__


def message_lines(exc: LeafgenError) -> list[str]:
    """What the user is told: each pre-flight problem on its own line, else the message, prefixed with
    the stage that raised it (``run_stage`` records it) and followed by the Ray worker that did, if one
    did (``leafgen.distributed.errors``)."""
    if isinstance(exc, PreflightError):
        return exc.problems
    stage, where = getattr(exc, "stage", None), getattr(exc, "where", None)
    return [(f"[{stage}] " if stage else "") + str(exc) + (f" (in a {where})" if where else "")]
