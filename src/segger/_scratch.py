"""Keep a run's per-transcript arrays in memory, or as memory-mapped files in a scratch folder."""

from __future__ import annotations

import dataclasses
import mmap
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

T = TypeVar("T")


class ArrayStore:
    """Storage of one run's arrays that have one entry per transcript.

    Without a folder, arrays stay ordinary numpy arrays. With one, each array is written to a
    ``.npy`` file there and read back as a memory map. Its pages then belong to the operating
    system's file cache, which drops them under memory pressure and reads them again when
    needed, so these arrays no longer take the process's own memory.

    Use :meth:`open`, which creates a fresh folder for the run and deletes it afterwards.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder

    @classmethod
    @contextmanager
    def open(cls, scratch_dir: str | PathLike[str] | None) -> Iterator[ArrayStore]:
        """Yield a store in a new folder inside ``scratch_dir``, deleted on exit; in memory for ``None``.

        Raises
        ------
        ValueError, TypeError
            When ``scratch_dir`` is not an existing, writable folder (see :func:`check_scratch_dir`).
        """
        if scratch_dir is None:
            yield cls()
            return

        folder = Path(tempfile.mkdtemp(prefix="segger-", dir=check_scratch_dir(scratch_dir)))
        try:
            yield cls(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def outputs(self) -> ArrayStore:
        """Return a store for arrays that the results read after the run, in a new folder beside this one.

        Unlike this store's folder, it is not deleted when the run ends: :meth:`remove_with` ties
        it to the object that reads the arrays, and :meth:`remove` deletes it at once. A store
        without a folder returns another store without one.
        """
        if self.folder is None:
            return ArrayStore()
        return ArrayStore(Path(tempfile.mkdtemp(prefix="segger-output-", dir=self.folder.parent)))

    def remove_with(self, owner: object) -> None:
        """Delete the folder once ``owner`` is garbage-collected, or when the interpreter exits."""
        if self.folder is not None:
            weakref.finalize(owner, shutil.rmtree, self.folder, ignore_errors=True)

    def remove(self) -> None:
        """Delete the folder and its files. On Linux and macOS, arrays mapped from them stay readable."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def on_disk(self) -> bool:
        """Whether arrays are kept as memory-mapped files."""
        return self.folder is not None

    def keep(self, name: str, array: np.ndarray) -> np.ndarray:
        """Return ``array``, or a read-only memory map of a copy of it written as ``name``."""
        if self.folder is None:
            return array
        path = self._path(name)
        try:
            np.save(path, np.ascontiguousarray(array))
        except OSError as error:
            raise _write_failed(path, error) from error
        return np.load(path, mmap_mode="r")

    def full(self, name: str, shape: int | tuple[int, ...], fill_value: Any, dtype: Any) -> np.ndarray:
        """Return a writable array of ``shape`` filled with ``fill_value``, mapped from a file ``name`` on disk."""
        array = self.empty(name, shape, dtype)
        array[...] = fill_value
        return array

    def empty(self, name: str, shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
        """Return a writable array of ``shape`` whose values the caller sets, mapped from a file ``name`` on disk."""
        if self.folder is None:
            return np.empty(shape, dtype=dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        path = self._path(name)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        # The file is sparse until its pages are written, and writing a page that a full disk
        # cannot hold kills the process with SIGBUS, so the space is reserved first.
        if hasattr(os, "posix_fallocate"):
            try:
                with path.open("r+b") as file:
                    os.posix_fallocate(file.fileno(), 0, path.stat().st_size)
            except OSError as error:
                raise _write_failed(path, error) from error
        return array

    def portable(self, value: T) -> T:
        """Return dataclass ``value`` with the arrays this store maps from disk replaced by :class:`MappedArray`.

        Sent to another process on a machine that can read this store's folder, the result is small
        and :func:`open_mapped` maps the same files there. Fields that are not whole mapped arrays
        of this store, such as arrays in memory, stay as they are.
        """
        changes = {}
        for field in dataclasses.fields(value):
            array = getattr(value, field.name)
            reference = self._reference(array)
            if reference is not None:
                array.flush()
                changes[field.name] = reference
        return dataclasses.replace(value, **changes) if changes else value

    def _reference(self, array: Any) -> MappedArray | None:
        """Return the location of ``array`` when it is a whole C-ordered array mapped from this store's folder."""
        if (
            self.folder is None
            or not isinstance(array, np.memmap)
            or not isinstance(array.base, mmap.mmap)
            or not array.flags.c_contiguous
            or array.filename is None
            or Path(array.filename).resolve().parent != self.folder.resolve()
        ):
            return None
        return MappedArray(path=array.filename, dtype=array.dtype.str, shape=array.shape, offset=array.offset)

    def column(self, name: str) -> Column:
        """Return an array that is built by appending parts, as :class:`Column` describes."""
        return Column(None if self.folder is None else self._path(name))

    def _path(self, name: str) -> Path:
        assert self.folder is not None
        path = self.folder / f"{name}.npy"
        if path.exists():
            msg = f"The scratch array {name!r} was written twice; this is a bug in segger."
            raise RuntimeError(msg)
        return path


@dataclasses.dataclass(frozen=True)
class MappedArray:
    """The location of an array of an :class:`ArrayStore` on disk, to map it again in another process.

    Attributes
    ----------
    path
        The file.
    dtype
        The array's type, as :attr:`numpy.dtype.str`.
    shape
        The array's shape.
    offset
        Bytes before the array's first element in the file.
    """

    path: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    def open(self) -> np.ndarray:
        """Return the array, mapped read-only."""
        return np.memmap(
            self.path, dtype=np.dtype(self.dtype), mode="r", shape=self.shape, offset=self.offset
        )


def open_mapped(value: T) -> T:
    """Return dataclass ``value`` with each :class:`MappedArray` field mapped from its file (see :meth:`ArrayStore.portable`)."""
    changes = {
        field.name: getattr(value, field.name).open()
        for field in dataclasses.fields(value)
        if isinstance(getattr(value, field.name), MappedArray)
    }
    return dataclasses.replace(value, **changes) if changes else value


def file_size(path: str) -> int:
    """Return the size of file ``path`` in bytes, or -1 when it cannot be read, as seen by the process that calls it."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def check_scratch_dir(
    scratch_dir: str | PathLike[str],
    *,
    option: str = "scratch_dir",
    without: str = "keep the per-transcript arrays in memory",
) -> Path:
    """Return ``scratch_dir`` as a path, with ``~`` expanded, after checking that it is a writable folder.

    ``option`` names the setting in messages: ``"scratch_dir"`` for the Python functions, or
    a command-line flag such as ``"--scratch-dir"``. ``without`` describes what happens without the
    setting, to end the messages.

    Raises
    ------
    TypeError
        When it is not a ``str`` or ``os.PathLike`` path.
    ValueError
        When it is empty, not an existing folder, or not writable.
    """
    if option.startswith("-"):
        setting, skip = f"{option} {scratch_dir!r}", f"leave out {option}"
    else:
        setting, skip = f"{option}={scratch_dir!r}", f"pass {option}=None"
    keep = f"{skip} to {without}"
    path = os.fspath(scratch_dir) if isinstance(scratch_dir, str | os.PathLike) else None
    if not isinstance(path, str):
        msg = f"{setting} is not a folder path; give a str or pathlib.Path, or {keep}."
        raise TypeError(msg)
    if not path:
        msg = f"{setting} is empty; give a folder path, or {keep}."
        raise ValueError(msg)

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        msg = f"{setting} is a file, not a folder. Give a folder path, or {keep}."
        raise ValueError(msg)
    if not folder.is_dir():
        msg = f"{setting} is not an existing folder. Create it first, or {keep}."
        raise ValueError(msg)
    if not os.access(folder, os.W_OK | os.X_OK):
        msg = f"{setting} is not writable by this user. Choose a folder you can write to, or {keep}."
        raise ValueError(msg)
    return folder


def _write_failed(path: Path, error: OSError) -> OSError:
    """Return the error for a scratch file that could not be written, naming its folder."""
    msg = (
        f"Writing the scratch array {path.stem!r} to {path.parent.parent} failed: {error}. The scratch "
        "folder needs about 80 bytes per transcript, for example 8 GB for 100 million; free some "
        "space there, choose another scratch_dir, or use none to keep the arrays in memory."
    )
    return OSError(msg)


class Column:
    """An array built from parts appended in order, such as the partitions of a points element.

    In memory the parts are concatenated at the end, as :func:`numpy.concatenate` does. On disk
    each part is written to a raw file as it comes, in the first part's type, and the file is
    mapped read-only by :meth:`finish`.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.parts: list[np.ndarray] = []
        self.file: IO[bytes] | None = None if path is None else path.open("wb")
        self.dtype: np.dtype | None = None
        self.row_shape: tuple[int, ...] = ()
        self.n_rows = 0

    def append(self, part: np.ndarray) -> None:
        """Add ``part`` after the rows appended so far."""
        if self.dtype is None:
            self.dtype, self.row_shape = part.dtype, part.shape[1:]
        self.n_rows += len(part)
        if self.file is None:
            self.parts.append(part)
            return
        try:
            np.ascontiguousarray(part, dtype=self.dtype).tofile(self.file)
        except OSError as error:
            raise _write_failed(self.path, error) from error

    def finish(self) -> np.ndarray:
        """Return the whole array; no part can be appended afterwards."""
        if self.file is not None:
            self.file.close()
        if self.n_rows == 0:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        if self.file is None:
            whole = np.concatenate(self.parts)
            self.parts = []
            return whole
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_rows, *self.row_shape))
