"""The figure researchers draw for FROQ: every layer's Spearman ρ with the pseudo-labels against its
depth, the selected layers marked.

``layer_utility_points(observer)`` reads what ``observer.json`` stores (``layers``: every hooked
module in ``named_modules()`` order with its utility, None where undefined; ``candidates``;
``selected_layers``) — depth is a layer's position in that order; ``plot_layer_utilities`` draws
those points with matplotlib's Agg canvas (no display needed) and writes the PNG atomically.
For a FROQ+ observer (per-statistic ``utilities``) the ``l2`` utility is drawn.
"""

from __future__ import annotations

import os
from typing import Mapping

from froq.core.errors import FroqError
from froq.core.io import atomic_open


def _utility(entry: Mapping) -> float | None:
    if "utility" in entry:
        return entry["utility"]
    return (entry.get("utilities") or {}).get("l2")


def layer_utility_points(observer: Mapping) -> dict:
    """What the plot shows, from an observer record: ``{depth, rho, names}`` of every layer with a
    defined utility, ``{selected, candidates}`` as ``(depth, rho, name)`` lists, ``layers`` (all,
    with or without utility) and ``stability`` (share of bootstrap resamples selecting each
    selected layer, when the observer has a ``stability`` record). FroqError when the record has
    no per-layer utilities."""
    layers = observer.get("layers")
    if not layers:
        raise FroqError("the observer file has no per-layer utilities ('layers'): re-run the "
                        "initialisation with this toolkit")
    index = {e["name"]: d for d, e in enumerate(layers)}
    util = {e["name"]: _utility(e) for e in layers}
    defined = [(d, util[e["name"]], e["name"]) for d, e in enumerate(layers) if util[e["name"]] is not None]

    def marked(names):
        return [(index[n], util[n], n) for n in names if n in index and util[n] is not None]

    freq = ((observer.get("stability") or {}).get("layer_frequency") or {})
    return {"depth": [d for d, _, _ in defined], "rho": [r for _, r, _ in defined],
            "names": [n for _, _, n in defined], "layers": len(layers),
            "selected": marked(observer.get("selected_layers") or []),
            "candidates": marked([c if isinstance(c, str) else c.get("layer") for c in observer.get("candidates") or []]),
            "stability": {n: freq.get(n, 0.0) for n in observer.get("selected_layers") or []} if freq else {}}


def plot_layer_utilities(observer: Mapping, path: str | os.PathLike, title: str = "") -> dict:
    """Write the ρ-vs-depth PNG of ``layer_utility_points`` to ``path`` (Agg, atomic). Selected
    layers: red stars with their names (and bootstrap share); other top-n candidates: open circles.
    Out: the points drawn."""
    from matplotlib.figure import Figure  # Figure + savefig uses the Agg canvas, no pyplot state

    pts = layer_utility_points(observer)
    fig = Figure(figsize=(8.0, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(pts["depth"], pts["rho"], "-", color="0.6", linewidth=0.8, zorder=1)
    ax.scatter(pts["depth"], pts["rho"], s=10, color="0.35", label="layer", zorder=2)
    cand = [c for c in pts["candidates"] if c[2] not in {s[2] for s in pts["selected"]}]
    if cand:
        ax.scatter([c[0] for c in cand], [c[1] for c in cand], s=46, facecolors="none",
                   edgecolors="tab:blue", label="top-n candidate", zorder=3)
    if pts["selected"]:
        ax.scatter([s[0] for s in pts["selected"]], [s[1] for s in pts["selected"]], s=120, marker="*",
                   color="tab:red", label="selected", zorder=4)
        for k, (d, r, name) in enumerate(sorted(pts["selected"])):
            share = pts["stability"].get(name)
            text = name if share is None else f"{name} ({100 * share:.0f} %)"
            ax.annotate(text, (d, r), textcoords="offset points", xytext=(4, 7 if k % 2 == 0 else -13),
                        fontsize=7, color="tab:red")  # alternate above/below: neighbours stay legible
    ax.axhline(0, color="0.8", linewidth=0.8, zorder=0)
    ax.set_xlim(-1, max(pts["layers"], 1))
    ax.set_xlabel(f"layer depth (position among the {pts['layers']} hooked modules)")
    ax.set_ylabel("Spearman ρ with the pseudo-labels")
    ax.set_title(title or "Layer utilities (selected layers: bootstrap share in brackets)"
                 if pts["stability"] else title or "Layer utilities")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    return pts
