"""Training of the Segger network with Lightning."""

from __future__ import annotations

import logging
import numbers
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torch_geometric.data import HeteroData
from torch_geometric.utils import scatter

from ..graph import BD, TX
from ._links import inside_mask, split_links
from ._segger import Segger

logger = logging.getLogger(__name__)

# Values of ``precision`` that :func:`train` supports. Mixed precision keeps the weights in float32,
# so the trained model predicts in float32 like any other. The "-true" half precisions would leave
# the weights in 16 bits and are not offered.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")

# Values of ``strategy`` that :func:`train` supports. Lightning's "ddp" relaunches the running
# script once per extra device, and every process keeps its own copy of the history and the best
# weights. The "ddp_spawn", "ddp_fork" and "ddp_notebook" strategies train in child processes and
# return only the final weights to the calling process, so the history and best weights are lost.
STRATEGIES = ("auto", "ddp")


@dataclass
class TrainingSettings:
    """Optimisation settings.

    Attributes
    ----------
    max_epochs
        Maximum passes over the training tiles.
    max_steps
        Maximum optimiser steps (one tile per step); bounds the cost on large slides.
    learning_rate, weight_decay
        AdamW parameters.
    gradient_clip
        Maximum gradient norm.
    supervision_ratio
        Share of the labelled transcripts of a tile whose links are scored in one step. Their
        own links are hidden from message passing in that step.
    n_negatives
        Nearby non-owning shapes scored per positive link.
    patience
        Epochs without improvement of the validation loss before training stops.
    validation_share
        Share of tiles (with many tiles) or of labelled transcripts (with few) held out for validation.
    """

    max_epochs: int = 60
    max_steps: int = 400
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    gradient_clip: float = 1.0
    supervision_ratio: float = 0.3
    n_negatives: int = 5
    patience: int = 8
    validation_share: float = 0.15


class SeggerModule(L.LightningModule):
    """Lightning wrapper that trains a :class:`Segger` network on tile graphs.

    Each training step scores the candidate links of a random share of a tile's labelled
    transcripts and hides those transcripts' own ``belongs`` edges from message passing. The
    validation transcripts, marked by ``data["tx"].validation``, are hidden from message passing
    in every training step.
    """

    def __init__(self, model: Segger, settings: TrainingSettings, *, random_state: int = 0) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        self.random_state = random_state

    def _step_generator(self, salt: int) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(int(self.random_state) * 1_000_003 + salt)
        return generator

    def _loss(self, data: HeteroData, supervised: torch.Tensor, excluded: torch.Tensor):
        edge_index_dict, links, labels = split_links(
            data, supervised, excluded, n_negatives=self.settings.n_negatives
        )
        if labels.numel() == 0:
            return None, None
        z = self.model({TX: data[TX].x, BD: data[BD].x}, edge_index_dict)
        logits = self.model.decode(z[TX], z[BD], links)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=_balancing_weight(labels))
        return loss, (logits, labels, links)

    def training_step(self, data: HeteroData, batch_idx: int) -> torch.Tensor | None:
        inside = inside_mask(data)
        validation = data[TX].validation
        eligible = inside & data[TX].core & ~validation
        generator = self._step_generator(self.global_step)
        draw = torch.rand(eligible.shape[0], generator=generator).to(eligible.device)
        supervised = eligible & (draw < self.settings.supervision_ratio)

        loss, _ = self._loss(data, supervised, supervised | validation)
        if loss is not None:
            self._log_epoch_mean("train_loss", loss, int(supervised.sum()))
            return loss
        if not self._distributed:
            return None

        # DDP averages the gradients of all processes during backward, so every process must run
        # one backward per step. A zero loss that touches every parameter contributes zero gradients.
        zero = sum(parameter.sum() for parameter in self.model.parameters()) * 0.0
        self._log_epoch_mean("train_loss", zero, 0)
        return zero

    def validation_step(self, data: HeteroData, batch_idx: int) -> None:
        validation = data[TX].validation
        supervised = validation & data[TX].core & inside_mask(data)
        loss, scored = self._loss(data, supervised, validation)
        if loss is not None:
            logits, labels, links = scored
            n_scored = int(supervised.sum())
            self._log_epoch_mean("val_loss", loss, n_scored)
            self._log_epoch_mean("val_accuracy", _top_candidate_accuracy(logits, labels, links[0]), n_scored)
        elif self._distributed:
            # NOTE: when no process scores a validation link in an epoch, val_loss is 0/0 = NaN and
            # EarlyStopping stops training, whereas one process logs no val_loss and trains on.
            zero = torch.zeros((), device=self.device)
            self._log_epoch_mean("val_loss", zero, 0)
            self._log_epoch_mean("val_accuracy", zero, 0)

    @property
    def _distributed(self) -> bool:
        return self.trainer.world_size > 1

    def _log_epoch_mean(self, name: str, value: torch.Tensor, weight: int) -> None:
        """Log ``value`` for the epoch mean of ``name``, weighted by ``weight`` scored transcripts.

        With several processes, Lightning sums the weighted values and the weights of all
        processes at the end of the epoch (``sync_dist``), so every process gets the same
        transcript-weighted mean. Each process must then log every name the same number of times,
        which is why the steps log a zero weight where they score no link. Lightning 2.6 divides
        the summed weights by the number of processes, which truncates an integer sum on the gloo
        backend, so the weight is passed as a float.
        """
        self.log(name, value, on_step=False, on_epoch=True, batch_size=float(weight), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.settings.learning_rate, weight_decay=self.settings.weight_decay
        )


