"""All-or-nothing result folders: the one writer every command that fills an `--out` folder uses
(tokenizer, semantic IDs, reports; later checkpoints), and the check every loader runs.

    with ResultFolder("out/tok", command="onerec tokenize ...", config={...}) as out:
        tok.save(out.path("tokenizer.rqk"))          # files go to a private temp dir
        ...
    # on a clean exit: files renamed into out/tok, then manifest.json, last
    manifest = verify_result_folder("out/tok")       # loaders: refuse a partial or mixed folder
    verify_result_file("out/tok/tokenizer.rqk")      # one file of a result folder, the same check

Protocol (why each step):
1. `__enter__` takes an exclusive lock on `<target>/.onerec.lock` (flock: the kernel drops it
   when the process dies, so a killed writer never leaves a stale lock) and fails at once with
   `ResultFolderBusy` when another process holds it: two writers never interleave. It also
   creates a private temp dir beside the target (`.<name>.tmp-<pid>-<random>`, unique per
   process). Both happen before any compute, so a bad `--out` (a file, read-only) fails fast.
2. The caller writes its files under `path(name)` (inside the temp dir).
3. On success: sha256 of every file -> `manifest.json` (command, versions, config, files) in the
   temp dir; the target's old manifest is removed first (from here on the folder reads as
   incomplete), each file is renamed into the target, and the manifest is renamed in last.
   A kill at any point therefore leaves either the old complete folder, or a folder without a
   manifest, or the new complete folder; never one that verifies with files of two runs.
4. On an exception (or Ctrl-C) the temp dir is removed and the target is left untouched; so it
   is when nothing was written. `commit()` publishes before the block ends.

Files of an earlier run that the new run does not write stay in the folder but are not in the
manifest; `verify_result_folder` checks exactly the files the manifest lists. A run that adds
to a folder (say an evaluation beside a training run's files) `carry`s the earlier files into
its own manifest (or files from elsewhere: a training work folder, see onerec.jobs); `discard`
names earlier files that must not outlive the new run (removed just after its manifest lands; a
kill in between leaves them unlisted, hence ignored). Hidden entries of the target that no
manifest lists (the lock, a training run's `.work/`) are the writers' own business.
Pure standard library: importing it costs nothing (the kill test starts writers in a loop).
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile

MANIFEST = "manifest.json"
LOCK = ".onerec.lock"
FORMAT = "onerec-result-folder"
FORMAT_VERSION = 1


class IncompleteResultFolder(RuntimeError):
    """A folder without a manifest, or whose files do not match it (interrupted or mixed run)."""


class ResultFolderBusy(RuntimeError):
    """Another process is writing the same result folder."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    """Versions of what produced the files; modules not yet imported are not imported for this."""
    out = {"python": platform.python_version()}
    for name in ("onerec", "onerec_kernels", "torch", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = str(mod.__version__)
    if "torch" in sys.modules:
        out["cuda"] = sys.modules["torch"].version.cuda
    return out


def fsync_file(path: str | os.PathLike) -> None:
    """Put a file's data on disk (before a rename makes it visible)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link src as dst, or copy it where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the renames into folder `path` durable (its entries on disk); a no-op where
    folders cannot be opened (Windows)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(fd: int, target: str) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: byte-range lock, also dropped when the process dies
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise ResultFolderBusy(f"result folder {target} is being written by another process "
                                   f"(lock {os.path.join(target, LOCK)} is held)") from None
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ResultFolderBusy(f"result folder {target} is being written by another process "
                               f"(lock {os.path.join(target, LOCK)} is held)") from None


