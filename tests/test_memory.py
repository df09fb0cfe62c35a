import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from segger._memory import release_freed_memory


def anonymous_memory() -> int:
    """Return the process's anonymous resident memory in bytes, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon not found in /proc/self/status")


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads RssAnon from /proc, which only Linux has"
)
def test_release_returns_arrow_pool_memory():
    before = anonymous_memory()
    column = pa.array(np.arange(8_000_000, dtype=np.int64))
    sums = [pc.add(column, step) for step in range(3)]
    allocated = anonymous_memory() - before
    del column, sums
    freed_but_held = anonymous_memory() - before

    release_freed_memory()
    after = anonymous_memory() - before

    # Four arrays of 64 MB each.
    assert allocated > 200e6
    assert pa.total_allocated_bytes() < 1e6
    # Arrow's pool keeps at least part of the freed arrays until it is asked to release them.
    assert freed_but_held > 100e6
    assert after < freed_but_held - 100e6