def _balancing_weight(labels: torch.Tensor) -> torch.Tensor:
    """Return the positive-class weight that gives positive and negative links equal total weight.

    Each positive is scored against up to ``n_negatives`` nearby shapes. Without this weight the
    scores would be calibrated to that imbalance, so a transcript that is equally compatible
    with two shapes would score far below 0.5 for both.
    """
    n_positive = labels.sum().clamp(min=1.0)
    n_negative = (labels.numel() - labels.sum()).clamp(min=1.0)
    return n_negative / n_positive


def _top_candidate_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor
) -> torch.Tensor:
    """Share of supervised transcripts whose highest-scoring candidate is the containing shape."""
    best = scatter(logits, sources, dim=0, dim_size=int(sources.max()) + 1, reduce="max")
    positive = labels > 0
    return (logits[positive] >= best[sources[positive]]).float().mean()


class _BestWeights(Callback):
    """Keep a copy of the weights from the epoch with the lowest validation loss.

    With several processes, the validation loss is the mean over all of them (see
    :meth:`SeggerModule._log_epoch_mean`), and process 0 decides whether it improved, so that
    every process keeps the weights of the same epoch. DDP keeps the weights equal across
    processes, so every process ends training with the same weights.
    """

    def __init__(self) -> None:
        self.best_loss = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_loss")
        improved = value is not None and float(value) < self.best_loss
        # Every process calls broadcast here, so the collective calls stay matched.
        if not trainer.strategy.broadcast(improved, src=0):
            return
        self.best_loss = float(value) if value is not None else self.best_loss
        self.state = {
            name: tensor.detach().cpu().clone() for name, tensor in module.model.state_dict().items()
        }


