"""Grades in the formats learning-management systems import, and who handed in what.

- a **roster** (CSV with ``student_id``, ``name``, ``file``; optional ``canvas_id``,
  ``sis_login_id``, ``section``) maps students to submissions; a student without one gets
  a ``missing`` row;
- **Canvas**: a CSV for the gradebook's *Import* (``Student, ID, SIS User ID, SIS Login ID,
  Section`` and one column per exercise);
- **Gradescope**: the autograder's ``results.json`` (one ``tests`` entry per check; checks
  with hidden tests are shown to students only after the grades are published), and the
  autograder zip (``setup.sh``, ``run_autograder``, the package and the solution) that lets
  Gradescope's own workers grade each submission in its own container.

Everything here formats what the grader holds in memory; nothing reads a student's files.
"""

from __future__ import annotations

import csv
import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gradflow_lessons.grading.markers import HIDDEN_MARKERS

CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")


@dataclass(frozen=True)
class Student:
    student_id: str
    name: str
    file: str
    canvas_id: str = ""
    sis_login_id: str = ""
    section: str = ""


def read_roster(path: Path) -> list[Student]:
    """The students of a roster CSV, in its order.

    Raises:
        ValueError: a missing column, an empty student id, or an id listed twice.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    file_column = "file" if "file" in header else "path"
    missing = {"student_id", "name", file_column} - header
    missing = {"file" if m == "path" else m for m in missing}
    if missing:
        raise ValueError(f"{path}: the roster needs the columns student_id, name and file "
                         f"(missing: {', '.join(sorted(missing))})")
    students, seen = [], set()
    for number, row in enumerate(rows, start=2):
        sid = (row.get("student_id") or "").strip()
        if not sid:
            raise ValueError(f"{path}, line {number}: empty student_id")
        if sid in seen:
            raise ValueError(f"{path}, line {number}: student_id {sid!r} is listed twice")
        seen.add(sid)
        cell = {k: (v or "").strip() for k, v in row.items() if k}
        students.append(Student(sid, cell.get("name", ""), cell.get(file_column, ""),
                                cell.get("canvas_id", ""), cell.get("sis_login_id", ""),
                                cell.get("section", "")))
    return students


def canvas_csv(results: list, roster: list[Student], assignment: str | None = None) -> str:
    """A CSV for Canvas's gradebook import: one row per roster student, one column per
    exercise (named ``assignment`` when there is one). Canvas matches students on ``ID`` (the
    roster's ``canvas_id``) when given, else on ``SIS User ID`` (the roster's student id). A
    student with several submissions of an exercise gets the best score."""
    exercises = list(dict.fromkeys(r.exercise for r in results if r.exercise))
    names = [assignment] if assignment and len(exercises) == 1 else exercises
    best: dict[tuple[str, str], float] = {}
    for r in results:
        key = (r.student_id, r.exercise)
        best[key] = max(best.get(key, 0.0), r.score)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CANVAS_COLUMNS, *names])
    for s in roster:
        writer.writerow([s.name, s.canvas_id, s.student_id, s.sis_login_id, s.section,
                         *(f"{best.get((s.student_id, e), 0.0):g}" for e in exercises)])
    return buffer.getvalue()


def gradescope_results(result, exercise) -> dict:
    """Gradescope's ``results.json`` for one graded submission."""
    from gradflow_lessons.grading.cli import feedback_text

    hidden = {c.id for c in exercise.checks if HIDDEN_MARKERS[0] in c.source} if exercise else set()
    tests = [{
        "name": check.id,
        "score": check.earned,
        "max_score": check.points,
        "status": "passed" if check.passed else "failed",
        "output": "\n".join(x for x in (check.message, check.output.strip()) if x)[:5000],
        "visibility": "after_published" if check.id in hidden else "visible",
    } for check in result.checks]
    return {
        "score": result.score,
        "output": feedback_text(result),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {"status": result.status, "exercise": result.exercise, "sandbox": result.sandbox},
    }


SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image.
set -euo pipefail
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-pip python3-venv bubblewrap
python3 -m venv /opt/gradflow
/opt/gradflow/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.14"
/opt/gradflow/bin/pip install -q /autograder/source/gradflow
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for each submission, in a fresh container, as root.
set -u
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{GRADFLOW_PYTHON:-/opt/gradflow/bin/python}}"
mkdir -p "$ROOT/results"
# The student's kernel runs in bubblewrap where the container allows user namespaces; else as
# the user nobody, who can read neither the hidden tests nor the results folder.
ISOLATION="--sandbox bwrap"
PROBE="from gradflow_lessons.grading.sandbox import bwrap_problem as p; raise SystemExit(bool(p()))"
if ! "$PYTHON" -c "$PROBE"; then
    ISOLATION="--sandbox none"
    if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
        chmod 700 "$ROOT/source" "$ROOT/results"
        ISOLATION="--sandbox none --run-as nobody"
    fi
fi
exec "$PYTHON" -m gradflow_lessons.grading "$ROOT/submission" --exercise {exercise} \\
    --solutions "$ROOT/source/solutions" --format gradescope --out "$ROOT/results/results.json" \\
    --timeout {timeout:g} --jobs 1 $ISOLATION
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = ((stat.S_IFREG | (0o755 if executable else 0o644)) << 16)
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build_autograder(exercise, package_root: Path, out: Path, timeout: float = 60) -> Path:
    """Write Gradescope's autograder zip for ``exercise`` to ``out``: ``setup.sh``,
    ``run_autograder``, ``solutions/NAME.ipynb`` (hidden tests included: the zip is for the
    instructor's Gradescope account only) and the package source under ``gradflow/``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        _add(archive, "setup.sh", SETUP_SH.encode(), executable=True)
        run = RUN_AUTOGRADER.format(exercise=exercise.name, timeout=timeout)
        _add(archive, "run_autograder", run.encode(), executable=True)
        _add(archive, f"solutions/{exercise.path.name}", exercise.path.read_bytes())
        for name in ("pyproject.toml", "README.md"):
            _add(archive, f"gradflow/{name}", (package_root / name).read_bytes())
        package = package_root / "gradflow_lessons"
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".mplstyle"):
                _add(archive, f"gradflow/{path.relative_to(package_root).as_posix()}", path.read_bytes())
    return out
