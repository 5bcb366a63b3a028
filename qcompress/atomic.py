"""Outputs that appear complete or not at all.

Each output is written to a hidden temporary file in its destination folder (so the final rename
stays on one filesystem and is atomic), and renamed into place only after every output of the
command is complete. On any error, Ctrl-C or SIGTERM the temporaries are removed and nothing at the
destination changes.

Outputs are regular files or new paths: a device node, FIFO, socket or folder at an output path
is refused even with ``--force`` (replacing ``/dev/null`` with a file would break the system).
Without ``--force`` the final rename never replaces a file that appeared after the check (another
run writing the same path): on Linux it is ``renameat2(RENAME_NOREPLACE)``; elsewhere, or on a
file system that refuses that flag, ``link()`` then ``unlink()`` of the temporary, which fails
if the name exists. Where neither works (a file system without hard links, e.g. FAT, or one
that lacks both) the rename falls back to a check then ``os.replace``, which leaves a window of
microseconds in which a file created by another process can be replaced.

Errors while writing name the output the user gave, never the hidden temporary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qcompress.errors import QCompressError, UsageError

# Longest file name most file systems allow, in bytes. A temporary's name is ".", a prefix of
# the output's name, "." and mkstemp's 8 random characters and ".tmp"; the prefix is cut to fit.
_NAME_MAX = 255
_TEMP_OVERHEAD = len(".") + len(".") + 8 + len(".tmp")
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


class Terminated(BaseException):
    """Raised inside the process by SIGTERM so that cleanup runs as it does for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shown(path: Path | str) -> str:
    """A path as messages show it: on one line (a newline in a name is escaped as ``\\n``)."""
    return str(path).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def check_outputs(outputs: list[Path], inputs: list[Path], force: bool) -> None:
    """Refuse an output that is an input, that appears twice, that exists without --force, or
    that is not a regular file (device node, FIFO, socket, folder) even with --force."""
    resolved_inputs = {p.resolve() for p in inputs}
    seen: set[Path] = set()
    for out in outputs:
        r = out.resolve()
        if r in resolved_inputs:
            raise UsageError(
                f"{shown(out)}: refusing to overwrite the input; choose another output path"
            )
        if r in seen:
            raise UsageError(f"{shown(out)}: given for two outputs; choose distinct paths")
        seen.add(r)
        try:
            mode = out.stat().st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise UsageError(f"{shown(out)}: cannot check the output: {exc.strerror}") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise UsageError(f"{shown(out)}: is a directory; give a file path")
        if mode is not None and not stat.S_ISREG(mode):
            raise UsageError(
                f"{shown(out)}: is a {_kind(mode)}, not a regular file; qcompress never "
                "replaces one (even with --force); give a file path"
            )
        if mode is not None and not force:
            raise UsageError(f"{shown(out)}: already exists; pass --force to overwrite it")
        if not out.parent.is_dir():
            raise UsageError(f"{shown(out)}: folder {shown(out.parent)} does not exist")


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"


def temp_prefix(name: str) -> str:
    """``.NAME.`` with NAME cut (at a character boundary) so the whole temporary name fits
    ``_NAME_MAX`` bytes even for output names near that limit."""
    budget = _NAME_MAX - _TEMP_OVERHEAD
    raw = name.encode("utf-8", "surrogateescape")[:budget]
    return "." + raw.decode("utf-8", "ignore") + "."


