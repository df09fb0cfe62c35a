"""Write a SpatialData object to a new zarr store, encoding large shapes elements a chunk of rows at a time.

spatialdata writes a shapes element with :meth:`geopandas.GeoDataFrame.to_parquet`, which
encodes every polygon to WKB before it writes the first byte: for the cell polygons of a whole
slide, that briefly keeps a second copy of all of them in memory. Here spatialdata writes the
store with the first row of each large shapes element in its place, which gives the element's
folder, its metadata and geopandas' GeoParquet schema. The rows are then written to that
element's parquet file a chunk at a time. Reading the store gives the same elements as
:meth:`spatialdata.SpatialData.write` would, except that a :class:`pandas.RangeIndex` of shapes
is read back as integers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import spatialdata
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation, set_transformation

#: Rows of a shapes element encoded and written together: about 3 MB of WKB for segger's cell
#: polygons, which took 330 bytes each on average on a synthetic slide.
SHAPES_CHUNK_ROWS = 10_000

# GeoParquet's names of the geometry types, by shapely's type id.
_GEOMETRY_TYPES = {
    0: "Point",
    1: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def write_zarr(
    sdata: SpatialData, path: str | os.PathLike[str], *, chunk_rows: int = SHAPES_CHUNK_ROWS
) -> None:
    """Write ``sdata`` to a new zarr store at ``path``, with no shapes element encoded whole.

    Parameters
    ----------
    sdata
        Object to write; it is not changed.
    path
        Store to create; it must not exist.
    chunk_rows
        Shapes elements with more rows are written this many rows at a time.
    """
    path = Path(path)
    large = _large_shapes(sdata, chunk_rows)
    placeholders = {name: _first_row(sdata.shapes[name]) for name in large}
    SpatialData(
        images=dict(sdata.images),
        labels=dict(sdata.labels),
        points=dict(sdata.points),
        shapes={**sdata.shapes, **placeholders},
        tables=dict(sdata.tables),
        attrs=sdata.attrs,
    ).write(path)

    for name in large:
        write_geoparquet(sdata.shapes[name], _shapes_file(path, name), chunk_rows=chunk_rows)


def write_geoparquet(shapes: gpd.GeoDataFrame, file: Path, *, chunk_rows: int = SHAPES_CHUNK_ROWS) -> None:
    """Replace GeoParquet ``file`` by the rows of ``shapes``, encoded and written ``chunk_rows`` at a time.

    ``file`` must already contain geopandas' WKB encoding of a frame with the same columns, such as
    the first row of ``shapes``: its schema and ``geo`` metadata are kept, with the bounding box and
    geometry types updated to all rows. The new file is written beside it and renamed over it
    once complete.
    """
    schema = _chunk_schema(shapes.iloc[:1], template=pq.read_schema(file))
    geo = _geo_metadata(shapes, schema, chunk_rows=chunk_rows)
    schema = schema.with_metadata({**schema.metadata, b"geo": geo.encode()})

    partial = file.with_name(file.name + ".partial")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for rows in _row_chunks(len(shapes), chunk_rows):
                writer.write_table(_encode(shapes.iloc[rows], schema))
        partial.replace(file)
    finally:
        partial.unlink(missing_ok=True)


def _large_shapes(sdata: SpatialData, chunk_rows: int) -> list[str]:
    """Return the flat shapes elements with more than ``chunk_rows`` rows, when spatialdata writes WKB.

    Shapes with a third coordinate are left to spatialdata, because the ISO and the extended WKB
    flavours encode that coordinate differently, while they encode flat geometries the same.
    """
    if spatialdata.settings.shapes_geometry_encoding != "WKB":
        return []
    large = []
    for name, shapes in sdata.shapes.items():
        geometries = shapes.geometry.to_numpy()
        if len(shapes) > chunk_rows and not any(
            shapely.has_z(geometries[rows]).any() for rows in _row_chunks(len(shapes), chunk_rows)
        ):
            large.append(name)
    return large


def _row_chunks(n_rows: int, chunk_rows: int) -> list[slice]:
    """Return the slices that cut ``n_rows`` rows into chunks of ``chunk_rows``."""
    return [slice(start, start + chunk_rows) for start in range(0, n_rows, chunk_rows)]


def _first_row(shapes: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Return the first row of ``shapes`` with its coordinate transformations."""
    first = shapes.iloc[:1].copy()
    set_transformation(first, get_transformation(shapes, get_all=True), set_all=True)
    return first


def _shapes_file(store: Path, name: str) -> Path:
    """Return the GeoParquet file of shapes element ``name`` in ``store``."""
    files = sorted((store / "shapes" / name).glob("*.parquet"))
    if len(files) != 1:
        msg = (
            f"Expected one parquet file in {store / 'shapes' / name}, found {len(files)}; this version of "
            f"spatialdata ({spatialdata.__version__}) lays out shapes in a way segger does not know."
        )
        raise RuntimeError(msg)
    return files[0]


def _chunk_schema(first: gpd.GeoDataFrame, template: pa.Schema) -> pa.Schema:
    """Return the Arrow schema of the encoded chunks, with the index kept as a column.

    The fields and pandas metadata come from pyarrow, so that they describe any chunk; the
    geometry fields and the ``geo`` metadata come from geopandas' ``template``.
    """
    schema = pa.Table.from_pandas(_wkb_frame(first), preserve_index=True).schema
    for index, field in enumerate(schema):
        if field.name in template.names and _is_geometry(template, field.name):
            schema = schema.set(index, template.field(field.name))
    return schema.with_metadata({b"pandas": schema.metadata[b"pandas"], b"geo": template.metadata[b"geo"]})


def _is_geometry(schema: pa.Schema, name: str) -> bool:
    return name in json.loads(schema.metadata[b"geo"])["columns"]


def _geo_metadata(shapes: gpd.GeoDataFrame, schema: pa.Schema, *, chunk_rows: int) -> str:
    """Return ``schema``'s ``geo`` metadata with the bounding box and geometry types of all rows of ``shapes``.

    Both are gathered a chunk at a time, like the encoding, so no per-row array of the whole
    element is made.
    """
    geo = json.loads(schema.metadata[b"geo"])
    for name, column in geo["columns"].items():
        geometries = shapes[name].to_numpy()
        chunks = _row_chunks(len(geometries), chunk_rows)
        if "bbox" in column:
            bounds = np.array([shapely.total_bounds(geometries[rows]) for rows in chunks])
            column["bbox"] = [
                *np.nanmin(bounds[:, :2], axis=0).tolist(),
                *np.nanmax(bounds[:, 2:], axis=0).tolist(),
            ]
        type_ids = set().union(
            *(np.unique(shapely.get_type_id(geometries[rows])).tolist() for rows in chunks)
        )
        column["geometry_types"] = sorted(_GEOMETRY_TYPES[type_id] for type_id in type_ids if type_id >= 0)
    return json.dumps(geo)


def _wkb_frame(shapes: gpd.GeoDataFrame) -> pd.DataFrame:
    """Return ``shapes`` as a pandas frame with every geometry column encoded as WKB bytes.

    The frame's ``attrs``, where spatialdata keeps the coordinate transformations, are dropped:
    pyarrow would store them in the file, and spatialdata keeps them in the element's metadata.
    """
    frame = pd.DataFrame(shapes.to_wkb())
    frame.attrs = {}
    return frame


def _encode(chunk: gpd.GeoDataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(_wkb_frame(chunk), schema=schema, preserve_index=True)
