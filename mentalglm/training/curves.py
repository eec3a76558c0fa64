"""Training curves: ``loss.json`` (one entry per optimizer step) and ``loss.png``.

``loss.json`` is ``{"stages": [names], "steps": [{"step", "stage", "stage_name", "epoch",
"loss", "lr", "grad_norm", "tokens"}, ...]}`` with 1-based ``step`` (over all stages),
``stage`` and ``epoch`` (within the stage); ``loss`` is the mean token loss of that step's
response tokens and ``lr`` the learning rate it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mentalglm.core.files import write_json


def write_loss_json(path: str | Path, steps: Sequence[dict], stage_names: Sequence[str]) -> Path:
    """Write the loss history atomically.

    Args:
        path: the file (``DIR/loss.json``).
        steps: per-step entries, in order.
        stage_names: the names of all stages, in order.

    Returns:
        ``path`` as a Path.
    """
    write_json(path, {"stages": list(stage_names), "steps": list(steps)})
    return Path(path)


def plot_loss(path: str | Path, steps: Sequence[dict], stage_names: Sequence[str], *, title: str = "") -> Path:
    """Draw the loss per step (one colour per stage) and the learning rate on a second axis.

    Uses matplotlib's Agg backend (no display needed). The image is written under a temporary
    name and renamed.

    Args:
        path: the PNG file (``DIR/loss.png``).
        steps: per-step entries as in ``loss.json``.
        stage_names: the names of all stages, in order (for the legend).
        title: the figure title.

    Returns:
        ``path`` as a Path.

    Raises:
        MentalGLMError: matplotlib is not installed.
    """
    import os

    try:
        import matplotlib
    except ImportError:
        from mentalglm.core.errors import MentalGLMError

        raise MentalGLMError("loss.png needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) keeps no global state between runs in one process.
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    rate_axes = axes.twinx()
    for index, name in enumerate(stage_names, 1):
        points = [s for s in steps if s["stage"] == index]
        if points:
            axes.plot([s["step"] for s in points], [s["loss"] for s in points],
                      marker="." if len(points) < 50 else None, linewidth=1.2, label=f"{name} loss")
    if steps:
        rate_axes.plot([s["step"] for s in steps], [s["lr"] for s in steps], color="grey", linestyle="--",
                       linewidth=0.8, label="learning rate")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (response tokens)")
    rate_axes.set_ylabel("learning rate")
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = rate_axes.get_legend_handles_labels()
    if handles or more_handles:
        axes.legend(handles + more_handles, labels + more_labels, loc="upper right", fontsize="small")
    axes.set_title(title or "LoRA fine-tuning loss")
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    figure.savefig(temporary, format="png")
    os.replace(temporary, path)
    return path
