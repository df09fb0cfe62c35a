"""Property-based tests of tiling and tile-graph building on generated slides.

Transcripts are spread out, clustered, collinear, stacked on a few spots, or far from the
origin. Prior shapes are boxes and discs near the transcripts or far from all of them. Each
property cuts such a slide into tiles the way ``segger.tl`` does, builds every tile's graph and
checks the invariants that the docstrings of :class:`~segger.graph.TileGrid` and
:func:`~segger.graph.build_tile_graph` promise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from segger.graph import (
    BD,
    CANDIDATE,
    TX,
    TX_BD,
    TX_TX,
    GraphInputs,
    GraphSettings,
    Tile,
    TileGrid,
    build_tile_graph,
    shape_features,
)

PROPERTY_SETTINGS = settings(max_examples=30, deadline=None)


@dataclass
class Slide:
    """A generated slide: graph inputs, settings, the tile grid and one graph per tile."""

    inputs: GraphInputs
    settings: GraphSettings
    grid: TileGrid
    tiles: list[Tile]
    graphs: list


def tolerance(positions: np.ndarray) -> float:
    """Slack for comparing distances that scipy and numpy compute in different orders."""
    return 1e-9 * max(1.0, float(np.abs(positions).max()))


@st.composite
def transcript_positions(draw) -> np.ndarray:
    """Positions of shape ``(n, 3)`` in µm for 1 to 60 transcripts."""
    n = draw(st.integers(1, 60))
    layout = draw(st.sampled_from(["uniform", "clustered", "collinear", "stacked"]))
    extent = draw(st.sampled_from([0.5, 20.0, 150.0]))
    origin = draw(st.sampled_from([0.0, -75.0, 1e6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    if layout == "uniform":
        xy = rng.uniform(0.0, extent, size=(n, 2))
    elif layout == "clustered":
        centers = rng.uniform(0.0, extent, size=(draw(st.integers(1, 4)), 2))
        xy = centers[rng.integers(len(centers), size=n)] + rng.normal(0.0, 0.5, size=(n, 2))
    elif layout == "collinear":
        direction = rng.normal(size=2)
        direction /= max(np.linalg.norm(direction), 1e-12)
        xy = rng.uniform(0.0, extent, size=(n, 1)) * direction
    else:
        # Exact duplicates: every transcript sits on one of a few spots.
        spots = rng.uniform(0.0, extent, size=(draw(st.integers(1, 3)), 2))
        xy = spots[rng.integers(len(spots), size=n)]

    z = rng.uniform(0.0, 8.0, size=(n, 1)) if draw(st.booleans()) else np.zeros((n, 1))
    return np.hstack([xy + origin, z])


@st.composite
def prior_shapes(draw, positions: np.ndarray) -> np.ndarray:
    """Zero to eight boxes and discs, centred on transcripts or far from all of them."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    polygons = []
    for _ in range(draw(st.integers(0, 8))):
        center = positions[rng.integers(len(positions)), :2] + rng.normal(0.0, 2.0, size=2)
        if draw(st.integers(0, 3)) == 0:
            center = center + 1e4
        radius = draw(st.floats(0.3, 15.0))
        if draw(st.booleans()):
            polygons.append(shapely.box(*(center - radius), *(center + radius)))
        else:
            polygons.append(shapely.Point(center).buffer(radius))
    return np.asarray(polygons, dtype=object)


@st.composite
def graph_settings(draw) -> dict:
    """Keyword arguments of GraphSettings within their valid ranges, max_shape_radius excepted."""
    return {
        "k_tx": draw(st.integers(1, 8)),
        "dist_tx": draw(st.one_of(st.sampled_from([1.0, 5.0]), st.floats(0.1, 30.0))),
        "k_bd": draw(st.integers(1, 6)),
        "dist_bd": draw(st.one_of(st.sampled_from([5.0, 12.0, 40.0]), st.floats(0.1, 40.0))),
        "n_negatives": draw(st.integers(0, 5)),
        "num_layers": draw(st.integers(1, 3)),
    }


@st.composite
def slides(draw) -> Slide:
    positions = draw(transcript_positions())
    polygons = draw(prior_shapes(positions))
    options = draw(graph_settings())
    tile_size = draw(st.one_of(st.sampled_from([2.0, 10.0, 40.0]), st.floats(1.0, 200.0)))

    # The first shape in index order that contains a transcript is its prior shape, as in the
    # point-in-polygon fallback of segger.tl.
    prior_index = np.full(len(positions), -1, dtype=np.int64)
    for shape in reversed(range(len(polygons))):
        inside = shapely.contains_xy(polygons[shape], positions[:, 0], positions[:, 1])
        prior_index[inside] = shape
    if len(polygons):
        centroids = shapely.get_coordinates(shapely.centroid(polygons))
        features = shape_features(polygons)
        # Twice the minimum bounding radius bounds the distance from the centroid to any point of
        # the shape, the same bound that segger.tl passes.
        max_radius = float(2 * shapely.minimum_bounding_radius(polygons).max())
    else:
        centroids = np.zeros((0, 2))
        features = np.zeros((0, 4), dtype=np.float32)
        max_radius = 0.0

    graph_options = GraphSettings(**options, max_shape_radius=max_radius)
    inputs = GraphInputs(
        positions=positions,
        tokens=np.arange(len(positions), dtype=np.int64) % 5 + 1,
        prior_index=prior_index,
        shape_centroids=centroids,
        shape_features=features,
    )
    grid = TileGrid.from_positions(positions[:, :2], tile_size=tile_size, margin=graph_options.margin)
    tiles = list(grid.tiles(positions[:, :2], centroids))
    graphs = [build_tile_graph(inputs, tile, graph_options) for tile in tiles]
    return Slide(inputs=inputs, settings=graph_options, grid=grid, tiles=tiles, graphs=graphs)


