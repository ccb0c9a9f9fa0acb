"""Mutation testing of the exercises' checks (issue 21): the mutator changes only solution
code, one thing at a time, and the checks of exercise 01 kill a spread-out sample of its
mutants (CI's fast subset; the full run is `python -m gradflow_lessons.grading.mutants`)."""

import ast
from pathlib import Path

import pytest

from gradflow_lessons.grading.exercise import Exercise, ReferenceCell
from gradflow_lessons.grading.mutants import mutants, mutation_report

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_01 = Exercise.load(ROOT / "solutions" / "01_warmup_jacobians.ipynb")


def test_each_mutant_changes_one_solution_cell_and_still_parses():
    found = mutants(EXERCISE_01)
    solution_ids = {c.id for c in EXERCISE_01.cells if c.kind == "solution"}
    originals = {c.id: ast.unparse(ast.parse(c.source)) for c in EXERCISE_01.cells if c.kind == "solution"}
    assert len(found) >= 10
    for mutant in found:
        assert mutant.cell_id in solution_ids and mutant.source != originals[mutant.cell_id]
        ast.parse(mutant.source)
    kinds = {m.change.split(" ")[0] for m in found}
    assert {"return", "remove", "MatMult"} <= kinds, kinds


def test_code_outside_the_solution_markers_is_never_mutated():
    source = ("def f(x):\n"
              "    y = x + 1  # given: not the student's\n"
              "    ### BEGIN SOLUTION\n"
              "    z = y * 2\n"
              "    ### END SOLUTION\n"
              "    return z - 3\n")
    cell = ReferenceCell("solution-f", "solution", source, names=("f",))
    found = mutants(Exercise("toy", Path("toy.ipynb"), [cell]))
    assert sorted(m.change for m in found) == ["2 -> 3", "Mult -> Div", "remove line 4"]


@pytest.mark.slow
def test_the_checks_of_exercise_01_kill_a_sample_of_its_mutants():
    done = mutation_report(EXERCISE_01, limit=3, timeout=300)
    assert len(done) == 3 and all(m.killed for m in done), [(m.change, m.killed) for m in done]
