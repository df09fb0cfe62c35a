import numpy as np
import pytest

from segger._grouping import group_rows, row_blocks


def test_row_blocks_cover_rows_in_order():
    blocks = list(row_blocks(10, size=4))

    assert blocks == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(row_blocks(0, size=4)) == []


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_group_rows_equals_stable_argsort(monkeypatch, block_size):
    monkeypatch.setattr("segger._grouping.BLOCK_ROWS", block_size)
    keys = np.random.default_rng(0).integers(-2, 9, size=500)
    # Key 9 has no rows, so its start equals the end.
    n_groups = 10

    rows, starts = group_rows(lambda block: keys[block], len(keys), n_groups, np.empty)

    with_key = np.flatnonzero(keys >= 0)
    expected = with_key[np.argsort(keys[with_key], kind="stable")]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(starts, np.searchsorted(keys[expected], np.arange(n_groups + 1)))
    assert starts[-2] == starts[-1] == len(with_key)


def test_group_rows_fills_allocated_array():
    keys = np.array([2, 0, -1, 2, 1, 0])
    buffer = np.full(5, -7, dtype=np.int32)

    rows, starts = group_rows(lambda block: keys[block], len(keys), 3, lambda n: buffer[:n])

    assert rows.base is buffer
    assert buffer.tolist() == [1, 5, 4, 0, 3]
    assert starts.tolist() == [0, 2, 3, 5]
