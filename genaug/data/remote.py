"""Datasets behind a URI: `file://` paths, and anything fsspec opens (`s3://`, `gs://`, `memory://`, ...).

A `file://` URI is a local path and is read in place. Any other URI is
copied into a private temp folder, with its layout kept (a folder's class
sub-folders, a Parquet or .npz file's name), read there by the local
readers with all their rules, and the copy removed: ids and labels are
the ones the same data gives on a local disk.

NOTE: a Parquet file whose image cells are paths (not bytes) is read only
on a local disk (or `file://`): the files it names are not copied along.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from genaug.errors import GenaugError, first_line

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(source) -> bool:
    return isinstance(source, str) and bool(_URI.match(source))


def local_path(uri: str) -> Path | None:
    """The path of a `file://` URI; None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme.lower() != "file":
        return None
    if parsed.netloc not in ("", "localhost"):
        raise GenaugError(f"{uri}: a file:// URI names a file on this machine (file:///path), not on host {parsed.netloc}")
    return Path(unquote(parsed.path))


@contextlib.contextmanager
def staged(uri: str, extensions: frozenset[str]) -> Iterator[Path]:
    """A local copy of what `uri` names (a file, or a folder's files with one of `extensions`), removed after."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec is a dependency
        raise GenaugError(f"reading {uri} needs fsspec: pip install fsspec") from None
    try:
        fs, path = url_to_fs(uri)
    except (ImportError, ValueError) as e:  # an unknown scheme, or its driver (s3fs, gcsfs) missing
        raise GenaugError(f"cannot open {uri}: {first_line(e)}") from None
    folder = tempfile.mkdtemp(prefix="genaug-")
    try:
        try:
            if fs.isdir(path):
                target = Path(folder) / "data"
                names = sorted(p for p in fs.find(path) if os.path.splitext(p)[1].lower() in extensions)
                for name in names:
                    rel = os.path.relpath(name, path)
                    if rel.startswith(".."):  # a listing outside the folder asked for
                        continue
                    dest = target / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(name, str(dest))
                target.mkdir(exist_ok=True)
            elif fs.isfile(path):
                target = Path(folder) / os.path.basename(path.rstrip("/"))
                fs.get_file(path, str(target))
            else:
                raise GenaugError(f"no such file or folder: {uri}")
        except OSError as e:
            raise GenaugError(f"cannot read {uri}: {first_line(e)}") from None
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)
