"""Run directories on object storage (S3, GCS, any URI ``pyarrow.fs`` opens), mirrored on every node.

A ``run_dir`` that is a path (local disk, or NFS/EFS/Filestore that every node mounts) is used as it is and
everything here is a no-op. A URI is the run's home: the driver and each Ray worker work in a local
mirror, ``<mirror root>/<name>-<digest>/`` (``$LEAFGEN_RUN_MIRROR``, default ``~/.cache/leafgen/runs``),
pull the run files they read before reading them and push the files they write once written. Stage
outputs record paths relative to the run root, and :meth:`RunStorage.localize` maps a path from another
node's mirror onto this one, so the mirrors need not sit at the same place on every node.

Transfers compare modification times: a push copies a file the store lacks or holds an older copy of,
and the file then takes the store's time, so it is never pulled back; a pull copies a file the mirror
lacks, or whose store copy is newer or of another size (object stores stamp whole seconds, so a rewrite
within the second of the last upload shows only in its size). Run files are written once, or rewritten
seconds apart, so this is enough. A stage's completion marker is pushed after every file it vouches for,
so a run that dies mid-upload is never taken as complete by the next driver.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

from leafgen.errors import LeafgenError

# Ray Train's checkpoint folders (``checkpoint_<time>``): Ray writes and reads them in the bucket itself
# (``storage_filesystem``), so mirrors leave them there; they are most of a run's bytes.
RAY_CHECKPOINT_PREFIX = "checkpoint_"
# Ray Train's list of the checkpoints it kept: removed with them, so a later fit starts afresh.
RAY_CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"
MIRROR_ENV = "LEAFGEN_RUN_MIRROR"
DEFAULT_MIRROR = "~/.cache/leafgen/runs"
# Uploaded last within a folder: the marker that says the folder's other files are complete.
LAST = "_complete.json"


def is_uri(run_dir: str) -> bool:
    return "://" in run_dir


@dataclass(frozen=True)
class RunStorage:
    """Where a run lives (``uri``, None for a plain path) and where this process works on it (``local``)."""

    uri: str | None
    local: Path
    fs: pafs.FileSystem | None = field(default=None, repr=False, compare=False)
    base: str = ""
    """The run's path inside ``fs`` (bucket and prefix)."""

    @classmethod
    def open(cls, run_dir: str) -> RunStorage:
        if not is_uri(run_dir):
            return cls(None, Path(run_dir).expanduser().resolve())
        try:
            fs, base = pafs.FileSystem.from_uri(run_dir)
            info = fs.get_file_info(base)
        except (OSError, ValueError) as err:
            raise LeafgenError(
                f"run_dir {run_dir!r} cannot be opened through pyarrow.fs ({err}); check the URI, the "
                "bucket and this node's credentials (AWS_* variables, GOOGLE_APPLICATION_CREDENTIALS)"
            ) from err
        if info.type == pafs.FileType.File:
            raise LeafgenError(f"run_dir {run_dir!r} is a file; point it at a folder (prefix)")
        root = Path(os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR).expanduser().resolve()
        base = base.rstrip("/")
        digest = hashlib.sha256(run_dir.encode()).hexdigest()[:12]
        return cls(run_dir, root / f"{Path(base).name or 'run'}-{digest}", fs, base)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def remote_path(self, path: str | Path) -> str:
        """The object-store path of ``path``, a path inside this node's mirror."""
        rel = Path(path).relative_to(self.local).as_posix()
        return self.base if rel == "." else f"{self.base}/{rel}"

    def in_run(self, path: str | Path) -> bool:
        """Whether ``path`` lies in a mirror of this run (this node's or another's)."""
        return self.remote and self.local.name in Path(path).parts

    def localize(self, path: str | Path) -> Path:
        """``path`` on this node: a path inside any node's mirror of this run is mapped onto this node's
        mirror and pulled; any other path (a base model folder, a dataset every node mounts) is returned
        as it is."""
        path = Path(path)
        if not self.in_run(path):
            return path
        parts = path.parts
        local = self.local.joinpath(*parts[len(parts) - parts[::-1].index(self.local.name) :])
        self.pull(local)
        return local

    def exists(self, path: Path) -> bool:
        """Whether ``path`` exists where the run lives."""
        if not self.remote:
            return path.exists()
        return self._info(self.remote_path(path)).type != pafs.FileType.NotFound

    def pull(self, path: Path) -> int:
        """Bring the run's newer copy of ``path`` (a file, or a folder's tree but Ray's checkpoint
        folders) into the mirror; returns the number of files copied."""
        if not self.remote:
            return 0
        infos = self._tree(self.remote_path(path))
        copied = 0
        for item in infos:
            target = self.local / Path(item.path).relative_to(self.base)
            if _stale(item, target):
                self._download(item, target)
                copied += 1
        return copied

    def push(self, path: Path, exact: bool = False) -> int:
        """Send this node's newer copy of ``path`` (a file or a folder's tree) to the run, completion
        markers last; with ``exact``, files the run holds under ``path`` that the mirror lacks are
        deleted, but for Ray's checkpoint folders, which only the bucket holds. Returns the number of
        files copied."""
        if not self.remote or not path.exists() and not exact:
            return 0
        files = sorted(run_files(path), key=lambda p: p.name == LAST)
        remote = {Path(i.path): i for i in self._tree(self.remote_path(path))}
        if exact:
            local = {Path(self.remote_path(p)) for p in files}
            for stale in set(remote) - local:
                self._call(self.fs.delete_file, str(stale))
        copied = 0
        for file in files:
            item = remote.get(Path(self.remote_path(file)))
            if item is None or file.stat().st_mtime_ns > item.mtime_ns:
                self._upload(file)
                copied += 1
        return copied

    def sizes(self, path: Path) -> dict[str, int]:
        """Size of every file under ``path`` where the run lives (but Ray's checkpoint folders), by its
        path relative to ``path``: one listing, so checking a stage's outputs costs one request."""
        remote = self.remote_path(path)
        return {Path(i.path).relative_to(remote).as_posix(): i.size for i in self._tree(remote)}

    def folders(self, path: Path) -> list[str]:
        """Names of the folders right under ``path`` where the run lives."""
        entries = self._call(
            self.fs.get_file_info, pafs.FileSelector(self.remote_path(path), allow_not_found=True)
        )
        return sorted(Path(i.path).name for i in entries if i.type == pafs.FileType.Directory)

    def open_input(self, path: Path):
        """A seekable stream of ``path``'s copy where the run lives."""
        return self._call(self.fs.open_input_file, self.remote_path(path))

    def delete_ray_checkpoints(self, path: Path) -> None:
        """Remove Ray's checkpoint folders under ``path``, and its list of them, where the run lives (the
        mirror holds neither)."""
        remote = self.remote_path(path) if self.remote else None
        if remote is None or self._info(remote).type != pafs.FileType.Directory:
            return
        folders, lists = set(), []
        for item in self._list(remote):
            rel = Path(item.path).relative_to(remote)
            inside = [i for i, part in enumerate(rel.parts) if part.startswith(RAY_CHECKPOINT_PREFIX)]
            if inside and (inside[0] < len(rel.parts) - 1 or item.type == pafs.FileType.Directory):
                folders.add(f"{remote}/{Path(*rel.parts[: inside[0] + 1]).as_posix()}")
            elif rel.name == RAY_CHECKPOINT_SNAPSHOT:
                lists.append(item.path)
        for folder in sorted(folders):
            self._call(self.fs.delete_dir, folder)
        for file in lists:
            self._call(self.fs.delete_file, file)

    def delete(self, path: Path) -> None:
        """Remove ``path``'s tree where the run lives (the mirror is the caller's to clear)."""
        if self.remote and self.exists(path):
            self._call(self.fs.delete_dir, self.remote_path(path))

    def ray_storage(self, path: Path) -> tuple[str, pafs.FileSystem | None]:
        """``storage_path`` and ``storage_filesystem`` for Ray Train or Tune to keep ``path`` where the
        run lives, so checkpoints written on any node survive the node."""
        if not self.remote:
            return str(path.resolve()), None
        return self.remote_path(path), self.fs

    # -- transfers -------------------------------------------------------------------------------------

    def _download(self, item: pafs.FileInfo, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.pull.tmp")
        with self._call(self.fs.open_input_stream, item.path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.utime(tmp, ns=(item.mtime_ns, item.mtime_ns))
        os.replace(tmp, target)

    def _upload(self, file: Path) -> None:
        remote = self.remote_path(file)
        with open(file, "rb") as src, self._call(self.fs.open_output_stream, remote) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        # The store stamps its own time; the mirror takes it, so the file reads as in sync both ways.
        stamped = self._info(remote).mtime_ns
        os.utime(file, ns=(stamped, stamped))

    def _info(self, remote: str) -> pafs.FileInfo:
        return self._call(self.fs.get_file_info, remote)

    def _list(self, remote: str) -> list[pafs.FileInfo]:
        return self._call(self.fs.get_file_info, pafs.FileSelector(remote, recursive=True))

    def _tree(self, remote: str) -> list[pafs.FileInfo]:
        info = self._info(remote)
        if info.type == pafs.FileType.File:
            return [info]
        if info.type == pafs.FileType.Directory:
            return [
                i
                for i in self._list(remote)
                if i.type == pafs.FileType.File and not _ray_checkpoint(Path(i.path).relative_to(remote))
            ]
        return []

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as err:
            raise LeafgenError(
                f"run_dir {self.uri}: {fn.__name__}({', '.join(map(str, args))}) failed: {err}"
            ) from err


def _stale(item: pafs.FileInfo, target: Path) -> bool:
    """Whether the mirror's ``target`` is missing or older than the store's ``item``."""
    if not target.is_file():
        return True
    stat = target.stat()
    return (item.mtime_ns or 0) > stat.st_mtime_ns or item.size != stat.st_size


def _ray_checkpoint(rel: Path) -> bool:
    return any(part.startswith(RAY_CHECKPOINT_PREFIX) for part in rel.parent.parts)


def run_files(path: Path) -> Iterator[Path]:
    """Files under ``path`` (or ``path`` itself), without atomic writes' temporary files and Ray's
    checkpoint folders."""
    if path.is_file():
        candidates: Iterator[Path] = iter([path])
    else:
        candidates = (p for p in path.rglob("*") if p.is_file() and not _ray_checkpoint(p.relative_to(path)))
    for file in candidates:
        if not (file.name.startswith(".") and ".tmp" in file.name):
            yield file
