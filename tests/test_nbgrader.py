"""The course on nbgrader (issue 23): every solution is a valid nbgrader source notebook,
nbgrader_config.py makes nbgrader's release match exercises/, autograde gives the scores
gradflow-grade gives, feedback keeps the hidden tests out, and what nbgrader does not
protect (a rebound check helper) is shown, not assumed. Skips without nbgrader."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_grading import EXERCISE, SOLUTION, WRONG, edit, solved_exercise, with_cell

pytest.importorskip("nbgrader")
ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
ORIGINAL = sorted(p for p in SOLUTIONS if p.name[:2] in ("01", "02", "04", "07", "09"))


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    # nbgrader runs alembic by name: the environment's scripts must be on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def new_course(folder: Path, solutions: list[Path]) -> Path:
    """An nbgrader course folder: our config, each solution as the source of an assignment."""
    shutil.copy(ROOT / "nbgrader_config.py", folder / "nbgrader_config.py")
    for solution in solutions:
        (folder / "source" / f"ex{solution.name[:2]}").mkdir(parents=True)
        shutil.copy(solution, folder / "source" / f"ex{solution.name[:2]}" / solution.name)
    return folder


@pytest.mark.slow
def test_nbgraders_release_of_every_solution_matches_the_exercise(tmp_path):
    course = new_course(tmp_path, ORIGINAL)
    for solution in ORIGINAL:
        nbgrader(course, "generate_assignment", f"ex{solution.name[:2]}", "--force")
        released = nbformat.read(course / "release" / f"ex{solution.name[:2]}" / solution.name, as_version=4)
        exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
        assert [(c.get("id"), c.cell_type, c.source) for c in released.cells] == [
            (c.get("id"), c.cell_type, c.source) for c in exercise.cells], solution.name
        assert not {"widgets", "gradflow"} & set(released.metadata), solution.name
        assert all(not c.get("outputs") for c in released.cells if c.cell_type == "code")


@pytest.mark.slow
def test_nbgrader_autogrades_like_gradflow_grade_and_keeps_hidden_tests_out_of_feedback(tmp_path):
    course = new_course(tmp_path, [SOLUTION])
    nbgrader(course, "generate_assignment", "ex01", "--force")
    rebound = with_cell(edit(solved_exercise(), "solution-backprop", lambda s: WRONG[
        "backprop that forgets the transpose (J @ v instead of v @ J)"]["solution-backprop"]),
        "cell-02", "check_close = check_shape = check_true = lambda *a, **k: print('\u2713')")
    for student, nb in (("alice", solved_exercise()), ("bob", nbformat.read(EXERCISE, as_version=4)),
                        ("mallory", rebound)):
        nbgrader(course, "db", "student", "add", student)
        (course / "submitted" / student / "ex01").mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / "ex01" / SOLUTION.name)
    nbgrader(course, "autograde", "ex01", "--force")
    nbgrader(course, "export", "--to", str(course / "grades.csv"))
    scores = {r["student_id"]: float(r["raw_score"]) for r in csv.DictReader((course / "grades.csv").open())}
    # alice and bob as with gradflow-grade (7 and 0). mallory's wrong Task 2 earns 4/7 there,
    # but full marks on nbgrader: its checks run in her kernel, with her check_close.
    assert scores == {"alice": 7.0, "bob": 0.0, "mallory": 7.0}
    nbgrader(course, "generate_feedback", "ex01", "--force")
    html = (course / "feedback" / "bob" / "ex01" / SOLUTION.with_suffix(".html").name).read_text()
    assert "HIDDEN TESTS" not in html and "urandom" not in html
    assert "check_close" in html  # the public checks are there
