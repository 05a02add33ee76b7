"""A ``LeafgenError`` raised in a Ray worker reaches the user as it would from the driver.

Ray wraps what a worker raises (``WorkerGroupError`` from Ray Train, ``RayTaskError`` and
``ActorDiedError`` from tasks and actors, ``RayTaskError(LeafgenError)`` from a Tune trial), prints the
worker's traceback on the driver, and retries. A ``LeafgenError`` is the user's to fix (a weights file that
cannot be read, a model that will not load): the same input fails the same way on every retry, and its
message already says what to do. So at each boundary in this package it is taken out of Ray's wrapping and
raised as itself, with ``where`` naming the process that raised it and its log, and Ray's own report of it
(worker traceback, retry decision) is kept off the console:

- Ray Train: :class:`UserErrorsFailFast` (a failure policy: no retry, no log of the decision) and
  :func:`quiet_user_errors` in each worker (drops Train's "Error in training function" log);
- Ray Data: the generation actor hands a ``LeafgenError`` back as a row (``leafgen.distributed.generate``);
- Ray Tune: the trial records it in its run directory and ends (``leafgen.distributed.tune``).

Any other exception is a bug and keeps Ray's traceback.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

# Ray 2.60 takes no failure policy from users; torch_trainer hands this subclass of its default to fit().
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

from leafgen.errors import LeafgenError


def worker_label(kind: str) -> str:
    """Where this process runs, for ``LeafgenError.where``: its kind, pid and host."""
    return f"{kind}, pid {os.getpid()} on {socket.gethostname()}"


def _log_of(pid: int) -> Path | None:
    """This node's Ray log file of worker process ``pid``, if this node has one."""
    try:
        from ray._private import worker  # no public way to the session's log folder in Ray 2.60

        logs = Path(worker._global_node.get_logs_dir_path())
    except (AttributeError, ImportError, TypeError):
        return None
    found = sorted(logs.glob(f"worker-*-{pid}.err"))
    return found[0] if found else None


def mark(exc: LeafgenError, kind: str) -> LeafgenError:
    """Record on ``exc`` which worker raised it (called in that worker)."""
    if not getattr(exc, "where", None):
        exc.where = worker_label(kind)
        exc.pid = os.getpid()
    return exc


def user_error(exc: BaseException) -> LeafgenError | None:
    """The ``LeafgenError`` inside Ray's wrapping of ``exc``, or None when there is none (a bug)."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, LeafgenError) and not isinstance(err, RayError):
            pid = getattr(err, "pid", None)
            log = _log_of(pid) if pid else None
            if log is not None and "log:" not in getattr(err, "where", ""):
                err.where = f"{err.where}; log: {log}"
            return err
        stack += [err.__context__, err.__cause__, getattr(err, "cause", None)]
        stack += list(getattr(err, "worker_failures", {}).values())
        stack += [getattr(err, "controller_failure", None), getattr(err, "_base_exc", None)]
    return None


class _UserErrorFilter(logging.Filter):
    """Drops log records about a ``LeafgenError`` being handled: the driver reports it once, cleanly."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not isinstance(exc, LeafgenError)


_FILTER = _UserErrorFilter()


def quiet_user_errors(*loggers: str) -> None:
    """Keep ``loggers`` (Ray's) from printing a ``LeafgenError``'s traceback in this process."""
    for name in loggers:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class UserErrorsFailFast(DefaultFailurePolicy):
    """Ray Train's failure policy, except that a worker group whose every failure is a ``LeafgenError``
    is not restarted (restarts are for lost nodes and killed workers, which a checkpoint fixes), and the
    decision is not logged with the error's traceback."""

    @staticmethod
    def _user_errors_only(error) -> bool:
        failures = getattr(error, "worker_failures", None) or {}
        return bool(failures) and all(isinstance(e, LeafgenError) for e in failures.values())

    def _is_retryable_error(self, training_failed_error) -> bool:
        if self._user_errors_only(training_failed_error):
            return False
        return super()._is_retryable_error(training_failed_error)

    def _log_decision(self, decision, training_failed_error, error_count, retry_limit) -> None:
        if not self._user_errors_only(training_failed_error):
            super()._log_decision(decision, training_failed_error, error_count, retry_limit)
