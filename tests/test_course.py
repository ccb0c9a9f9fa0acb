"""The course as a whole: map, README, CI, style."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import gradflow_lessons
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


def _tracked_names() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return {name for f in files for name in (f, Path(f).name)}


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md"])
def test_documents_name_only_files_that_exist(document):
    """A file named in backticks (`mknb.py`, `tests/test_x.py`) must be in the repository."""
    text = (ROOT / document).read_text()
    named = set(re.findall(r"`([\w./-]+\.(?:py|ipynb|cfg|toml|yml|yaml|md|cff|txt|sh))`", text))
    generated = {"grades.csv", "grades.json", "results.json", "setup.sh"}  # written by the tools
    tracked = _tracked_names()
    missing = sorted(n for n in named if not {n, Path(n).name} & (tracked | generated)
                     and not Path(n).name.startswith("NN")  # NN_topic.ipynb: a pattern
                     and not n.startswith("submissions/"))  # the instructor's own folder
    assert not missing, f"{document} names files that are not in the repository: {missing}"


def test_citation_version_is_the_package_version():
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f"version: {version}" in (ROOT / "CITATION.cff").read_text()
    assert gradflow_lessons.__version__ == version


def test_readme_states_the_course_length_the_map_adds_up_to():
    hours = round(sum(lesson.minutes for lesson in LESSONS) / 60)
    assert f"add up to about {hours} hours" in " ".join((ROOT / "README.md").read_text().split())


TIME_LINE = re.compile(
    r"\*\*Time:\*\* about (\d+) minutes(?:: (\d+) for the lesson, (\d+) for the exercise)?")


def _stated_time(path: Path) -> re.Match | None:
    import nbformat

    cells = nbformat.read(path, as_version=4).cells[:4]
    found = (TIME_LINE.search(c.source) for c in cells if c.cell_type == "markdown")
    return next((m for m in found if m), None)


# Every lesson but the index, as written so far.
LESSON_NOTEBOOKS = [lesson for lesson in LESSONS if lesson.number != "00" and lesson.is_written(ROOT)]


@pytest.mark.parametrize("lesson", LESSON_NOTEBOOKS, ids=lambda lesson: lesson.number)
def test_each_lesson_and_exercise_states_the_time_the_course_map_gives(lesson):
    stated = _stated_time(ROOT / "notebooks" / lesson.notebook)
    assert stated, f"{lesson.notebook}: no '**Time:** about N minutes' line in its header"
    minutes, exercise = lesson.minutes, lesson.exercise_minutes
    wanted = (str(minutes), str(minutes - exercise), str(exercise))
    assert stated.group(1) == wanted[0], (
        f"{lesson.notebook} says {stated.group(1)} min, the map {lesson.minutes}")
    if lesson.exercise:
        assert stated.groups()[1:] == wanted[1:], (
            f"{lesson.notebook}: write 'about {wanted[0]} minutes: {wanted[1]} for the lesson, "
            f"{wanted[2]} for the exercise'")
        solution = _stated_time(ROOT / "solutions" / lesson.exercise)
        assert solution is None or solution.group(1) == wanted[2], (
            f"solutions/{lesson.exercise}: its '**Time:** about N minutes' must be the map's {wanted[2]}")


@pytest.mark.parametrize("lesson", LESSON_NOTEBOOKS, ids=lambda lesson: lesson.number)
def test_each_lesson_asks_the_learner_to_predict_at_least_three_times_with_answers(lesson):
    import nbformat

    cells = nbformat.read(ROOT / "notebooks" / lesson.notebook, as_version=4).cells
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    prompts, answers = text.count("**Predict, then run.**"), text.count("<details>")
    assert prompts >= 3 and answers >= 3, (
        f"{lesson.notebook}: {prompts} '**Predict, then run.**' prompts and {answers} <details> answers; "
        "a lesson asks at least three, each answered in a collapsed <details> block after its experiment")
