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
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gradflow_lessons.checks import PASS, CheckFailed  # noqa: F401  (re-exported)

# The class CSV: these, with one column per check (points earned) before "feedback".
CSV_COLUMNS = ("student_id", "name", "submission", "exercise", "score", "max_score", "status",
               "sandbox", "feedback")
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
             f"Status: {result.status} ({STATUSES[result.status]})",
             f"Sandbox: {result.sandbox or 'none'}", ""]
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


@dataclass
class Submission:
    """One row to grade: where it came from, who handed it in, and (once read) its cells."""

    label: str
    path: Path | None
    student_id: str = ""
    name: str = ""
    cells: object = None  # list[StudentCell], or the SubmissionError reading it raised


def collect(paths: list[Path], roster: list | None = None, roster_base: Path | None = None,
            exercise=None) -> list[Submission]:
    """The submissions to grade, in a fixed order: the roster's order, else the paths'.

    With a roster, each student's ``file`` (relative to ``roster_base``) is a notebook or a
    folder; a folder holding several notebooks gives the one named after ``exercise`` if
    there is one, else each of them; none at all gives a ``missing`` row (``path`` None)."""
    if roster is None:
        return [Submission(str(p), p) for p in find_notebooks(paths)]
    submissions = []
    for student in roster:
        where = (roster_base or Path.cwd()) / student.file if student.file else None
        found = find_notebooks([where]) if where is not None and where.exists() else []
        if len(found) > 1 and exercise is not None:
            found = [p for p in found if exercise.name in str(p)] or found
        if not found:
            label = str(where or student.student_id)
            submissions.append(Submission(label, None, student.student_id, student.name))
        submissions += [Submission(str(p), p, student.student_id, student.name) for p in found]
    return submissions


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=path.parent,
                                     prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def class_csv(results: list, check_ids: list[str]) -> str:
    """The class CSV: one row per submission, one column per check (its points earned)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS[:-1], *check_ids, CSV_COLUMNS[-1]])
    for r in results:
        earned = {c.id: _points(c.earned) for c in r.checks}
        writer.writerow([r.student_id, r.name, r.submission, r.exercise, _points(r.score),
                         _points(r.max_score), r.status, r.sandbox,
                         *(earned.get(i, "") for i in check_ids), r.summary()])
    return buffer.getvalue()


def _grade_one(job: tuple):
    """Grade one submission (in this process or a worker); always returns a Result."""
    from gradflow_lessons.grading.session import Result, grade_submission

    submission, target, timeout, memory_mb, run_as, sandbox, hidden, seed = job
    start = time.perf_counter()
    if submission.path is None:
        result = Result(submission.label, target.name if target else "", 0.0,
                        target.max_score if target else 0.0, "missing",
                        notes=[f"no submission found for {submission.student_id} at {submission.label}"])
    elif target is None:
        result = Result(submission.label, "", 0.0, 0.0, "unknown-exercise",
                        notes=["could not tell which exercise this is; pass --exercise NAME"])
    else:
        try:
            result = grade_submission(submission.path, target, timeout, memory_mb, submission.label,
                                      run_as, sandbox, hidden, cells=submission.cells, seed=seed)
        except Exception as e:  # noqa: BLE001 - a grader bug must not stop the class
            result = Result(submission.label, target.name, 0.0, target.max_score, "grader-error",
                            notes=[f"the grader failed: {type(e).__name__}: {e}"])
    result.student_id, result.name, result.sandbox = submission.student_id, submission.name, sandbox
    result.seed = seed
    result.seconds = result.seconds or time.perf_counter() - start
    return result


def grade(paths: list[Path], exercises: dict, exercise=None, out: Path = Path("grades.csv"),
          report: Path | None = None, feedback_dir: Path | None = None, timeout: float = 60,
          memory_mb: int = 4096, run_as: str = "", progress=print, sandbox: str = "bwrap",
          jobs: int = 1, roster: list | None = None, roster_base: Path | None = None,
          output_format: str = "csv", canvas: Path | None = None, canvas_assignment: str | None = None,
          private: tuple[Path, ...] = (), seed: int | None = None) -> list:
    """Grade every notebook in ``paths`` (or of the ``roster``); one row each, whatever it does.

    Every submission is read into memory before any student code runs, and every output is
    written by this process from memory, atomically (the CSV again after each row, so an
    interrupted run keeps the rows it finished). ``jobs`` submissions are graded at once, in
    worker processes; rows, progress lines and files come out in the same order whatever
    ``jobs`` is. ``sandbox`` is ``"bwrap"`` or ``"none"``; ``private`` paths (the solutions)
    are kept out of the kernels' sight with the submissions and the outputs. The hidden
    inputs of every submission come from ``seed`` (default: drawn fresh for this run),
    recorded in the JSON report: a regrade with ``seed`` draws the same inputs.

    Returns the results, in order.

    Raises:
        SandboxUnavailable: ``sandbox="bwrap"`` where bubblewrap cannot start.
    """
    from gradflow_lessons.grading import sandbox as sandboxes
    from gradflow_lessons.grading.exercise import SubmissionError, read_submission

    sandboxes.require(sandbox)
    if seed is None:
        import secrets

        seed = secrets.randbits(63)
    submissions = collect(paths, roster, roster_base, exercise)
    targets = [exercise or (infer_exercise(s.path, exercises) if s.path else None) for s in submissions]
    for s in submissions:  # all of them, before any student code runs
        if s.path is not None:
            try:
                s.cells = read_submission(s.path)
            except SubmissionError as e:
                s.cells = e
    report = report or out.with_suffix(".json")
    feedback_dir = feedback_dir or out.parent / f"{out.stem}_feedback"
    hidden = tuple(dict.fromkeys([*paths, *(s.path for s in submissions if s.path), out, report,
                                  feedback_dir, *([canvas] if canvas else []), *private]))
    check_ids = list(dict.fromkeys(c.id for t in targets if t for c in t.checks))
    jobs_list = [(s, t, timeout, memory_mb, run_as, sandbox, hidden, seed)
                 for s, t in zip(submissions, targets)]
    results, used = [], set()
    feedback = {}
    for number, result in enumerate(_run_all(jobs_list, jobs), start=1):
        results.append(result)
        path = submissions[number - 1].path or Path(submissions[number - 1].label)
        feedback[_feedback_name(path, used)] = feedback_text(result)
        if output_format == "csv":
            _write_atomically(out, class_csv(results, check_ids))
        progress(f"[{number}/{len(submissions)}] {result.submission}: {_points(result.score)}/"
                 f"{_points(result.max_score)} {result.status} ({result.seconds:.1f} s)")
    if output_format == "gradescope":
        from gradflow_lessons.grading.lms import gradescope_results

        unread = ("missing", "invalid", "empty")
        graded = next((i for i, r in enumerate(results) if r.status not in unread), 0)
        chosen = results[graded] if results else None
        payload = gradescope_results(chosen, targets[graded]) if chosen else {
            "score": 0, "output": "No notebook (.ipynb) was found in the submission.", "tests": []}
        _write_atomically(out, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        return results
    for name, text in feedback.items():
        _write_atomically(feedback_dir / name, text)
    if canvas is not None:
        from gradflow_lessons.grading.lms import canvas_csv

        _write_atomically(canvas, canvas_csv(results, roster or [], canvas_assignment))
    summary = {"timeout_s": timeout, "memory_mb": memory_mb, "run_as": run_as, "sandbox": sandbox,
               "jobs": jobs, "seed": seed, "csv": str(out), "feedback_dir": str(feedback_dir),
               "submissions": [asdict(r) for r in results]}
    _write_atomically(report, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return results


def _run_all(jobs_list: list[tuple], jobs: int):
    """Results of ``_grade_one`` over ``jobs_list``, in order; ``jobs`` worker processes.

    Workers are spawned (not forked: this process holds torch's threads), each grades one
    submission at a time, and the check cells run in the worker, never in a thread."""
    if jobs <= 1 or len(jobs_list) <= 1:
        yield from map(_grade_one, jobs_list)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(jobs, len(jobs_list)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_grade_one, jobs_list)


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
                        help="with --sandbox none, when grading as root (e.g. in a container): run "
                        "student kernels as this user, who must not be able to read --solutions")
    parser.add_argument("--sandbox", choices=("bwrap", "none"), default="bwrap",
                        help="bwrap (default): each kernel sealed in bubblewrap (its scratch folder "
                        "only, no network, nothing outlives it); none: no sandbox (opt-out)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="grade N submissions at once (default: the number of cores); the "
                        "output is the same whatever N is")
    parser.add_argument("--roster", type=Path, help="CSV of student_id,name,file (a notebook or a "
                        "folder, relative to the one SUBMISSIONS folder or else to the roster); "
                        "students without a submission get a 'missing' row")
    parser.add_argument("--canvas", type=Path, metavar="CSV", help="with --roster: also write a "
                        "CSV for Canvas's gradebook import")
    parser.add_argument("--canvas-assignment", metavar="NAME", help="the Canvas assignment's column "
                        "name, e.g. 'Exercise 01 (12345)' (default: the exercise name)")
    parser.add_argument("--format", choices=("csv", "gradescope"), default="csv",
                        help="csv (default): class CSV, JSON and feedback files; gradescope: "
                        "Gradescope's results.json for one submission at --out")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the hidden inputs (default: "
                        "drawn fresh, recorded in the JSON report; give it to regrade the same way)")
    parser.add_argument("--gradescope-autograder", type=Path, metavar="ZIP",
                        help="with --exercise: write Gradescope's autograder zip for it and stop")
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
    if args.run_as and args.sandbox != "none":
        parser.error("--run-as works with --sandbox none only (the sandbox already keeps the "
                     "kernels away from your files)")
    if not args.submissions and args.roster is None and args.gradescope_autograder is None:
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
    if args.gradescope_autograder is not None:
        from gradflow_lessons.grading.lms import build_autograder

        if exercise is None:
            parser.error("--gradescope-autograder needs --exercise NAME")
        build_autograder(exercise, COURSE_ROOT, args.gradescope_autograder, args.timeout)
        print(f"Gradescope autograder for {exercise.name} written to {args.gradescope_autograder}")
        return 0
    missing = [p for p in args.submissions if not p.exists()]
    if missing:
        parser.error(f"no such file or folder: {', '.join(map(str, missing))}")
    roster = roster_base = None
    if args.roster is not None:
        from gradflow_lessons.grading.lms import read_roster

        try:
            roster = read_roster(args.roster)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        folders = [p for p in args.submissions if p.is_dir()]
        roster_base = folders[0] if len(folders) == 1 and len(args.submissions) == 1 else args.roster.parent
    elif args.canvas is not None:
        parser.error("--canvas needs --roster (Canvas matches grades to students by their ids)")
    from gradflow_lessons.grading.sandbox import SandboxUnavailable

    try:
        results = grade(args.submissions, exercises, exercise, args.out, args.report, args.feedback_dir,
                        args.timeout, args.memory_mb, args.run_as,
                        progress=lambda line: print(line, flush=True), sandbox=args.sandbox,
                        jobs=max(1, args.jobs), roster=roster, roster_base=roster_base,
                        output_format=args.format, canvas=args.canvas,
                        canvas_assignment=args.canvas_assignment, private=(folder,), seed=args.seed)
    except SandboxUnavailable as e:
        print(f"gradflow-grade: {e}", file=sys.stderr)
        return 2
    print(f"{len(results)} submission(s) graded into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
