from __future__ import annotations

import numpy as np
import pytest

from segger.graph import TileGrid

# A 20 × 10 µm slide cut into two 10 µm tiles side by side, with a 2 µm margin.
# Tile 0 has the core x in [0, 10) and the margin x in [-2, 12); tile 1 has [10, 20] and [8, 22).
TWO_TILES_XY = np.array(
    [
        [0.0, 0.0],  # 0: corner, core of tile 0
        [20.0, 10.0],  # 1: corner, core of tile 1
        [7.0, 5.0],  # 2: core of tile 0, 3 µm from tile 1
        [9.0, 5.0],  # 3: core of tile 0, inside the margin of tile 1
        [11.5, 5.0],  # 4: core of tile 1, inside the margin of tile 0
        [13.0, 5.0],  # 5: core of tile 1, 3 µm from tile 0
    ]
)
TWO_TILES_SHAPES = np.array(
    [
        [11.0, 5.0],  # 0: core of tile 1, inside the margin of tile 0
        [5.0, 5.0],  # 1: tile 0 only
        [30.0, 5.0],  # 2: beyond every margin
    ]
)


def _two_tiles():
    grid = TileGrid.from_positions(TWO_TILES_XY, tile_size=10.0, margin=2.0)
    return grid, list(grid.tiles(TWO_TILES_XY, TWO_TILES_SHAPES))


