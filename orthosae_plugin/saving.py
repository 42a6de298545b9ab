"""A save folder that appears whole or not at all.

:func:`write_folder_atomically` writes a new save into a hidden sibling folder and then
swaps it into place, so that a reader of ``path`` sees either the previous save or the
new one, never the weights of one beside the ``cfg.json`` of the other, and a failure or
an interrupted write leaves the previous save untouched.

- ``path`` absent or empty: one ``rename`` (POSIX replaces an empty directory).
- ``path`` holding a previous save: Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two
  folders in one step; where that call is missing (other systems, some filesystems) the
  previous folder is renamed aside and the new one renamed in, two renames with a
  moment between them in which ``path`` is absent (a reader then finds no save, never a
  mixed one). Entries of the previous folder that are not files of the save itself
  (anything but ``cfg.json``, the weights, ``sparsity.safetensors`` and
  ``runner_cfg.json``, which describe the old save) are moved into the new folder, so a
  user's own files in ``path`` survive. The previous folder is then deleted.
- Any failure before the swap deletes the temporary folder and re-raises. A process
  killed before the swap leaves a hidden ``.<name>.saving-<pid>-<id>`` sibling holding
  only files of the unfinished save; the next save into ``path`` deletes such folders
  when their process no longer runs and they hold nothing but save files. A process
  killed after the swap and before the previous folder is deleted leaves the previous
  save in such a sibling, with any of the user's files not yet moved (then it is kept).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sae_lens.constants import RUNNER_CFG_FILENAME, SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME

# Files that belong to one save: they are never carried from a previous save into a new one.
SAVE_FILES = frozenset({SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME})

_SAVING = "saving"
_REPLACED = "replaced"


def write_folder_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a new sibling folder of ``path``, then swap it into place.

    Returns ``path``. ``write`` must put every file of the save into the folder it is given.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path={str(path)!r} is invalid: it is a file, and a save is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    new = path.with_name(f".{path.name}.{_SAVING}-{tag}")
    try:
        new.mkdir()
        write(new)
        _fsync_folder(new)
        if not path.exists() or not any(path.iterdir()):
            os.replace(new, path)  # an empty directory is replaced atomically
        else:
            previous = _swap_into_place(new, path, path.with_name(f".{path.name}.{_REPLACED}-{tag}"))
            _carry_over_foreign_entries(previous, path)
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path


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


def _carry_over_foreign_entries(old: Path, path: Path) -> None:
    for entry in old.iterdir():
        if entry.name not in SAVE_FILES and not (path / entry.name).exists():
            os.replace(entry, path / entry.name)


def _fsync_folder(folder: Path) -> None:
    """Flush the files and the folder, so that a crash after the swap cannot leave the
    new save's names pointing at unwritten data."""
    for entry in folder.iterdir():
        if entry.is_file():
            with open(entry, "rb") as handle:
                os.fsync(handle.fileno())
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


def _remove_abandoned_temporaries(path: Path) -> None:
    """Delete ``.<name>.saving-<pid>-<id>`` siblings whose process is gone and that hold
    nothing but files of a save (never a user's own files)."""
    prefix = f".{path.name}.{_SAVING}-"
    for entry in path.parent.glob(prefix + "*"):
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _process_alive(int(pid_text)) or not entry.is_dir():
            continue
        if all(child.name in SAVE_FILES for child in entry.iterdir()):
            shutil.rmtree(entry, ignore_errors=True)


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
