"""Training on several devices (Lightning DDP on CPU processes) and with mixed precision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import segger as sg
from segger.models import Segger, TrainingSettings, train

SMALL = {"max_epochs": 3, "progress": False}
# 25 µm tiles give the DDP run several training tiles, so that the two processes train on different ones.
DDP_OPTIONS = {**SMALL, "tile_size": 25.0}
TOY = {"n_cells": 40, "random_state": 1}

# Run by a separate Python process, because Lightning's "ddp" starts the running script again for
# rank 1, which must not be pytest. Each rank writes rank<N>.json next to the script.
DDP_SCRIPT = """
import hashlib
import json
from pathlib import Path

import torch

import segger as sg

torch.set_num_threads(1)
folder = Path(__file__).parent
{patch}
sdata = sg.datasets.toy(**{toy})
model = sg.tl.segger_fit(sdata, devices=2, strategy="ddp", device="cpu", **{options})

rank = torch.distributed.get_rank()
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
points = sdata.points["transcripts"].compute()
facts = {{
    "rank": rank,
    "world_size": torch.distributed.get_world_size(),
    "weights": digest.hexdigest(),
    "history": model.history.to_dict(orient="list"),
    "written": "segger_cell_id" in points.columns or "segger_table" in sdata.tables,
}}
if rank == 0:
    model.save(folder / "model.pt")
    eligible = ~points["is_control"] & (points["qv"] >= 20)
    facts["assigned_share"] = float(points.loc[eligible, "segger_cell_id"].notna().mean())
    labels = points["segger_cell_id"]
    facts["labels"] = labels.astype(object).where(labels.notna(), None).tolist()
    facts["params"] = sdata.tables["segger_table"].uns["segger"]["params"]
(folder / f"rank{{rank}}.json").write_text(json.dumps(facts, default=str))
"""

# Makes rank 1 score no link in any step of the first epoch, training or validation, as in a tile
# without candidates. DDP then still needs a backward pass and the same logged names on rank 1.
NO_LINKS_ON_RANK1 = """
from segger.models._training import SeggerModule

scored_loss = SeggerModule._loss


def loss_without_links_on_rank1(self, data, supervised, excluded):
    if self.global_rank == 1 and self.current_epoch == 0:
        return None, None
    return scored_loss(self, data, supervised, excluded)


