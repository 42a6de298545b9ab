"""A save folder that appears whole or not at all, and never touches a user's files.

:func:`write_folder_atomically` writes a new save into a hidden sibling folder
``.<name>.saving-<pid>-<id>`` and then puts it in place, so that a reader of ``path``
sees the previous save or the new one (or, in the one case below, no save), never the
weights of one beside the ``cfg.json`` of another. A failure or an interrupted write
leaves the previous save untouched.

- ``path`` absent or an empty folder: one ``rename``.
- ``path`` holding a previous save and nothing else: Linux ``renameat2(RENAME_EXCHANGE)``
  swaps the two folders in one step, then the previous save (now in the hidden folder)
  is deleted. Where that call is missing (other systems, some filesystems), the previous
  folder is renamed aside to ``.<name>.replaced-<pid>-<id>`` and the new one renamed in:
  two renames, between which ``path`` is absent. A process killed there leaves no folder
  at ``path``; the next save into ``path`` (:func:`recover`) renames the previous save
  back before it starts.
- ``path`` holding files that no save writes (a user's ``notes.txt``, a folder of
  checkpoints): they are never moved. The new files are renamed into ``path`` one by
  one, ``cfg.json`` last, after the previous ``cfg.json`` was deleted; a reader finds
  the previous save, no save (no ``cfg.json``), or the new one.
- ``path`` a symbolic link to a folder: the save is written through it (into the
  folder it names, whose siblings hold the temporaries); the link is kept.

:func:`write_file_atomically` does the same for one text file (the benchmarks' results and
their resumable per-run files): a hidden sibling file, flushed, then renamed over ``path``.

Temporaries hold nothing but files of a save: the next save into the same parent folder
(and a resume from a checkpoint there) deletes every one whose process no longer runs,
whatever it holds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sae_lens.constants import (
    ACTIVATION_SCALER_CFG_FILENAME,
    ACTIVATION_WHITENING_FILENAME,
    ACTIVATIONS_STORE_STATE_FILENAME,
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)

# Files that belong to one save (an inference save or a training checkpoint): a
# previous save's copy is deleted when a new save lacks it, never kept beside it.
SAVE_FILES = frozenset(
    {
        SAE_CFG_FILENAME,
        SAE_WEIGHTS_FILENAME,
        SPARSITY_FILENAME,
        RUNNER_CFG_FILENAME,
        TRAINER_STATE_FILENAME,
        ACTIVATIONS_STORE_STATE_FILENAME,
        ACTIVATION_SCALER_CFG_FILENAME,
        ACTIVATION_WHITENING_FILENAME,
    }
)

SAVING = "saving"
REPLACED = "replaced"


def write_folder_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a new sibling folder of ``path``, then put it in place.

    Returns ``path``. ``write`` must put every file of the save into the folder it is given.
    """
    path = Path(path)
    target = save_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new = temporary_name(target, SAVING, tag)
    try:
        new.mkdir()
        write(new)
        _fsync_folder(new)
        if not target.exists() or not any(target.iterdir()):
            os.replace(new, target)  # an empty directory is replaced atomically
        elif foreign_entries(target, new):
            _move_files_in(new, target)
            new.rmdir()
        else:
            previous = _swap_into_place(new, target, temporary_name(target, REPLACED, tag))
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path


def write_file_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a hidden sibling file that is flushed to disk and
    then renamed over it: a reader, or the next run after a process killed mid-write, finds
    the previous file or the new one, never part of one. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = temporary_name(path, SAVING, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(new, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(new, path)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    return path


def save_target(path: Path) -> Path:
    """The folder a save into ``path`` writes: ``path``, or the folder its link names.

    Refuses a path that is a file (a save is a folder)."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_dir():
        what = f"it is a link to the file {str(target)!r}" if target != path else "it is a file"
        raise ValueError(f"path={str(path)!r} is invalid: {what}, and a save is a folder")
    return target


def temporary_name(target: Path, kind: str, tag: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{tag}")


def foreign_entries(target: Path, new: Path) -> list[str]:
    """Names in ``target`` that neither the new save (``new``) nor any save writes."""
    return sorted(
        entry.name
        for entry in target.iterdir()
        if entry.name not in SAVE_FILES and not (new / entry.name).exists()
    )


_TEMPORARY = re.compile(rf"^\.(?P<name>.+)\.(?P<kind>{SAVING}|{REPLACED})-(?P<pid>\d+)-[0-9a-f]{{8}}$")


def recover(target: Path) -> None:
    """Undo what killed saves left beside ``target`` (in its parent folder): rename a
    previous save back to its place where the two-rename fallback died between its
    renames, then delete every temporary whose process no longer runs."""
    restored: set[str] = set()
    replaced, saving = [], []
    for entry in target.parent.iterdir() if target.parent.is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and not _process_alive(int(match["pid"])):
            (replaced if match["kind"] == REPLACED else saving).append((entry, match["name"]))
    for entry, name in sorted(replaced, key=lambda item: item[0].stat().st_mtime, reverse=True):
        place = entry.with_name(name)
        if name not in restored and not os.path.lexists(place):
            os.replace(entry, place)
            restored.add(name)
        else:
            _remove(entry)
    for entry, _ in saving:
        _remove(entry)


def _move_files_in(new: Path, target: Path) -> None:
    """Rename the new save's entries into ``target`` beside the user's files: the
    previous ``cfg.json`` is deleted first and the new one renamed in last, so that
    ``target`` never holds a ``cfg.json`` beside the files of another save."""
    (target / SAE_CFG_FILENAME).unlink(missing_ok=True)
    _fsync_directory(target)
    for name in SAVE_FILES - {SAE_CFG_FILENAME}:
        if not (new / name).exists():
            _remove(target / name)  # it described the previous save
    entries = sorted(new.iterdir(), key=lambda entry: entry.name == SAE_CFG_FILENAME)
    for entry in entries:
        if entry.name == SAE_CFG_FILENAME:
            _fsync_directory(target)
        if (target / entry.name).is_dir() and not (target / entry.name).is_symlink():
            shutil.rmtree(target / entry.name)
        os.replace(entry, target / entry.name)
    _fsync_directory(target)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _swap_into_place(new: Path, path: Path, old: Path) -> Path:
    """Put ``new`` at ``path``; return where the previous ``path`` now is."""
    if _exchange(new, path):
        return new  # `new` now names the previous save
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the previous save back
        raise
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    return _LIBC


def _fsync_folder(folder: Path) -> None:
    """Flush the files and the folder, so that a crash after the swap cannot leave the
    new save's names pointing at unwritten data."""
    for entry in folder.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            with open(entry, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_directory(folder)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