@contextlib.contextmanager
def atomic_outputs(outputs: list[Path], force: bool | None = None) -> Iterator[list[Path]]:
    """Yield temporary paths for ``outputs``; rename all into place only if the block succeeds.

    With ``force=False`` an output that appeared since ``check_outputs`` is never replaced: the
    command fails naming it, and outputs this call already renamed into place are removed again.
    ``None`` replaces only the outputs that existed when the block began. An error raised in
    the block that names a temporary is re-raised naming its output, and an OSError (disk full,
    I/O error) becomes a UsageError naming the output."""
    temps: list[Path] = []
    existing = {out for out in outputs if os.path.lexists(out)}
    previous = None
    with contextlib.suppress(
        ValueError
    ):  # not the main thread: no signal handler, cleanup still runs
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for out in outputs:
            try:
                fd, name = tempfile.mkstemp(
                    prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent
                )
            except OSError as exc:
                raise UsageError(f"{shown(out)}: cannot write: {exc.strerror or exc}") from None
            os.close(fd)
            temps.append(Path(name))
        try:
            yield temps
        except QCompressError as exc:
            renamed = _renamed(str(exc), temps, outputs)
            if renamed is None:
                raise
            raise type(exc)(renamed) from exc
        except OSError as exc:
            raise UsageError(_os_message(exc, temps, outputs)) from exc
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give outputs the usual permissions
        placed: list[Path] = []
        for tmp, out in zip(temps, outputs, strict=True):
            replace = force if force is not None else out in existing
            try:
                os.chmod(tmp, mode)
                _rename(tmp, out, replace=replace)
            except OSError as exc:
                for new in placed:  # all or nothing: take back the new files of this command
                    with contextlib.suppress(OSError):
                        new.unlink()
                if isinstance(exc, FileExistsError):
                    raise UsageError(
                        f"{shown(out)}: appeared while qcompress was writing it (another run?); "
                        "nothing replaced it; pass --force to overwrite it"
                    ) from None
                raise UsageError(f"{shown(out)}: cannot write: {exc.strerror or exc}") from None
            if not replace:
                placed.append(out)
        temps = []
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _renamed(message: str, temps: list[Path], outputs: list[Path]) -> str | None:
    """``message`` with every temporary's path replaced by its output's; None if it names none."""
    hit = False
    for tmp, out in zip(temps, outputs, strict=False):
        for form in (str(tmp), tmp.name):
            if form in message:
                message = message.replace(form, shown(out) if form == str(tmp) else out.name)
                hit = True
    return message if hit else None


def _os_message(exc: OSError, temps: list[Path], outputs: list[Path]) -> str:
    """One line naming the output an OSError was about (the first output if it names none)."""
    target = outputs[0] if outputs else Path(str(exc.filename or "output"))
    for tmp, out in zip(temps, outputs, strict=False):
        if exc.filename is not None and str(exc.filename) == str(tmp):
            target = out
    what = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        what = "no space left on the device; free some space or write elsewhere"
    return f"{shown(target)}: cannot write: {what}"


def _rename(tmp: Path, out: Path, replace: bool) -> None:
    """Move ``tmp`` to ``out``; unless ``replace``, FileExistsError if ``out`` exists."""
    if replace:
        os.replace(tmp, out)
        return
    if _renameat2_noreplace(tmp, out):
        return
    try:
        os.link(tmp, out)  # fails with FileExistsError if ``out`` exists
    except FileExistsError:
        raise
    except OSError:
        # No hard links here either: a check then a rename (see the module docstring).
        if os.path.lexists(out):
            raise FileExistsError(errno.EEXIST, "File exists", str(out)) from None
        os.replace(tmp, out)
        return
    os.unlink(tmp)


def _renameat2_noreplace(tmp: Path, out: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``: True if it moved the file; FileExistsError if ``out``
    exists; False when the call or flag is unavailable (not Linux, old kernel or libc, a file
    system that does not support the flag), so the caller falls back."""
    func = _libc_renameat2()
    if func is None:
        return False
    rc = func(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(out), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(out))
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(out))


_RENAMEAT2: list[object] = []


def _libc_renameat2() -> Any:
    """libc's ``renameat2``, looked up once; None where there is none (glibc < 2.28, macOS).
    ctypes is imported here, by the first rename: every command that opens a file imports this
    module, and ctypes costs start-up time that ``inspect`` does not need."""
    import ctypes
    import ctypes.util

    if not _RENAMEAT2:
        func = None
        with contextlib.suppress(OSError, AttributeError, TypeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            func = libc.renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
            func.argtypes += [ctypes.c_uint]
            func.restype = ctypes.c_int
        _RENAMEAT2.append(func)
    return _RENAMEAT2[0]  # type: ignore[return-value]