class _HistoryCallback(Callback):
    """Collect the per-epoch figures that Lightning logged into a list of rows.

    With several processes, every process collects the same rows, because the logged figures
    are means over all processes.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning runs validation before this hook, so both losses belong to the same epoch.
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for name in ("train_loss", "val_loss", "val_accuracy"):
            value = trainer.callback_metrics.get(name)
            row[name] = float(value) if value is not None else np.nan
        self.rows.append(row)


def assign_validation(
    tiles: Sequence[HeteroData], *, share: float, min_tiles: int, random_state: int
) -> tuple[list[HeteroData], list[HeteroData], str]:
    """Mark validation transcripts and return the training tiles, validation tiles and the split kind.

    With at least ``min_tiles`` tiles, a random ``share`` of the tiles is held out whole and a
    fixed random 30 % of their labelled transcripts is scored in validation. With fewer tiles,
    ``share`` of the labelled transcripts of every tile is held out instead, and every tile
    serves both training and validation.
    """
    rng = np.random.default_rng(random_state)
    for data in tiles:
        data[TX].validation = torch.zeros(data[TX].num_nodes, dtype=torch.bool)

    if len(tiles) >= min_tiles:
        n_validation = max(1, round(share * len(tiles)))
        held_out = set(rng.choice(len(tiles), size=n_validation, replace=False).tolist())
        for position in sorted(held_out):
            data = tiles[position]
            data[TX].validation = torch.from_numpy(rng.random(data[TX].num_nodes) < 0.3)
        training = [data for position, data in enumerate(tiles) if position not in held_out]
        validation = [tiles[position] for position in sorted(held_out)]
        return training, validation, "tiles"

    for data in tiles:
        data[TX].validation = torch.from_numpy(rng.random(data[TX].num_nodes) < share)
    return list(tiles), list(tiles), "links"


def train(
    model: Segger,
    tiles: Sequence[HeteroData],
    settings: TrainingSettings,
    *,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    min_validation_tiles: int = 10,
    random_state: int = 0,
    progress_bar: bool = True,
) -> pd.DataFrame:
    """Train ``model`` in place on tile graphs and return the training history.

    Parameters
    ----------
    model
        Network to train.
    tiles
        Tile graphs from :func:`segger.graph.build_tile_graph`. A ``validation`` mask is added
        to their ``tx`` nodes.
    settings
        Optimisation settings.
    accelerator, devices
        Passed to :class:`lightning.Trainer`.
    strategy
        ``"auto"`` or ``"ddp"``, passed to :class:`lightning.Trainer`. With ``"ddp"`` and several
        devices, Lightning starts the running script again for each extra device, every process
        trains on its share of the tiles each epoch, and each optimiser step averages the
        gradients of all processes. Every process returns the same weights and history.
    precision
        ``None`` (float32), or one of ``"32-true"``, ``"16-mixed"`` and ``"bf16-mixed"``, passed to
        :class:`lightning.Trainer`. Mixed precision runs matrix products in 16 bits and keeps
        the weights in float32.
    min_validation_tiles
        Minimum number of tiles for holding out whole tiles for validation rather than labelled links.
    random_state
        Seed for the weights, the validation split and the per-step link sampling.
    progress_bar
        Whether to show Lightning's progress bar.

    Returns
    -------
    One row per epoch with ``epoch``, ``step``, ``train_loss``, ``val_loss`` and ``val_accuracy``.
    With several processes, the losses and the accuracy are means over the transcripts scored by
    all processes. Lightning's distributed sampler gives every process the same number of tiles
    by repeating tiles where the count does not divide evenly, and a repeated tile counts again.

    Raises
    ------
    ValueError
        If ``strategy`` or ``precision`` is not a supported value, if ``precision`` is
        ``"16-mixed"`` with ``accelerator="cpu"``, or if Lightning would train in child processes.
        Lightning does so for ``strategy="auto"`` with several devices in a notebook, where it
        picks ``"ddp_fork"``.
    """
    check_parallel_options(strategy=strategy, precision=precision, accelerator=accelerator, devices=devices)
    L.seed_everything(random_state, workers=True, verbose=False)
    model.reset_parameters()

    training, validation, split = assign_validation(
        tiles, share=settings.validation_share, min_tiles=min_validation_tiles, random_state=random_state
    )
    logger.info(
        "Training on %d tile(s), validating on %d (held-out %s).", len(training), len(validation), split
    )

    module = SeggerModule(model, settings, random_state=random_state)
    history = _HistoryCallback()
    best = _BestWeights()
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        max_steps=settings.max_steps,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        gradient_clip_val=settings.gradient_clip,
        callbacks=[
            EarlyStopping(monitor="val_loss", patience=settings.patience, min_delta=1e-4, strict=False),
            history,
            best,
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        msg = (
            f"Lightning chose the strategy {type(trainer.strategy).__name__} with processes started by "
            "fork or spawn, which return only the final weights to this process and lose the training "
            "history and the best weights. Train on several devices from a Python script, not a notebook, "
            "with strategy='ddp', or use devices=1."
        )
        raise ValueError(msg)
    if trainer.world_size > len(training):
        logger.warning(
            "Only %d training tile(s) for %d processes: Lightning's distributed sampler repeats tiles so "
            "that every process gets one, and the extra processes add no new data. Use a smaller tile_size "
            "or fewer devices.",
            len(training),
            trainer.world_size,
        )
    with _interrupt_raises(trainer), warnings.catch_warnings():
        # Lightning 2.6 builds torch's deprecated LeafSpec, which torch 2.13 warns about at every
        # fit. The user cannot act on that warning.
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning
        )
        trainer.fit(
            module,
            train_dataloaders=_loader(training, shuffle=True, random_state=random_state),
            val_dataloaders=_loader(validation, shuffle=False, random_state=random_state),
        )
    model.cpu()
    if best.state is not None:
        model.load_state_dict(best.state)
    return pd.DataFrame(history.rows)


@contextmanager
def _interrupt_raises(trainer: L.Trainer) -> Iterator[None]:
    """Raise KeyboardInterrupt after Ctrl-C in ``trainer.fit``, with the SIGINT handler restored.

    On Ctrl-C, Lightning 2.6 sets SIGINT to be ignored and calls ``sys.exit(1)``. That would end a
    script with status 1 instead of the usual interrupt, and leave a Jupyter kernel ignoring every
    later interrupt. Signal handlers can only be read and set in the main thread.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        raise KeyboardInterrupt from None
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def _loader(tiles: Sequence[HeteroData], *, shuffle: bool, random_state: int) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(random_state)
    return DataLoader(list(tiles), batch_size=None, shuffle=shuffle, generator=generator, num_workers=0)


