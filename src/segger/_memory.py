"""Keep the C allocator from holding freed memory over the phases of a long run."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Ask the C allocator to return freed memory to the operating system.

    glibc keeps memory that Python, numpy and torch have freed in per-thread arenas, so a phase
    that frees large arrays leaves the process's resident memory high for the phases after it.
    ``malloc_trim`` hands the free pages back. Without a C library that has it (macOS, Windows,
    musl) nothing happens.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)
