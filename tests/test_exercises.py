"""The exercise contract (DESIGN.md): solutions pass every check, generated exercises fail
every graded check because the stub raises, and plausible wrong answers fail a check."""

import copy
from pathlib import Path

import nbformat
import pytest
from conftest import answers_for, error_of, run_notebook
from conftest import graded_cells as _graded_cells

from gradflow_lessons.checks import PASS

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
pytestmark = pytest.mark.slow


def graded_cells(nb):
    """The check cells. A markdown answer is a grade cell too (nbgrader's rule for a
    markdown solution cell), worth 0 points: it is read, not run."""
    return [c for c in _graded_cells(nb) if c.cell_type == "code"]


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_markdown_answer_is_a_zero_point_grade_cell_as_nbgrader_requires(solution):
    for cell in nbformat.read(solution, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "markdown" and meta.get("solution"):
            assert meta.get("grade") is True and meta.get("points") == 0, cell.get("id")


def test_there_is_at_least_one_exercise():
    assert SOLUTIONS, "solutions/ holds no exercise"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_graded_check_has_points_and_a_unique_id(solution):
    nb = nbformat.read(solution, as_version=4)
    checks = graded_cells(nb)
    assert checks, f"{solution.name} has no graded check cell"
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids)), "cell ids must be unique: the grader restores checks by id"
    for cell in checks:
        assert cell.metadata["nbgrader"]["points"] > 0
        assert "check" in cell.metadata.get("tags", [])
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in checks), "no hidden test"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_the_solution_passes_every_check(solution):
    nb = run_notebook(nbformat.read(solution, as_version=4), solution.parent, allow_errors=True)
    for cell in graded_cells(nb):
        error = error_of(cell)
        assert error is None, f"{cell.id}: {error and error.ename}: {error and error.evalue}"
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert PASS in text, f"{cell.id} printed no passing check"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_graded_check_fails_in_the_generated_exercise_because_the_stub_raises(solution):
    exercise = ROOT / "exercises" / solution.name
    nb = run_notebook(nbformat.read(exercise, as_version=4), exercise.parent, allow_errors=True)
    for cell in graded_cells(nb):
        error = error_of(cell)
        assert error is not None, f"{cell.id} passes on the untouched stub"
        assert error.ename == "NotImplementedError", f"{cell.id} failed with {error.ename}"


_ANSWERS = {path.stem + ".ipynb": answers_for(path.stem)
            for path in sorted((ROOT / "tests" / "wrong_answers").glob("*.py"))}
CASES = [(name, description, cells) for name, answers in _ANSWERS.items()
         for description, cells in answers["WRONG_ANSWERS"]]
RIGHT = [(name, description, cells) for name, answers in _ANSWERS.items()
         for description, cells in answers.get("CORRECT_ANSWERS", [])]


def with_cells(solution: Path, cells: dict[str, str], demos: bool = True):
    """The solution notebook with ``cells`` (id -> source) in place; without its grader-skip
    demos if not ``demos`` (the checks do not need them)."""
    nb = copy.deepcopy(nbformat.read(solution, as_version=4))
    cells = dict(cells)
    for cell in nb.cells:
        if cell.id in cells:
            cell.source = cells.pop(cell.id)
    assert not cells, f"no cell with id {sorted(cells)} in {solution.name}"
    if not demos:
        nb.cells = [c for c in nb.cells if "grader-skip" not in c.metadata.get("tags", [])]
    return nb


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_has_plausible_wrong_answers(solution):
    assert (ROOT / "tests" / "wrong_answers" / f"{solution.stem}.py").is_file()


@pytest.mark.parametrize("name, description, cells", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_a_plausible_wrong_answer_fails_a_check(name, description, cells):
    solution = ROOT / "solutions" / name
    wrong = with_cells(solution, cells)
    run_notebook(wrong, solution.parent, allow_errors=True)
    failed = [c.id for c in graded_cells(wrong) if error_of(c) is not None]
    assert failed, f"every check passes with: {description}"
    errors = {error_of(c).ename for c in graded_cells(wrong) if error_of(c) is not None}
    assert errors & {"CheckFailed", "AssertionError", "RuntimeError", "IndexError"}, errors


@pytest.mark.parametrize("name, description, cells", RIGHT, ids=[f"{c[0]}: {c[1]}" for c in RIGHT])
def test_a_differently_written_correct_answer_earns_every_point(name, description, cells):
    solution = ROOT / "solutions" / name
    right = run_notebook(with_cells(solution, cells, demos=False), solution.parent, allow_errors=True)
    for cell in graded_cells(right):
        error = error_of(cell)
        assert error is None, f"{cell.id}: {description}: {error and error.ename}: {error and error.evalue}"
