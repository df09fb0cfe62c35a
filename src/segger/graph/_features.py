"""Shape features of prior polygons (nuclei or cells) used as ``bd`` node features."""

from __future__ import annotations

import numpy as np
import shapely

SHAPE_FEATURES = ("log_area", "convexity", "elongation", "circularity")


def shape_features(polygons: np.ndarray) -> np.ndarray:
    """Compute unscaled shape features for an array of polygons.

    Parameters
    ----------
    polygons
        Shapely polygons, shape ``(n,)``.

    Returns
    -------
    Array of shape ``(n, 4)``, float32, with columns :data:`SHAPE_FEATURES`:

    - ``log_area``: natural log of the area in µm² (the area spans orders of magnitude);
    - ``convexity``: area / convex hull area, in (0, 1];
    - ``elongation``: minimum rotated rectangle area / axis-aligned envelope area, in (0, 1];
    - ``circularity``: area / (π · minimum bounding radius²), in (0, 1].
    """
    polygons = np.asarray(polygons, dtype=object)
    area = shapely.area(polygons)
    safe_area = np.maximum(area, 1e-12)

    convexity = area / np.maximum(shapely.area(shapely.convex_hull(polygons)), 1e-12)
    elongation = shapely.area(shapely.oriented_envelope(polygons)) / np.maximum(
        shapely.area(shapely.envelope(polygons)), 1e-12
    )
    radius = shapely.minimum_bounding_radius(polygons)
    circularity = area / np.maximum(np.pi * radius**2, 1e-12)

    features = np.column_stack([np.log(safe_area), convexity, elongation, circularity])
    return features.astype(np.float32)


def fit_feature_scaling(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return per-column mean and standard deviation, with a standard deviation of 1 for constant columns."""
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def scale_features(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardise features with the mean and standard deviation stored in the model."""
    return ((features - mean) / std).astype(np.float32)
