"""Alt text: every figure a lesson or solution shows says what it shows."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from gradflow_lessons.tooling.figure_alt import describe

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("solutions/*.ipynb")])


def test_alt_text_names_the_title_and_the_axes_of_every_panel():
    fig, (left, right) = plt.subplots(1, 2)
    fig.suptitle("Gradient norms")
    left.set(title="plain", xlabel="layer", ylabel="||g||")
    right.set(title="residual", xlabel="layer")
    assert describe(fig) == "Figure: Gradient norms; plain (x: layer, y: ||g||); residual (x: layer)"
    plt.close(fig)


def test_alt_text_of_an_unlabelled_figure_says_so():
    fig = plt.figure()
    assert "without title" in describe(fig)
    plt.close(fig)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_figure_in_a_notebook_has_alt_text(path):
    cells = json.loads(path.read_text())["cells"]
    missing = [
        index for index, cell in enumerate(cells) if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
        and not output.get("metadata", {}).get("image/png", {}).get("alt", "").strip()
    ]
    assert not missing, (
        f"{path.name}: figures without alt text in cells {missing}. Rebuild the notebook "
        "(`python -m gradflow_lessons.build`: inline figures get it from their titles and axis "
        "labels), and pass alt= to IPython.display.Image"
    )
