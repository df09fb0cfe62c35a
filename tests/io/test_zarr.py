from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import spatialdata
from spatialdata.models import ShapesModel
from spatialdata.transformations import Scale, get_transformation

import segger as sg
from segger.io import _zarr
from segger.io._zarr import write_geoparquet, write_zarr


@pytest.fixture(scope="module")
def toy_sdata() -> spatialdata.SpatialData:
    return sg.datasets.toy(n_cells=30, random_state=0)


def shapes_frame(n: int, *, index: pd.Index | None = None, seed: int = 0) -> gpd.GeoDataFrame:
    """Return ``n`` discs and one two-part polygon, with a numeric and a categorical column, in a 0.5 µm scale."""
    rng = np.random.default_rng(seed)
    polygons = [shapely.Point(x, y).buffer(r, quad_segs=4) for x, y, r in rng.uniform(1, 100, (n, 3))]
    polygons[3] = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 2, 3, 3)])
    frame = gpd.GeoDataFrame(
        {"area": rng.uniform(size=n), "kind": pd.Categorical(rng.choice(["a", "b", "c"], n))},
        geometry=polygons,
        index=pd.Index([f"cell-{i}" for i in range(n)]) if index is None else index,
    )
    return ShapesModel.parse(frame, transformations={"global": Scale([0.5, 0.5], axes=("x", "y"))})


def shapes_file(store, name: str):
    return store / "shapes" / name / "shapes.parquet"


def read_shapes(store, name: str) -> gpd.GeoDataFrame:
    return spatialdata.read_zarr(store).shapes[name]


def assert_same_shapes(actual: gpd.GeoDataFrame, expected: gpd.GeoDataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    np.testing.assert_array_equal(actual.index.to_numpy(), expected.index.to_numpy())
    pd.testing.assert_frame_equal(
        pd.DataFrame(actual.drop(columns="geometry")).reset_index(drop=True),
        pd.DataFrame(expected.drop(columns="geometry")).reset_index(drop=True),
    )
    wkb = shapely.to_wkb(actual.geometry.to_numpy())
    np.testing.assert_array_equal(wkb, shapely.to_wkb(expected.geometry.to_numpy()))
    assert get_transformation(actual, get_all=True) == get_transformation(expected, get_all=True)


def test_chunked_store_reads_back_equal(tmp_path):
    shapes = shapes_frame(250)
    small = shapes_frame(40, seed=1)
    sdata = spatialdata.SpatialData(shapes={"cells": shapes, "nuclei": small})

    write_zarr(sdata, tmp_path / "chunked.zarr", chunk_rows=60)
    sdata.write(tmp_path / "whole.zarr")

    for name in ("cells", "nuclei"):
        assert_same_shapes(
            read_shapes(tmp_path / "chunked.zarr", name), read_shapes(tmp_path / "whole.zarr", name)
        )
    assert_same_shapes(read_shapes(tmp_path / "chunked.zarr", "cells"), shapes)
    # 250 rows in chunks of 60; the 40 rows of the small element are written by spatialdata in one piece.
    assert pq.ParquetFile(shapes_file(tmp_path / "chunked.zarr", "cells")).num_row_groups == 5
    assert pq.ParquetFile(shapes_file(tmp_path / "chunked.zarr", "nuclei")).num_row_groups == 1
    chunked_geo = pq.read_schema(shapes_file(tmp_path / "chunked.zarr", "cells")).metadata[b"geo"]
    whole_geo = pq.read_schema(shapes_file(tmp_path / "whole.zarr", "cells")).metadata[b"geo"]
    assert json.loads(chunked_geo) == json.loads(whole_geo)
    assert json.loads(chunked_geo)["columns"]["geometry"]["geometry_types"] == ["MultiPolygon", "Polygon"]
    assert len(sdata.shapes["cells"]) == 250


def test_chunked_toy_store_reads_back(tmp_path, toy_sdata):
    write_zarr(toy_sdata, tmp_path / "toy.zarr", chunk_rows=7)

    written = spatialdata.read_zarr(tmp_path / "toy.zarr")
    assert set(written.points) == set(toy_sdata.points)
    assert set(written.tables) == set(toy_sdata.tables)
    for name, shapes in toy_sdata.shapes.items():
        assert_same_shapes(written.shapes[name], shapes)
        assert pq.ParquetFile(shapes_file(tmp_path / "toy.zarr", name)).num_row_groups == -(-len(shapes) // 7)
    np.testing.assert_array_equal(
        written.points["transcripts"]["transcript_id"].compute().to_numpy(),
        toy_sdata.points["transcripts"]["transcript_id"].compute().to_numpy(),
    )


def test_range_index_read_back_as_integers(tmp_path):
    shapes = shapes_frame(30, index=pd.RangeIndex(30))

    write_zarr(spatialdata.SpatialData(shapes={"cells": shapes}), tmp_path / "out.zarr", chunk_rows=8)

    written = read_shapes(tmp_path / "out.zarr", "cells")
    assert written.index.dtype.kind == "i"
    assert_same_shapes(written, shapes)


def test_three_dimensional_shapes_written_whole(tmp_path):
    rings = [shapely.Polygon([(i, 0, 1), (i + 1, 0, 1), (i + 1, 1, 2)]) for i in range(20)]
    shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=rings, index=[f"s{i}" for i in range(20)]))

    write_zarr(spatialdata.SpatialData(shapes={"cells": shapes}), tmp_path / "out.zarr", chunk_rows=8)

    assert pq.ParquetFile(shapes_file(tmp_path / "out.zarr", "cells")).num_row_groups == 1
    assert_same_shapes(read_shapes(tmp_path / "out.zarr", "cells"), shapes)


def test_geoarrow_setting_left_to_spatialdata(tmp_path, monkeypatch):
    monkeypatch.setattr(spatialdata.settings, "shapes_geometry_encoding", "geoarrow")
    sdata = spatialdata.SpatialData(shapes={"cells": shapes_frame(30)})

    write_zarr(sdata, tmp_path / "out.zarr", chunk_rows=8)
    sdata.write(tmp_path / "whole.zarr")

    # With geoarrow, spatialdata itself stores the polygons as one-part multipolygons.
    assert pq.ParquetFile(shapes_file(tmp_path / "out.zarr", "cells")).num_row_groups == 1
    assert_same_shapes(
        read_shapes(tmp_path / "out.zarr", "cells"), read_shapes(tmp_path / "whole.zarr", "cells")
    )


def test_failed_chunk_leaves_file_unchanged(tmp_path, monkeypatch):
    shapes = shapes_frame(30)
    file = tmp_path / "shapes.parquet"
    template = shapes.iloc[:1].copy()
    template.attrs = {}
    template.to_parquet(file)
    before = file.read_bytes()
    encode = _zarr._encode
    calls = []

    def fail_on_second_chunk(chunk, schema):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise OSError("No space left on device")
        return encode(chunk, schema)

    monkeypatch.setattr(_zarr, "_encode", fail_on_second_chunk)
    with pytest.raises(OSError, match="No space left"):
        write_geoparquet(shapes, file, chunk_rows=10)

    assert file.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shapes.parquet"]
