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
