import numpy as np
import pandas as pd
import pytest

from segger._repeats import find_repeats, hash_bucket


def blocks_of(values: np.ndarray, size: int):
    """Return a function yielding ``values`` in blocks of ``size``, counting how often it is called."""
    calls = []

    def read_blocks():
        calls.append(1)
        return (values[start : start + size] for start in range(0, len(values), size))

    read_blocks.calls = calls
    return read_blocks


def test_increasing_values_take_one_pass():
    values = np.arange(0, 50_000, 3, dtype=np.int64)
    read_blocks = blocks_of(values, 1000)

    assert not find_repeats(read_blocks, len(values), bucket_size=100)
    assert len(read_blocks.calls) == 1


def test_increase_checked_across_block_borders():
    # Each block increases, but the second starts below the end of the first.
    values = np.array([1, 2, 3, 2, 5, 6], dtype=np.int64)

    repeats = find_repeats(blocks_of(values, 3), len(values), bucket_size=2)

    assert (repeats.n_rows, repeats.example) == (2, 2)


@pytest.mark.parametrize("bucket_size", [1, 7, 1000, None])
def test_repeats_match_pandas(bucket_size):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3000, size=2000)
    expected = pd.Series(values)
    read_blocks = blocks_of(values, 128)

    repeats = find_repeats(read_blocks, len(values), bucket_size=bucket_size)

    assert repeats.n_rows == int(expected.duplicated(keep=False).sum())
    assert repeats.example in set(values[expected.duplicated().to_numpy()])
    n_buckets = -(-len(values) // bucket_size) if bucket_size else 1
    assert len(read_blocks.calls) == 1 + n_buckets


def test_unique_values_in_buckets():
    values = np.random.default_rng(1).permutation(10_000).astype(np.int64) * 1024
    with_repeat = np.append(values, values[1234])

    unique = find_repeats(blocks_of(values, 999), len(values), bucket_size=1000)
    repeated = find_repeats(blocks_of(with_repeat, 999), len(with_repeat), bucket_size=1000)

    assert not unique
    assert repeated.n_rows == 2
    assert repeated.example == values[1234]


def test_hash_spreads_patterned_values():
    # Multiples of a power of two fall into one bucket under a plain modulo.
    values = np.arange(10_000, dtype=np.int64) * 1024

    sizes = np.bincount(hash_bucket(values, 10).astype(np.int64), minlength=10)

    assert sizes.min() > 800
