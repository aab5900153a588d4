"""The Table 2 example's output: the table, the time ratios, ``table2.csv``, ``.json``, figures.

``figure5.png`` plots JFB against Jacobian-based, ``figure6.png`` JFB against the Neumann-k
truncations, each as test accuracy against epoch and against training time.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from examples.jfb_training import Run

PAPER_SPEEDUP = {"mnist": 1.6, "svhn": 2.5, "cifar10": 3.6}
"""Jacobian-based / JFB time per epoch reported in the paper's Table 2."""

COLUMNS = [
    ("method", "method", "{}"),
    ("time_per_epoch_s", "time/epoch (s)", "{:.2f}"),
    ("time_per_epoch_min_s", "min", "{:.2f}"),
    ("time_per_epoch_max_s", "max", "{:.2f}"),
    ("matvecs_per_epoch", "J mat-vecs/epoch", "{:.3g}"),
    ("test_accuracy", "test acc (%)", "{:.2f}"),
    ("forward_iterations_per_batch", "fwd iters/batch", "{:.1f}"),
    ("skipped_batches", "skipped", "{}"),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The Table 2 columns of :meth:`Run.summary` rows, right-aligned."""
    cells = [[fmt.format(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [
        max(len(title), *(len(c[i]) for c in cells)) for i, (_, title, _) in enumerate(COLUMNS)
    ]
    lines = ["  ".join(title.rjust(w) for (_, title, _), w in zip(COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def speedup_lines(ratios: dict[str, dict[str, float]], dataset: str) -> list[str]:
    """One line per method: its time per epoch over JFB's, next to the paper's ratios."""
    lines = [
        f"{method} / jfb time per epoch: {r['median']:.2f}× (median of {r['rounds']} "
        f"interleaved rounds, range {r['min']:.2f}–{r['max']:.2f})"
        for method, r in ratios.items()
    ]
    paper = ", ".join(f"{k} {v}×" for k, v in PAPER_SPEEDUP.items())
    if lines:
        lines.append(f"paper (Jacobian-based / JFB, Table 2): {paper}; this run: {dataset}")
    return lines


def plot_figures(runs: list[Run], out: Path) -> list[Path]:
    """Write ``figure5.png`` and ``figure6.png`` (for the methods that ran) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = {r.method: r for r in runs}
    neumann = sorted((m for m in by_method if m.startswith("neumann-")), key=lambda m: int(m[8:]))
    figures = {
        "figure5.png": ("JFB vs Jacobian-based backprop", ["jfb", "jacobian"]),
        "figure6.png": ("JFB vs Neumann series", ["jfb", *neumann]),
    }
    written = []
    for filename, (title, methods) in figures.items():
        chosen = [by_method[m] for m in methods if m in by_method]
        if not chosen:
            continue
        fig, (ax_epoch, ax_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for run in chosen:
            acc = [e.test_accuracy for e in run.epochs]
            ax_epoch.plot([e.epoch for e in run.epochs], acc, marker="o", label=run.method)
            ax_time.plot([e.wall for e in run.epochs], acc, marker="o", label=run.method)
        ax_epoch.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
        ax_time.set(xlabel="training time (s)", title="against wall-clock time")
        for ax in (ax_epoch, ax_time):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_results(
    runs: list[Run], ratios: dict[str, dict[str, float]], args: argparse.Namespace, out: Path
) -> dict[str, Path]:
    """Write ``table2.csv``, ``table2.json`` and the figures to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.summary() for r in runs]
    csv_path = out / "table2.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path = out / "table2.json"
    payload = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "table": rows,
        "speedups": ratios,
        "runs": [{**asdict(r), "summary": r.summary()} for r in runs],
    }
    json_path.write_text(json.dumps(payload, indent=2))
    paths = {"csv": csv_path, "json": json_path}
    for path in plot_figures(runs, out):
        paths[path.stem] = path
    return paths
