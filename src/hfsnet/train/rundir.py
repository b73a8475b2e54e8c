"""Run directories: which files make one hold a run, the lock that lets one process write it,
the run id that ties its checkpoints to it, and what ``--resume`` paths name.

A new run never writes over an earlier one by accident: a directory holding run files is
refused unless the caller asked to replace it, and even then the old files are only moved away
at the new run's first write, so a run that fails before that (bad flags, unreadable data, a
model that cannot be built, a NaN in the first steps) leaves the old one as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.train.checkpoint import CHECKPOINT_NAME

LOCK_NAME = ".hfsnet.lock"
RUN_ID_NAME = "run.json"
STEP_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"  # hfsnet.interop.tblog.LOG_DIR
# Everything a run writes into its directory; any of them present means the directory holds a
# run (an empty checkpoints/ folder does not count).
RUN_FILES = ("config.json", RUN_ID_NAME, "metrics.jsonl", "result.json", CHECKPOINT_NAME,
             STEP_DIR, "finetune.json", TENSORBOARD_DIR)
_REPLACED_PREFIX = ".replaced-"  # the folder an overwritten run's files pass through


class RunDirError(HfsnetError):
    """A run directory that cannot be used as asked; the message names it and the way out."""


def run_files(run_dir: Path) -> list[str]:
    """The names in ``RUN_FILES`` present in ``run_dir``."""
    found = []
    for name in RUN_FILES:
        path = run_dir / name
        if name == STEP_DIR:
            if path.is_dir() and any(path.iterdir()):
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def refuse_existing_run(run_dir: Path, found: list[str] | None = None) -> None:
    """Raise if ``run_dir`` holds run files (``found``, by default all of ``run_files``)."""
    found = run_files(run_dir) if found is None else found
    if found:
        raise RunDirError(f"{run_dir} holds a run ({', '.join(found)}); pass --resume {run_dir} "
                          f"to continue it, --overwrite to replace it, or choose another --out")


def remove_run(run_dir: Path, names: list[str]) -> None:
    """Delete the run files ``names`` of an earlier run from ``run_dir``.

    Each is first renamed into one hidden folder (a rename is atomic), so a process killed
    midway leaves run files that are either the old ones or gone, never half-deleted ones; the
    folder (and any left by such a kill) is deleted after."""
    for leftover in run_dir.glob(f"{_REPLACED_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    present = [name for name in names if (run_dir / name).exists()]
    if not present:
        return
    aside = Path(tempfile.mkdtemp(prefix=_REPLACED_PREFIX, dir=run_dir))
    for name in present:
        os.replace(run_dir / name, aside / name)
    shutil.rmtree(aside, ignore_errors=True)


def new_run_id() -> str:
    return secrets.token_hex(8)


def read_run_id(run_dir: Path) -> str | None:
    """The id in ``run_dir/run.json``; None for directories written before run ids."""
    path = run_dir / RUN_ID_NAME
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path}: not a readable run id file ({err})") from None


def write_run_id(run_dir: Path, run_id: str) -> None:
    atomic_write_bytes(run_dir / RUN_ID_NAME, json.dumps({"run_id": run_id}).encode())


def check_belongs(run_dir: Path, checkpoint: Path, checkpoint_run_id: str | None) -> None:
    """Refuse to resume ``run_dir`` from a checkpoint saved by another run. Directories and
    checkpoints from before run ids (no id on either side) cannot be told apart: accepted."""
    owner = read_run_id(run_dir)
    if owner is None or checkpoint_run_id is None or owner == checkpoint_run_id:
        return
    raise RunDirError(f"--resume {run_dir}: its newest checkpoint {checkpoint} was saved by "
                      f"run {checkpoint_run_id}, but {run_dir / RUN_ID_NAME} names run "
                      f"{owner}; the directory mixes two runs: move the foreign checkpoints "
                      f"out, or start a new run with --overwrite")


def resolve_run_dir(path: str | Path) -> Path:
    """The run directory a ``--resume`` path names: the directory itself, its ``checkpoints/``
    folder (what an interrupted run's message used to name), or one of its checkpoint files."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if p.name == STEP_DIR and not run_files(p):
        p = p.parent
    if not p.is_dir():
        raise RunDirError(f"--resume {path}: no such run directory")
    return p


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode()
        owner = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _held_message(run_dir: Path, owner: dict[str, Any]) -> str:
    who = f"pid {owner.get('pid', '?')}"
    if owner.get("host") and owner["host"] != socket.gethostname():
        who += f" on {owner['host']}"
    return (f"{run_dir} is in use by another hfsnet process ({who}); wait for it to finish, or "
            f"choose another --out")


class RunLock:
    """Exclusive right to write one run directory, held from ``acquire`` to ``release``.

    The lock is an ``flock`` on ``DIR/.hfsnet.lock``, which holds the owner's pid and host.
    The kernel drops an flock when its process dies, even by SIGKILL, so a lock file left by a
    dead process is stale by construction: it is taken over, with a note. Where the file
    system has no flock the pid in the file decides (a live process on this host keeps it).
    A directory the lock created is removed on release if the run left nothing in it, so a
    run refused before its first write leaves no empty ``--out`` behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self._created_dir = not self.run_dir.exists()
        while True:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # another process's release removed the empty directory
                continue
            try:
                _lock_or_raise(fd, self.run_dir)
            except BaseException:
                os.close(fd)
                raise
            if _is_current_file(fd, self.path):
                break
            os.close(fd)  # the owner deleted it while releasing: lock the new file instead
        previous = _read_owner(fd)
        if previous.get("pid") not in (None, os.getpid()):
            print(f"hfsnet: note: took over the stale lock {self.path} left by pid "
                  f"{previous['pid']} (no running process holds it)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody holds it meanwhile
        finally:
            os.close(fd)
        if self._created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote there, keep it
                self.run_dir.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_or_raise(fd: int, run_dir: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirError(_held_message(run_dir, _read_owner(fd))) from None
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        owner = _read_owner(fd)  # no flock here: trust a live pid on this host
        pid = owner.get("pid")
        if (isinstance(pid, int) and pid != os.getpid() and _pid_running(pid)
                and owner.get("host") == socket.gethostname()):
            raise RunDirError(_held_message(run_dir, owner)) from None


def _is_current_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def check_unlocked(run_dir: Path) -> None:
    """Raise if another process holds ``run_dir``'s lock; writes nothing (for refusing early,
    before data loading; the writer takes the lock itself)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        _lock_or_raise(fd, Path(run_dir))
    finally:
        os.close(fd)  # closing drops a lock this probe took
