"""Mutation testing of the exercises' checks (issue 21): the mutator changes only solution
code, one thing at a time, and the checks of exercise 01 kill a spread-out sample of its
mutants (CI's fast subset; the full run is `python -m gradflow_lessons.grading.mutants`)."""

import ast
from pathlib import Path

import pytest

from gradflow_lessons.grading.exercise import Exercise, ReferenceCell
from gradflow_lessons.grading.mutants import MutantRunner, mutants, mutation_report

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


def _toy(source: str, tmp_path: Path = Path("."), checks: tuple[str, ...] = ()) -> Exercise:
    cells = [ReferenceCell("solution-f", "solution", source, names=("f",))]
    cells += [ReferenceCell(f"check-{i}", "check", c, points=1) for i, c in enumerate(checks)]
    return Exercise("toy", tmp_path / "toy.ipynb", cells)


def test_the_mutator_drops_a_not_swaps_in_min_and_slices_and_empties_an_else():
    source = ("def f(xs, y):\n"
              "    ### BEGIN SOLUTION\n"
              "    if not y in xs[1:]:\n"
              "        z = min(xs)\n"
              "    else:\n"
              "        z = y\n"
              "    return z\n"
              "    ### END SOLUTION\n")
    changes = sorted(m.change for m in mutants(_toy(source)))
    assert changes == sorted(["drop not", "In -> NotIn", "drop the slice's lower bound", "1 -> 0",
                              "min(...) -> max(...)", "remove line 3", "remove line 4", "remove line 6",
                              "return None"]), changes


def test_a_print_is_left_alone_what_it_shows_is_not_graded():
    source = ("def f(x):\n"
              "    ### BEGIN SOLUTION\n"
              "    print(f'evidence: {x / 2:.3g}')\n"
              "    return x\n"
              "    ### END SOLUTION\n")
    assert [m.change for m in mutants(_toy(source))] == ["return None"]


@pytest.mark.slow
def test_a_run_draws_the_hidden_inputs_from_its_seed_and_a_hang_is_a_timeout(tmp_path):
    check = ("import os\n"
             "assert f(int.from_bytes(os.urandom(4), 'little')) % 2 == 0, 'an odd draw'\n")
    solution = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    exercise = _toy(solution, tmp_path, (check,))
    with MutantRunner(exercise, seed=0, timeout=5) as runner:
        first = [runner.run(None, seed=s) for s in range(12)]
        again = [runner.run(None, seed=s) for s in range(12)]
        assert first == again and [] in first and ["<check-0>"] in first, first
        hang = mutants(exercise)[0]
        hang.source = "def f(x):\n    while True:\n        pass\n"
        assert runner.run(hang) is None
