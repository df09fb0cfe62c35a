"""Compare segger with nucleus expansion and the vendor segmentation at the same share of transcripts assigned.

MECR (mutually exclusive co-expression rate) falls when fewer transcripts are assigned, so a single
figure per method cannot rank methods. This script sweeps each method over its main parameter (segger's
``score_cut``, the expansion distance). It then compares segger's default against the expansion
sweep interpolated at the same share assigned. It does so on the real Xenium crop and on the
synthetic toy tissue, where the true cells are known.

Usage::

    python benchmarks/compare_methods.py --output benchmarks/RESULTS.md

It writes the section "methods" of the output file and the figure ``benchmarks/mecr_vs_assigned.png``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _markdown import replace_section
from run_segmentation import DEFAULT_CROP, REPOSITORY, machine_facts, markdown_table

import segger as sg

logger = logging.getLogger("segger_benchmark")

SCORE_CUTS = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
# 0 to 8 µm covers the vendors' defaults. The longer distances let the sweep reach the share of
# transcripts that segger assigns, so the comparison at that share is an interpolation.
DISTANCES = (*range(9), 10, 12, 15)
N_BOOTSTRAP = 1000
TOY_KINDS = ("epithelial", "fibroblast", "immune", "endothelial")
FIGURE = REPOSITORY / "benchmarks" / "mecr_vs_assigned.png"

COLUMNS = {
    "n_cells": ("cells", "{:.0f}"),
    "pct_assigned": ("assigned (%)", "{:.1f}"),
    "median_transcripts": ("median transcripts", "{:.0f}"),
    "median_area": ("median area (µm²)", "{:.0f}"),
    "mecr": ("MECR", "{:.4f}"),
    "mecr_low": ("MECR low", "{:.4f}"),
    "mecr_high": ("MECR high", "{:.4f}"),
    "mecr_area_matched": ("area-matched MECR", "{:.4f}"),
    "contamination": ("contamination", "{:.4f}"),
    "pct_correct": ("in true cell (%)", "{:.1f}"),
    "ari": ("ARI", "{:.3f}"),
}


def segment_all(sdata, *, random_state: int) -> dict[str, float]:
    """Write segger at its defaults, its score_cut sweep, the expansion sweep and the vendor column.

    Returns the seconds each method took, by key.
    """
    seconds = {}
    start = time.perf_counter()
    model = sg.tl.segger_fit(sdata, random_state=random_state, progress=False)
    seconds["segger"] = time.perf_counter() - start

    for cut in SCORE_CUTS:
        sg.tl.segger_predict(sdata, model, score_cut=cut, key_added=f"segger_cut_{cut}", progress=False)
    for distance in DISTANCES:
        start = time.perf_counter()
        sg.tl.nucleus_expansion(sdata, distance=distance, key_added=f"expansion_{distance}")
        seconds[f"expansion_{distance}"] = time.perf_counter() - start
    sg.tl.from_transcript_column(sdata, column="cell_id", key_added="vendor")
    return seconds


def method_of(key: str) -> str:
    if key.startswith("segger"):
        return "segger"
    if key.startswith("expansion"):
        return "nucleus expansion"
    return "vendor"


def expansion_at(table: pd.DataFrame, share: float, column: str) -> float:
    """Return the expansion sweep's ``column`` interpolated at ``share`` percent assigned; NaN outside it."""
    sweep = table.loc[[f"expansion_{distance}" for distance in DISTANCES]].sort_values("pct_assigned")
    x = sweep["pct_assigned"].to_numpy()
    if not x[0] <= share <= x[-1]:
        return np.nan
    return float(np.interp(share, x, sweep[column].to_numpy()))


def measure_crop(path: Path, *, random_state: int) -> tuple[pd.DataFrame, dict]:
    sdata = sg.io.xenium(path)
    seconds = segment_all(sdata, random_state=random_state)
    markers = sg.tl.find_markers(sdata, key="vendor", random_state=random_state)
    table = sg.tl.segmentation_metrics(
        sdata, markers=markers, n_bootstrap=N_BOOTSTRAP, random_state=random_state
    )
    table["seconds"] = pd.Series(seconds)
    return table, markers


def measure_toy(*, random_state: int) -> tuple[pd.DataFrame, dict]:
    sdata = sg.datasets.toy(random_state=random_state)
    seconds = segment_all(sdata, random_state=random_state)
    markers = {kind: [f"{kind}_{i:02d}" for i in range(1, 11)] for kind in TOY_KINDS}
    table = sg.tl.segmentation_metrics(
        sdata, markers=markers, n_bootstrap=N_BOOTSTRAP, random_state=random_state
    )
    table["seconds"] = pd.Series(seconds)
    return table, markers


def format_table(table: pd.DataFrame) -> str:
    columns = [column for column in COLUMNS if column in table.columns and table[column].notna().any()]
    header = ["key", *[COLUMNS[column][0] for column in columns], "time (s)"]
    rows = []
    for key, row in table.iterrows():
        cells = [
            COLUMNS[column][1].format(row[column]) if pd.notna(row[column]) else "–" for column in columns
        ]
        seconds = f"{row['seconds']:.1f}" if pd.notna(row.get("seconds")) else "–"
        rows.append([f"`{key}`", *cells, seconds])
    return markdown_table(header, rows)


