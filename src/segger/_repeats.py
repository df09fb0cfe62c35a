"""Find repeated integer keys, such as transcript ids, without hashing all of them at once.

The values come in blocks from a function that can be called again, so that they may be read
from a file once per pass. Values that increase strictly from block to block are unique, which
one pass shows with no memory beyond a block (the ids of the Xenium sample that the tests read
increase that way). Other values are split by a hash into buckets of about
:data:`BUCKET_SIZE` values, and each bucket is checked on its own in one more pass: equal
values share a bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

BUCKET_SIZE = 1 << 23

_HASH_FACTOR = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Repeats:
    """The repeated values among a set of keys.

    Attributes
    ----------
    n_rows
        Number of values equal to another value.
    example
        One repeated value, or ``None`` when there is none.
    """

    n_rows: int = 0
    example: int | None = None

    def __bool__(self) -> bool:
        return self.n_rows > 0


def find_repeats(
    read_blocks: Callable[[], Iterable[np.ndarray]], n_values: int, *, bucket_size: int | None = None
) -> Repeats:
    """Return the repeated values among the integers that ``read_blocks`` yields.

    Parameters
    ----------
    read_blocks
        Function returning an iterable of integer arrays, all values in order. It is called once
        for the increase check, and once per bucket when the values do not increase.
    n_values
        Total number of values, which sets the number of buckets.
    bucket_size
        Values per bucket; :data:`BUCKET_SIZE` when ``None``.

    Returns
    -------
    The counts and one example, empty when every value is unique.
    """
    if _strictly_increasing(read_blocks()):
        return Repeats()

    n_buckets = max(1, -(-n_values // (bucket_size or BUCKET_SIZE)))
    n_rows, example = 0, None
    for bucket in range(n_buckets):
        values = pd.Series(_bucket_values(read_blocks(), bucket, n_buckets))
        if values.is_unique:
            continue
        repeated = values.duplicated(keep=False)
        n_rows += int(repeated.sum())
        if example is None:
            example = int(values[repeated].iloc[0])
    return Repeats(n_rows, example)


def hash_bucket(values: np.ndarray, n_buckets: int) -> np.ndarray:
    """Return the bucket of each value from the upper bits of a multiplicative hash.

    The hash spreads values in a regular pattern, such as multiples of a power of two, evenly.
    """
    mixed = values.astype(np.uint64) * _HASH_FACTOR
    return (mixed >> np.uint64(32)) % np.uint64(n_buckets)


def _strictly_increasing(blocks: Iterable[np.ndarray]) -> bool:
    """Return whether the values of all ``blocks``, in order, increase strictly."""
    last = None
    for block in blocks:
        if len(block) == 0:
            continue
        if last is not None and not block[0] > last:
            return False
        if not np.all(block[1:] > block[:-1]):
            return False
        last = block[-1]
    return True


def _bucket_values(blocks: Iterable[np.ndarray], bucket: int, n_buckets: int) -> np.ndarray:
    """Return the values of ``blocks`` that fall into ``bucket`` of ``n_buckets``."""
    if n_buckets == 1:
        parts = list(blocks)
    else:
        parts = [block[hash_bucket(block, n_buckets) == bucket] for block in blocks]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(parts)
