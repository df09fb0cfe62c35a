"""Keep the garbage collector's full collections short during segger's long calls."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
# Whether a block of this process has frozen objects and not yet unfrozen them.
_frozen_by_segger = False


@contextmanager
def existing_objects_frozen() -> Iterator[None]:
    """Leave the objects that exist on entry out of the garbage collector's collections until exit.

    A full collection visits every object that the collector tracks. After torch, Lightning and
    spatialdata are imported there are about 600,000, which took 0.25 s per collection on a
    2-core machine. Prediction makes short-lived objects, shapely points above all, fast enough
    to start a full collection about once a second, so these visits took a fifth of a
    prediction's time. Frozen objects are still freed by reference counting, and cycles among
    them are collected after exit. Nothing is frozen when the collector is disabled, or when the
    caller has frozen objects itself, because leaving this block would unfreeze those too.
    Inside another such block, nothing is done: :func:`gc.get_freeze_count` walks every frozen
    object (30 ms for 600,000), so it is only called when segger has frozen nothing.
    """
    global _frozen_by_segger
    with _lock:
        freeze = gc.isenabled() and not _frozen_by_segger and gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
            _frozen_by_segger = True
    if not freeze:
        yield
        return

    try:
        yield
    finally:
        with _lock:
            gc.unfreeze()
            _frozen_by_segger = False
