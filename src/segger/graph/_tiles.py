"""Cut a slide into square tiles with a context margin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .._grouping import group_rows


@dataclass(frozen=True)
class Tile:
    """One tile: a core region whose transcripts it predicts, plus a margin used only as context.

    Attributes
    ----------
    index
        Position of the tile in row-major order of the grid.
    bounds
        Core region ``(x_min, y_min, x_max, y_max)`` in µm.
    transcripts
        Indices of the transcripts inside the core region or its margin, sorted.
    core
        Boolean mask over ``transcripts``: True for those whose core region is this tile's.
        Every transcript of the slide is core in exactly one tile.
    shapes
        Indices of the prior shapes whose centroid lies inside the core region or its margin.
    """

    index: int
    bounds: tuple[float, float, float, float]
    transcripts: np.ndarray
    core: np.ndarray
    shapes: np.ndarray

    @property
    def n_core(self) -> int:
        """Number of transcripts that this tile predicts."""
        return int(self.core.sum())


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of tiles over the transcripts' bounding box."""

    origin: tuple[float, float]
    tile_width: tuple[float, float]
    shape: tuple[int, int]
    margin: float

    @classmethod
    def from_positions(cls, xy: np.ndarray, *, tile_size: float, margin: float) -> TileGrid:
        """Spread tiles of at most ``tile_size`` µm evenly over the bounding box of ``xy``."""
        if not tile_size > 0:
            msg = f"tile_size must be positive (µm), got {tile_size}."
            raise ValueError(msg)
        low = xy.min(axis=0)
        extent = np.maximum(xy.max(axis=0) - low, 1e-6)
        counts = np.maximum(np.ceil(extent / tile_size).astype(int), 1)
        width = extent / counts
        return cls(
            origin=(float(low[0]), float(low[1])),
            tile_width=(float(width[0]), float(width[1])),
            shape=(int(counts[0]), int(counts[1])),
            margin=float(margin),
        )

    @property
    def n_tiles(self) -> int:
        """Number of tiles in the grid."""
        return self.shape[0] * self.shape[1]

    def core_tile(self, xy: np.ndarray) -> np.ndarray:
        """Return the index of the tile whose core contains each point."""
        column = np.floor((xy[:, 0] - self.origin[0]) / self.tile_width[0]).astype(np.int64)
        row = np.floor((xy[:, 1] - self.origin[1]) / self.tile_width[1]).astype(np.int64)
        column = np.clip(column, 0, self.shape[0] - 1)
        row = np.clip(row, 0, self.shape[1] - 1)
        return row * self.shape[0] + column

    def bounds(self, index: int) -> tuple[float, float, float, float]:
        """Return the core bounds ``(x_min, y_min, x_max, y_max)`` of tile ``index``."""
        row, column = divmod(index, self.shape[0])
        x_min = self.origin[0] + column * self.tile_width[0]
        y_min = self.origin[1] + row * self.tile_width[1]
        return (x_min, y_min, x_min + self.tile_width[0], y_min + self.tile_width[1])

    def tiles(self, xy: np.ndarray, shape_xy: np.ndarray) -> Iterator[Tile]:
        """Yield the non-empty tiles, each with its transcripts and prior shapes.

        Parameters
        ----------
        xy
            Transcript positions, shape ``(n, 2)``, µm.
        shape_xy
            Prior-shape centroids, shape ``(m, 2)``, µm.
        """
        index = self.index(xy, shape_xy)
        for number in index.non_empty:
            yield index.tile(int(number), xy, shape_xy)

    def index(
        self,
        xy: np.ndarray,
        shape_xy: np.ndarray,
        *,
        allocate: Callable[[int, type[np.integer]], np.ndarray] | None = None,
    ) -> TileIndex:
        """Sort the transcripts by core tile, so that any tile can be cut out on demand.

        Parameters
        ----------
        xy
            Transcript positions, shape ``(n, 2)``, µm.
        shape_xy
            Prior-shape centroids, shape ``(m, 2)``, µm.
        allocate
            Returns an empty array of the given length and integer type for the sorted
            transcript indices, for example a memory map; :func:`numpy.empty` by default.
        """
        dtype = compact_index_dtype(len(xy))
        allocate = allocate or np.empty
        by_core, core_starts = group_rows(
            lambda block: self.core_tile(xy[block]), len(xy), self.n_tiles, lambda n: allocate(n, dtype)
        )
        shape_order = np.argsort(shape_xy[:, 0], kind="stable")
        return TileIndex(
            grid=self,
            by_core=by_core,
            core_starts=core_starts,
            shape_order=shape_order,
            sorted_shape_x=shape_xy[shape_order, 0],
        )


