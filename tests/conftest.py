from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Return the path of a real crop under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent; it lives beside the repository in ../shared/data")
    return path


@pytest.fixture
def xenium_lung_path() -> Path:
    return shared_dataset("xenium_lung_15k")


@pytest.fixture
def merscope_ovarian_path() -> Path:
    return shared_dataset("merscope_ovarian_subset")


@pytest.fixture
def cosmx_lung_path() -> Path:
    return shared_dataset("cosmx_lung9_sample1")


@pytest.fixture
def no_reading(monkeypatch):
    """Make segmentation fail if it reads the transcripts, for checks that must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("the transcripts were read before the options were checked")

    monkeypatch.setattr("segger.tl._segment.prepare", fail)
