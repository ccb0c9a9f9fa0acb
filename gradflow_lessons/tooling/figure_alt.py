"""Alt text for every figure a lesson shows, derived from the figure itself.

The notebook build starts each kernel with an IPython startup file that calls
:func:`install`: from then on, every matplotlib figure that the inline backend displays
carries ``{"image/png": {"alt": ...}}`` in its output metadata, built from the figure's
title, each panel's title and its axis labels (which every course figure has). JupyterLab
and the course site read it, so a screen reader says what the figure shows. Figures shown
as images (``IPython.display.Image(..., alt=...)``) pass their own.
"""

from __future__ import annotations


def describe(figure) -> str:
    """``"Figure: <suptitle>; <panel title> (x: <label>, y: <label>); ..."``."""
    parts = []
    suptitle = getattr(figure, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        parts.append(suptitle.get_text())
    for ax in figure.axes:
        labels = [f"{axis}: {label}" for axis, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel()))
                  if label]
        panel = " ".join(filter(None, [ax.get_title(), f"({', '.join(labels)})" if labels else ""]))
        if panel:
            parts.append(panel)
    return "Figure: " + "; ".join(parts) if parts else "A figure without title or axis labels"


def install() -> bool:
    """Make the inline backend attach alt text to every figure it displays (in a kernel).
    Returns False where matplotlib-inline is not installed."""
    try:
        import matplotlib_inline.backend_inline as inline
    except ImportError:
        return False
    fetch = inline._fetch_figure_metadata  # what it attaches today (a background hint)
    if getattr(fetch, "adds_alt_text", False):
        return True

    def with_alt(figure):
        metadata = dict(fetch(figure) or {})
        metadata["image/png"] = {**metadata.get("image/png", {}), "alt": describe(figure)}
        return metadata

    with_alt.adds_alt_text = True
    inline._fetch_figure_metadata = with_alt
    return True