@dataclass(frozen=True)
class TileIndex:
    """The transcripts of a :class:`TileGrid` sorted by core tile, from which tiles are cut on demand.

    It stores one index per transcript, so the tiles of a slide need not be held all at once:
    a tile's transcripts are gathered from its own core and the cores of the tiles around it.

    Attributes
    ----------
    grid
        The tile grid.
    by_core
        Transcript indices sorted by core tile, ascending within a tile.
    core_starts
        Position in ``by_core`` where each tile's core starts, shape ``(n_tiles + 1,)``.
    shape_order, sorted_shape_x
        Prior shapes sorted by centroid x, and those x values.
    """

    grid: TileGrid
    by_core: np.ndarray
    core_starts: np.ndarray
    shape_order: np.ndarray
    sorted_shape_x: np.ndarray

    @property
    def non_empty(self) -> np.ndarray:
        """Indices of the tiles whose core contains at least one transcript, ascending."""
        return np.flatnonzero(np.diff(self.core_starts) > 0)

    def n_core(self, index: int) -> int:
        """Return the number of transcripts in the core of tile ``index``."""
        return int(self.core_starts[index + 1] - self.core_starts[index])

    def tile(self, index: int, xy: np.ndarray, shape_xy: np.ndarray) -> Tile:
        """Return tile ``index`` with the transcripts of its core and margin and its prior shapes.

        Parameters
        ----------
        index
            Tile index in row-major order of the grid.
        xy, shape_xy
            The transcript positions and prior-shape centroids that the index was built from.
        """
        grid = self.grid
        bounds = grid.bounds(index)
        x_min, y_min, x_max, y_max = bounds
        margin = grid.margin

        # A transcript within the margin has its core at most floor(margin / width) + 1 tiles away.
        # That is ceil(margin / width), plus one where the ratio is whole and rounding could move an edge point.
        row, column = divmod(index, grid.shape[0])
        reach_x = int(np.floor(margin / grid.tile_width[0])) + 1
        reach_y = int(np.floor(margin / grid.tile_width[1])) + 1
        columns = np.arange(max(column - reach_x, 0), min(column + reach_x, grid.shape[0] - 1) + 1)
        rows = np.arange(max(row - reach_y, 0), min(row + reach_y, grid.shape[1] - 1) + 1)
        around = (rows[:, None] * grid.shape[0] + columns[None, :]).ravel()
        candidates = np.concatenate(
            [self.by_core[self.core_starts[tile] : self.core_starts[tile + 1]] for tile in around]
        )
        own = np.concatenate([np.full(self.n_core(tile), tile == index, dtype=bool) for tile in around])

        # Points on the slide's far edge are clipped into the last tile's core but can fall
        # outside its half-open bounds, so the core members are kept explicitly.
        # Compared in float64, as the bounds are: float32 positions compared with a Python float
        # would round the bound to float32 instead.
        x, y = xy[candidates, 0].astype(np.float64), xy[candidates, 1].astype(np.float64)
        inside = (x >= x_min - margin) & (x < x_max + margin) & (y >= y_min - margin) & (y < y_max + margin)
        keep = inside | own
        candidates, own = candidates[keep], own[keep]
        order = np.argsort(candidates, kind="stable")
        return Tile(
            index=index,
            bounds=bounds,
            transcripts=candidates[order],
            core=own[order],
            shapes=_inside(shape_xy, self.shape_order, self.sorted_shape_x, bounds, margin),
        )


def compact_index_dtype(n: int) -> type[np.integer]:
    """Return int32 when it can index ``n`` items, int64 otherwise."""
    return np.int32 if n <= np.iinfo(np.int32).max else np.int64


def _inside(
    xy: np.ndarray,
    order: np.ndarray,
    sorted_x: np.ndarray,
    bounds: tuple[float, float, float, float],
    margin: float,
) -> np.ndarray:
    x_min, y_min, x_max, y_max = bounds
    start, stop = np.searchsorted(sorted_x, [x_min - margin, x_max + margin], side="left")
    candidates = order[start:stop]
    y = xy[candidates, 1].astype(np.float64)
    keep = (y >= y_min - margin) & (y < y_max + margin)
    return np.sort(candidates[keep])
