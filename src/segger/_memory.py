"""Keep the C allocator from holding freed memory over the phases of a long run."""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger("segger")

# The mallopt parameter number of M_ARENA_MAX in glibc's malloc.h.
_M_ARENA_MAX = -8


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


def share_one_arena() -> bool:
    """Make threads started from now on allocate from glibc's main arena instead of their own.

    Each tile thread would otherwise get an arena of its own, and every arena keeps the freed
    temporaries of its largest tile.

    NOTE: the benefit is not established. On the 5-million-transcript benchmark slide with two
    tile threads, ``segger_predict`` peaked at 2.07 GB with the setting and 2.28 GB without in
    one pair of runs, and at 2.22 and 2.12 GB in another (``benchmarks/arena_predict.py``), which
    is within the run-to-run spread of the prediction peak.

    The setting lasts for the rest of the process. glibc reads it the next time a thread needs a
    new arena, and only while the process has at most 8 arenas (``arena_get2`` in glibc's
    ``malloc/arena.c``). Arenas freed by finished threads are still reused. Nothing happens when the user has set ``MALLOC_ARENA_MAX`` or a
    ``glibc.malloc.arena_max`` tunable, or without glibc.

    Returns
    -------
    Whether the setting was applied.
    """
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    applied = bool(mallopt(_M_ARENA_MAX, 1))
    if applied:
        logger.debug("Tile threads share glibc's main malloc arena (M_ARENA_MAX = 1).")
    return applied