@PROPERTY_SETTINGS
@given(slide=slides())
def test_tile_cores_partition_transcripts(slide):
    n = slide.inputs.n_transcripts
    xy = slide.inputs.positions[:, :2]
    core_members = np.concatenate([tile.transcripts[tile.core] for tile in slide.tiles])

    assert len(core_members) == n
    assert np.array_equal(np.sort(core_members), np.arange(n))
    core_tile = slide.grid.core_tile(xy)
    for tile in slide.tiles:
        assert tile.core.any()
        assert np.array_equal(tile.transcripts, np.unique(tile.transcripts))
        assert (core_tile[tile.transcripts[tile.core]] == tile.index).all()
        assert (core_tile[tile.transcripts[~tile.core]] != tile.index).all()


@PROPERTY_SETTINGS
@given(slide=slides())
def test_tile_shapes_within_margin(slide):
    margin = slide.grid.margin
    centroids = slide.inputs.shape_centroids
    for tile in slide.tiles:
        x_min, y_min, x_max, y_max = tile.bounds
        in_reach = (
            (centroids[:, 0] >= x_min - margin)
            & (centroids[:, 0] < x_max + margin)
            & (centroids[:, 1] >= y_min - margin)
            & (centroids[:, 1] < y_max + margin)
        )

        assert tile.shapes.tolist() == np.flatnonzero(in_reach).tolist()


@PROPERTY_SETTINGS
@given(slide=slides())
def test_graph_nodes_match_tile(slide):
    inputs = slide.inputs
    for tile, data in zip(slide.tiles, slide.graphs, strict=True):
        assert data[TX].x.tolist() == inputs.tokens[tile.transcripts].tolist()
        assert np.array_equal(data[TX].pos.numpy(), inputs.positions[tile.transcripts])
        assert data[TX].index.tolist() == tile.transcripts.tolist()
        assert data[TX].core.tolist() == tile.core.tolist()
        assert tuple(data[BD].x.shape) == (len(tile.shapes), inputs.shape_features.shape[1])
        assert data[BD].index.tolist() == tile.shapes.tolist()


@PROPERTY_SETTINGS
@given(slide=slides())
def test_tx_edges_nearest_within_distance(slide):
    config = slide.settings
    positions = slide.inputs.positions
    slack = tolerance(positions)

    for tile, data in zip(slide.tiles, slide.graphs, strict=True):
        sources, targets = data[TX_TX].edge_index.numpy()
        n_tile = len(tile.transcripts)
        tile_positions = positions[tile.transcripts]
        lengths = np.linalg.norm(tile_positions[sources] - tile_positions[targets], axis=1)

        assert ((sources >= 0) & (sources < n_tile)).all()
        assert ((targets >= 0) & (targets < n_tile)).all()
        assert (sources != targets).all()
        assert len(set(zip(sources.tolist(), targets.tolist(), strict=True))) == len(sources)
        assert (lengths <= config.dist_tx + slack).all()

        for target in range(n_tile):
            incoming = sources[targets == target]
            assert len(incoming) <= config.k_tx
            if not tile.core[target]:
                continue
            # The tile margin is wider than dist_tx, so the tile contains every neighbour of a core
            # transcript, which receives min(k_tx, neighbours) edges from the nearest ones.
            global_target = tile.transcripts[target]
            distances = np.linalg.norm(positions - positions[global_target], axis=1)
            distances[global_target] = np.inf
            n_surely_within = int((distances < config.dist_tx - slack).sum())
            n_maybe_within = int((distances <= config.dist_tx + slack).sum())
            assert min(config.k_tx, n_surely_within) <= len(incoming)
            assert len(incoming) <= min(config.k_tx, n_maybe_within)
            chosen = distances[tile.transcripts[incoming]]
            others = np.delete(distances, np.concatenate([tile.transcripts[incoming], [global_target]]))
            if len(chosen) and len(others):
                assert chosen.max() <= others.min() + slack


