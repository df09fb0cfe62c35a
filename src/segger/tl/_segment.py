"""``segger_fit`` and ``segger_predict``: segment cells with the Segger network."""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from os import PathLike
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import shapely
import torch
from dask.callbacks import Callback
from dask.system import CPU_COUNT
from spatialdata import SpatialData
from tqdm.auto import tqdm

from .. import _constants as C
from .._gc import existing_objects_frozen
from .._grouping import row_blocks
from .._memory import release_freed_memory
from .._scratch import ArrayStore, MappedArray, file_size, open_mapped
from ..graph import (
    GraphInputs,
    GraphSettings,
    TileGrid,
    build_tile_graph,
    fit_feature_scaling,
    scale_features,
)
from ..graph._tiles import TileIndex, compact_index_dtype
from ..models import (
    Segger,
    TilePrediction,
    TrainingSettings,
    fragment_cells,
    links_to_measure,
    predict_tile,
    select_candidates,
    train,
)
from ..models._training import global_rank, parallel_option_problems
from ._prepare import PreparedData, prepare
from ._writeback import Cells, check_outputs_free, write_cells

logger = logging.getLogger(__name__)

FRAGMENT_PREFIX = "segger-"

# Dask's names for its local schedulers, mapped to the two that can predict tiles. The process
# pool is left out because each of its tasks would copy the model and the slide's arrays.
LOCAL_SCHEDULERS = {
    "threads": "threads",
    "threading": "threads",
    "sync": "synchronous",
    "synchronous": "synchronous",
    "single-threaded": "synchronous",
}
DEFAULT_SCHEDULER = "threads"

# Default training budget. On 1 M synthetic transcripts (54 training tiles), a fixed 400 steps
# left the model about 1.5 points less accurate than on 100 k; 15 passes over the tiles closed it.
MIN_TRAINING_STEPS = 400
MIN_TRAINING_PASSES = 15
# Transcript-to-shape links measured at once when choosing among candidates.
_DISTANCE_CHUNK = 200_000


