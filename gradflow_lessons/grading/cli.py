"""The grading command: grade a class into a CSV, or check one's own notebook.

    gradflow-grade submissions/ --exercise 01_warmup_jacobians --out grades.csv --timeout 60
    python -m gradflow_lessons.grading --self-check exercises/01_warmup_jacobians.ipynb

The first grades every notebook into one CSV row each (plus a JSON report and a feedback
file per student); the second is the learner's check of their own notebook, check by
check, with the public checks. How a submission is run without being trusted is in
:mod:`gradflow_lessons.grading.session`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from gradflow_lessons.checks import PASS, CheckFailed  # noqa: F401  (re-exported)

CSV_COLUMNS = ("submission", "exercise", "score", "max_score", "status", "feedback")
COURSE_ROOT = Path(__file__).resolve().parents[2]


def _points(x: float) -> str:
    return f"{x:g}"


def find_notebooks(paths: list[Path]) -> list[Path]:
    """Every ``.ipynb`` named, or found below a named folder (checkpoints skipped), in order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def load_exercises(folder: Path) -> dict:
    """Every exercise notebook in ``folder`` by name (its stem)."""
    from gradflow_lessons.grading.exercise import Exercise

    return {p.stem: Exercise.load(p) for p in sorted(folder.glob("*.ipynb"))}


def pick_exercise(name: str, exercises: dict):
    """The exercise called ``name`` (a stem, a file name, or a unique prefix such as "01")."""
    stem = Path(name).name.removesuffix(".ipynb")
    matches = [e for key, e in exercises.items() if key == stem] or [
        e for key, e in exercises.items() if key.startswith(stem)]
    if len(matches) != 1:
        raise ValueError(f"--exercise {name!r} matches {len(matches)} of: {', '.join(exercises) or 'none'}")
    return matches[0]


def infer_exercise(path: Path, exercises: dict):
    """The exercise a submission is for: the longest exercise name in its path, else the
    one whose check-cell ids it shares, else the only one there is; None if unsure."""
    named = [key for key in exercises if key in str(path)]
    if named:
        return exercises[max(named, key=len)]
    try:
        ids = {c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]}
        shared = {key: len(ids & {c.id for c in e.checks}) for key, e in exercises.items()}
        best = max(shared, key=shared.get)
        if shared[best] > 0:
            return exercises[best]
    except Exception:  # noqa: BLE001 - unreadable: decided by the name alone
        pass
    return next(iter(exercises.values())) if len(exercises) == 1 else None


def feedback_text(result) -> str:
    """The feedback file for one student: score, each check, a hint for each failure."""
    from gradflow_lessons.grading.session import STATUSES

    lines = [f"# {result.exercise or 'unknown exercise'}: {_points(result.score)} / "
             f"{_points(result.max_score)} points", "",
             f"Submission: {result.submission}",
             f"Status: {result.status} ({STATUSES[result.status]})", ""]
    for check in result.checks:
        mark = PASS if check.passed else "\u2717"
        lines.append(f"- {mark} {check.id}: {_points(check.earned)}/{_points(check.points)}"
                     + (f". {check.message}" if check.message else ""))
    if result.notes:
        lines += ["", "Notes:"] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _feedback_name(path: Path, used: set[str]) -> str:
    parts = [p for p in path.with_suffix("").parts if p not in ("/", "..", ".")][-3:]
    base = "__".join("".join(c if c.isalnum() or c in "-_." else "_" for c in p) for p in parts) or "x"
    name, n = f"{base}.md", 1
    while name in used:
        n += 1
        name = f"{base}-{n}.md"
    used.add(name)
    return name


