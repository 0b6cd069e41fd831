"""Pictures of the views, drawn with matplotlib's Agg canvas (no display, no global backend)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from llamita.glass.common import label


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def next_token_chart(view: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Grouped bars: the top tokens' probability under each distribution of `next_token_view`."""
    labels = [label(t["piece"]) for t in view["tokens"]]
    dists = view["distributions"]
    fig = _figure(max(6.0, 0.7 * len(labels) + 2), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(dists)
    for i, d in enumerate(dists):
        name = f"T={d['temperature']:g}" + (" filtered" if d["filtered"] else "")
        ax.bar(
            x + (i - (len(dists) - 1) / 2) * width, d["probs"], width, label=f"{name} (H={d['entropy_bits']:.2f} bits)"
        )
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("probability")
    ax.set_title(f"next token after: {view['prompt'][:60]}")
    ax.legend(fontsize="small")
    fig.savefig(path)


def attention_heatmap(view: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """The attention matrix of `attention_view`: rows = query tokens, columns = the tokens they
    attend to, both labelled with their pieces."""
    labels = [label(p) for p in view["tokens"]]
    n = len(labels)
    size = min(16.0, max(5.0, 0.35 * n + 2))
    fig = _figure(size, size)
    ax = fig.add_subplot()
    image = ax.imshow(np.asarray(view["matrix"]), cmap="viridis", vmin=0.0)
    ax.set_xticks(range(n), labels, rotation=90, fontsize="small")
    ax.set_yticks(range(n), labels, fontsize="small")
    ax.set_xlabel("attends to (key)")
    ax.set_ylabel("token (query)")
    layer = "all layers" if view["layer"] is None else f"layer {view['layer']}"
    head = "all heads" if view["head"] is None else f"head {view['head']}"
    ax.set_title(f"attention, {layer}, {head}")
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
    fig.savefig(path)
