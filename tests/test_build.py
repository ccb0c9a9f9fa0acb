import json
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from gradflow_lessons.grading.markers import (
    CODE_STUB,
    MARKDOWN_STUB,
    MarkerError,
    generate_exercise,
    strip_markers,
)
from gradflow_lessons.tooling import build
from gradflow_lessons.tooling.build import BuildError, execute_notebook

SOLVED = """def f(x):
    ### BEGIN SOLUTION
    return 2 * x
    ### END SOLUTION
"""


def test_solution_region_becomes_a_stub_at_the_marker_indentation():
    assert strip_markers(SOLVED) == f"def f(x):\n    {CODE_STUB}"


def test_hidden_tests_are_dropped():
    source = "check(1)\n### BEGIN HIDDEN TESTS\ncheck(secret)\n### END HIDDEN TESTS\nprint('ok')"
    assert strip_markers(source) == "check(1)\nprint('ok')"


def test_markdown_solution_becomes_an_answer_prompt():
    source = "Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"
    assert strip_markers(source, "markdown") == f"Why?\n{MARKDOWN_STUB}"


def test_unterminated_begin_names_the_cell_and_line():
    expected = r"sol\.ipynb, cell 4, line 2: '### BEGIN SOLUTION' is never closed"
    with pytest.raises(MarkerError, match=expected):
        strip_markers("x = 1\n### BEGIN SOLUTION\ny = 2", where="sol.ipynb, cell 4")


def test_end_without_begin_is_an_error():
    with pytest.raises(MarkerError, match="without a matching '### BEGIN HIDDEN TESTS'"):
        strip_markers("x = 1\n### END HIDDEN TESTS")


def test_nested_blocks_are_an_error():
    with pytest.raises(MarkerError, match="inside the '### BEGIN SOLUTION' block"):
        strip_markers(
            "### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION"
        )


def test_a_misspelt_marker_is_an_error_rather_than_a_leak():
    with pytest.raises(MarkerError, match="looks like a marker"):
        strip_markers("## BEGIN SOLUTION\nsecret = 42\n## END SOLUTION")


def _solution_notebook():
    nb = new_notebook()
    intro = new_markdown_cell("# task")
    solution = new_code_cell(SOLVED, id="solution-f", metadata={"nbgrader": {"solution": True}})
    check = new_code_cell(
        "assert f(2) == 4\n### BEGIN HIDDEN TESTS\nassert f(3) == 6\n### END HIDDEN TESTS",
        id="check-f",
        metadata={"nbgrader": {"grade": True, "points": 2}, "tags": ["check"]},
    )
    check.outputs = [nbformat.v4.new_output("stream", text="ok\n")]
    check.execution_count = 2
    nb.cells = [intro, solution, check]
    return nb


def test_generated_exercise_keeps_ids_and_points_and_drops_outputs():
    exercise = generate_exercise(_solution_notebook(), "x.ipynb")
    solution, check = exercise.cells[1], exercise.cells[2]
    assert (solution.id, check.id) == ("solution-f", "check-f")
    assert check.metadata["nbgrader"]["points"] == 2
    assert check.outputs == [] and check.execution_count is None
    assert "f(3)" not in check.source and CODE_STUB in solution.source


def _write(nb, path):
    nbformat.write(nb, path)
    return path.read_bytes()


def test_execute_notebook_stores_outputs_and_the_source_hash(tmp_path):
    nb = new_notebook(cells=[new_code_cell("print(6 * 7)")])
    path = tmp_path / "ok.ipynb"
    _write(nb, path)
    done = execute_notebook(path)
    stored = nbformat.read(path, as_version=4)
    assert done.cells == 1
    assert stored.cells[0].outputs[0].text == "42\n"
    assert build.notebook_problems(path) == []


def test_a_failing_cell_names_the_cell_and_leaves_the_file_untouched(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("1 / 0")])
    path = tmp_path / "bad.ipynb"
    before = _write(nb, path)
    with pytest.raises(BuildError, match=r"(?s)bad\.ipynb: cell 1 raised ZeroDivisionError.*unchanged"):
        execute_notebook(path)
    assert path.read_bytes() == before


def test_a_dying_kernel_is_reported_and_loses_nothing(tmp_path):
    nb = new_notebook(cells=[new_code_cell("import os\nos._exit(1)")])
    path = tmp_path / "dies.ipynb"
    before = _write(nb, path)
    with pytest.raises(BuildError, match="kernel died while running cell 0"):
        execute_notebook(path, cell_timeout=60)
    assert path.read_bytes() == before


def test_a_corrupted_notebook_is_named_with_the_way_out(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [')
    with pytest.raises(BuildError, match=r"(?s)broken\.ipynb: not a readable notebook.*git checkout"):
        execute_notebook(path)


def test_an_edited_cell_makes_the_notebook_out_of_date(tmp_path):
    path = tmp_path / "nb.ipynb"
    _write(new_notebook(cells=[new_code_cell("print(1)")]), path)
    execute_notebook(path)
    data = json.loads(path.read_text())
    data["cells"][0]["source"] = "print(2)"
    path.write_text(json.dumps(data))
    assert any("edited after" in p for p in build.notebook_problems(path))


def test_an_unexecuted_notebook_is_out_of_date(tmp_path):
    path = tmp_path / "nb.ipynb"
    _write(new_notebook(cells=[new_code_cell("print(1)")]), path)
    assert any("not executed top to bottom" in p for p in build.notebook_problems(path))


def test_check_names_a_hand_edited_exercise(tmp_path, root):
    for folder in ("notebooks", "solutions", "exercises"):
        shutil.copytree(root / folder, tmp_path / folder)
    exercise = next((tmp_path / "exercises").glob("*.ipynb"))
    exercise.write_text(exercise.read_text().replace("Your turn", "My turn"))
    assert build.main(["--check", "--root", str(tmp_path)]) == 1


def test_check_names_an_exercise_without_a_solution(tmp_path, root):
    for folder in ("notebooks", "solutions", "exercises"):
        shutil.copytree(root / folder, tmp_path / folder)
    shutil.copy(next((tmp_path / "exercises").glob("*.ipynb")), tmp_path / "exercises" / "orphan.ipynb")
    assert any("orphan.ipynb: has no source" in p for p in build.check(tmp_path))


def test_the_committed_course_is_up_to_date(root):
    """Notebooks executed top to bottom since their last edit; exercises generated."""
    assert build.check(root) == []
