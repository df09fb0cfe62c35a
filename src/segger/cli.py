"""The ``segger`` command: segment a vendor folder or a SpatialData zarr store into a new zarr store.

``segger segment INPUT -o OUTPUT.zarr`` reads INPUT, trains a model on it (or applies a saved one
with ``--model``) and writes a new zarr store with every element of INPUT plus the segmentation.
The store is written under a temporary sibling name and renamed to OUTPUT only when it is
complete, so an interrupted run leaves nothing under OUTPUT. INPUT is only read.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import logging
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import spatialdata
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__, datasets, io, tl
from . import _constants as C
from ._scratch import check_scratch_dir
from .io._cosmx import TRANSCRIPT_PATTERNS as COSMX_TRANSCRIPT_PATTERNS
from .io._merscope import TRANSCRIPT_FILES as MERSCOPE_TRANSCRIPT_FILES
from .io._xenium import TRANSCRIPT_FILES
from .io._zarr import write_zarr
from .models import Segger
from .models._training import PRECISIONS, STRATEGIES, global_rank
from .tl._prepare import _graph_mask, _points_element

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1  # the library rejected the data, or a file could not be read or written
EXIT_USAGE = 2  # invalid arguments, the status that argparse also uses
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM

# A folder is a zarr store when it has one of these metadata files (zarr v3, v2, consolidated v2).
ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup", "zmetadata", ".zmetadata")

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"

# Options that only training uses, keyed by argparse destination. A saved model brings its own values.
TRAINING_OPTIONS = {
    "min_qv": "--min-qv",
    "dist_bd": "--dist-bd",
    "max_epochs": "--max-epochs",
    "devices": "--devices",
    "strategy": "--strategy",
    "precision": "--precision",
    "save_model": "--save-model",
}
# Options passed on to segger_fit or segger_predict only when given, so that the library defaults
# (or the saved model's values) apply otherwise.
SEGMENTATION_OPTIONS = ("score_cut", "min_transcripts", "tile_size")

# Defaults of segger_fit, shown in the help text so that it always matches the library.
FIT_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(tl.segger_fit).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


class UsageError(Exception):
    """Invalid combination of arguments or output paths, reported with exit status 2."""


class Terminated(BaseException):
    """Exception raised when the process receives SIGTERM.

    It derives from BaseException, like KeyboardInterrupt, so that ``except Exception`` in library
    code does not catch it.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the ``segger`` command.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    The exit status: 0 on success, 1 when the data or a file is invalid, 2 for invalid arguments,
    130 after Ctrl-C and 143 after SIGTERM.

    Notes
    -----
    Temporary files are removed after errors, Ctrl-C and SIGTERM, but not after SIGKILL or a
    crash of the interpreter.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version and argparse's own errors
        return _exit_status(exit_request.code)

    with _command_logging(verbose=args.verbose, quiet=args.quiet), _sigterm_raises():
        try:
            args.run(args)
        except UsageError as error:
            return _report_error(error, EXIT_USAGE)
        except (ValueError, KeyError, OSError) as error:
            return _report_error(error, EXIT_ERROR)
        except KeyboardInterrupt:
            sys.stderr.write("segger: interrupted\n")
            return EXIT_INTERRUPTED
        except Terminated:
            sys.stderr.write("segger: terminated by SIGTERM\n")
            return EXIT_TERMINATED
        finally:
            # The folder in --scratch-dir that the new points columns are read from is deleted when
            # the segmented object is garbage-collected, and reference cycles keep that object alive.
            gc.collect()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``segger`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="segger",
        description="Transcript-based cell segmentation for imaging spatial transcriptomics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_segment_command(commands)
    return parser


def _add_segment_command(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "segment",
        help="segment cells and write a new SpatialData zarr store",
        # RawDescriptionHelpFormatter keeps the line breaks of the description and the examples.
        description=(
            "Segment the cells of INPUT and write a new SpatialData zarr store with every element\n"
            "of INPUT plus the points columns KEY_cell_id and KEY_score, the shapes KEY_boundaries\n"
            "and the table KEY_table, where KEY is --key-added. Without --model, a model is\n"
            "trained on INPUT first. INPUT is only read."
        ),
        epilog=(
            "examples:\n"
            "  segger segment -o toy.zarr\n"
            "  segger segment xenium_outs/ -o sample.zarr --save-model sample.pt\n"
            "  segger segment other_sample/ -o other.zarr --model sample.pt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(run=_segment_command)

    files = command.add_argument_group("input and output")
    files.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help=(
            "Xenium output folder (transcripts.parquet, .csv or .csv.gz), MERSCOPE folder "
            "(detected_transcripts.parquet, .csv or .csv.gz), CosMx folder (*tx_file.parquet, .csv or "
            ".csv.gz) or SpatialData zarr store. Omit it to segment the synthetic tissue of "
            "segger.datasets.toy()."
        ),
    )
    files.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT.zarr",
        help=(
            "Path of the zarr store to write, in an existing folder. It must not exist unless --overwrite "
            "is given, and it can never be INPUT, lie inside INPUT or contain it."
        ),
    )
    files.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "Replace an existing OUTPUT store or --save-model file, and replace the outputs of "
            "--key-added that INPUT may already have in the copy written to OUTPUT."
        ),
    )

    elements = command.add_argument_group("elements")
    elements.add_argument(
        "--points-key",
        default=C.POINTS_KEY,
        metavar="NAME",
        help=f"Points element with the transcripts (default: {C.POINTS_KEY}).",
    )
    elements.add_argument(
        "--shapes-key",
        default=None,
        metavar="NAME",
        help=(
            "Shapes element with the prior shapes: nuclei, or vendor cells where no nuclei exist "
            f"(default: {C.NUCLEUS_SHAPES_KEY}, or {C.CELL_SHAPES_KEY} when INPUT has no nuclei)."
        ),
    )
    elements.add_argument(
        "--pixel-size",
        type=_positive_float,
        default=0.18,
        metavar="UM",
        help=(
            "µm per pixel of a CosMx export's global coordinates: 0.18 for the original instrument, "
            "0.12028 for newer runs (default: 0.18). Other inputs ignore it."
        ),
    )
    elements.add_argument(
        "--key-added",
        default=C.KEY_ADDED,
        metavar="KEY",
        help=f"Prefix of the elements and columns written (default: {C.KEY_ADDED}).",
    )

    segmentation = command.add_argument_group(
        "segmentation", "With --model, options left out take the values the model was trained with."
    )
    segmentation.add_argument(
        "--score-cut",
        type=_fraction,
        default=argparse.SUPPRESS,
        metavar="SCORE",
        help=(
            "Minimum assignment score, from 0 to 1, for a transcript to join a prior shape "
            f"(default: {FIT_DEFAULTS['score_cut']:g})."
        ),
    )
    segmentation.add_argument(
        "--min-transcripts",
        type=_positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=(
            "Minimum number of transcripts of a cell formed without a prior shape "
            f"(default: {FIT_DEFAULTS['min_transcripts']})."
        ),
    )
    segmentation.add_argument(
        "--tile-size",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="UM",
        help=(
            "Width of the square tiles the slide is processed in, in µm. Memory use grows with it; "
            f"the result does not depend on it (default: {FIT_DEFAULTS['tile_size']:g})."
        ),
    )

    training = command.add_argument_group("training", "Not allowed with --model.")
    training.add_argument(
        "--min-qv",
        type=_optional_float,
        default=argparse.SUPPRESS,
        metavar="QV",
        help=(
            "Minimum quality value (qv, Phred-scaled) of the transcripts that are segmented; the others "
            f"stay unassigned. 'none' keeps all (default: {FIT_DEFAULTS['min_qv']:g})."
        ),
    )
    training.add_argument(
        "--dist-bd",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="UM",
        help=(
            "Maximum distance in µm from a transcript to the centroid of a candidate prior shape "
            "(default: derived from the spacing and size of the prior shapes)."
        ),
    )
    training.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=(
            "Maximum number of training epochs; training stops earlier when the validation loss stops "
            f"improving (default: {FIT_DEFAULTS['max_epochs']})."
        ),
    )
    training.add_argument(
        "--devices",
        type=_positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=(
            "Number of devices to train on: GPUs with --device cuda, or CPU processes with --device cpu "
            f"(default: {FIT_DEFAULTS['devices']}). Only training uses them; prediction runs on one device."
        ),
    )
    training.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=argparse.SUPPRESS,
        help=(
            "How to train on several devices: ddp starts this command once more per extra device, every "
            "process trains on its share of the tiles, and the first process writes OUTPUT "
            f"(default: {FIT_DEFAULTS['strategy']})."
        ),
    )
    training.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=argparse.SUPPRESS,
        help=(
            "Numeric precision of training: 16-mixed (GPU only) and bf16-mixed use automatic mixed "
            "precision. Prediction always runs in float32 (default: float32)."
        ),
    )
    training.add_argument(
        "--save-model",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="Save the trained model to PATH for later use with --model.",
    )

    run = command.add_argument_group("run")
    run.add_argument(
        "--model",
        metavar="PATH",
        help="Apply a model saved with --save-model or Segger.save instead of training one.",
    )
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="Device for training and prediction; auto uses CUDA when available (default: auto).",
    )
    run.add_argument(
        "--scratch-dir",
        metavar="DIR",
        help=(
            "Keep the per-transcript arrays and the two new points columns as memory-mapped files "
            "in new folders inside DIR, deleted before segger exits. DIR needs about 80 bytes per "
            "transcript. A gzipped transcripts file of a vendor folder is decompressed there too, "
            "and read in blocks instead of whole (default: in memory)."
        ),
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed for numpy and torch, and of the synthetic tissue when INPUT is omitted (default: 0).",
    )
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="Log debug messages and show tracebacks of errors."
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="Log only warnings and errors, and hide progress bars."
    )
    run.add_argument("--no-progress", action="store_true", help="Hide progress bars.")


def _segment_command(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    options = vars(args)
    source = _input_path(args.input)
    output = _output_path(args.output, source, overwrite=args.overwrite)
    model_file = _check_training_options(options)
    save_file = _save_model_path(options.get("save_model"), source, output, overwrite=args.overwrite)
    _check_device(args.device, options.get("precision"))
    if args.scratch_dir is not None:
        _check_scratch_outside_input(args.scratch_dir, source)

    model = _load_model(model_file) if model_file is not None else None
    sdata = _read_input(
        source, random_state=args.seed, pixel_size=args.pixel_size, scratch_dir=args.scratch_dir
    )
    options["shapes_key"] = _prior_shapes_key(sdata, args.shapes_key)
    _check_outputs_absent(
        sdata, points_key=args.points_key, key_added=args.key_added, overwrite=args.overwrite
    )

    trained = _run_segmentation(sdata, model, options)
    rank = global_rank()
    if rank > 0:
        logger.info("Process %d finished training and writes nothing: process 0 writes OUTPUT.", rank)
        return
    n_cells, n_assigned, n_eligible, n_points = _count_assigned(
        sdata, points_key=args.points_key, key_added=args.key_added, min_qv=trained.settings["min_qv"]
    )

    with _staged(output) as staged_store:
        _write_store(sdata, staged_store)
        if save_file is not None:
            with _staged(save_file) as staged_model:
                trained.save(staged_model)
                _publish(staged_model, save_file)
            logger.info("Saved the trained model to %s.", save_file)
        _publish(staged_store, output)

    share = 100.0 * n_assigned / n_eligible if n_eligible else 0.0
    logger.info(
        "Found %d cells and assigned %d of %d graph transcripts (%.1f %%) to them, leaving out %d control "
        "probes and transcripts below min_qv; wrote %s in %.1f s.",
        n_cells,
        n_assigned,
        n_eligible,
        share,
        n_points - n_eligible,
        output,
        time.perf_counter() - start,
    )


def _input_path(value: str | None) -> Path | None:
    """Return INPUT as an absolute path, or None for the synthetic tissue."""
    if value is None:
        return None

    path = Path(value).expanduser().resolve()
    if not path.exists():
        msg = (
            f"INPUT {value!r} does not exist. Pass a Xenium, MERSCOPE or CosMx output folder or a "
            "SpatialData zarr store, or omit INPUT to segment the synthetic tissue."
        )
        raise FileNotFoundError(msg)
    if not path.is_dir():
        msg = (
            f"INPUT {value!r} is a file, but segger reads folders: pass the vendor output folder that "
            "contains the transcripts file, or a SpatialData zarr store."
        )
        raise ValueError(msg)
    return path


def _output_path(value: str, source: Path | None, *, overwrite: bool) -> Path:
    """Return OUTPUT as an absolute path after checking that writing it cannot touch INPUT."""
    output = Path(value).expanduser().resolve()
    if source is not None:
        if output == source:
            msg = f"OUTPUT {value!r} is INPUT; segger writes a new store. Choose another OUTPUT path."
            raise UsageError(msg)
        if source in output.parents:
            msg = f"OUTPUT {value!r} lies inside INPUT {str(source)!r}. Choose an OUTPUT path outside INPUT."
            raise UsageError(msg)
        if output in source.parents:
            msg = f"OUTPUT {value!r} contains INPUT {str(source)!r}. Choose an OUTPUT path outside it."
            raise UsageError(msg)

    if not output.parent.is_dir():
        msg = f"The folder of OUTPUT, {str(output.parent)!r}, does not exist. Create it first."
        raise UsageError(msg)

    if output.exists() or output.is_symlink():
        if not overwrite:
            msg = f"OUTPUT {value!r} already exists. Pass --overwrite to replace it or choose another path."
            raise UsageError(msg)
        if not _is_zarr_store(output):
            msg = (
                f"OUTPUT {value!r} exists and is not a zarr store, so --overwrite does not replace it. "
                "Choose another path or remove it yourself."
            )
            raise UsageError(msg)
    return output


def _check_scratch_outside_input(value: str, source: Path | None) -> None:
    """Raise UsageError when --scratch-dir is not a writable folder or lies inside INPUT."""
    try:
        scratch = check_scratch_dir(value, option="--scratch-dir").resolve()
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    if source is not None and (scratch == source or source in scratch.parents):
        msg = (
            f"--scratch-dir {value!r} is INPUT or lies inside it, but segger only reads INPUT. "
            "Choose a scratch folder outside INPUT."
        )
        raise UsageError(msg)


def _check_training_options(options: dict[str, Any]) -> Path | None:
    """Return the --model path, after checking that no training option was given with it."""
    if options["model"] is None:
        return None

    training_flags = [flag for name, flag in TRAINING_OPTIONS.items() if name in options]
    if training_flags:
        msg = (
            f"Training option(s) {', '.join(training_flags)} cannot be used with --model, which applies "
            "the settings the model was trained with. Leave them out, or drop --model to train."
        )
        raise UsageError(msg)

    path = Path(options["model"]).expanduser()
    if not path.is_file():
        msg = f"Model file {options['model']!r} does not exist. Pass a file written by --save-model."
        raise FileNotFoundError(msg)
    return path


def _save_model_path(value: str | None, source: Path | None, output: Path, *, overwrite: bool) -> Path | None:
    if value is None:
        return None

    path = Path(value).expanduser().resolve()
    for folder, name in ((source, "INPUT"), (output, "OUTPUT")):
        if folder is not None and (path == folder or folder in path.parents):
            msg = f"--save-model {value!r} is or lies inside {name}. Save the model outside both stores."
            raise UsageError(msg)
    if not path.parent.is_dir():
        msg = f"The folder of --save-model, {str(path.parent)!r}, does not exist. Create it first."
        raise UsageError(msg)
    if path.is_dir():
        msg = f"--save-model {value!r} is a folder. Pass the path of a file, for example model.pt."
        raise UsageError(msg)
    if path.exists() and not overwrite:
        msg = f"--save-model {value!r} already exists. Pass --overwrite to replace it or choose another path."
        raise UsageError(msg)
    return path


def _check_device(device: str, precision: str | None) -> None:
    """Raise UsageError when --device or --precision needs a CUDA device that torch does not find."""
    on_gpu = torch.cuda.is_available()
    if device == "cuda" and not on_gpu:
        msg = (
            f"--device cuda was requested, but torch {torch.__version__} finds no CUDA device. "
            "Use --device cpu, or install a CUDA build of torch on a machine with a GPU."
        )
        raise UsageError(msg)
    if precision == "16-mixed" and (device == "cpu" or not on_gpu):
        msg = (
            f"--precision 16-mixed needs a CUDA device, but training runs on the CPU (--device {device}). "
            "Use --precision bf16-mixed on the CPU."
        )
        raise UsageError(msg)


def _load_model(path: Path) -> Segger:
    try:
        return Segger.load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        msg = f"Model file {str(path)!r} could not be read ({error}). Pass a file written by --save-model."
        raise ValueError(msg) from error


def _read_input(
    source: Path | None, *, random_state: int, pixel_size: float, scratch_dir: str | None
) -> SpatialData:
    if source is None:
        logger.info("No INPUT given; segmenting the synthetic tissue of segger.datasets.toy().")
        return datasets.toy(random_state=random_state)

    if _is_zarr_store(source):
        logger.info("Reading the SpatialData zarr store %s.", source)
        return spatialdata.read_zarr(source)
    if any((source / name).is_file() for name in TRANSCRIPT_FILES):
        logger.info("Reading the Xenium folder %s.", source)
        return io.xenium(source, scratch_dir=scratch_dir)
    if any((source / name).is_file() for name in MERSCOPE_TRANSCRIPT_FILES):
        logger.info("Reading the MERSCOPE folder %s.", source)
        return io.merscope(source, scratch_dir=scratch_dir)
    if any(any(source.glob(pattern)) for pattern in COSMX_TRANSCRIPT_PATTERNS):
        logger.info("Reading the CosMx folder %s at %g µm per pixel.", source, pixel_size)
        return io.cosmx(source, pixel_size=pixel_size, scratch_dir=scratch_dir)

    msg = (
        f"INPUT {str(source)!r} is neither a SpatialData zarr store (a .zarr folder, or one with zarr "
        f"metadata such as zarr.json or .zattrs) nor a vendor folder: Xenium (with "
        f"{' or '.join(TRANSCRIPT_FILES)}), MERSCOPE (with {' or '.join(MERSCOPE_TRANSCRIPT_FILES)}) or "
        f"CosMx (with a file matching {' or '.join(COSMX_TRANSCRIPT_PATTERNS)}). Pass one of those."
    )
    raise ValueError(msg)


def _prior_shapes_key(sdata: SpatialData, requested: str | None) -> str:
    """Return the shapes element to use as prior shapes: the requested one, else nuclei, else cells."""
    if requested is not None:
        return requested
    if C.NUCLEUS_SHAPES_KEY not in sdata.shapes and C.CELL_SHAPES_KEY in sdata.shapes:
        logger.info(
            "INPUT has no %r, so the vendor cells %r are the prior shapes.",
            C.NUCLEUS_SHAPES_KEY,
            C.CELL_SHAPES_KEY,
        )
        return C.CELL_SHAPES_KEY
    return C.NUCLEUS_SHAPES_KEY


def _is_zarr_store(path: Path) -> bool:
    if not path.is_dir():
        return False
    return path.suffix == ".zarr" or any((path / name).exists() for name in ZARR_MARKERS)


def _check_outputs_absent(sdata: SpatialData, *, points_key: str, key_added: str, overwrite: bool) -> None:
    """Raise UsageError when INPUT already has the outputs of ``key_added`` and --overwrite is not given.

    The library makes the same check, but its message names the Python keyword, not the option.
    """
    if overwrite or points_key not in sdata.points:
        return

    columns = sdata.points[points_key].columns
    existing = [
        f"points column {column!r}"
        for column in (C.cell_id_column(key_added), C.score_column(key_added))
        if column in columns
    ]
    if C.boundaries_key(key_added) in sdata.shapes:
        existing.append(f"shapes element {C.boundaries_key(key_added)!r}")
    if C.table_key(key_added) in sdata.tables:
        existing.append(f"table element {C.table_key(key_added)!r}")
    if existing:
        msg = (
            f"INPUT already has the outputs of --key-added {key_added!r}: {', '.join(existing)}. Choose "
            "another --key-added, or pass --overwrite to replace them in OUTPUT (INPUT is not changed)."
        )
        raise UsageError(msg)


def _run_segmentation(sdata: SpatialData, model: Segger | None, options: dict[str, Any]) -> Segger:
    """Segment ``sdata`` in place with ``model``, or train a model first; return the model used."""
    common = {
        "points_key": options["points_key"],
        "shapes_key": options["shapes_key"],
        "key_added": options["key_added"],
        "device": options["device"],
        "random_state": options["seed"],
        "scratch_dir": options["scratch_dir"],
        "overwrite": options["overwrite"],
        "progress": not (options["no_progress"] or options["quiet"]),
    }
    common.update({name: options[name] for name in SEGMENTATION_OPTIONS if name in options})
    if model is not None:
        tl.segger_predict(sdata, model, **common)
        return model

    names = ("min_qv", "dist_bd", "max_epochs", "devices", "strategy", "precision")
    training = {name: options[name] for name in names if name in options}
    return tl.segger_fit(sdata, **common, **training)


def _count_assigned(
    sdata: SpatialData, *, points_key: str, key_added: str, min_qv: float | None
) -> tuple[int, int, int, int]:
    """Return the numbers of cells, of assigned graph transcripts, of graph transcripts and of all transcripts.

    Graph transcripts are those that are not control probes and pass ``min_qv``.
    """
    element, feature_key = _points_element(sdata, points_key)
    needed = [C.cell_id_column(key_added), feature_key, C.IS_CONTROL, C.QV]
    columns = [column for column in needed if column in element.columns]
    n_assigned, n_eligible, n_points = 0, 0, 0
    # One partition at a time, so that a whole slide is never computed into memory.
    for partition in element[columns].to_delayed():
        points = partition.compute()
        eligible = _graph_mask(points, feature_key, min_qv)
        n_assigned += int((eligible & points[C.cell_id_column(key_added)].notna().to_numpy()).sum())
        n_eligible += int(eligible.sum())
        n_points += len(points)
    n_cells = sdata.tables[C.table_key(key_added)].n_obs
    return n_cells, n_assigned, n_eligible, n_points


def _write_store(sdata: SpatialData, path: Path) -> None:
    phase = time.perf_counter()
    with warnings.catch_warnings():
        # zarr 3.1 emits a UserWarning per array written, saying that autosharding will become its
        # default. The store is valid and readable either way.
        warnings.filterwarnings("ignore", message=".*autosharding", category=UserWarning)
        write_zarr(sdata, path)
    logger.info("Wrote the zarr store in %.1f s.", time.perf_counter() - phase)


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of ``target`` and remove whatever is left there on exit.

    The caller moves the finished file or folder to ``target`` with :func:`_publish`. When the
    block raises before that, the partial result is deleted.
    """
    staged = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if staged.exists() or staged.is_symlink():
        msg = (
            f"The temporary path {str(staged)!r} already exists, left over from an earlier run that was "
            "killed. Delete it and run again."
        )
        raise FileExistsError(msg)
    try:
        yield staged
    finally:
        _remove_left_over(staged)


def _remove_left_over(path: Path, *, attempts: int = 20, pause: float = 0.1) -> None:
    """Remove ``path``, trying again while threads of an interrupted write still add files to it.

    An interrupt stops the main thread, but the writer threads finish the chunks they hold, so a
    single removal can fail or leave new files behind. Errors are logged, not raised, so that
    the exception that ended the write is the one reported.
    """
    for _ in range(attempts):
        with contextlib.suppress(OSError):
            _remove(path)
        # Checked after a pause, so that a writer still running has time to show itself.
        time.sleep(pause)
        if not (path.exists() or path.is_symlink()):
            return
    logger.warning("Could not remove the temporary path %s; delete it before running again.", path)


def _publish(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target``, replacing an existing ``target`` only after the move succeeded."""
    if not (target.exists() or target.is_symlink()):
        staged.rename(target)
        return

    previous = target.with_name(f"{target.name}.old-{os.getpid()}")
    target.rename(previous)
    try:
        staged.rename(target)
    except BaseException:
        previous.rename(target)
        raise
    _remove(previous)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM within the block, so that cleanup code runs.

    Batch schedulers stop jobs with SIGTERM, whose default action ends the process without
    unwinding. Lightning 2.6 calls the handler found here from its own handler, which without it
    stops training by raising a SystemExit that ends the process with status 0. Signal handlers
    can only be set from the main thread, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _command_logging(*, verbose: bool, quiet: bool) -> Iterator[None]:
    """Send the ``segger`` logger's records to stderr for the duration of one command."""
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    package = logging.getLogger("segger")
    # Lightning logs its hardware summary and tips at INFO for every Trainer, so they appear only
    # with --verbose.
    lightning = logging.getLogger("lightning.pytorch")
    previous_levels = (package.level, lightning.level)

    package.addHandler(handler)
    package.setLevel(level)
    lightning.setLevel(level if verbose else max(level, logging.WARNING))
    try:
        # Log lines go through tqdm.write, so that they do not break a progress bar in two.
        with logging_redirect_tqdm(loggers=[package]):
            yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous_levels[0])
        lightning.setLevel(previous_levels[1])


def _report_error(error: BaseException, status: int) -> int:
    logger.debug("Traceback of the error below:", exc_info=error)
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    sys.stderr.write(f"segger: error: {message}\n")
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    return EXIT_ERROR


def _fraction(value: str) -> float:
    number = _number(value, float)
    if not 0.0 <= number <= 1.0:
        msg = f"{value!r} is outside [0, 1]"
        raise argparse.ArgumentTypeError(msg)
    return number


def _positive_float(value: str) -> float:
    number = _number(value, float)
    if not 0.0 < number < float("inf"):
        msg = f"{value!r} is not a positive finite number"
        raise argparse.ArgumentTypeError(msg)
    return number


def _positive_int(value: str) -> int:
    number = _number(value, int)
    if number < 1:
        msg = f"{value!r} is not a positive integer"
        raise argparse.ArgumentTypeError(msg)
    return number


def _optional_float(value: str) -> float | None:
    if value.lower() == "none":
        return None
    return _number(value, float)


def _number(value: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        msg = f"{value!r} is not {expected}"
        raise argparse.ArgumentTypeError(msg) from None


if __name__ == "__main__":
    sys.exit(main())
