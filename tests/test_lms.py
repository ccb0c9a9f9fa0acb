"""Grades into the LMS (issue 23): a roster with a missing student, per-check columns,
Canvas's import CSV, Gradescope's results.json and its autograder run against a simulated
/autograder tree, and --jobs giving the same output as one job."""

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from test_grading import EXERCISE, SOLUTION, solved_exercise

from gradflow_lessons.grading import sandbox
from gradflow_lessons.grading.cli import grade, main
from gradflow_lessons.grading.exercise import Exercise
from gradflow_lessons.grading.lms import build_autograder, read_roster

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["check-tanh-jacobian", "check-backprop", "check-gradient-norms"]
SANDBOX = "bwrap" if sandbox.bwrap_problem() is None else "none"


def write_class(folder: Path) -> Path:
    """alice (correct), bob (the stub), carol (nothing handed in); returns the roster."""
    (folder / "alice").mkdir()
    nbformat.write(solved_exercise(), folder / "alice" / EXERCISE.name)
    (folder / "bob.ipynb").write_bytes(EXERCISE.read_bytes())
    roster = folder / "roster.csv"
    roster.write_text("student_id,name,file,canvas_id,section\n"
                      "s1,\"Lovelace, Ada\",alice,101,A\ns2,Bob,bob.ipynb,102,A\ns3,Carol,carol,103,B\n")
    return roster


@pytest.fixture(scope="module")
def rostered_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    roster = write_class(folder)
    out = folder / "out" / "grades.csv"
    lines = []
    code = main([str(folder), "--roster", str(roster), "--exercise", "01", "--out", str(out),
                 "--canvas", str(folder / "out" / "canvas.csv"), "--canvas-assignment",
                 "Exercise 01 (555)", "--solutions", str(ROOT / "solutions"), "--sandbox", SANDBOX,
                 "--jobs", "2", "--timeout", "30"])
    return {"code": code, "out": out, "folder": folder, "lines": lines}


def test_a_roster_needs_its_columns_and_unique_ids(tmp_path):
    (tmp_path / "r.csv").write_text("student_id,name\ns1,Ada\n")
    with pytest.raises(ValueError, match="missing: file"):
        read_roster(tmp_path / "r.csv")
    (tmp_path / "r.csv").write_text("student_id,name,file\ns1,Ada,a\ns1,Bob,b\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_roster(tmp_path / "r.csv")


@pytest.mark.slow
def test_every_roster_student_gets_a_row_the_missing_one_with_status_missing(rostered_class):
    assert rostered_class["code"] == 0
    rows = list(csv.DictReader(rostered_class["out"].open(encoding="utf-8")))
    assert [(r["student_id"], r["name"], r["score"], r["status"]) for r in rows] == [
        ("s1", "Lovelace, Ada", "7", "ok"), ("s2", "Bob", "0", "not-attempted"),
        ("s3", "Carol", "0", "missing")]


@pytest.mark.slow
def test_the_class_csv_has_one_column_per_check(rostered_class):
    with rostered_class["out"].open(encoding="utf-8") as f:
        header = next(csv.reader(f))
        rows = list(csv.reader(f))
    assert header == ["student_id", "name", "submission", "exercise", "score", "max_score", "status",
                      "sandbox", *CHECKS, "feedback"]
    assert [r[8:11] for r in rows] == [["2", "3", "2"], ["0", "0", "0"], ["", "", ""]]


@pytest.mark.slow
def test_the_canvas_csv_has_canvas_columns_and_every_roster_student(rostered_class):
    text = (rostered_class["out"].parent / "canvas.csv").read_text(encoding="utf-8")
    assert text.splitlines() == [
        "Student,ID,SIS User ID,SIS Login ID,Section,Exercise 01 (555)",
        '"Lovelace, Ada",101,s1,,A,7', "Bob,102,s2,,A,0", "Carol,103,s3,,B,0"]


def test_canvas_without_a_roster_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--canvas", str(tmp_path / "c.csv"), "--solutions", str(ROOT / "solutions")])
    assert "--canvas needs --roster" in capsys.readouterr().err


@pytest.mark.slow
def test_jobs_change_the_speed_not_the_output(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, nb in (("a", solved_exercise()), ("b", nbformat.read(EXERCISE, as_version=4)),
                     ("c", solved_exercise())):
        nbformat.write(nb, folder / f"{name}_{EXERCISE.name}")
    (folder / f"d_{EXERCISE.name}").write_text("garbage")
    exercise = Exercise.load(SOLUTION)
    texts = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}" / "grades.csv"
        lines = []
        grade([folder], {exercise.name: exercise}, out=out, timeout=30, sandbox=SANDBOX, jobs=jobs,
              progress=lines.append)
        feedback = {p.name: p.read_text() for p in sorted((out.parent / "grades_feedback").iterdir())}
        texts[jobs] = (out.read_text(), feedback, [line.rsplit(" (", 1)[0] for line in lines])
    assert texts[1] == texts[2]
    assert [line.split("]")[0] for line in texts[2][2]] == ["[1/4", "[2/4", "[3/4", "[4/4"]


@pytest.mark.slow
def test_the_gradescope_autograder_grades_a_simulated_autograder_tree(tmp_path):
    """Build the zip, unpack it where Gradescope would (/autograder/source), put a
    submission in /autograder/submission and run run_autograder, all under a temp folder."""
    exercise = Exercise.load(SOLUTION)
    archive = build_autograder(exercise, ROOT, tmp_path / "autograder.zip", timeout=30)
    names = zipfile.ZipFile(archive).namelist()
    assert {"setup.sh", "run_autograder", f"solutions/{SOLUTION.name}", "gradflow/pyproject.toml",
            "gradflow/gradflow_lessons/grading/cli.py"} <= set(names)
    tree = tmp_path / "autograder"
    zipfile.ZipFile(archive).extractall(tree / "source")
    run = tree / "source" / "run_autograder"
    run.chmod(0o755)
    reports = {}
    for who, nb in (("solved", solved_exercise()), ("stub", nbformat.read(EXERCISE, as_version=4))):
        submission = tree / "submission"
        if submission.exists():
            for p in submission.iterdir():
                p.unlink()
        submission.mkdir(exist_ok=True)
        nbformat.write(nb, submission / "my_notebook.ipynb")
        env = {**os.environ, "AUTOGRADER_ROOT": str(tree), "GRADFLOW_PYTHON": sys.executable}
        done = subprocess.run(["bash", str(run)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        reports[who] = json.loads((tree / "results" / "results.json").read_text())
    solved, stub = reports["solved"], reports["stub"]
    assert solved["score"] == 7 and stub["score"] == 0
    assert [(t["name"], t["score"], t["max_score"]) for t in solved["tests"]] == [
        ("check-tanh-jacobian", 2, 2), ("check-backprop", 3, 3), ("check-gradient-norms", 2, 2)]
    hidden = {t["name"]: t["visibility"] for t in solved["tests"]}
    assert set(hidden.values()) <= {"visible", "after_published"} and "after_published" in hidden.values()
    assert stub["extra_data"]["status"] == "not-attempted" and "7 points" in stub["output"]


def test_gradescope_without_a_notebook_still_writes_a_result(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("I forgot the notebook")
    out = tmp_path / "results" / "results.json"
    assert main([str(tmp_path / "sub"), "--exercise", "01", "--format", "gradescope", "--out", str(out),
                 "--solutions", str(ROOT / "solutions"), "--sandbox", "none"]) == 0
    report = json.loads(out.read_text())
    assert report["score"] == 0 and "No notebook" in report["output"]
