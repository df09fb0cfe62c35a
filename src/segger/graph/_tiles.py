"""Cut a slide into square tiles with a context margin."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


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
        core_of = self.core_tile(xy)
        # Every tile's indices stay alive during prediction, so they take half the space where they fit.
        index_dtype = compact_index_dtype(len(xy))
        order = np.argsort(xy[:, 0], kind="stable")
        sorted_x = xy[order, 0]
        shape_order = np.argsort(shape_xy[:, 0], kind="stable")
        sorted_shape_x = shape_xy[shape_order, 0]

        by_core = np.argsort(core_of, kind="stable")
        core_starts = np.searchsorted(core_of[by_core], np.arange(self.n_tiles + 1))

        for index in range(self.n_tiles):
            x_min, y_min, x_max, y_max = self.bounds(index)
            transcripts = _inside(xy, order, sorted_x, (x_min, y_min, x_max, y_max), self.margin)
            # Points on the slide's far edge are clipped into the last tile's core but can fall
            # outside its half-open bounds, so the core members are joined in explicitly.
            own_core = by_core[core_starts[index] : core_starts[index + 1]]
            transcripts = np.union1d(transcripts, own_core).astype(index_dtype)
            core = core_of[transcripts] == index
            if not core.any():
                continue
            shapes = _inside(shape_xy, shape_order, sorted_shape_x, (x_min, y_min, x_max, y_max), self.margin)
            yield Tile(
                index=index,
                bounds=(x_min, y_min, x_max, y_max),
                transcripts=transcripts,
                core=core,
                shapes=shapes,
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
    y = xy[candidates, 1]
    keep = (y >= y_min - margin) & (y < y_max + margin)
    return np.sort(candidates[keep])