def _random_slide(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([0.0, 0.0], [100.0, 60.0], size=(400, 2))


def test_grid_two_tiles_shape():
    grid, tiles = _two_tiles()

    assert grid.shape == (2, 1)
    assert grid.tile_width == (10.0, 10.0)
    assert [tile.index for tile in tiles] == [0, 1]


def test_tiles_hand_placed_transcripts():
    _, (left, right) = _two_tiles()

    assert left.transcripts.tolist() == [0, 2, 3, 4]
    assert left.core.tolist() == [True, True, True, False]
    assert right.transcripts.tolist() == [1, 3, 4, 5]
    assert right.core.tolist() == [True, False, True, True]


def test_tiles_hand_placed_shapes():
    _, (left, right) = _two_tiles()

    assert left.shapes.tolist() == [0, 1]
    assert right.shapes.tolist() == [0]


def test_tiles_n_core():
    _, (left, right) = _two_tiles()

    assert left.n_core == 3
    assert right.n_core == 3


def test_tiles_every_transcript_core_once():
    xy = _random_slide()
    grid = TileGrid.from_positions(xy, tile_size=25.0, margin=5.0)

    counts = np.zeros(len(xy), dtype=int)
    for tile in grid.tiles(xy, np.empty((0, 2))):
        counts[tile.transcripts[tile.core]] += 1

    assert grid.n_tiles == 12
    assert (counts == 1).all()


def test_tiles_core_inside_bounds():
    xy = _random_slide()
    grid = TileGrid.from_positions(xy, tile_size=25.0, margin=5.0)

    # The last tile's upper bound is origin + count · width, which can fall one rounding step
    # short of the slide's maximum.
    tolerance = 1e-9
    for tile in grid.tiles(xy, np.empty((0, 2))):
        x_min, y_min, x_max, y_max = tile.bounds
        core_xy = xy[tile.transcripts[tile.core]]
        assert (core_xy[:, 0] >= x_min - tolerance).all()
        assert (core_xy[:, 0] <= x_max + tolerance).all()
        assert (core_xy[:, 1] >= y_min - tolerance).all()
        assert (core_xy[:, 1] <= y_max + tolerance).all()


def test_tiles_margin_exactly_within_margin():
    xy = _random_slide()
    margin = 5.0
    grid = TileGrid.from_positions(xy, tile_size=25.0, margin=margin)

    for tile in grid.tiles(xy, np.empty((0, 2))):
        x_min, y_min, x_max, y_max = tile.bounds
        # Distance from the core rectangle along each axis; 0 inside it.
        dx = np.maximum.reduce([x_min - xy[:, 0], xy[:, 0] - x_max, np.zeros(len(xy))])
        dy = np.maximum.reduce([y_min - xy[:, 1], xy[:, 1] - y_max, np.zeros(len(xy))])
        within = np.flatnonzero((dx < margin) & (dy < margin))
        assert tile.transcripts.tolist() == within.tolist()


def test_tiles_shapes_by_centroid():
    xy = _random_slide()
    centroids = _random_slide(seed=1)[:50]
    grid = TileGrid.from_positions(xy, tile_size=25.0, margin=5.0)

    for tile in grid.tiles(xy, centroids):
        x_min, y_min, x_max, y_max = tile.bounds
        inside = (
            (centroids[:, 0] >= x_min - 5.0)
            & (centroids[:, 0] < x_max + 5.0)
            & (centroids[:, 1] >= y_min - 5.0)
            & (centroids[:, 1] < y_max + 5.0)
        )
        assert tile.shapes.tolist() == np.flatnonzero(inside).tolist()


def test_grid_widths_spread_evenly():
    xy = np.array([[0.0, 0.0], [25.0, 10.0]])
    grid = TileGrid.from_positions(xy, tile_size=10.0, margin=1.0)

    assert grid.shape == (3, 1)
    assert grid.tile_width == pytest.approx((25.0 / 3, 10.0))
    assert grid.bounds(2) == pytest.approx((50.0 / 3, 0.0, 25.0, 10.0))


def test_grid_origin_at_minimum():
    xy = np.array([[-4.0, 7.0], [6.0, 17.0]])
    grid = TileGrid.from_positions(xy, tile_size=5.0, margin=1.0)

    assert grid.origin == (-4.0, 7.0)
    assert grid.bounds(0) == pytest.approx((-4.0, 7.0, 1.0, 12.0))


def test_grid_bounds_row_major():
    xy = np.array([[0.0, 0.0], [20.0, 20.0]])
    grid = TileGrid.from_positions(xy, tile_size=10.0, margin=1.0)

    # Index 1 is the second column of the first row, index 2 the first column of the second row.
    assert grid.bounds(1) == (10.0, 0.0, 20.0, 10.0)
    assert grid.bounds(2) == (0.0, 10.0, 10.0, 20.0)


def test_core_tile_far_edge_clipped():
    xy = np.array([[0.0, 0.0], [20.0, 20.0]])
    grid = TileGrid.from_positions(xy, tile_size=10.0, margin=1.0)

    assert grid.core_tile(xy).tolist() == [0, 3]


def test_tile_size_larger_than_slide():
    xy = _random_slide()
    grid = TileGrid.from_positions(xy, tile_size=1000.0, margin=5.0)
    tiles = list(grid.tiles(xy, np.empty((0, 2))))

    assert grid.shape == (1, 1)
    assert len(tiles) == 1
    assert tiles[0].transcripts.tolist() == list(range(len(xy)))
    assert tiles[0].core.all()


def test_tiles_skip_empty():
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [29.0, 0.0], [30.0, 1.0]])
    grid = TileGrid.from_positions(xy, tile_size=10.0, margin=1.0)

    assert grid.n_tiles == 3
    assert [tile.index for tile in grid.tiles(xy, np.empty((0, 2)))] == [0, 2]


@pytest.mark.parametrize("tile_size", [0.0, -10.0])
def test_bad_tile_size_raises(tile_size):
    xy = _random_slide()

    with pytest.raises(ValueError, match="tile_size must be positive"):
        TileGrid.from_positions(xy, tile_size=tile_size, margin=5.0)


def test_nan_tile_size_raises():
    xy = _random_slide()

    with pytest.raises(ValueError, match="tile_size must be positive"):
        TileGrid.from_positions(xy, tile_size=float("nan"), margin=5.0)