def grade(paths: list[Path], exercises: dict, exercise=None, out: Path = Path("grades.csv"),
          report: Path | None = None, feedback_dir: Path | None = None, timeout: float = 60,
          memory_mb: int = 4096, run_as: str = "", progress=print) -> list:
    """Grade every notebook in ``paths``; one CSV row each, whatever the notebook does.

    The CSV is written row by row (an interrupted run keeps the rows it finished); the
    JSON report and the feedback files are written as well. Returns the results."""
    from gradflow_lessons.grading.session import Result, grade_submission

    notebooks = find_notebooks(paths)
    report = report or out.with_suffix(".json")
    feedback_dir = feedback_dir or out.parent / f"{out.stem}_feedback"
    feedback_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for number, path in enumerate(notebooks, start=1):
            label = str(path)
            start = time.perf_counter()
            target = exercise or infer_exercise(path, exercises)
            if target is None:
                result = Result(label, "", 0.0, 0.0, "unknown-exercise",
                                notes=["could not tell which exercise this is; pass --exercise NAME"])
            else:
                try:
                    result = grade_submission(path, target, timeout, memory_mb, label, run_as)
                except Exception as e:  # noqa: BLE001 - a grader bug must not stop the class
                    result = Result(label, target.name, 0.0, target.max_score, "grader-error",
                                    notes=[f"the grader failed: {type(e).__name__}: {e}"])
            results.append(result)
            writer.writerow([label, result.exercise, _points(result.score), _points(result.max_score),
                             result.status, result.summary()])
            f.flush()
            (feedback_dir / _feedback_name(path, used)).write_text(feedback_text(result), encoding="utf-8")
            progress(f"[{number}/{len(notebooks)}] {label}: {_points(result.score)}/"
                     f"{_points(result.max_score)} {result.status} ({time.perf_counter() - start:.1f} s)")
    summary = {"timeout_s": timeout, "memory_mb": memory_mb, "run_as": run_as, "csv": str(out),
               "feedback_dir": str(feedback_dir), "submissions": [asdict(r) for r in results]}
    report.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def self_check(notebook: Path, exercises_dir: Path | None = None, timeout: float = 60,
               memory_mb: int = 4096, show=print):
    """Grade the learner's own notebook with the public checks and show it check by check.

    The checks come from the untouched exercise in ``exercises_dir`` (by file name) when it
    is there, so an edited check cell does not change the verdict; else from the notebook."""
    from gradflow_lessons.grading.exercise import Exercise
    from gradflow_lessons.grading.session import grade_submission

    pristine = (exercises_dir or COURSE_ROOT / "exercises") / notebook.name
    reference = Exercise.load(pristine if pristine.is_file() else notebook)
    show(f"Self-check of {notebook} with the public checks of {reference.path}")
    show("(grading runs the same checks plus hidden cases with fresh random inputs)")
    result = grade_submission(notebook, reference, timeout, memory_mb)
    for check in result.checks:
        mark = PASS if check.passed else "\u2717"
        show(f"  {mark} {check.id:<28} {_points(check.earned)}/{_points(check.points)}"
             + (f"  {check.message}" if check.message else ""))
        for line in check.output.splitlines()[:10]:
            show(f"      {line}")
    for note in result.notes:
        show(f"  note: {note}")
    show(f"Public checks: {_points(result.score)}/{_points(result.max_score)} points "
         f"(status: {result.status})")
    return result


def main(argv: list[str] | None = None) -> int:
    """``gradflow-grade`` (also ``python -m gradflow_lessons.grading``)."""
    parser = argparse.ArgumentParser(
        prog="gradflow-grade",
        description="Grade exercise notebooks into a CSV, or self-check your own notebook.",
        epilog="Statuses: see README, 'Grading'. Hidden checks are read from --solutions and "
               "never reach the students' kernels.",
    )
    parser.add_argument("submissions", nargs="*", type=Path, help="notebooks, or folders of them")
    parser.add_argument("--exercise", help="exercise name, e.g. 01_warmup_jacobians (default: "
                        "inferred from each file name)")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV of grades")
    parser.add_argument("--report", type=Path, help="JSON report (default: next to --out)")
    parser.add_argument("--feedback-dir", type=Path, help="one feedback file per submission "
                        "(default: OUT_feedback/ next to --out)")
    parser.add_argument("--timeout", type=float, default=60, metavar="S",
                        help="seconds per cell and per graded call (default 60); "
                        "a submission gets 5x this in all")
    parser.add_argument("--memory-mb", type=int, default=4096, metavar="MB",
                        help="memory limit of each student's kernel (default 4096; 0: none)")
    parser.add_argument("--solutions", type=Path, help="folder of solution notebooks with the "
                        "hidden checks (default: ./solutions, else the course's)")
    parser.add_argument("--run-as", default="", metavar="USER",
                        help="when grading as root (e.g. in a container): run student kernels as "
                        "this user, who must not be able to read --solutions")
    parser.add_argument("--self-check", type=Path, metavar="NOTEBOOK",
                        help="check your own notebook with the public checks, check by check")
    parser.add_argument("--exercises", type=Path, help="with --self-check: folder of the "
                        "untouched exercises (default: the course's exercises/)")
    args = parser.parse_args(argv)
    # Checks run in this process and student code in CPU-only kernels: keep both on the CPU.
    # Restored on return, so calling main() from Python (tests, a notebook) leaks nothing.
    saved = {key: os.environ.get(key) for key in ("CUDA_VISIBLE_DEVICES", "MPLBACKEND")}
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        return _run(parser, args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.self_check is not None:
        if not args.self_check.is_file():
            parser.error(f"{args.self_check}: no such notebook")
        result = self_check(args.self_check, args.exercises, args.timeout, args.memory_mb)
        return 0 if result.checks and all(c.passed for c in result.checks) else 1
    if not args.submissions:
        parser.error("name the notebooks (or folders) to grade, or use --self-check NOTEBOOK")
    folder = args.solutions or next(
        (p for p in (Path("solutions"), COURSE_ROOT / "solutions") if p.is_dir()), None)
    if folder is None or not folder.is_dir():
        parser.error("no solutions folder found; pass --solutions DIR (it holds the hidden checks)")
    try:
        exercises = load_exercises(folder)
        exercise = pick_exercise(args.exercise, exercises) if args.exercise else None
    except ValueError as e:
        parser.error(str(e))
    if not exercises:
        parser.error(f"{folder} holds no exercise notebook")
    missing = [p for p in args.submissions if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(map(str, missing))}")
    results = grade(args.submissions, exercises, exercise, args.out, args.report, args.feedback_dir,
                    args.timeout, args.memory_mb, args.run_as,
                    progress=lambda line: print(line, flush=True))
    print(f"{len(results)} submission(s) graded into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
