"""nbgrader's markers, and the student notebook they make of a solution notebook.

- ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` becomes one ``raise NotImplementedError``
  line at the marker's indentation (in markdown cells, a "write your answer" line);
- ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` is dropped.

The notebook builder writes exercises/ with :func:`generate_exercise`; the grader strips
hidden tests with :func:`strip_markers` before a check cell's public part is shown.
"""

from __future__ import annotations

import copy

import nbformat

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
CODE_STUB = (
    'raise NotImplementedError("Your turn: replace this line with your solution, '
    'then run the check cell below.")'
)
MARKDOWN_STUB = "_Write your answer here._"
# Notebook metadata a student notebook does not get: the builder's source hash, and the
# widget state saved by the solution's run (nbgrader_config.py drops the same).
DROPPED_METADATA = ("gradflow", "widgets")


class MarkerError(ValueError):
    """Solution or hidden-test markers that do not pair up."""


def strip_markers(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """Replace solution regions by a stub and drop hidden-test regions.

    Args:
        source: the cell's source.
        cell_type: ``"code"`` or ``"markdown"`` (decides what the stub looks like).
        where: how to name the cell in an error, e.g. ``"solutions/x.ipynb, cell 3"``.

    Raises:
        MarkerError: a BEGIN without its END, an END without its BEGIN, nested blocks,
            or a line that looks like a marker but is not exactly one (it would leak).
    """
    begins = {SOLUTION_MARKERS[0]: SOLUTION_MARKERS[1], HIDDEN_MARKERS[0]: HIDDEN_MARKERS[1]}
    ends = {end: begin for begin, end in begins.items()}
    out: list[str] = []
    open_marker, opened_on = None, 0
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        text = line.strip()
        if text in begins:
            if open_marker:
                raise MarkerError(
                    f"{where}, line {number}: {text!r} inside the {open_marker!r} block opened "
                    f"on line {opened_on}; close that block with {begins[open_marker]!r} first"
                )
            open_marker, opened_on = text, number
            if text == SOLUTION_MARKERS[0]:
                indent = line[: len(line) - len(line.lstrip())]
                stub = CODE_STUB if cell_type == "code" else MARKDOWN_STUB
                out.append(f"{indent}{stub}\n")
            continue
        if text in ends:
            if open_marker != ends[text]:
                raise MarkerError(
                    f"{where}, line {number}: {text!r} without a matching {ends[text]!r} "
                    "above it; add the BEGIN marker or delete this line"
                )
            open_marker = None
            continue
        if any(word in text.upper() for word in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS")):
            raise MarkerError(
                f"{where}, line {number}: {text!r} looks like a marker but is not one; "
                f"write it exactly as {SOLUTION_MARKERS[0]!r} or {HIDDEN_MARKERS[0]!r} "
                "(and their END lines) on a line of its own"
            )
        if open_marker is None:
            out.append(line)
    if open_marker:
        raise MarkerError(
            f"{where}, line {opened_on}: {open_marker!r} is never closed; "
            f"add {begins[open_marker]!r} where the block ends"
        )
    return "".join(out).rstrip("\n")


def generate_exercise(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student notebook for ``solution``: stubs instead of solutions, no hidden tests,
    no outputs. Cell ids and metadata (grading tags, points) are kept, so a grader can
    find every check cell again by its id."""
    exercise = copy.deepcopy(solution)
    for key in DROPPED_METADATA:
        exercise.metadata.pop(key, None)
    for index, cell in enumerate(exercise.cells):
        where = f"{name}, cell {index} (id {cell.get('id', '?')})"
        if cell.cell_type in ("code", "markdown"):
            cell.source = strip_markers(cell.source, cell.cell_type, where)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    return exercise