@PROPERTY_SETTINGS
@given(slide=slides())
def test_belongs_edges_follow_prior_shape(slide):
    for tile, data in zip(slide.tiles, slide.graphs, strict=True):
        local_shape = {shape: position for position, shape in enumerate(tile.shapes.tolist())}
        expected = [
            (position, local_shape[prior])
            for position, prior in enumerate(slide.inputs.prior_index[tile.transcripts].tolist())
            if prior in local_shape
        ]
        edges = list(zip(*data[TX_BD].edge_index.tolist(), strict=True))

        assert edges == expected
        # The margin covers max_shape_radius, so a core transcript's prior shape is always in its tile.
        core_priors = slide.inputs.prior_index[tile.transcripts[tile.core]]
        assert all(prior in local_shape for prior in core_priors[core_priors >= 0].tolist())


@PROPERTY_SETTINGS
@given(slide=slides())
def test_candidate_edges_nearest_shapes(slide):
    config = slide.settings
    inputs = slide.inputs
    slack = tolerance(inputs.positions)

    for tile, data in zip(slide.tiles, slide.graphs, strict=True):
        sources, targets = data[CANDIDATE].edge_index.numpy()
        labels = data[CANDIDATE].edge_label.numpy()
        ranks = data[CANDIDATE].rank.numpy()
        n_tile_shapes = len(tile.shapes)
        # build_tile_graph keeps n_negatives + 1 shapes when that exceeds k_bd, so that training
        # has negatives.
        k = min(max(config.k_bd, config.n_negatives + 1), n_tile_shapes)

        assert ((targets >= 0) & (targets < n_tile_shapes)).all()
        assert tile.core[sources].all()
        assert len(set(zip(sources.tolist(), targets.tolist(), strict=True))) == len(sources)
        assert (np.diff(sources * (k + 2) + ranks) >= 0).all()

        tile_centroids = inputs.shape_centroids[tile.shapes]
        for position in np.flatnonzero(tile.core):
            transcript = tile.transcripts[position]
            mine = sources == position
            my_targets, my_labels, my_ranks = targets[mine], labels[mine], ranks[mine]
            prior = inputs.prior_index[transcript]
            owner = int(np.flatnonzero(tile.shapes == prior)[0]) if prior >= 0 else -1

            assert (my_labels == (my_targets == owner)).all()
            if owner >= 0:
                assert (my_targets == owner).sum() == 1
            # The nearest shapes have ranks 0, 1, 2 and so on. An owner added beyond them repeats rank 0.
            xy = inputs.positions[transcript, :2]
            distances = np.linalg.norm(tile_centroids - xy, axis=1)
            only_owner_beyond = (
                len(my_targets) == 1 and my_targets[0] == owner and distances[owner] >= config.dist_bd - slack
            )
            added_owner = (my_ranks == 0).sum() == 2 or only_owner_beyond
            queried = np.ones(len(my_targets), dtype=bool)
            if added_owner:
                owner_edge = np.flatnonzero((my_targets == owner) & (my_ranks == 0))
                assert len(owner_edge) == 1
                queried[owner_edge] = False
            assert sorted(my_ranks[queried].tolist()) == list(range(int(queried.sum())))

            queried_distances = distances[my_targets[queried]]
            assert (queried_distances <= config.dist_bd + slack).all()
            all_distances = np.linalg.norm(inputs.shape_centroids - xy, axis=1)
            n_surely_within = int((all_distances < config.dist_bd - slack).sum())
            n_maybe_within = int((all_distances <= config.dist_bd + slack).sum())
            assert min(k, n_surely_within) <= queried.sum() <= min(k, n_maybe_within)
            if added_owner:
                assert queried.sum() == k or distances[owner] >= config.dist_bd - slack
            others = np.delete(distances, my_targets[queried])
            if queried.any() and len(others):
                assert queried_distances.max() <= others.min() + slack

        assert not np.isin(np.flatnonzero(~tile.core), sources).any()


def test_tx_edges_stacked_transcripts():
    # Five transcripts on one spot, k_tx = 2: each should receive 2 edges.
    positions = np.zeros((5, 3))
    inputs = GraphInputs(
        positions=positions,
        tokens=np.ones(5, dtype=np.int64),
        prior_index=np.full(5, -1, dtype=np.int64),
        shape_centroids=np.zeros((0, 2)),
        shape_features=np.zeros((0, 4), dtype=np.float32),
    )
    tile = Tile(
        index=0,
        bounds=(0.0, 0.0, 1.0, 1.0),
        transcripts=np.arange(5),
        core=np.ones(5, dtype=bool),
        shapes=np.zeros(0, dtype=np.int64),
    )
    data = build_tile_graph(inputs, tile, GraphSettings(k_tx=2, dist_tx=1.0))
    incoming = np.bincount(data[TX_TX].edge_index[1].numpy(), minlength=5)

    assert incoming.tolist() == [2, 2, 2, 2, 2]


@settings(max_examples=25, deadline=None)
@given(
    positions=transcript_positions(),
    tile_size=st.one_of(st.floats(max_value=0.0), st.just(float("nan"))),
)
def test_tile_size_not_positive_raises(positions, tile_size):
    with pytest.raises(ValueError, match="tile_size must be positive"):
        TileGrid.from_positions(positions[:, :2], tile_size=tile_size, margin=1.0)
