"""Matplotlib figures for the sweep tools (headless, Agg): metric curves and Pareto fronts."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

__all__ = ["labelled_front", "metric_curves", "pareto_front", "shape_pareto"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(items: list, x: Callable, y: Callable, maximize_y: bool = False) -> list:
    """The items not dominated by another (smaller ``x`` and better ``y``), sorted by ``x``."""
    front, best = [], -math.inf if maximize_y else math.inf
    for item in sorted(items, key=lambda i: (x(i), -y(i) if maximize_y else y(i))):
        value = y(item)
        if (value > best) if maximize_y else (value < best):
            front.append(item)
            best = value
    return front


def shape_pareto(points: list[dict], path: Path, title: str) -> Path:
    """One panel per layer type: TT error vs parameter ratio of every candidate over the ε grid, the
    Pareto front, and the reference shape's points."""
    plt = _pyplot()
    types = list(dict.fromkeys(p["type"] for p in points))
    cols = min(3, len(types))
    rows = math.ceil(len(types) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax, kind in zip(axes.flat, types):
        mine = [p for p in points if p["type"] == kind]
        for c, label in enumerate(dict.fromkeys(p["candidate"] for p in mine)):
            ref = label == "o2_plain_balanced"
            for k, layer in enumerate(dict.fromkeys(p["layer"] for p in mine if p["candidate"] == label)):
                pts = sorted((p for p in mine if p["candidate"] == label and p["layer"] == layer),
                             key=lambda p: p["ratio"])
                if ref:  # one line per scored layer
                    style = dict(color="black", label=None if k else "reference", markersize=9, linewidth=1)
                else:
                    style = dict(alpha=0.5, markersize=5, linewidth=0, color=f"C{c % 10}")
                ax.plot([p["ratio"] for p in pts], [p["error"] for p in pts], "*-" if ref else ".", **style)
        front = pareto_front(mine, lambda p: p["ratio"], lambda p: p["error"])
        ax.step([p["ratio"] for p in front], [p["error"] for p in front], where="post", color="red",
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_title(kind.replace("\\", "").split(".d+.")[-1], fontsize=10)
        ax.set_xlabel("TT parameters / dense parameters")
        ax.set_ylabel("relative error ‖W − TT‖/‖W‖")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(types):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_curves(series: dict[str, list[tuple[float, float, float]]], path: Path, xlabel: str, ylabel: str,
                  title: str, xscale: str = "linear", references: tuple[str, ...] = ()) -> Path:
    """Line plot of ``{label: [(x, mean, std), …]}`` with ±std error bars; a series named in ``references``
    with a single point (e.g. dense on the density axis) is drawn as a horizontal line with a ±std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in series.items():
        pts = sorted(pts)
        if label in references and len(pts) == 1:
            _, mean, std = pts[0]
            line = ax.axhline(mean, linestyle="--", color="gray", label=f"{label} (± std)")
            ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.15)
            continue
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                    capsize=3, label=label)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def labelled_front(points: list[dict], front: list[dict], chosen: dict, path: Path, xlabel: str, ylabel: str,
                   title: str) -> Path:
    """Every candidate as a labelled point (``label``, ``x``, ``mean``, ``std``) with ±std bars, the Pareto
    front as a step line and the chosen one circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.errorbar([p["x"] for p in points], [p["mean"] for p in points], yerr=[p["std"] for p in points],
                fmt="o", capsize=3, color="C0", label="fine-tuned shape")
    offsets = [(4, 5), (4, -11), (4, 15), (4, -21)]  # neighbours in x get different heights
    for k, point in enumerate(sorted(points, key=lambda p: p["x"])):
        ax.annotate(point["label"], (point["x"], point["mean"]), textcoords="offset points", fontsize=7,
                    xytext=offsets[k % len(offsets)])
    ax.margins(x=0.1, y=0.25)
    ax.step([p["x"] for p in front], [p["mean"] for p in front], where="post", color="red",
            label="Pareto front")
    ax.plot([chosen["x"]], [chosen["mean"]], "o", markersize=14, markerfacecolor="none", color="black",
            label=f"selected: {chosen['label']}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
