"""Pictures for the notebooks: image grids, training curves, an HTML report in a frame.

Figures are drawn with matplotlib's object API (no pyplot state, so no figure is shown twice or
leaks between cells) and returned as PNG `IPython.display.Image`s: they then show the same in
JupyterLab, in an executed notebook file and on GitHub, whatever matplotlib backend the kernel
picked. Nothing here knows about TFX; callers pass arrays, bytes and dicts.
"""

from __future__ import annotations

import html
import io
import math
from typing import Optional, Sequence, Union

import numpy as np

ImageData = Union[np.ndarray, bytes]


def _as_array(image: ImageData) -> np.ndarray:
    """Encoded bytes are decoded; float arrays are taken as [0, 1] (the transform's range)."""
    if isinstance(image, (bytes, bytearray)):
        from PIL import Image

        with Image.open(io.BytesIO(image)) as decoded:
            return np.asarray(decoded.convert("RGB"))
    array = np.asarray(image)
    if array.dtype.kind == "f":
        array = np.clip(array, 0.0, 1.0)
    return array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array


def _png(figure) -> "IPython.display.Image":  # noqa: F821
    from IPython.display import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    return Image(data=buffer.getvalue(), format="png")


def image_grid(
    images: Sequence[ImageData],
    titles: Optional[Sequence[str]] = None,
    columns: int = 8,
    cell_inches: float = 1.6,
):
    """A grid of images (arrays or encoded files) with an optional title under each."""
    from matplotlib.figure import Figure

    if len(images) == 0:
        raise ValueError("image_grid: no images to show")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(columns * cell_inches, rows * (cell_inches + 0.35)))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(_as_array(images[index]), cmap="gray")
            if titles is not None:
                ax.set_title(titles[index], fontsize=8)
    return _png(figure)


def history_figure(history: dict[str, Sequence[float]]):
    """One panel per metric, training and validation (`val_*`) curves over the epochs."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [k for k in history if not k.startswith("val_")]
    if not names:
        raise ValueError("history_figure: the history holds no metric")
    figure = Figure(figsize=(4 * len(names), 3))
    for ax, name in zip(figure.subplots(1, len(names), squeeze=False).flat, names):
        for key, label in ((name, "train"), (f"val_{name}", "eval")):
            if key in history:
                values = history[key]
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return _png(figure)


def html_frame(document: str, height: int = 600):
    """A whole HTML page (a drift report, a contact sheet) inline, isolated in an iframe so its
    scripts and styles cannot touch the notebook's."""
    from IPython.display import HTML

    # Wrapped in a div: IPython warns about HTML that starts with <iframe>, and IFrame cannot
    # take a document, only a URL the notebook server would have to serve.
    return HTML(
        f'<div><iframe srcdoc="{html.escape(document, quote=True)}" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #ddd"></iframe></div>'
    )
