"""The course as a whole: map, README, CI, style."""

import subprocess
import sys
from pathlib import Path

from gradflow_lessons import course
from gradflow_lessons.tooling.syllabus import LESSONS, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def test_every_lesson_notebook_is_on_the_course_map():
    mapped = {lesson.notebook for lesson in LESSONS}
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        assert path.name in mapped, f"{path.name} is missing from gradflow_lessons/syllabus.py"


def test_every_exercise_belongs_to_a_lesson_on_the_map():
    mapped = {lesson.exercise for lesson in LESSONS}
    for path in (ROOT / "solutions").glob("*.ipynb"):
        assert path.name in mapped, f"{path.name} is not named by any lesson in syllabus.py"


def test_readme_course_map_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table(ROOT) in readme, (
        "README's course map is stale: paste the output of "
        "`python -c 'from pathlib import Path; from gradflow_lessons.tooling.syllabus import "
        "markdown_table; print(markdown_table(Path.cwd()))'`"
    )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python3 -m gradflow_lessons.course test"
    assert command in readme and command in ci.splitlines()


def test_course_command_without_a_verb_prints_usage_and_fails(capsys):
    assert course.main([]) == 2
    assert "course start" in capsys.readouterr().out


def test_course_module_needs_only_the_standard_library():
    """It runs before anything is installed, so it must not import torch & co."""
    code = (
        "import sys; import gradflow_lessons.course; "
        "bad = [m for m in ('torch', 'numpy', 'nbformat', 'IPython') if m in sys.modules]; "
        "sys.exit(bool(bad))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_code_and_notebooks_are_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
