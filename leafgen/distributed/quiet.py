"""Keeping Ray's own known noise out of the user's output.

Ray logs ``core_worker.cc ... E ... has constructor arguments in the object store and max_restarts > 0``
at error level whenever an actor that may be restarted gets constructor arguments through the object
store (ray-project/ray#53727). Ray Data's actor pools (our generation actors) and Ray Train's controller
(its preemption watcher) create exactly such actors themselves, and we want them restartable: a killed
generation actor or training worker is replaced, which the tests exercise. There is nothing to pass them
that avoids it, and a user reads an error-level line as a failure. The line comes from C++ (the driver's
core worker) or from a worker's output that Ray forwards to the driver, both through file descriptor 2,
so :func:`ray_noise_filtered` routes descriptor 2 through a filter while Ray work runs and drops exactly
the lines of :data:`KNOWN_NOISE`; every other byte passes through unchanged and in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

KNOWN_NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)
_EOL = re.compile(rb"[\r\n]")


def _pump(read_fd: int, write_fd: int) -> None:
    """Copy ``read_fd`` to ``write_fd`` segment by segment (up to each newline or carriage return, so a
    progress bar still redraws in place), leaving out the segments that carry known noise."""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        pending = b""
        while chunk := source.read(65536):
            pending += chunk
            while end := _EOL.search(pending):
                segment, pending = pending[: end.end()], pending[end.end() :]
                if not any(noise in segment for noise in KNOWN_NOISE):
                    os.write(write_fd, segment)
        if pending and not any(noise in pending for noise in KNOWN_NOISE):
            os.write(write_fd, pending)


@contextlib.contextmanager
def ray_noise_filtered() -> Iterator[None]:
    """Within the block, lines of :data:`KNOWN_NOISE` written to this process's stderr are dropped."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="ray-noise-filter", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump drains it and stops
        pump.join(timeout=5)
        if not pump.is_alive():  # else a child still holds the pipe; the pump keeps writing to ``saved``
            os.close(saved)