class ResultFolder:
    """Context manager that builds a result folder privately and publishes it all at once.

    target: the folder (created if missing; an existing file there is an error).
    command: what produced it (the CLI passes the command line), stored in the manifest.
    config: JSON-serialisable settings of the run, stored in the manifest.
    """

    def __init__(self, target: str | os.PathLike, *, command: str, config: dict | None = None):
        self.target = os.path.abspath(os.fspath(target))
        self.command = str(command)
        self.config = dict(config or {})
        self.tmp: str | None = None
        self._lock_fd: int | None = None
        self.published: list[str] = []
        self._discard: set[str] = set()
        self._on_published: list = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "ResultFolder":
        if os.path.exists(self.target) and not os.path.isdir(self.target):
            raise NotADirectoryError(f"result folder {self.target} exists and is not a folder")
        fd = None
        try:
            os.makedirs(self.target, exist_ok=True)
            fd = os.open(os.path.join(self.target, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
            _lock(fd, self.target)
            self._remove_stale_temps()
            parent, name = os.path.split(self.target)
            self.tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
        except BaseException as exc:
            if fd is not None:
                os.close(fd)
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"cannot write result folder {self.target}: "
                                         f"{exc.strerror}") from None
            raise
        self._lock_fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(publish=exc_type is None)

    def commit(self) -> list[str]:
        """Publish now (as a clean exit of the `with` block would) and release the folder;
        returns the published file names. Leaving the block afterwards does nothing more."""
        self._close(publish=True)
        return self.published

    def _close(self, publish: bool) -> None:
        try:
            if publish and self.tmp is not None:
                self._publish()
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def _remove_stale_temps(self) -> None:
        """Temp dirs of this target left by killed writers (we hold the lock: none is live)."""
        parent, name = os.path.split(self.target)
        prefix = f".{name}.tmp-"
        for entry in os.listdir(parent):
            if entry.startswith(prefix):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)

    # -- writing ------------------------------------------------------------------------------
    def path(self, name: str) -> str:
        """Where to write file `name` (a plain file name) for this run."""
        if self.tmp is None:
            raise RuntimeError("ResultFolder.path: use it inside the `with` block")
        if not name or os.path.basename(name) != name or name in (MANIFEST, LOCK, ".", ".."):
            raise ValueError(f"ResultFolder.path: {name!r} must be a plain file name other "
                             f"than {MANIFEST} and {LOCK}")
        return os.path.join(self.tmp, name)

    def carry(self, name: str, *, copy: bool = False, src: str | os.PathLike | None = None
              ) -> None:
        """Publish the target's current file `name` again with this run: a hard link into the
        temp dir (no copy of a large checkpoint; renaming it back over itself is a no-op), or a
        copy when `copy` is set (a file this run will modify in place) or linking fails.
        src: publish that file (say a checkpoint in a work folder) as `name` instead."""
        dst = self.path(name)
        src = os.path.join(self.target, name) if src is None else os.fspath(src)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"ResultFolder.carry: {src} does not exist")
        if copy:
            shutil.copy2(src, dst)
        else:
            link_or_copy(src, dst)

    def discard(self, name: str) -> None:
        """Remove the target's file `name` (an earlier run's) once this run has published, unless
        this run wrote it."""
        self.path(name)  # the same name checks
        self._discard.add(name)

    def on_published(self, callback) -> None:
        """Call `callback()` once this run has published, while the lock is still held (say to
        remove a work folder that only a writer of the target may touch)."""
        self._on_published.append(callback)

    def _publish(self) -> None:
        names = sorted(os.listdir(self.tmp))
        if not names:  # nothing written: the folder keeps what it had (no empty manifest)
            return
        files = {}
        for name in names:
            p = os.path.join(self.tmp, name)
            if not os.path.isfile(p):
                raise RuntimeError(f"ResultFolder: {name} is not a plain file")
            fsync_file(p)  # data on disk before the rename makes it visible
            files[name] = {"sha256": _sha256(p), "bytes": os.path.getsize(p)}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "command": self.command,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
            "versions": _versions(), "config": self.config, "files": files,
        }
        tmp_manifest = os.path.join(self.tmp, MANIFEST)
        with open(tmp_manifest, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        old = os.path.join(self.target, MANIFEST)
        if os.path.exists(old):
            os.unlink(old)  # the folder reads as incomplete until the new manifest lands
        for name in names:
            os.replace(os.path.join(self.tmp, name), os.path.join(self.target, name))
        os.replace(tmp_manifest, old)
        self.published = names
        for name in sorted(self._discard - set(names)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.target, name))
        for callback in self._on_published:
            callback()


def verify_result_folder(folder: str | os.PathLike) -> dict:
    """The folder's manifest after checking every file it lists (size and sha256).

    Raises IncompleteResultFolder ("incomplete or mixed result folder: ...") when the manifest is
    missing or unreadable, or a listed file is missing or differs; FileNotFoundError /
    NotADirectoryError when `folder` is not a folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(f"{folder} is not a result folder (not a folder)")
        raise FileNotFoundError(f"result folder {folder} does not exist")

    def fail(msg: str):
        raise IncompleteResultFolder(f"incomplete or mixed result folder: {folder}: {msg}")

    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        fail(f"no {MANIFEST} (the run that wrote it was interrupted, failed, or is still "
             f"writing); rerun the command")
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        fmt, version = manifest["format"], manifest["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"unreadable {MANIFEST} ({type(exc).__name__}: {exc})")
    if fmt != FORMAT or version != FORMAT_VERSION:
        fail(f"{MANIFEST} has format {fmt!r} version {version}; expected {FORMAT!r} "
             f"version {FORMAT_VERSION}")
    for name, meta in sorted(files.items()):
        p = os.path.join(folder, name)
        if not os.path.isfile(p):
            fail(f"{name} is listed in {MANIFEST} but missing")
        if os.path.getsize(p) != meta.get("bytes") or _sha256(p) != meta.get("sha256"):
            fail(f"{name} does not match {MANIFEST} (size or sha256 differ: it was written by "
                 f"another run)")
    return manifest


def verify_result_file(path: str | os.PathLike) -> None:
    """Check a file that lives in a result folder (one holding manifest.json or the writers'
    lock) against that folder's manifest: a file read on its own from an interrupted or mixed
    folder is refused like the folder. A file outside any result folder passes unchecked."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if not (os.path.exists(os.path.join(folder, MANIFEST))
            or os.path.exists(os.path.join(folder, LOCK))):
        return
    manifest = verify_result_folder(folder)
    if name not in manifest["files"]:
        raise IncompleteResultFolder(f"incomplete or mixed result folder: {folder}: {name} is "
                                     f"not listed in {MANIFEST} (not written by the run that "
                                     f"wrote the folder)")
