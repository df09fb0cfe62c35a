from __future__ import annotations

import numpy as np
import pytest
import shapely

from segger.graph import SHAPE_FEATURES, fit_feature_scaling, scale_features, shape_features

# Hand-computed features (log area, convexity, elongation, circularity) of four polygons.
# Circularity divides the area by π r², with r the radius of the minimum bounding circle.
SQUARE = shapely.box(0.0, 0.0, 2.0, 2.0)  # area 4, r = √2
RECTANGLE = shapely.box(0.0, 0.0, 4.0, 1.0)  # area 4, r = √17 / 2
L_SHAPE = shapely.Polygon([(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)])  # area 3, hull 3.5, r = √2
DIAMOND = shapely.Polygon([(1, 0), (2, 1), (1, 2), (0, 1)])  # square turned 45°: area 2, envelope 4, r = 1

EXPECTED = {
    "square": (SQUARE, [np.log(4.0), 1.0, 1.0, 4.0 / (2.0 * np.pi)]),
    "rectangle": (RECTANGLE, [np.log(4.0), 1.0, 1.0, 4.0 / (np.pi * 17.0 / 4.0)]),
    "l_shape": (L_SHAPE, [np.log(3.0), 3.0 / 3.5, 1.0, 3.0 / (2.0 * np.pi)]),
    "diamond": (DIAMOND, [np.log(2.0), 1.0, 0.5, 2.0 / np.pi]),
}


def test_feature_names():
    assert SHAPE_FEATURES == ("log_area", "convexity", "elongation", "circularity")


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("column", range(len(SHAPE_FEATURES)), ids=list(SHAPE_FEATURES))
def test_shape_features_hand_computed(name, column):
    polygon, expected = EXPECTED[name]
    features = shape_features(np.array([polygon], dtype=object))

    assert features[0, column] == pytest.approx(expected[column], rel=1e-6)


def test_shape_features_shape_dtype():
    polygons = np.array([polygon for polygon, _ in EXPECTED.values()], dtype=object)
    features = shape_features(polygons)

    assert features.shape == (4, 4)
    assert features.dtype == np.float32


def test_shape_features_row_order():
    polygons = np.array([SQUARE, L_SHAPE, DIAMOND], dtype=object)
    features = shape_features(polygons)

    assert features[:, 0].tolist() == pytest.approx([np.log(4.0), np.log(3.0), np.log(2.0)], rel=1e-6)


def test_shape_features_translation_invariant():
    moved = shapely.affinity.translate(L_SHAPE, xoff=1000.0, yoff=-250.0)
    features = shape_features(np.array([L_SHAPE, moved], dtype=object))

    assert features[1].tolist() == pytest.approx(features[0].tolist(), rel=1e-5)


def test_shape_features_scale_only_area():
    bigger = shapely.affinity.scale(L_SHAPE, xfact=10.0, yfact=10.0)
    features = shape_features(np.array([L_SHAPE, bigger], dtype=object))

    # Ten times the size is 100 times the area; the ratios do not change.
    assert features[1, 0] - features[0, 0] == pytest.approx(np.log(100.0), rel=1e-6)
    assert features[1, 1:].tolist() == pytest.approx(features[0, 1:].tolist(), rel=1e-5)


def test_fit_scaling_hand_computed():
    features = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 30.0]], dtype=np.float32)
    mean, std = fit_feature_scaling(features)

    assert mean.tolist() == pytest.approx([3.0, 20.0])
    assert std.tolist() == pytest.approx([np.sqrt(8.0 / 3.0), np.sqrt(200.0 / 3.0)])


def test_fit_scaling_dtypes():
    features = np.array([[1.0, 10.0], [3.0, 20.0]], dtype=np.float64)
    mean, std = fit_feature_scaling(features)

    assert mean.dtype == np.float32
    assert std.dtype == np.float32


def test_scaled_features_standard():
    rng = np.random.default_rng(0)
    features = rng.normal([5.0, -2.0, 100.0], [2.0, 0.5, 30.0], size=(200, 3)).astype(np.float32)
    scaled = scale_features(features, *fit_feature_scaling(features))

    assert scaled.mean(axis=0) == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)
    assert scaled.std(axis=0) == pytest.approx([1.0, 1.0, 1.0], rel=1e-5)


def test_scaling_round_trip():
    rng = np.random.default_rng(1)
    features = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    mean, std = fit_feature_scaling(features)
    restored = scale_features(features, mean, std) * std + mean

    np.testing.assert_allclose(restored, features, rtol=1e-5, atol=1e-5)


def test_scale_features_dtype():
    features = np.array([[1.0, 2.0], [3.0, 4.0]])
    scaled = scale_features(features, np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32))

    assert scaled.dtype == np.float32


def test_constant_column_std_one():
    features = np.array([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]], dtype=np.float32)
    mean, std = fit_feature_scaling(features)

    assert std[1] == 1.0
    assert mean[1] == 7.0


def test_constant_column_scales_to_zero():
    features = np.array([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]], dtype=np.float32)
    scaled = scale_features(features, *fit_feature_scaling(features))

    assert scaled[:, 1].tolist() == [0.0, 0.0, 0.0]
    assert np.isfinite(scaled).all()


def test_fit_scaling_input_unchanged():
    features = np.array([[1.0, 7.0], [3.0, 7.0]], dtype=np.float32)
    before = features.copy()
    fit_feature_scaling(features)
    scale_features(features, *fit_feature_scaling(features))

    np.testing.assert_array_equal(features, before)