def test_zero_margin_every_transcript_core():
    xy = np.array([[0.0, 0.0], [5.0, 2.0], [10.0, 5.0]])
    grid = TileGrid.from_positions(xy, tile_size=100.0, margin=0.0)

    counts = np.zeros(len(xy), dtype=int)
    for tile in grid.tiles(xy, np.empty((0, 2))):
        counts[tile.transcripts[tile.core]] += 1

    assert counts.tolist() == [1, 1, 1]


def _tiles_by_definition(xy: np.ndarray, grid: TileGrid) -> dict[int, tuple[list[int], list[bool]]]:
    """Each non-empty tile's transcripts and core mask, found by testing every transcript."""
    core_of = grid.core_tile(xy)
    xy = xy.astype(np.float64)
    tiles = {}
    for index in np.unique(core_of):
        x_min, y_min, x_max, y_max = grid.bounds(int(index))
        m = grid.margin
        within = (
            (xy[:, 0] >= x_min - m)
            & (xy[:, 0] < x_max + m)
            & (xy[:, 1] >= y_min - m)
            & (xy[:, 1] < y_max + m)
        )
        members = np.flatnonzero(within | (core_of == index))
        tiles[int(index)] = (members.tolist(), (core_of[members] == index).tolist())
    return tiles


@pytest.mark.parametrize(("tile_size", "margin"), [(10.0, 1.0), (10.0, 25.0), (7.0, 7.0), (3.0, 40.0)])
def test_tiles_equal_definition_any_margin(tile_size, margin):
    rng = np.random.default_rng(3)
    xy = rng.uniform([0.0, 0.0], [100.0, 60.0], size=(600, 2))
    # A third of the points sit exactly on tile borders, in float32 as graph positions are.
    on_border = rng.random(len(xy)) < 1 / 3
    xy[on_border] = np.round(xy[on_border] / tile_size) * tile_size
    xy = xy.astype(np.float32)
    grid = TileGrid.from_positions(xy, tile_size=tile_size, margin=margin)
    # More points lie on the float32 values nearest to each margin's edge and on either side of
    # it. A comparison in float32 would put some of them on the wrong side.
    bounds = np.array([grid.bounds(i) for i in range(grid.n_tiles)])
    edges = bounds + np.array([-margin, -margin, margin, margin])
    nearest = edges.astype(np.float32)
    near = np.concatenate([nearest, *(np.nextafter(nearest, sign * np.inf) for sign in (-1, 1))])
    xy = np.concatenate([xy, near[:, [0, 1]], near[:, [2, 3]]]).astype(np.float32)
    xy = xy[(xy >= xy[:600].min(axis=0)).all(axis=1) & (xy <= xy[:600].max(axis=0)).all(axis=1)]
    grid = TileGrid.from_positions(xy, tile_size=tile_size, margin=margin)

    expected = _tiles_by_definition(xy, grid)
    tiles = {
        tile.index: (tile.transcripts.tolist(), tile.core.tolist())
        for tile in grid.tiles(xy, np.empty((0, 2)))
    }

    assert tiles == expected


def test_tile_index_cuts_tiles_on_demand():
    xy = _random_slide()
    centroids = _random_slide(seed=1)[:50]
    grid = TileGrid.from_positions(xy, tile_size=25.0, margin=5.0)
    index = grid.index(xy, centroids)

    assert index.non_empty.tolist() == [tile.index for tile in grid.tiles(xy, centroids)]
    assert sum(index.n_core(int(number)) for number in index.non_empty) == len(xy)
    # Tiles cut in reverse order equal those of the iterator.
    for tile in reversed(list(grid.tiles(xy, centroids))):
        cut = index.tile(tile.index, xy, centroids)
        assert cut.bounds == tile.bounds
        np.testing.assert_array_equal(cut.transcripts, tile.transcripts)
        np.testing.assert_array_equal(cut.core, tile.core)
        np.testing.assert_array_equal(cut.shapes, tile.shapes)