def comparison_rows(name: str, table: pd.DataFrame) -> list[list[str]]:
    """Compare segger's default row with the expansion sweep at the same share assigned."""
    segger = table.loc["segger"]
    share = segger["pct_assigned"]
    rows = []
    for column, label in (("mecr", "MECR"), ("mecr_area_matched", "area-matched MECR")):
        expansion = expansion_at(table, share, column)
        measured = f"{segger[column]:.4f} vs {expansion:.4f}"
        if column == "mecr":
            low, high = expansion_at(table, share, "mecr_low"), expansion_at(table, share, "mecr_high")
            measured = (
                f"{segger[column]:.4f} [{segger['mecr_low']:.4f}, {segger['mecr_high']:.4f}] vs "
                f"{expansion:.4f} [{low:.4f}, {high:.4f}]"
            )
        verdict = "**pass**" if segger[column] < expansion else "**FAIL**"
        rows.append([f"{name}: segger {label} below expansion at {share:.1f} % assigned", measured, verdict])
    return rows


def truth_rows(table: pd.DataFrame) -> list[list[str]]:
    segger = table.loc["segger", "pct_correct"]
    best = max(table.loc[f"expansion_{distance}", "pct_correct"] for distance in DISTANCES)
    vendor = table.loc["vendor", "pct_correct"]
    return [
        [
            f"toy: segger in true cell above every expansion ({DISTANCES[0]}–{DISTANCES[-1]} µm)",
            f"{segger:.1f} % vs best {best:.1f} %",
            "**pass**" if segger > best else "**FAIL**",
        ],
        [
            "toy: segger in true cell above the vendor-like column",
            f"{segger:.1f} % vs {vendor:.1f} %",
            "**pass**" if segger > vendor else "**FAIL**",
        ],
    ]


def draw(crop: pd.DataFrame | None, toy: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [("Xenium lung crop", crop), ("toy tissue", toy)] if crop is not None else [("toy tissue", toy)]
    figure, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for ax, (title, table) in zip(axes[0], tables, strict=True):
        sg.pl.mecr_vs_assigned(table, method=table.index.map(method_of).to_series(index=table.index), ax=ax)
        ax.set_title(title)
    figure.tight_layout()
    figure.savefig(FIGURE, dpi=110)
    plt.close(figure)


NOTES = """
### What was measured

- Every segmentation is measured by `sg.tl.segmentation_metrics` over the non-control transcripts
  with qv ≥ 20; *assigned* is the share of them in a cell.
- **segger** is `segger_fit` at its defaults (`random_state=0`); `segger_cut_C` applies the same
  model with `segger_predict(score_cut=C)`. **expansion_D** is `nucleus_expansion(distance=D)`;
  **vendor** is the vendor's own `cell_id` (`from_transcript_column`); on the toy tissue it is
  nuclei expanded by 5 µm, so it equals `expansion_5` up to polygon areas.
- **Markers**: on the crop, `sg.tl.find_markers` on the vendor segmentation (Leiden clusters,
  genes detected in at least half of a cluster's cells and at most a fifth of the others). On the
  toy tissue, they are the ten markers of each of its four cell types. Every method is measured with
  the same markers.
- **MECR interval**: 1,000 bootstrap samples over cells and marker pairs, 95 %. The expansion's
  interval at segger's share is the interpolation of its sweep's bounds.
- **Area-matched MECR**: MECR within deciles of cell area, the deciles taken over the cells of all
  segmentations of that dataset, averaged over deciles.
- **time** is the seconds of `segger_fit` (graph, training, prediction and write-back) or of
  `nucleus_expansion`.
"""


def write_report(crop, toy, output: Path | None) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", *sys.argv])
    targets = []
    parts = [
        "## Methods compared at the same share assigned",
        f"Measured on {date} with\n\n```bash\n{command}\n```",
    ]
    parts.append(f"![MECR against share assigned]({FIGURE.name})")
    if crop is not None:
        crop_table, crop_markers = crop
        targets += comparison_rows("crop", crop_table)
        parts += [
            "### Xenium lung crop",
            "Markers found on the vendor segmentation: "
            + "; ".join(f"{name}: {', '.join(genes)}" for name, genes in crop_markers.items())
            + ".",
            format_table(crop_table),
        ]
    toy_table, _ = toy
    targets += comparison_rows("toy", toy_table) + truth_rows(toy_table)
    parts += ["### Toy tissue (`sg.datasets.toy()`, seed 0)", format_table(toy_table)]
    parts += ["### Targets", markdown_table(["target", "measured", "result"], targets)]
    facts = "\n".join(f"- {name}: {value}" for name, value in machine_facts().items())
    parts += ["### Machine", facts, NOTES.strip()]
    report = "\n\n".join(parts) + "\n"
    if output is not None:
        replace_section(output, "methods", report)
        logger.info("Wrote the section 'methods' of %s.", output)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Compare segger with the baselines at the same share assigned."
    )
    parser.add_argument("--output", type=Path, help="markdown file whose section 'methods' is written")
    parser.add_argument(
        "--crop-path",
        type=Path,
        default=DEFAULT_CROP,
        help=f"Xenium folder of the crop (default: {DEFAULT_CROP})",
    )
    parser.add_argument("--random-state", type=int, default=0, help="seed of segger and the toy (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("segger").setLevel(logging.WARNING)

    crop = None
    if args.crop_path.is_dir():
        crop = measure_crop(args.crop_path, random_state=args.random_state)
    else:
        logger.warning("Skipping the crop, because the folder %s does not exist.", args.crop_path)
    toy = measure_toy(random_state=args.random_state)

    draw(crop[0] if crop else None, toy[0])
    sys.stdout.write(write_report(crop, toy, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
