"""Tests of the allocator settings in ``segger._memory``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc"
)

# Counts glibc's arenas ("heaps" in malloc_info) before and after four threads allocate.
_SCRIPT = """
import ctypes, re, sys, tempfile, threading
import numpy as np
from segger._memory import share_one_arena

libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p

def n_arenas():
    with tempfile.NamedTemporaryFile(suffix=".xml") as file:
        handle = ctypes.c_void_p(libc.fopen(file.name.encode(), b"w"))
        libc.malloc_info(0, handle)
        libc.fclose(handle)
        return len(re.findall("<heap nr=", open(file.name).read()))

applied = share_one_arena() if sys.argv[1] == "share" else None
before = n_arenas()
threads = [threading.Thread(target=lambda: [np.ones(4000) for _ in range(50)]) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(applied, before, n_arenas())
"""


def _run(mode: str, **env: str) -> tuple[str, int, int]:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    applied, before, after = result.stdout.split()
    return applied, int(before), int(after)


def test_shared_arena_for_new_threads():
    applied, before, after = _run("share")
    assert applied == "True"
    assert after == before

    # Without the setting each thread gets a new arena, unless one freed by an earlier thread waits.
    _, before, after = _run("default")
    assert after > before


def test_shared_arena_skipped_with_env():
    applied, _, _ = _run("share", MALLOC_ARENA_MAX="3")
    assert applied == "False"