@contextmanager
def _deterministic_torch() -> Iterator[None]:
    """Run torch with deterministic kernels, restoring the caller's setting afterwards.

    Without this, multithreaded scatter additions on the CPU sum in varying order, and after
    60 epochs two fits with the same seed differ in the last digits of their scores and, rarely,
    in a label. Operations without a deterministic kernel (some CUDA ones) warn instead of failing.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@_deterministic_torch()
@existing_objects_frozen()
def segger_fit(
    sdata: SpatialData,
    *,
    points_key: str = C.POINTS_KEY,
    shapes_key: str = C.NUCLEUS_SHAPES_KEY,
    key_added: str = C.KEY_ADDED,
    min_qv: float | None = C.DEFAULT_MIN_QV,
    k_tx: int = 5,
    dist_tx: float = 5.0,
    k_bd: int = 4,
    dist_bd: float | None = None,
    score_cut: float = 0.05,
    assignment: Literal["nearest", "score"] = "nearest",
    min_transcripts: int = 5,
    fragment_similarity: float = 0.8,
    tile_size: float = 120.0,
    gene_embedding: pd.DataFrame | None = None,
    embedding_dim: int = 16,
    hidden_channels: int = 32,
    out_channels: int = 16,
    heads: int = 2,
    num_layers: int = 2,
    dropout: float = 0.2,
    max_epochs: int = 60,
    max_steps: int | None = None,
    learning_rate: float = 3e-3,
    max_train_tiles: int = 64,
    device: Literal["auto", "cpu", "cuda"] | str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str | None = None,
    client: Any | None = None,
    scheduler: str | None = None,
    scratch_dir: str | PathLike[str] | None = None,
    random_state: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Segger:
    """Train a Segger network on a slide and segment its cells.

    Transcripts that the instrument places inside a prior shape (``overlaps_nucleus``) are the
    positive labels; nearby other shapes are the negatives. After training, every transcript
    joins the best-scoring of its candidate shapes when the score reaches ``score_cut``, and
    leftover transcripts that are close and similar form new cells.

    Parameters
    ----------
    sdata
        SpatialData with transcripts and prior shapes, for example from :func:`segger.io.xenium`.
    points_key
        Points element with the transcripts.
    shapes_key
        Shapes element with the prior shapes: nuclei, or vendor cells where no nuclei exist.
    key_added
        Prefix of the elements and columns written.
    min_qv
        Transcripts with a lower quality value stay out of the graph and unassigned; ``None``
        keeps all. Skipped when the points have no ``qv`` column.
    k_tx, dist_tx
        Each transcript receives messages from its ``k_tx`` nearest transcripts within ``dist_tx`` µm.
    k_bd, dist_bd
        A transcript's candidate cells are its ``k_bd`` nearest prior shapes (by centroid) within
        ``dist_bd`` µm. ``None`` derives ``dist_bd`` from the data: the typical spacing of prior
        shapes, at least the median shape radius plus 1 µm.
    score_cut
        Minimum score (sigmoid of the link logit) for a transcript to join a prior shape. Training
        weighs positive and negative links equally, so a transcript that fits two neighbouring
        cells equally well scores about 0.5 for both. The low default only rejects cells that the
        model finds clearly incompatible, and ``assignment`` chooses among the rest. On
        ``sg.datasets.toy`` (seeds 0, 1, 3), 0.05 gave the most transcripts in their true cell
        among 0.05, 0.1, 0.2 and 0.3.
    assignment
        How a transcript chooses among the candidates whose score reaches ``score_cut``.
        ``"nearest"`` takes the one with the nearest boundary, so the score decides whether a
        cell is compatible and distance decides between compatible cells. ``"score"`` takes
        the highest-scoring one.
    min_transcripts
        Minimum size of a cell formed from transcripts without a prior shape.
    fragment_similarity
        Minimum cosine similarity of two neighbouring leftover transcripts' embeddings for them
        to join the same new cell.
    tile_size
        Width of the square tiles, µm. Results do not depend on it; memory grows with it.
    gene_embedding
        Optional genes × d table (index: gene names) used as fixed transcript features instead
        of a learned embedding, for example from :func:`segger.pp.gene_embedding_from_reference`.
    embedding_dim, hidden_channels, out_channels, heads, num_layers, dropout
        Network size and attention dropout (see :class:`segger.models.Segger`).
    max_epochs, max_steps, learning_rate
        Training length and AdamW learning rate. Training stops earlier when the validation loss
        stops improving. ``max_steps=None`` allows 400 optimiser steps (one tile each) or 15
        passes over the training tiles, whichever is more. Together with ``max_train_tiles``,
        this bounds training cost on any slide.
    max_train_tiles
        Most tiles to train on; larger slides train on a seeded random sample of the tiles that
        contain labelled transcripts, so that training cost stops growing with the slide.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``"auto"`` uses CUDA when available.
    devices
        Number of devices for training (a positive integer, or ``"auto"``), passed to Lightning.
        With ``strategy="ddp"``, each optimiser step trains on one tile per device, so
        ``max_steps`` counts steps, not tiles.
    strategy
        How Lightning trains on several devices: ``"auto"`` (one device, or Lightning's choice for
        several) or ``"ddp"`` (distributed data parallel). With ``devices=n`` above 1, either way,
        Lightning starts the running script again in ``n - 1`` new processes, so call it from a
        script file. From ``python -c``, a notebook or the interactive interpreter, segger raises
        ValueError before it reads the slide. Every process loads the slide and builds its graph.
        Every process ends training with the same weights and ``history``. Only process 0
        (global rank 0) then segments the slide and writes into ``sdata``. The others return the
        trained model and leave their ``sdata`` unchanged. ``"ddp_spawn"``, ``"ddp_fork"`` and
        ``"ddp_notebook"`` are rejected, because their processes return only the final weights.
    precision
        ``None`` trains in float32. ``"bf16-mixed"`` (CPU or GPU) and ``"16-mixed"`` (GPU only)
        train with automatic mixed precision, which runs matrix products in 16 bits to save GPU
        memory and time (not measured for segger). ``"32-true"`` is float32. Mixed precision
        applies to training only: the weights stay float32, and prediction runs in float32.
    client
        A ``dask.distributed.Client``. When given, the tiles' graphs are built and predicted as
        tasks on its workers, on their CPUs, and the labels equal those of a run without it.
        ``None`` predicts them as tasks of a Dask scheduler in this process (see ``scheduler``).
    scheduler
        Dask scheduler that predicts the tiles in this process when ``client`` is ``None``:
        ``"threads"`` (a pool of Dask's ``num_workers`` threads, by default one per core) or
        ``"synchronous"`` (one tile at a time on one core, in the calling thread, for example
        to debug). ``None`` takes Dask's configured scheduler (``dask.config.set(scheduler=...)``)
        when it is one of these, and ``"threads"`` otherwise. The labels do not depend on it. On
        CUDA, the threads build the tiles' graphs in parallel, but the model runs one tile at a time.
    scratch_dir
        An existing folder for the arrays that have one entry per transcript: coordinates, genes,
        ids, the tile order and the predicted shapes and scores, about 70 bytes per transcript.
        ``None`` keeps them in memory. With a folder, they are written to files in a new
        subfolder and read back as memory maps, so they no longer take the process's own
        memory. The subfolder is deleted when the call ends, also after an error. The values of
        the two new points columns (8 bytes per transcript) go to a second subfolder that the
        points element reads whenever it is computed or written. It is deleted once that element
        is garbage-collected, or when Python exits. With ``client``, workers that see the same
        files map them instead of receiving copies; segger checks this and otherwise sends copies.
    random_state
        Seed for numpy and torch.
    overwrite
        Whether to replace an existing segmentation with the same ``key_added``.
    progress
        Whether to show progress bars.

    Returns
    -------
    The trained :class:`segger.models.Segger`, with ``history`` and the settings used.
    Writes into ``sdata``, except in processes other than 0 of ``strategy="ddp"`` training:

    - points ``points_key``: columns ``{key_added}_cell_id`` and ``{key_added}_score``;
    - shapes ``{key_added}_boundaries``: one polygon per cell;
    - table ``{key_added}_table``: cells × genes counts with ``obs`` ``cell_id``, ``region``,
      ``n_transcripts``, ``area``, ``prior_id`` and ``obsm["spatial"]``.
    """
    start = time.perf_counter()
    _check_options(
        score_cut=score_cut,
        assignment=assignment,
        min_transcripts=min_transcripts,
        fragment_similarity=fragment_similarity,
        device=device,
        k_tx=k_tx,
        k_bd=k_bd,
        dist_tx=dist_tx,
        dist_bd=dist_bd,
        num_layers=num_layers,
        tile_size=tile_size,
        max_epochs=max_epochs,
        strategy=strategy,
        precision=precision,
        devices=devices,
    )
    scheduler = _resolve_scheduler(scheduler, client)
    check_outputs_free(sdata, key_added=key_added, points_key=points_key, overwrite=overwrite)
    _seed(random_state)
    with ArrayStore.open(scratch_dir) as store:
        prepared = prepare(
            sdata,
            points_key=points_key,
            shapes_key=shapes_key,
            min_qv=min_qv,
            require_labels=True,
            store=store,
        )
        logger.info(
            "Fitting segger on %d transcripts and %d prior shapes.", prepared.n_points, len(prepared.shapes)
        )

        settings = _graph_settings(
            prepared, k_tx=k_tx, dist_tx=dist_tx, k_bd=k_bd, dist_bd=dist_bd, num_layers=num_layers
        )
        vocabulary, table = _vocabulary(prepared.graph_genes(), gene_embedding)
        model = Segger(
            vocabulary,
            gene_embedding=table,
            embedding_dim=embedding_dim,
            hidden_channels=hidden_channels,
            out_channels=out_channels,
            heads=heads,
            num_layers=num_layers,
            dropout=dropout,
        )
        mean, std = fit_feature_scaling(prepared.shape_features)
        model.settings = {
            "graph": settings.to_dict(),
            "shape_scaling": {"mean": mean.tolist(), "std": std.tolist()},
            "min_qv": min_qv,
            "score_cut": score_cut,
            "assignment": assignment,
            "min_transcripts": min_transcripts,
            "fragment_similarity": fragment_similarity,
            "tile_size": tile_size,
        }

        params = {
            "points_key": points_key,
            "shapes_key": shapes_key,
            "key_added": key_added,
            **model.settings,
            "gene_embedding": "learned" if gene_embedding is None else "fixed",
            "model": model.config(),
            "max_epochs": max_epochs,
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "max_train_tiles": max_train_tiles,
            "devices": devices,
            "strategy": strategy,
            "precision": precision,
            "scratch_dir": None if scratch_dir is None else str(scratch_dir),
            "random_state": random_state,
        }

        inputs = prepared.graph_inputs(
            prepared.tokens(model.tokenize, store),
            scale_features(prepared.shape_features, mean, std),
        )
        grid = TileGrid.from_positions(inputs.positions[:, :2], tile_size=tile_size, margin=settings.margin)
        tiles = _training_tiles(
            inputs, grid, settings, max_tiles=max_train_tiles, random_state=random_state, store=store
        )

        if max_steps is None:
            max_steps = max(MIN_TRAINING_STEPS, MIN_TRAINING_PASSES * len(tiles))
        params["max_steps"] = max_steps
        training = TrainingSettings(max_epochs=max_epochs, max_steps=max_steps, learning_rate=learning_rate)
        phase = time.perf_counter()
        accelerator = "gpu" if _torch_device(device).type == "cuda" else "cpu"
        model.history = train(
            model,
            tiles,
            training,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            random_state=random_state,
            progress_bar=progress,
        )
        del tiles  # the training graphs are not needed for prediction, which builds its own
        release_freed_memory()
        logger.info("Trained for %d epoch(s) in %.1f s.", len(model.history), time.perf_counter() - phase)
        if model.history.empty or model.history["train_loss"].isna().all():
            msg = (
                f"Training scored no transcript-to-shape link: the {int((inputs.prior_index >= 0).sum())} "
                "transcript(s) inside a prior shape are too few, or no other shape lies within dist_bd of "
                "them. Fit on a larger region, or apply a trained model with `sg.tl.segger_predict`."
            )
            raise ValueError(msg)
        rank = global_rank()
        if rank > 0:
            logger.info("Process %d finished training and leaves sdata unchanged: process 0 segments.", rank)
            return model

        _segment(
            sdata,
            model,
            prepared,
            inputs,
            settings,
            points_key=points_key,
            key_added=key_added,
            score_cut=score_cut,
            assignment=assignment,
            min_transcripts=min_transcripts,
            fragment_similarity=fragment_similarity,
            tile_size=tile_size,
            device=device,
            client=client,
            scheduler=scheduler,
            store=store,
            overwrite=overwrite,
            progress=progress,
            params=params,
        )
    logger.info("segger_fit finished in %.1f s.", time.perf_counter() - start)
    return model


@_deterministic_torch()
@existing_objects_frozen()
def segger_predict(
    sdata: SpatialData,
    model: Segger,
    *,
    points_key: str = C.POINTS_KEY,
    shapes_key: str = C.NUCLEUS_SHAPES_KEY,
    key_added: str = C.KEY_ADDED,
    score_cut: float | None = None,
    assignment: Literal["nearest", "score"] | None = None,
    min_transcripts: int | None = None,
    fragment_similarity: float | None = None,
    tile_size: float | None = None,
    device: Literal["auto", "cpu", "cuda"] | str = "auto",
    client: Any | None = None,
    scheduler: str | None = None,
    scratch_dir: str | PathLike[str] | None = None,
    random_state: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> None:
    """Segment a slide with a trained model, writing the same outputs as :func:`segger_fit`.

    Parameters
    ----------
    sdata
        SpatialData with transcripts and prior shapes.
    model
        A model from :func:`segger_fit` or :meth:`segger.models.Segger.load`. Its graph settings
        and quality filter are reused; genes it has never seen get the unknown-gene token, with a
        warning.
    points_key, shapes_key, key_added
        As in :func:`segger_fit`.
    score_cut, assignment, min_transcripts, fragment_similarity, tile_size
        ``None`` uses the values the model was trained with.
    device
        ``"auto"`` uses CUDA when available.
    client, scheduler, scratch_dir
        As in :func:`segger_fit`.
    random_state
        Seed for numpy and torch.
    overwrite
        Whether to replace an existing segmentation with the same ``key_added``.
    progress
        Whether to show a progress bar over tiles.

    Returns
    -------
    None. Writes the same elements and columns into ``sdata`` as :func:`segger_fit`.
    """
    start = time.perf_counter()
    scheduler = _resolve_scheduler(scheduler, client)
    check_outputs_free(sdata, key_added=key_added, points_key=points_key, overwrite=overwrite)
    _seed(random_state)
    stored = model.settings
    if not stored:
        msg = "The model has no stored settings; train it with `sg.tl.segger_fit` or load it with `Segger.load`."
        raise ValueError(msg)

    with ArrayStore.open(scratch_dir) as store:
        prepared = prepare(
            sdata,
            points_key=points_key,
            shapes_key=shapes_key,
            min_qv=stored["min_qv"],
            require_labels=False,
            store=store,
        )
        settings = GraphSettings(**stored["graph"])
        settings.max_shape_radius = max(settings.max_shape_radius, _max_shape_radius(prepared))
        tokens = prepared.tokens(model.tokenize, store)
        _warn_unknown_genes(prepared, tokens)

        scaling = stored["shape_scaling"]
        scaled = scale_features(
            prepared.shape_features,
            np.asarray(scaling["mean"], np.float32),
            np.asarray(scaling["std"], np.float32),
        )
        inputs = prepared.graph_inputs(tokens, scaled)
        options = {
            "score_cut": stored["score_cut"] if score_cut is None else score_cut,
            "assignment": stored["assignment"] if assignment is None else assignment,
            "min_transcripts": stored["min_transcripts"] if min_transcripts is None else min_transcripts,
            "fragment_similarity": stored["fragment_similarity"]
            if fragment_similarity is None
            else fragment_similarity,
            "tile_size": stored["tile_size"] if tile_size is None else tile_size,
        }
        _check_options(
            score_cut=options["score_cut"],
            assignment=options["assignment"],
            min_transcripts=options["min_transcripts"],
            fragment_similarity=options["fragment_similarity"],
            device=device,
            tile_size=options["tile_size"],
        )
        params = {"points_key": points_key, "shapes_key": shapes_key, "key_added": key_added, **options}
        params.update(
            {
                "graph": settings.to_dict(),
                "min_qv": stored["min_qv"],
                "scratch_dir": None if scratch_dir is None else str(scratch_dir),
                "random_state": random_state,
            }
        )

        _segment(
            sdata,
            model,
            prepared,
            inputs,
            settings,
            points_key=points_key,
            key_added=key_added,
            device=device,
            client=client,
            scheduler=scheduler,
            store=store,
            overwrite=overwrite,
            progress=progress,
            params=params,
            **options,
        )
    logger.info("segger_predict finished in %.1f s.", time.perf_counter() - start)


def _segment(
    sdata: SpatialData,
    model: Segger,
    prepared: PreparedData,
    inputs: GraphInputs,
    settings: GraphSettings,
    *,
    points_key: str,
    key_added: str,
    score_cut: float,
    assignment: Literal["nearest", "score"],
    min_transcripts: int,
    fragment_similarity: float,
    tile_size: float,
    device: str,
    client: Any | None,
    scheduler: str,
    store: ArrayStore,
    overwrite: bool,
    progress: bool,
    params: dict[str, Any],
) -> None:
    """Predict every tile, form cells from leftover transcripts, and write the result back."""
    params = {**params, "scheduler": "dask.distributed" if client is not None else scheduler}
    phase = time.perf_counter()
    predicted = _predict_tiles(
        model,
        inputs,
        settings,
        prepared.shapes.geometry.to_numpy(),
        rule=_AssignmentRule(score_cut=score_cut, rule=assignment),
        tile_size=tile_size,
        device=_torch_device(device),
        client=client,
        scheduler=scheduler,
        store=store,
        progress=progress,
    )
    logger.info(
        "Predicted and scored %d candidate links in %.1f s.", predicted.n_links, time.perf_counter() - phase
    )

    phase = time.perf_counter()
    best_shape, best_score = predicted.shape, predicted.score
    leftover = predicted.leftover
    fragments = fragment_cells(
        inputs.positions[leftover],
        predicted.leftover_embeddings,
        prepared.transcript_ids[leftover],
        k=settings.k_tx,
        max_distance=settings.dist_tx,
        min_similarity=fragment_similarity,
        min_transcripts=min_transcripts,
    )
    logger.info(
        "Formed %d cells without a prior shape in %.1f s.",
        int(fragments.max(initial=-1)) + 1,
        time.perf_counter() - phase,
    )

    # The points element reads the two new columns whenever it is computed or written, so with a
    # scratch folder they go to a folder of their own, which lives as long as the element.
    outputs = store.outputs()
    try:
        cells, scores, prior_ids = _cells(
            prepared, best_shape, best_score, leftover, fragments, store=outputs
        )
        write_cells(
            sdata,
            cells,
            scores,
            prepared.points,
            key_added=key_added,
            points_key=points_key,
            prior_ids=prior_ids,
            prior_shapes=prepared.shapes,
            params=params,
            overwrite=overwrite,
            store=store,
            outputs=outputs,
        )
    except BaseException:
        outputs.remove()
        raise
    logger.info(
        "Assigned %d of %d graph transcripts to %d cells; added %r, %r, %r and %r.",
        int((cells.codes >= 0).sum()),
        inputs.n_transcripts,
        len(cells.ids),
        C.cell_id_column(key_added),
        C.score_column(key_added),
        C.boundaries_key(key_added),
        C.table_key(key_added),
    )


def _resolve_scheduler(scheduler: str | None, client: Any | None) -> str:
    """Return the local Dask scheduler that predicts the tiles: ``"threads"`` or ``"synchronous"``.

    ``None`` takes Dask's configured ``scheduler`` (``dask.config.set(scheduler=...)``) when it
    names one of these two, and :data:`DEFAULT_SCHEDULER` otherwise. So a configured process pool
    is never used, and a running ``dask.distributed`` client only when passed as ``client``.

    Raises
    ------
    ValueError
        For any other name, when ``client`` is given as well, and when ``client`` is not a running
        ``dask.distributed.Client``.
    """
    if scheduler is not None and client is not None:
        msg = (
            f"scheduler={scheduler!r} and client={client!r} were both given; pass scheduler= to "
            "predict in this process, or client= to predict on a dask.distributed cluster."
        )
        raise ValueError(msg)

    if client is not None:
        _check_client(client)

    if scheduler is None:
        configured = dask.config.get("scheduler", None)
        if isinstance(configured, str) and configured.lower() in LOCAL_SCHEDULERS:
            return LOCAL_SCHEDULERS[configured.lower()]
        return DEFAULT_SCHEDULER

    if not isinstance(scheduler, str) or scheduler.lower() not in LOCAL_SCHEDULERS:
        msg = (
            f"scheduler must be one of {sorted(LOCAL_SCHEDULERS)} or None, got {scheduler!r}. "
            "To predict in several processes or on several machines, pass a dask.distributed "
            "Client as client=."
        )
        raise ValueError(msg)
    return LOCAL_SCHEDULERS[scheduler.lower()]


def _check_client(client: Any) -> None:
    """Raise ValueError unless ``client`` is a ``dask.distributed.Client`` connected to a scheduler."""
    if not (hasattr(client, "scatter") and hasattr(client, "submit")):
        msg = (
            f"client must be a dask.distributed.Client, got {client!r}. Connect one first, for example "
            "`client = distributed.Client(address)` with the scheduler's address, and pass client=client."
        )
        raise ValueError(msg)
    status = getattr(client, "status", "running")
    if status != "running":
        msg = (
            f"client {client!r} is {status}, not running, so it cannot predict the tiles. Pass a "
            "connected dask.distributed.Client, or leave out client= to predict in this process."
        )
        raise ValueError(msg)


@dataclass(frozen=True)
class _AssignmentRule:
    """Score threshold and rule that choose a transcript's cell among its candidates (see :func:`select_candidates`)."""

    score_cut: float
    rule: Literal["nearest", "score"]


@dataclass
class _TileResult:
    """Result of one tile's task: the chosen shape of each core transcript, without the candidate links.

    Attributes
    ----------
    transcripts
        Global indices of the tile's core transcripts.
    shape, score
        Chosen prior shape (-1 for none) and score of each core transcript.
    leftover_embeddings
        Embeddings of the core transcripts left without a shape, in ``transcripts`` order, for
        the fragment step; the others are dropped in the task.
    n_links
        Number of candidate links scored.
    """

    transcripts: np.ndarray
    shape: np.ndarray
    score: np.ndarray
    leftover_embeddings: np.ndarray
    n_links: int


@dataclass
class _Predicted:
    """The choices of every tile, gathered over the slide's graph transcripts.

    ``leftover`` contains, in ascending order, the transcripts left without a prior shape, and
    ``leftover_embeddings`` their embeddings in the same order.
    """

    shape: np.ndarray
    score: np.ndarray
    leftover: np.ndarray
    leftover_embeddings: np.ndarray
    n_links: int


def _predict_tiles(
    model: Segger,
    inputs: GraphInputs,
    settings: GraphSettings,
    polygons: np.ndarray,
    *,
    rule: _AssignmentRule,
    tile_size: float,
    device: torch.device,
    client: Any | None,
    scheduler: str,
    store: ArrayStore,
    progress: bool,
) -> _Predicted:
    """Predict every tile and choose each transcript's prior shape within the tile's task.

    A transcript's candidate links all come from the one tile whose core contains it, so the
    choice made per tile equals the choice over all links, and the links never leave the task.
    """
    grid = TileGrid.from_positions(inputs.positions[:, :2], tile_size=tile_size, margin=settings.margin)
    tile_index = grid.index(
        inputs.positions[:, :2], inputs.shape_centroids, allocate=partial(store.empty, "tile_order")
    )
    tiles = tile_index.non_empty.tolist()
    task = partial(_predict_tile_task, settings=settings, rule=rule)
    results = _TileResults(inputs.n_transcripts, model.embedding_size, store)
    if client is None:
        _predict_tiles_locally(
            task,
            model,
            inputs,
            polygons,
            tile_index,
            tiles,
            results,
            device=device,
            scheduler=scheduler,
            progress=progress,
        )
    else:
        _predict_tiles_on_client(
            client, task, model, inputs, polygons, tile_index, tiles, results, store=store, progress=progress
        )
    results.log_summary(grid, settings)
    del tile_index
    predicted = results.finish()
    release_freed_memory()
    return predicted


class _TileResults:
    """Slide-wide arrays that each tile's result is written into as soon as its task ends.

    Tiles have disjoint cores, so tasks in threads may add their results at the same time: each
    writes its own positions of the arrays, and a lock guards the rest.
    """

    def __init__(self, n_transcripts: int, embedding_size: int, store: ArrayStore) -> None:
        self.shape = store.full("shape", n_transcripts, -1, np.int32)
        self.score = store.full("score", n_transcripts, np.nan, np.float32)
        self.predicted = store.full("predicted", n_transcripts, False, bool)
        self.embedding_size = embedding_size
        self.store = store
        # Appended in the order that tiles finish, and sorted by transcript in `finish`.
        self.leftover = store.column("leftover_unsorted")
        self.embeddings = store.column("leftover_embeddings_unsorted")
        self.n_links = 0
        self.n_tiles = 0
        self.unreached_tiles = 0
        self.unreached_transcripts = 0
        self._lock = threading.Lock()

    def add(self, result: _TileResult) -> None:
        """Write one tile's choices and keep its leftover transcripts for the fragment step."""
        self.shape[result.transcripts] = result.shape
        self.score[result.transcripts] = result.score
        self.predicted[result.transcripts] = True
        with self._lock:
            self.leftover.append(result.transcripts[result.shape < 0])
            self.embeddings.append(result.leftover_embeddings)
            self.n_links += result.n_links
            self.n_tiles += 1
            if result.n_links == 0:
                self.unreached_tiles += 1
                self.unreached_transcripts += len(result.transcripts)

    def finish(self) -> _Predicted:
        """Return the gathered choices, with the leftover transcripts in ascending order.

        Raises
        ------
        RuntimeError
            When a transcript was in no tile's core.
        """
        if not self.predicted.all():
            msg = (
                f"{int((~self.predicted).sum())} transcripts were not predicted by any tile; this is a "
                "bug in tiling."
            )
            raise RuntimeError(msg)

        unsorted = self.leftover.finish()
        embeddings = self.embeddings.finish()
        if len(unsorted) == 0:
            unsorted = np.empty(0, dtype=np.int64)
            embeddings = np.empty((0, self.embedding_size), dtype=np.float32)
        order = np.argsort(unsorted, kind="stable")
        leftover = unsorted[order]
        del unsorted

        # Gathered a block at a time, so at most two copies of the embeddings are in memory, or
        # only one block of them with a scratch folder.
        ordered = self.store.empty("leftover_embeddings", embeddings.shape, embeddings.dtype)
        for block in row_blocks(len(order)):
            ordered[block] = embeddings[order[block]]
        del embeddings
        return _Predicted(
            shape=self.shape,
            score=self.score,
            leftover=leftover,
            leftover_embeddings=ordered,
            n_links=self.n_links,
        )

    def log_summary(self, grid: TileGrid, settings: GraphSettings) -> None:
        """Log how many tiles were empty and how many had no candidate shape for any core transcript."""
        logger.info(
            "Predicted %d of %d tiles: %d contained no transcripts, %d had no prior shape within "
            "dist_bd = %.1f µm (their %d transcripts go to the fragment step).",
            self.n_tiles,
            grid.n_tiles,
            grid.n_tiles - self.n_tiles,
            self.unreached_tiles,
            settings.dist_bd,
            self.unreached_transcripts,
        )


def _predict_tiles_locally(
    task: Callable[..., _TileResult],
    model: Segger,
    inputs: GraphInputs,
    polygons: np.ndarray,
    tile_index: TileIndex,
    tiles: list[int],
    results: _TileResults,
    *,
    device: torch.device,
    scheduler: str,
    progress: bool,
) -> None:
    """Run ``task`` on every tile as a task of Dask's local ``scheduler``, adding each result to ``results``.

    Each task cuts its tile out of ``tile_index``, builds its graph and drops both once
    predicted, so at most one tile per thread is alive, and writes its result before it ends,
    so no tile's result waits for the others. On CUDA, graphs are built in parallel but one task
    at a time runs the model.
    """
    model.to(device)
    # NOTE: the CUDA path, with its lock, has only been run on machines without a GPU.
    model_lock = threading.Lock() if device.type == "cuda" else nullcontext()
    delayed_task = dask.delayed(
        partial(
            _predict_and_add,
            task=task,
            results=results,
            model=model,
            inputs=inputs,
            polygons=polygons,
            tile_index=tile_index,
            device=device,
            model_lock=model_lock,
        ),
        pure=False,
    )
    delayed_results = [delayed_task(tile, dask_key_name=f"segger-tile-{tile}") for tile in tiles]

    try:
        with (
            tqdm(total=len(tiles), desc="Predicting tiles", disable=not progress, leave=False) as bar,
            Callback(posttask=lambda *_: bar.update()),
        ):
            if scheduler == "synchronous":
                dask.compute(delayed_results, scheduler="synchronous")
            else:
                with _tile_thread_pool(len(tiles)) as pool:
                    dask.compute(delayed_results, scheduler=pool)
    finally:
        model.cpu()


def _predict_and_add(
    tile: int, *, task: Callable[..., _TileResult], results: _TileResults, **options: Any
) -> None:
    """Run ``task`` on ``tile`` and add its result to ``results``."""
    results.add(task(tile, **options))


@contextmanager
def _tile_thread_pool(n_tiles: int) -> Iterator[ThreadPoolExecutor]:
    """Yield a pool of Dask's ``num_workers`` threads (by default one per core), at most one per tile.

    Each pool thread runs torch on one intra-op thread (see :func:`_one_torch_thread`), so the
    pool's threads do not compete with torch's own threads for the cores.
    """
    torch_threads = torch.get_num_threads()
    n_workers = max(1, min(int(dask.config.get("num_workers", None) or CPU_COUNT), n_tiles))
    pool = ThreadPoolExecutor(
        n_workers, thread_name_prefix="segger-tile", initializer=torch.set_num_threads, initargs=(1,)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)
        # torch.set_num_threads in any thread also sets the count that threads started later get.
        torch.set_num_threads(torch_threads)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread in the calling thread, restoring its thread count afterwards.

    Reductions split over several threads round differently: on ``sg.datasets.toy(n_cells=2000)``,
    scores from one and two threads differed by up to 1.5e-8. One thread in every task makes the
    labels independent of the scheduler, the core count and the Dask workers' thread settings.
    The cost: a slide with fewer tiles than cores leaves the other cores idle.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _predict_tiles_on_client(
    client: Any,
    task: Callable[..., _TileResult],
    model: Segger,
    inputs: GraphInputs,
    polygons: np.ndarray,
    tile_index: TileIndex,
    tiles: list[int],
    results: _TileResults,
    *,
    store: ArrayStore,
    progress: bool = False,
) -> None:
    """Run ``task`` on every tile as a task of a ``dask.distributed`` client, adding each result to ``results``.

    Each result is fetched and added as its task finishes, and then released on the cluster, so
    the results of all tiles are never held at once.

    The model, the graph inputs, the prior polygons and the tile index are sent to every worker
    once. Where ``store`` keeps the per-transcript arrays in a folder that every worker can
    read, with the same files, the workers map those files instead of receiving copies.
    Workers predict on their CPU.
    """
    from distributed import as_completed

    logger.info("Predicting %d tiles on the Dask client %s.", len(tiles), client)
    if store.on_disk:
        portable_inputs = store.portable(inputs)
        if _workers_read_file(client, portable_inputs.positions):
            inputs, tile_index = portable_inputs, store.portable(tile_index)
            logger.info("The Dask workers map the per-transcript arrays from %s.", store.folder)
        else:
            logger.info(
                "Not every Dask worker can read the scratch folder %s, so each receives a copy of the "
                "per-transcript arrays. Give a scratch_dir on a file system that all workers share "
                "to avoid the copies.",
                store.folder,
            )
    model_future, inputs_future, polygons_future, index_future = client.scatter(
        [model.cpu(), inputs, polygons, tile_index], broadcast=True
    )
    futures = client.map(
        task,
        tiles,
        model=model_future,
        inputs=inputs_future,
        polygons=polygons_future,
        tile_index=index_future,
        freeze_objects=True,
        pure=False,
    )
    added = set()
    try:
        with tqdm(total=len(tiles), desc="Predicting tiles", disable=not progress, leave=False) as bar:
            for future in as_completed(futures):
                results.add(future.result())
                added.add(future.key)
                future.release()
                bar.update()
    except Exception as error:
        # result() raises at the first failed task, so wait for the others to list every failed tile.
        failed = [
            tile
            for tile, future in zip(tiles, futures, strict=True)
            if future.key not in added and _task_failed(future)
        ]
        msg = f"Prediction failed on the Dask cluster for tile(s) {failed or 'unknown'}: {error!r}"
        if _is_killed_worker(error):
            msg += (
                ". The worker process running these tiles died on every attempt that "
                "distributed.scheduler.allowed-failures allows, which usually means it ran out of "
                "memory or crashed in native code. The worker logs show the cause; give workers "
                "more memory or use a smaller tile_size."
            )
        raise RuntimeError(msg) from error


def _workers_read_file(client: Any, reference: Any) -> bool:
    """Return whether every worker of ``client`` finds the file of a :class:`MappedArray` with its size here."""
    if not isinstance(reference, MappedArray):
        return False
    expected = file_size(reference.path)
    sizes = client.run(file_size, reference.path)
    return expected >= 0 and bool(sizes) and all(size == expected for size in sizes.values())


def _is_killed_worker(error: BaseException) -> bool:
    """Return whether ``error`` is distributed's ``KilledWorker``: a task whose workers all died."""
    try:
        from distributed import KilledWorker
    except ImportError:
        return False
    return isinstance(error, KilledWorker)


def _task_failed(future: Any) -> bool:
    """Wait for a Dask future and return whether it ended in an error."""
    try:
        return future.exception() is not None
    except Exception:  # a cancelled future or a lost scheduler counts as failed
        return True


def _predict_tile_task(
    tile: int,
    *,
    model: Segger,
    inputs: GraphInputs,
    polygons: np.ndarray,
    tile_index: TileIndex,
    settings: GraphSettings,
    rule: _AssignmentRule,
    device: torch.device | str = "cpu",
    model_lock: AbstractContextManager | None = None,
    freeze_objects: bool = False,
) -> _TileResult:
    """Cut tile ``tile`` out of ``tile_index``, build its graph, predict it and choose its core transcripts' shapes.

    This is the Dask task of both the local and the distributed path. ``model_lock``, when
    given, is held while the model runs, so that tasks in threads sharing one GPU run it one at
    a time. With ``freeze_objects``, which the distributed path sets, the worker's objects are
    frozen for the garbage collector during the task, as :func:`segger_predict` freezes the
    caller's.
    """
    try:
        with existing_objects_frozen() if freeze_objects else nullcontext():
            # On a Dask worker, the arrays may arrive as references to the scratch files.
            inputs, tile_index = open_mapped(inputs), open_mapped(tile_index)
            cut = tile_index.tile(tile, inputs.positions[:, :2], inputs.shape_centroids)
            data = build_tile_graph(inputs, cut, settings)
            del cut
            with model_lock or nullcontext(), _one_torch_thread(), torch.inference_mode():
                prediction = predict_tile(model, data, k_bd=settings.k_bd, device=device)
            del data
            return _choose_in_tile(prediction, inputs.positions, polygons, rule)
    except Exception as error:
        error.add_note(
            f"Raised while predicting segger tile {tile}, core bounds {tile_index.grid.bounds(tile)} µm."
        )
        raise


def _choose_in_tile(
    prediction: TilePrediction, positions: np.ndarray, polygons: np.ndarray, rule: _AssignmentRule
) -> _TileResult:
    """Choose the prior shape of each core transcript of a tile among its scored links."""
    transcripts = prediction.transcripts
    order = np.argsort(transcripts, kind="stable")
    local_sources = order[np.searchsorted(transcripts, prediction.sources, sorter=order)]

    measured = links_to_measure(
        local_sources,
        prediction.scores,
        n_transcripts=len(transcripts),
        score_cut=rule.score_cut,
        rule=rule.rule,
    )
    distances = np.full(len(local_sources), np.nan)
    distances[measured] = _boundary_distances(
        positions, polygons, prediction.sources[measured], prediction.targets[measured]
    )
    shape, score = select_candidates(
        local_sources,
        prediction.targets,
        prediction.scores,
        distances,
        n_transcripts=len(transcripts),
        score_cut=rule.score_cut,
        rule=rule.rule,
    )
    # Results of every tile are held until all tiles are done, so indices are stored compactly.
    return _TileResult(
        transcripts=transcripts.astype(compact_index_dtype(len(positions))),
        shape=shape.astype(np.int32),
        score=score,
        leftover_embeddings=prediction.embeddings[shape < 0],
        n_links=len(local_sources),
    )


def _boundary_distances(
    positions: np.ndarray, polygons: np.ndarray, sources: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Return the distance (µm) from each link's transcript to its shape's boundary, 0 inside.

    Links are measured in chunks, because a shapely point costs about a hundred bytes.
    """
    distances = np.empty(len(sources), dtype=np.float64)
    for start in range(0, len(sources), _DISTANCE_CHUNK):
        chunk = slice(start, start + _DISTANCE_CHUNK)
        points = shapely.points(positions[sources[chunk], 0], positions[sources[chunk], 1])
        distances[chunk] = shapely.distance(points, polygons[targets[chunk]])
    return distances


def _cells(
    prepared: PreparedData,
    best_shape: np.ndarray,
    best_score: np.ndarray,
    leftover: np.ndarray,
    fragments: np.ndarray,
    *,
    store: ArrayStore,
) -> tuple[Cells, np.ndarray, pd.Series]:
    """Return the cells with each transcript's code, the score of every transcript, and each grown cell's prior id.

    Cells that grew from a prior shape take its id, and fragment ``k`` becomes ``segger-<k+1>``.
    Ids are sorted as plain strings, as :func:`~segger.tl.write_segmentation` sorts them. The
    graph transcripts are read in blocks, so only the two returned arrays span the slide.

    Parameters
    ----------
    prepared
        The prepared slide.
    best_shape, best_score
        Chosen prior shape (-1 for none) and its score for every graph transcript.
    leftover
        The graph transcripts without a prior shape, ascending.
    fragments
        Fragment of each ``leftover`` transcript, -1 for none.
    store
        Where the returned codes and scores are kept.
    """
    shape_ids = prepared.shapes.index.to_numpy(dtype=object)
    used = np.zeros(len(shape_ids), dtype=bool)
    for block in row_blocks(len(best_shape)):
        shapes = best_shape[block]
        used[shapes[shapes >= 0]] = True
    used_shapes = np.flatnonzero(used)
    n_fragments = int(fragments.max(initial=-1)) + 1
    fragment_ids = np.array([f"{FRAGMENT_PREFIX}{number + 1}" for number in range(n_fragments)], dtype=object)
    ids, code_of = np.unique(np.concatenate([shape_ids[used_shapes], fragment_ids]), return_inverse=True)
    shape_code = np.full(len(shape_ids), -1, dtype=np.int32)
    shape_code[used_shapes] = code_of[: len(used_shapes)]
    fragment_code = code_of[len(used_shapes) :].astype(np.int32)

    codes = store.full("cell_codes", prepared.n_points, -1, np.int32)
    scores = store.full("scores", prepared.n_points, np.nan, np.float32)
    first_graph = 0
    for block in row_blocks(prepared.n_points):
        in_graph = prepared.in_graph[block]
        graph = slice(first_graph, first_graph + int(in_graph.sum()))
        first_graph = graph.stop
        shapes = best_shape[graph]
        graph_codes = np.where(shapes >= 0, shape_code[np.maximum(shapes, 0)], -1).astype(np.int32)
        graph_scores = np.array(best_score[graph], dtype=np.float32)

        # Leftover transcripts that joined a fragment take its code and have no score.
        own = slice(*np.searchsorted(leftover, [graph.start, graph.stop]))
        joined = fragments[own] >= 0
        rows = leftover[own][joined] - graph.start
        graph_codes[rows] = fragment_code[fragments[own][joined]]
        graph_scores[rows] = np.nan

        codes[block][in_graph] = graph_codes
        scores[block][in_graph] = graph_scores

    grown = np.asarray(
        [name for name in shape_ids[used_shapes] if not str(name).startswith(FRAGMENT_PREFIX)], dtype=object
    )
    prior_ids = pd.Series(grown, index=grown, dtype="string")
    return Cells(ids=ids, codes=codes), scores, prior_ids


def _training_tiles(
    inputs: GraphInputs,
    grid: TileGrid,
    settings: GraphSettings,
    *,
    max_tiles: int,
    random_state: int,
    store: ArrayStore,
) -> list:
    counts = np.zeros(grid.n_tiles, dtype=np.int64)
    for block in row_blocks(inputs.n_transcripts):
        labelled = inputs.prior_index[block] >= 0
        counts += np.bincount(grid.core_tile(inputs.positions[block, :2][labelled]), minlength=grid.n_tiles)
    candidates = np.flatnonzero(counts > 0)
    if len(candidates) > max_tiles:
        rng = np.random.default_rng(random_state)
        chosen = set(np.sort(rng.choice(candidates, size=max_tiles, replace=False)).tolist())
        logger.info(
            "Training on a random sample of %d of the %d tiles with labels.", max_tiles, len(candidates)
        )
    else:
        chosen = set(candidates.tolist())

    xy = inputs.positions[:, :2]
    tile_index = grid.index(xy, inputs.shape_centroids, allocate=partial(store.empty, "training_tile_order"))
    return [
        build_tile_graph(inputs, tile_index.tile(number, xy, inputs.shape_centroids), settings)
        for number in sorted(chosen)
    ]


def _graph_settings(
    prepared: PreparedData, *, k_tx: int, dist_tx: float, k_bd: int, dist_bd: float | None, num_layers: int
) -> GraphSettings:
    radius = np.sqrt(shapely.area(prepared.shapes.geometry.to_numpy()) / np.pi)
    if dist_bd is None:
        spacing = _shape_spacing(prepared)
        dist_bd = float(max(np.median(radius) + 1.0, spacing))
        logger.info(
            "Derived dist_bd = %.1f µm from the prior-shape spacing (%.1f µm) and median radius (%.1f µm).",
            dist_bd,
            spacing,
            float(np.median(radius)),
        )
    settings = GraphSettings(
        k_tx=k_tx,
        dist_tx=dist_tx,
        k_bd=k_bd,
        dist_bd=dist_bd,
        num_layers=num_layers,
        max_shape_radius=_max_shape_radius(prepared),
    )
    logger.info(
        "Graph: k_tx=%d, dist_tx=%.1f µm, k_bd=%d, dist_bd=%.1f µm, tile margin %.1f µm.",
        k_tx,
        dist_tx,
        k_bd,
        dist_bd,
        settings.margin,
    )
    return settings


def _shape_spacing(prepared: PreparedData, bin_size: float = 10.0) -> float:
    """Return the typical distance between prior shapes: sqrt of tissue area per shape.

    The tissue area is the area of the ``bin_size`` µm squares that contain transcripts, so
    empty regions of the slide do not count.
    """
    bins = np.floor(prepared.positions[:, :2] / bin_size).astype(np.int64)
    occupied = len(np.unique(bins, axis=0))
    return float(np.sqrt(occupied * bin_size**2 / len(prepared.shapes)))


def _max_shape_radius(prepared: PreparedData) -> float:
    return float(shapely.minimum_bounding_radius(prepared.shapes.geometry.to_numpy()).max() * 2)


def _vocabulary(
    genes: np.ndarray, gene_embedding: pd.DataFrame | None
) -> tuple[list[str], np.ndarray | None]:
    if gene_embedding is None:
        return sorted(pd.unique(genes).tolist()), None

    table = gene_embedding.copy()
    table.index = table.index.astype(str)
    missing = sorted(set(genes) - set(table.index))
    if missing:
        logger.warning(
            "%d gene(s) of the points are not in gene_embedding and get the unknown-gene token, for example %s.",
            len(missing),
            missing[:5],
        )
    values = table.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        msg = "gene_embedding contains NaN or infinite values; fill or drop them before fitting."
        raise ValueError(msg)
    return table.index.tolist(), values


def _warn_unknown_genes(prepared: PreparedData, tokens: np.ndarray) -> None:
    """Warn about genes outside the model's vocabulary, and raise when no gene is known.

    The warning goes through :mod:`warnings` as well as the logger, because the ``segger``
    logger only has a ``NullHandler`` unless the user configures logging.
    """
    unknown = tokens == 0
    if unknown.all():
        examples = sorted(prepared.graph_genes().tolist())[:5]
        msg = (
            f"None of the slide's genes (for example {examples}) is in the model's vocabulary, so "
            "the model cannot score these transcripts. Use a model trained on the same gene panel, "
            "or train one on this slide with `sg.tl.segger_fit`."
        )
        raise ValueError(msg)

    if unknown.any():
        examples = sorted(prepared.gene_names[np.unique(prepared.graph_feature_codes[unknown])].tolist())
        msg = (
            f"{int(unknown.sum())} of {len(tokens)} transcripts belong to {len(examples)} gene(s) the model "
            f"has never seen, for example {examples[:5]}; they get the unknown-gene token."
        )
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=4)


def _check_options(
    *,
    score_cut: float,
    assignment: str,
    min_transcripts: int,
    fragment_similarity: float,
    device: str,
    k_tx: int | None = None,
    k_bd: int | None = None,
    dist_tx: float | None = None,
    dist_bd: float | None = None,
    num_layers: int | None = None,
    tile_size: float | None = None,
    max_epochs: int | None = None,
    strategy: str | None = None,
    precision: str | None = None,
    devices: int | str = 1,
) -> None:
    """Raise ValueError for option values that would fail late or give a meaningless result.

    ``strategy``, ``precision`` and ``devices`` are checked when ``strategy`` is given.
    """
    problems = []
    if not 0.0 <= score_cut <= 1.0:
        problems.append(f"score_cut must lie in [0, 1], got {score_cut!r}")
    if assignment not in ("nearest", "score"):
        problems.append(f"assignment must be 'nearest' or 'score', got {assignment!r}")
    if min_transcripts < 1:
        problems.append(f"min_transcripts must be at least 1, got {min_transcripts!r}")
    if not -1.0 <= fragment_similarity <= 1.0:
        problems.append(f"fragment_similarity is a cosine similarity in [-1, 1], got {fragment_similarity!r}")
    for name, value in (
        ("k_tx", k_tx),
        ("k_bd", k_bd),
        ("num_layers", num_layers),
        ("max_epochs", max_epochs),
    ):
        if value is not None and value < 1:
            problems.append(f"{name} must be at least 1, got {value!r}")
    for name, value in (("dist_tx", dist_tx), ("dist_bd", dist_bd), ("tile_size", tile_size)):
        if value is not None and not (np.isfinite(value) and value > 0):
            problems.append(f"{name} must be a positive, finite distance in µm, got {value!r}")
    if not _valid_device(device):
        problems.append(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        problems.append(
            f"device={device!r} was requested but torch finds no CUDA device; use 'auto' or 'cpu'"
        )
    elif strategy is not None:
        on_gpu = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        accelerator = "gpu" if on_gpu else "cpu"
        problems += parallel_option_problems(
            strategy=strategy, precision=precision, accelerator=accelerator, devices=devices
        )

    if problems:
        msg = "Invalid option(s): " + "; ".join(problems) + "."
        raise ValueError(msg)


def _valid_device(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type in ("cpu", "cuda")
    return isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) is not None


def _torch_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _seed(random_state: int) -> None:
    np.random.seed(random_state)  # noqa: NPY002 (seeds libraries that draw from numpy's global generator)
    torch.manual_seed(random_state)
