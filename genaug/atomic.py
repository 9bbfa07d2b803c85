"""Output files that appear whole or not at all, and never over an input.

Every file genaug writes goes to a hidden temp file beside its target and
is renamed into place. The temp name is derived from the target (so a later
write can find and remove what a killed run left behind) and fits any
legal file name. `check_output` refuses a target that is one of the
command's inputs, or that is not a regular file or a new name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from genaug import interrupt
from genaug.errors import GenaugError

# Most filesystems cap one name at 255 bytes; the temp name must fit too.
NAME_MAX = 255
# A temp file whose writer is still alive is left alone, unless it is this old
# (its pid may have been reused, or it was written on another host).
STALE_AFTER_SECONDS = 24 * 3600
_KINDS = ("tmp", "old")  # a file being written; a file being replaced, kept until every rename succeeded


def _prefix(target: Path) -> str:
    """`.<name, cut to fit>.<hash of the whole name>.`: the start of every temp name of `target`."""
    name = target.name
    tag = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    # Room for "." + name + "." + tag + "." + pid-random + "." + kind.
    room = NAME_MAX - (1 + 1 + len(tag) + 1 + 20 + 1 + 12 + 1 + 3)
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > room:
        name = raw[:room].decode("utf-8", "ignore")
    return f".{name}.{tag}."


def temp_path(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """A new hidden temp name beside `target` (`kind` 'tmp' or 'old'), unique to this process."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}")
    target = Path(target)
    return target.with_name(f"{_prefix(target)}{os.getpid()}-{uuid.uuid4().hex[:12]}.{kind}")


def commit(tmp: Path, target: Path) -> None:
    """Rename the finished temp file `tmp` over `target`, unless a Ctrl-C came (see genaug.interrupt)."""
    interrupt.check()
    os.replace(tmp, target)


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove what killed writes of `target` left behind; returns the paths removed or restored.

    A stale `.tmp` (its writer is dead, or it is over a day old) is deleted.
    A stale `.old` holds what the target held before an interrupted
    replacement: it is put back when the target is missing, else deleted.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = _prefix(target)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return []
    handled = []
    for name in names:
        owner, _, kind = name[len(prefix) :].partition(".")
        pid = owner.partition("-")[0]
        if kind not in _KINDS or not pid.isdigit():
            continue
        path = folder / name
        try:
            if not _stale(int(pid), path):
                continue
            if kind == "old" and not os.path.lexists(target):
                os.replace(path, target)
            else:
                path.unlink()
            handled.append(path)
        except OSError:
            continue  # cleaning is a courtesy; it never fails a write
    return handled


def _stale(pid: int, path: Path) -> bool:
    if time.time() - path.lstat().st_mtime > STALE_AFTER_SECONDS:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def check_output(output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """`output` as a Path, or a GenaugError when writing it could destroy something.

    Refused: an existing path that is not a regular file (a folder, a
    device, a pipe, a socket, a symbolic link), any path that is one of
    `inputs` (`(role, path)` pairs, e.g. `("--model-path", ckpt)`),
    compared after resolving links and, for existing files, by inode, and
    any path inside an input that is a folder.
    """
    output = Path(output)
    if os.path.lexists(output):
        st = output.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise GenaugError(f"output {output} is a symbolic link; write to a new name or to the file itself")
        if stat.S_ISDIR(st.st_mode):
            raise GenaugError(f"output {output} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise GenaugError(f"output {output} exists and is not a regular file (a device, pipe or socket)")
    for role, src in inputs:
        if src is None or str(src) == "":
            continue
        if _same(output, Path(src)):
            raise GenaugError(f"output {output} would overwrite {role} ({src}); choose another output path")
        if os.path.isdir(src) and _inside(output, Path(src)):
            # Even a new file there changes the dataset (an `-o x.png` would join it).
            raise GenaugError(f"output {output} is inside the {role} folder {src}; write it outside the dataset")
    return output


def _inside(path: Path, folder: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real.startswith(os.path.join(root, ""))


def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)
