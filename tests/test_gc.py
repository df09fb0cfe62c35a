import gc

import pytest

import segger as sg
from segger._gc import existing_objects_frozen
from segger.tl import _segment


@pytest.fixture
def collector_restored():
    """Leave the garbage collector enabled and unfrozen after the test, whatever it did."""
    yield
    gc.unfreeze()
    gc.enable()


def test_objects_frozen_inside_block(collector_restored):
    before = gc.get_freeze_count()

    with existing_objects_frozen():
        inside = gc.get_freeze_count()

    assert before == 0
    assert inside > 0
    assert gc.get_freeze_count() == 0


def test_unfrozen_after_error(collector_restored):
    with pytest.raises(RuntimeError, match="inside"), existing_objects_frozen():
        raise RuntimeError("raised inside the block")

    assert gc.get_freeze_count() == 0


def test_caller_freeze_kept(collector_restored):
    gc.freeze()
    frozen = gc.get_freeze_count()

    with existing_objects_frozen():
        inside = gc.get_freeze_count()

    assert inside == frozen
    assert gc.get_freeze_count() == frozen


def test_disabled_collector_not_frozen(collector_restored):
    gc.disable()

    with existing_objects_frozen():
        inside = gc.get_freeze_count()

    assert inside == 0
    assert not gc.isenabled()


def test_predict_runs_tiles_frozen(collector_restored, monkeypatch):
    sdata = sg.datasets.toy(n_cells=20, random_state=1)
    model = sg.tl.segger_fit(sdata, max_steps=2, progress=False)
    predict_tiles = _segment._predict_tiles
    counts = []

    def record(*args, **kwargs):
        counts.append(gc.get_freeze_count())
        return predict_tiles(*args, **kwargs)

    monkeypatch.setattr(_segment, "_predict_tiles", record)
    sg.tl.segger_predict(sdata, model, key_added="again", progress=False)

    assert len(counts) == 1
    assert counts[0] > 0
    assert gc.get_freeze_count() == 0
    assert sdata.points["transcripts"]["again_cell_id"].compute().notna().any()


def test_nested_block_skips_count(collector_restored, monkeypatch):
    with existing_objects_frozen():
        frozen = gc.get_freeze_count()
        calls = []
        monkeypatch.setattr(gc, "get_freeze_count", lambda: calls.append(1) or frozen)
        with existing_objects_frozen():
            pass
        monkeypatch.undo()
        after_inner = gc.get_freeze_count()

    assert calls == []
    assert after_inner == frozen
    assert gc.get_freeze_count() == 0