def parallel_option_problems(
    *, strategy: str, precision: str | None, accelerator: str, devices: int | str = 1
) -> list[str]:
    """Return a description of each unsupported value among ``strategy``, ``precision`` and ``devices``.

    ``accelerator`` is the Lightning accelerator (``"cpu"``, ``"gpu"`` or ``"auto"``). Float16
    mixed precision is rejected on the CPU, where Lightning would switch to bfloat16 with a warning.
    Several devices are rejected where Lightning could not start their processes (see
    :func:`_relaunch_problem`).
    """
    problems = []
    if not _valid_devices(devices):
        problems.append(f"devices must be a positive number of devices or 'auto', got {devices!r}")
    elif _n_processes(devices, accelerator) > 1 and (problem := _relaunch_problem(devices)):
        problems.append(problem)
    if strategy not in STRATEGIES:
        if isinstance(strategy, str) and strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            problems.append(
                f"strategy={strategy!r} trains in child processes that return only the final weights, "
                "losing the training history and the best weights, so use strategy='ddp' from a Python script"
            )
        else:
            problems.append(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if precision is not None and precision not in PRECISIONS:
        problems.append(f"precision must be None or one of {list(PRECISIONS)}, got {precision!r}")
    elif precision == "16-mixed" and accelerator == "cpu":
        problems.append("precision='16-mixed' needs a CUDA device, so on the CPU use precision='bf16-mixed'")
    return problems


def check_parallel_options(
    *, strategy: str, precision: str | None, accelerator: str, devices: int | str = 1
) -> None:
    """Raise ValueError unless ``strategy``, ``precision`` and ``devices`` are values that :func:`train` supports."""
    problems = parallel_option_problems(
        strategy=strategy, precision=precision, accelerator=accelerator, devices=devices
    )
    if problems:
        msg = "Invalid option(s): " + "; ".join(problems) + "."
        raise ValueError(msg)


def _valid_devices(devices: object) -> bool:
    if devices == "auto":
        return True
    return isinstance(devices, numbers.Integral) and not isinstance(devices, bool) and devices >= 1


def _n_processes(devices: int | str, accelerator: str) -> int:
    """Return the number of training processes that ``devices`` requests from Lightning."""
    if devices != "auto":
        return int(devices)
    return max(torch.cuda.device_count(), 1) if accelerator in ("gpu", "auto") else 1


def _relaunch_problem(devices: int | str) -> str | None:
    """Describe why Lightning could not start one process per device from this Python program, if so.

    Lightning's "ddp" starts the extra processes by running the program's command again, which
    needs a script file or a module run with ``python -m``. In an interactive session Lightning
    raises an error for "ddp" and picks "ddp_fork" for "auto", which :func:`train` rejects only
    after the slide is read.
    """
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return (
            f"devices={devices!r} trains in one process per device, which Lightning cannot start from "
            "an interactive session or a notebook, so run the call from a Python script "
            "(`python fit.py`) or use devices=1"
        )
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is None and not Path(sys.argv[0]).is_file():
        return (
            f"devices={devices!r} trains in one process per device, and Lightning starts the extra "
            f"ones by running this program again, but Python was started as {sys.argv[0]!r}, not "
            "with a script file (as with `python -c` or a script read from stdin), so put the call "
            "in a script and run `python fit.py`, or use devices=1"
        )
    return None


def global_rank() -> int:
    """Return this process's rank among the processes of distributed training, 0 without it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0
