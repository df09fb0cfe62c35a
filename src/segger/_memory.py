"""Keep the C allocator and Arrow's memory pool from holding freed memory over the phases of a long run."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Ask the C allocator and Arrow's default memory pool to return freed memory to the operating system.

    glibc keeps memory that Python, numpy and torch have freed in per-thread arenas, so a phase
    that frees large arrays leaves the process's resident memory high for the phases after it.
    ``malloc_trim`` hands the free pages back. Without a C library that has it (macOS, Windows,
    musl) that step does nothing. Arrow's pool, which holds what parquet reads allocate (the points
    partitions, and the shapes that ``spatialdata.read_zarr`` loads), keeps freed memory in the
    same way until it is asked to release it.
    """
    _release_arrow_pool()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


def _release_arrow_pool() -> None:
    """Return the unused memory of Arrow's default pool to the operating system."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
