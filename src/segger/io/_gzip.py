"""Decompress a gzipped transcripts file into a scratch folder, so that it can be read in blocks."""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import tempfile
import time
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

from .._scratch import check_scratch_dir

logger = logging.getLogger(__name__)

# Bytes decompressed and written at a time.
_COPY_BYTES = 4 * 2**20

_WHOLE = "read a gzipped transcripts file whole into memory"

# Errors that gzip and zlib raise for data that is not gzip or ends early.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def is_gzipped(file: Path) -> bool:
    """Return whether the name of ``file`` ends with ``.gz``."""
    return file.name.endswith(".gz")


def check_reader_scratch_dir(scratch_dir: str | PathLike[str] | None) -> Path | None:
    """Return a reader's ``scratch_dir`` as a path after checking it, or ``None``."""
    if scratch_dir is None:
        return None
    return check_scratch_dir(scratch_dir, without=_WHOLE)


def log_read_whole(file: Path) -> None:
    """Log that the gzipped ``file`` is read whole, and how to read it in blocks instead."""
    logger.info(
        "Reading the gzipped %s whole into memory. For a large file, pass scratch_dir= (--scratch-dir) "
        "to decompress it there and read it in blocks.",
        file.name,
    )


class ReadableFile:
    """A transcripts file that can be read from the middle: the file itself, or a decompressed copy.

    Attributes
    ----------
    path
        The file to read.
    folder
        The folder containing the decompressed copy, ``None`` for a file read in place.
    """

    def __init__(self, path: Path, folder: Path | None = None) -> None:
        self.path = path
        self.folder = folder
        self._has_owner = False

    def keep_while(self, owner: object) -> None:
        """Keep the copy until ``owner`` is garbage-collected or Python exits, then delete its folder.

        ``owner`` should be the function that reads the file's blocks, which every lazy frame
        built from the file refers to.
        """
        if self.folder is not None:
            weakref.finalize(owner, shutil.rmtree, self.folder, ignore_errors=True)
        self._has_owner = True

    def remove(self) -> None:
        """Delete the folder of the copy, if any."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def readable_file(file: Path, scratch_dir: str | PathLike[str] | None) -> Iterator[ReadableFile]:
    """Yield ``file``, or for a gzipped one a decompressed copy in a new folder inside ``scratch_dir``.

    The copy is deleted when the block raises, or when it ends without
    :meth:`ReadableFile.keep_while` having been called. A ValueError raised in the block about
    the copy is raised again with ``file`` and its folder named instead.

    Raises
    ------
    ValueError
        When ``file`` is gzipped and ``scratch_dir`` is ``None``, or when it cannot be
        decompressed (truncated or not gzip).
    OSError
        When the copy cannot be written, for example for lack of space.
    """
    if not is_gzipped(file):
        yield ReadableFile(file)
        return
    if scratch_dir is None:
        msg = f"{file.name} is gzipped and can only be read in blocks once decompressed; pass scratch_dir=."
        raise ValueError(msg)

    folder = Path(tempfile.mkdtemp(prefix="segger-input-", dir=check_reader_scratch_dir(scratch_dir)))
    readable = ReadableFile(folder / file.name.removesuffix(".gz"), folder)
    try:
        decompress(file, readable.path)
        yield readable
    except ValueError as error:
        readable.remove()
        raise ValueError(_name_original(str(error), readable.path, file)) from error
    except BaseException:
        readable.remove()
        raise
    if not readable._has_owner:
        readable.remove()


def broken_gzip(file: Path, error: BaseException) -> ValueError:
    """Return the error for a gzipped ``file`` that could not be decompressed, naming it and the fix."""
    msg = (
        f"{file.name} in {str(file.parent)!r} could not be decompressed: {error}. The file is "
        "incomplete or not gzip data, as after an interrupted download or copy. Copy it again "
        "from the instrument's output, or, if it is plain text, remove the .gz from its name."
    )
    return ValueError(msg)


def unparsable_csv(file: Path, error: BaseException) -> ValueError:
    """Return the error for a CSV ``file``, read whole, that pandas could not parse."""
    msg = (
        f"{file.name} in {str(file.parent)!r} could not be parsed: {error}. Check that the export is "
        "complete and that the file was not edited, or replace it with the instrument's original file."
    )
    return ValueError(msg)


def _name_original(message: str, copy: Path, file: Path) -> str:
    """Return ``message`` about the decompressed ``copy`` with the gzipped ``file`` and its folder named instead."""
    message = message.replace(str(copy.parent), str(file.parent))
    return re.sub(re.escape(copy.name) + r"(?!\.gz)", file.name, message)


def decompress(file: Path, target: Path) -> None:
    """Decompress the gzipped ``file`` into ``target``, a few megabytes at a time.

    Raises
    ------
    ValueError
        When ``file`` is not gzip data or ends before its gzip stream does.
    OSError
        When ``target`` cannot be written.
    """
    start = time.perf_counter()
    try:
        with gzip.open(file, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_BYTES)
    except GZIP_ERRORS as error:
        raise broken_gzip(file, error) from error
    except OSError as error:
        msg = (
            f"Decompressing {file.name} into {target.parent} failed: {error}. The copy takes as much "
            "space as the uncompressed file, often 5 to 10 times the gzipped one; free some space "
            "there, or choose another scratch_dir."
        )
        raise OSError(msg) from error

    logger.info(
        "Decompressed %s (%.1f MB) into %s (%.1f MB) in %.1f s, to read it in blocks.",
        file.name,
        file.stat().st_size / 1e6,
        target,
        target.stat().st_size / 1e6,
        time.perf_counter() - start,
    )