SeggerModule._loss = loss_without_links_on_rank1
"""


def distributed_unavailable() -> str | None:
    if not torch.distributed.is_available():
        return "torch was built without torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "torch.distributed has no gloo backend, which DDP on CPU processes needs"
    return None


def read_rank_facts(folder, rank: int, timeout: float = 60.0) -> dict:
    """Read rank<rank>.json, waiting for it because rank 1 can outlive the script it was started from."""
    path = folder / f"rank{rank}.json"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert path.exists(), f"{path.name} was not written within {timeout} s"
    return json.loads(path.read_text())


def run_ddp_script(folder, *, patch: str = "") -> list[dict]:
    """Run the DDP script in ``folder`` and return the facts that ranks 0 and 1 wrote."""
    reason = distributed_unavailable()
    if reason is not None:
        pytest.skip(reason)

    script = folder / "fit_ddp.py"
    script.write_text(DDP_SCRIPT.format(toy=repr(TOY), options=repr(DDP_OPTIONS), patch=patch))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - start
    message = f"DDP script exited with status {completed.returncode} after {elapsed:.0f} s"
    assert completed.returncode == 0, f"{message}:\n{completed.stderr[-4000:]}"
    return [read_rank_facts(folder, rank) for rank in (0, 1)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    return folder, run_ddp_script(folder)


@pytest.mark.slow
def test_ddp_ranks_same_weights(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["world_size"] == 2
    assert rank1["rank"] == 1
    assert rank0["weights"] == rank1["weights"]


@pytest.mark.slow
def test_ddp_ranks_same_history(ddp_run):
    _, (rank0, rank1) = ddp_run
    history = pd.DataFrame(rank0["history"])

    assert len(history) >= 1
    assert history["train_loss"].notna().all()
    assert history["val_loss"].notna().all()
    pd.testing.assert_frame_equal(history, pd.DataFrame(rank1["history"]))


@pytest.mark.slow
def test_ddp_only_rank0_writes(ddp_run):
    _, (rank0, rank1) = ddp_run

    assert rank0["written"]
    assert not rank1["written"]
    assert rank0["assigned_share"] >= 0.6
    assert rank0["params"]["strategy"] == "ddp"
    assert rank0["params"]["devices"] == 2


@pytest.mark.slow
def test_ddp_model_predicts_here(ddp_run):
    folder, (rank0, _) = ddp_run
    model = Segger.load(folder / "model.pt")

    assert not model.history.empty
    sdata = sg.datasets.toy(**TOY)
    sg.tl.segger_predict(sdata, model, progress=False)
    labels = sdata.points["transcripts"].compute()["segger_cell_id"]
    expected = pd.Series(rank0["labels"], index=labels.index, dtype="string")

    assert labels.notna().mean() >= 0.6
    # The script ran torch with one thread and this process may use more, so the last digits of
    # a score, and rarely a label, can differ.
    assert (labels.fillna("none") == expected.fillna("none")).mean() >= 0.99


@pytest.mark.slow
def test_ddp_rank_without_links(tmp_path):
    rank0, rank1 = run_ddp_script(tmp_path, patch=NO_LINKS_ON_RANK1)
    history = pd.DataFrame(rank0["history"])

    assert rank0["weights"] == rank1["weights"]
    pd.testing.assert_frame_equal(history, pd.DataFrame(rank1["history"]))
    assert history["train_loss"].notna().all()
    assert history["val_loss"].notna().all()
    assert rank0["written"]


def test_bf16_mixed_on_cpu_trains():
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    model = sg.tl.segger_fit(sdata, precision="bf16-mixed", device="cpu", **SMALL)
    points = sdata.points["transcripts"].compute()

    assert next(model.parameters()).dtype == torch.float32
    assert model.history["train_loss"].notna().all()
    assert points["segger_cell_id"].notna().mean() > 0.5
    assert sdata.tables["segger_table"].uns["segger"]["params"]["precision"] == "bf16-mixed"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("precision", "16", r"precision must be None or one of \['32-true', '16-mixed', 'bf16-mixed'\]"),
        ("precision", "64-true", "got '64-true'"),
        ("strategy", "ddp_spawn", "use strategy='ddp' from a Python script"),
        ("strategy", "ddp_notebook", "use strategy='ddp'"),
        ("strategy", "fsdp", r"strategy must be one of \['auto', 'ddp'\]"),
        ("devices", 0, "devices must be a positive number of devices or 'auto', got 0"),
        ("devices", -1, "got -1"),
        ("devices", 2.5, "got 2.5"),
        ("devices", "abc", "got 'abc'"),
        ("device", "tpu", r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ("device", "cuda:x", "got 'cuda:x'"),
    ],
)
def test_fit_invalid_parallel_option(option, value, message):
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    elements = sorted(name for _, name, _ in sdata.gen_elements())
    points = sdata.points["transcripts"].compute()

    with pytest.raises(ValueError, match=message):
        sg.tl.segger_fit(sdata, **{**SMALL, option: value})

    assert sorted(name for _, name, _ in sdata.gen_elements()) == elements
    pd.testing.assert_frame_equal(sdata.points["transcripts"].compute(), points)


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_devices_interactive_rejected(monkeypatch, no_reading, strategy):
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)

    with pytest.raises(ValueError, match=r"devices=2 trains in one process per device.*interactive session"):
        sg.tl.segger_fit(sdata, device="cpu", devices=2, strategy=strategy, **SMALL)

    assert "segger_table" not in sdata.tables


def test_devices_without_script_rejected(monkeypatch, no_reading):
    """Lightning's "ddp" runs the program's command again, which fails for ``python -c``."""
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)

    with pytest.raises(ValueError, match=r"Python was started as '-c'.*put the call in a script"):
        sg.tl.segger_fit(sdata, device="cpu", devices=2, strategy="ddp", **SMALL)

    assert "segger_table" not in sdata.tables


def test_one_device_without_script(monkeypatch):
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)

    sg.tl.segger_fit(sdata, device="cpu", devices=1, **SMALL)

    assert sdata.tables["segger_table"].n_obs > 0


def test_fit_float16_mixed_on_cpu_rejected():
    sdata = sg.datasets.toy(n_cells=30, random_state=3)
    with pytest.raises(ValueError, match="use precision='bf16-mixed'"):
        sg.tl.segger_fit(sdata, precision="16-mixed", device="cpu", **SMALL)
    assert "segger_table" not in sdata.tables


def test_train_rejects_child_processes(monkeypatch):
    """In a notebook, Lightning picks "ddp_fork" for several devices, whose results stay in the children."""
    monkeypatch.setattr("lightning.pytorch.trainer.connectors.accelerator_connector._IS_INTERACTIVE", True)
    model = Segger(["a", "b"])
    with pytest.raises(ValueError, match="not a notebook, with strategy='ddp'"):
        train(model, [], TrainingSettings(max_epochs=1), accelerator="cpu", devices=2, progress_bar=False)
