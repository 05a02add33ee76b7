"""The files a stage wrote: recorded in its completion marker, checked before the stage is trusted.

When a stage completes, its marker (``_complete.json``) gets ``files``: every file under the stage folder
(path relative to the folder, size in bytes, BLAKE2b-128 of the content) and ``files_digest``, a hash of
that list. Two kinds of check read it:

- **quick** (every rerun, before a stage is skipped): each listed file exists with its recorded size. A
  ``stat`` per file locally, one listing of the stage folder for an object-store run, so a fully
  up-to-date rerun stays fast;
- **full** (``leafgen verify``, and a stage reading an upstream file through ``StageContext.input_path``):
  the size and the content hash.

Hashing rule: a file up to ``LARGE_FILE`` (256 MiB) is hashed whole; a larger one (a full SD fine-tune's
UNet, say) records ``blake2b_sampled``: the hash of its size and of three 16 MiB samples (start, middle,
end), so a truncated, resized or partly rewritten copy is still caught at a fraction of the read.

Not listed: the marker itself, ``_started.json``, atomic writes' temporary files, and Ray Train's
checkpoint folders (``checkpoint_*``). Those are a training's resumable state, not outputs: they are
pruned once the model is exported (unless a config key keeps them), no later stage reads them, and on an
object-store run they exist only in the bucket. Every other file the bucket holds for the stage is listed,
since the mirror the list is taken from is pulled from the bucket first and pushed back exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from leafgen.config import fingerprint
from leafgen.run_storage import LAST, run_files

if TYPE_CHECKING:
    from leafgen.stages import RunDir

FILES = "files"
DIGEST = "files_digest"
STARTED = "_started.json"
LARGE_FILE = 256 * 1024**2
SAMPLE = 16 * 1024**2
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """A listed file that is not what its stage wrote."""

    path: str
    """The file, relative to the run directory (``split/split.csv``)."""
    kind: str
    """``missing`` or ``changed``."""
    detail: str
    """Why, in words."""

    def __str__(self) -> str:
        return f"{self.path} {self.detail}"


def _read_exactly(fh: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left and (chunk := fh.read(min(left, _CHUNK))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def hash_file(fh: BinaryIO, size: int) -> dict[str, Any]:
    """The entry of one file, read from ``fh`` (a local file or an object-store stream that can seek)."""
    h = hashlib.blake2b(digest_size=16)
    if size <= LARGE_FILE:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
        return {"size": size, "blake2b": h.hexdigest()}
    h.update(str(size).encode())
    for start in (0, (size - SAMPLE) // 2, size - SAMPLE):
        fh.seek(start)
        h.update(_read_exactly(fh, SAMPLE))
    return {"size": size, "blake2b_sampled": h.hexdigest()}


def _hash(entry: dict[str, Any]) -> tuple[str, str]:
    kind = "blake2b" if "blake2b" in entry else "blake2b_sampled"
    return kind, entry[kind]


def record(directory: Path) -> dict[str, Any]:
    """What a completion marker records about ``directory``: ``files`` and ``files_digest``."""
    files = {}
    for path in sorted(run_files(directory)):
        rel = path.relative_to(directory).as_posix()
        if rel in (LAST, STARTED):
            continue
        with open(path, "rb") as fh:
            files[rel] = hash_file(fh, os.fstat(fh.fileno()).st_size)
    return {FILES: files, DIGEST: fingerprint(files)}


def digest(marker: dict[str, Any]) -> str | None:
    """The outputs digest of a marker; None for a marker written before markers listed their files."""
    return marker.get(DIGEST)


def _sizes(run: RunDir, stage: str, names: list[str], where_run_lives: bool) -> dict[str, int | None]:
    directory = run.stage_dir(stage)
    if where_run_lives and run.storage.remote:
        listed = run.storage.sizes(directory)
        return {n: listed.get(n) for n in names}
    sizes: dict[str, int | None] = {}
    for name in names:
        try:
            sizes[name] = os.stat(directory / name).st_size
        except (FileNotFoundError, NotADirectoryError):
            sizes[name] = None
    return sizes


def check(
    run: RunDir,
    stage: str,
    marker: dict[str, Any],
    content: bool = False,
    under: str = "",
    where_run_lives: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> list[Problem]:
    """Listed files of ``stage`` that are missing or changed; always empty for an older marker. Sizes
    only, unless ``content``. ``under``: only files below this path of the stage folder.
    ``where_run_lives``: an object-store run is checked in its bucket; else in this node's mirror.
    ``progress`` is called with 1 per file checked."""
    files: dict[str, Any] | None = marker.get(FILES)
    if files is None:
        return []
    prefix = under.strip("/")
    names = [n for n in files if not prefix or n == prefix or n.startswith(prefix + "/")]
    sizes = _sizes(run, stage, names, where_run_lives)
    problems = []
    for name in names:
        entry, size, path = files[name], sizes[name], f"{stage}/{name}"
        if size is None:
            problems.append(Problem(path, "missing", "is missing"))
        elif size != entry["size"]:
            problems.append(Problem(path, "changed", f"is {size:,} bytes; the stage wrote {entry['size']:,}"))
        elif content and _hash(entry) != _hash(_rehash(run, stage, name, size, where_run_lives)):
            problems.append(
                Problem(path, "changed", "has other content than the stage wrote (its hash differs)")
            )
        if progress is not None:
            progress(1)
    return problems


def _rehash(run: RunDir, stage: str, name: str, size: int, where_run_lives: bool) -> dict[str, Any]:
    path = run.stage_dir(stage) / name
    if where_run_lives and run.storage.remote:
        with run.storage.open_input(path) as fh:
            return hash_file(fh, size)
    with open(path, "rb") as fh:
        return hash_file(fh, size)
