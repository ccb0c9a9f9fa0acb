"""Grade one submission without trusting it (DESIGN.md, "Grading trust model").

The student's notebook only ever provides the code of its non-check cells: it runs, check
cells removed, in a fresh kernel with a time and a memory limit, in an empty scratch
directory (:mod:`gradflow_lessons.grading.kernel`). The check cells, with their hidden
tests, run here in the grader's own process; a call of a student function inside a check
is sent to the student's kernel with the check's arguments, and only the plain result
(numbers, tensors, lists...) comes back (:mod:`gradflow_lessons.grading.wire`). The check
helpers then compare it here. Hidden tests are never written to disk nor sent to it.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gradflow_lessons.grading.exercise import (
    Exercise,
    StudentCell,
    SubmissionError,
    _python_source,
    read_submission,
)
from gradflow_lessons.grading.kernel import KernelGone, StudentKernel
from gradflow_lessons.grading.markers import strip_markers
from gradflow_lessons.grading.wire import REFERENCE_MODULE, StudentCodeError

# Statuses, most serious first. The first that applies is the row's status.
STATUSES = {
    "invalid": "the file is not a readable notebook",
    "empty": "the file is empty or has no code",
    "unknown-exercise": "could not tell which exercise this is (pass --exercise)",
    "grader-error": "the grader could not run this submission (see feedback)",
    "kernel-died": "the kernel stopped: exit(), os._exit(), a crash, or the memory limit",
    "timeout": "a cell or a graded call ran past --timeout and was interrupted",
    "memory": "the code ran out of the memory allowed",
    "exit": "the code raised SystemExit; the remaining cells still ran",
    "missing": "the roster lists this student but no submission was found",
    "not-attempted": "every check failed on an unchanged stub (NotImplementedError)",
    "errors": "a cell raised an error; grading went on",
    "ok": "everything ran",
}




# --------------------------------------------------------------------------- the checks


@dataclass
class CheckResult:
    id: str
    points: float
    earned: float
    output: str = ""
    message: str = ""
    not_attempted: bool = False

    @property
    def passed(self) -> bool:
        return self.earned == self.points


class _Shell:
    """``get_ipython()`` for check cells run in the grader: magics do nothing, except that
    cell magics such as ``%%time`` still run their cell."""

    def __init__(self, namespace: dict):
        self.namespace = namespace

    def run_cell_magic(self, name: str, line: str, cell: str) -> None:
        if name in ("time", "capture", "timeit"):
            exec(compile(_python_source(cell), "<cell magic>", "exec"), self.namespace)

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def _grader_state_kept():
    """Check cells seed RNGs and set torch's default dtype: undo that afterwards."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")


def describe_failure(error: BaseException) -> tuple[str, bool]:
    """Feedback for a failed check, and whether it failed on an unchanged stub."""
    if isinstance(error, StudentCodeError):
        if error.ename == "GraderError":
            return (f"the grader could not pass this check's arguments to {error.what} "
                    f"({error.evalue}); this is a fault of the exercise: tell your instructor."), False
        if error.ename == "NotImplementedError":
            return f"not attempted yet: {error.what} still raises NotImplementedError.", True
        if error.ename in ("TimeoutError", "KeyboardInterrupt"):
            return f"{error.what} did not finish in time (an endless loop?).", False
        return (f"{error}. Hint: call {error.what} on a small input in your notebook to see "
                "the traceback."), False
    if isinstance(error, AssertionError):
        return str(error) or "a check failed", False
    return f"{type(error).__name__}: {error}", False


@contextlib.contextmanager
def _hidden_inputs_from(seed: int | None):
    """Hidden tests draw their inputs from ``os.urandom``: with a ``seed``, from a generator
    seeded by it instead, so that a regrade with the run's seed draws the same inputs."""
    if seed is None:
        yield
        return
    import os

    draw, real = random.Random(seed), os.urandom
    os.urandom = lambda n: draw.randbytes(n)
    try:
        yield
    finally:
        os.urandom = real


def run_checks(exercise: Exercise, kernel: StudentKernel,
               seed: int | None = None) -> tuple[list[CheckResult], list[str]]:
    """Run the exercise's own cells in this process, student names bound to the kernel.
    ``seed``: the grading run's seed for the hidden inputs (None: truly random).

    Returns the result of every check cell and notes on set-up cells that failed."""
    namespace: dict = {"__name__": REFERENCE_MODULE, "__builtins__": builtins}
    namespace["get_ipython"] = lambda: _Shell(namespace)
    results, notes = [], []
    last = max(i for i, c in enumerate(exercise.cells) if c.kind == "check")
    with _grader_state_kept(), _hidden_inputs_from(seed):
        for cell in exercise.cells[: last + 1]:
            if cell.kind == "solution":
                for name in cell.names:
                    namespace[name] = kernel.fetch(name)
                continue
            if cell.kind == "skip":
                continue
            output, error = io.StringIO(), None
            try:
                code = compile(_python_source(cell.source), f"<{exercise.name}: {cell.id}>", "exec")
                with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()), \
                        warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    exec(code, namespace)
            except (Exception, SystemExit) as e:  # noqa: BLE001 - every failure is feedback
                error = e
            if cell.kind == "check":
                message, stub = describe_failure(error) if error else ("", False)
                earned = cell.points if error is None else 0.0
                results.append(CheckResult(cell.id, cell.points, earned, output.getvalue()[:4000],
                                           message[:2000], stub))
            elif error is not None:
                notes.append(f"set-up cell {cell.id} failed in the grader: {describe_failure(error)[0]}")
    return results, notes


# --------------------------------------------------------------------------- one submission


@dataclass
class Result:
    submission: str
    exercise: str
    score: float
    max_score: float
    status: str
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sandbox: str = ""
    student_id: str = ""
    name: str = ""
    seed: int | None = None  # of the hidden inputs; in the JSON report, not in the feedback

    def summary(self) -> str:
        """One line for the CSV's feedback column."""
        if not self.checks:
            return (self.notes[0] if self.notes else STATUSES[self.status])[:300]
        parts = [f"{c.id} {'passed' if c.passed else 'failed'}" for c in self.checks]
        failed = next((c for c in self.checks if not c.passed), None)
        if failed is not None:
            parts.append(f"first failure: {failed.message}")
        return "; ".join(parts)[:500]


def _student_status(result: Result, events: set[str], cell_errors: list[str]) -> str:
    if "died" in events:
        return "kernel-died"
    for event, status in (("timeout", "timeout"), ("memory", "memory"), ("exit", "exit")):
        if event in events:
            return status
    failed = [c for c in result.checks if not c.passed]
    if result.checks and len(failed) == len(result.checks) and all(c.not_attempted for c in failed):
        return "not-attempted"
    return "errors" if cell_errors else "ok"


def grade_submission(path: Path, exercise: Exercise, timeout: float = 60, memory_mb: int = 4096,
                     label: str | None = None, run_as: str = "", sandbox: str = "none",
                     hidden: tuple[Path, ...] = (), cells: list[StudentCell] | SubmissionError | None = None,
                     seed: int | None = None) -> Result:
    """Grade ``path`` against ``exercise``; always returns a Result (never raises for
    anything the submission does).

    Args:
        cells: the submission as read into memory beforehand (:func:`read_submission`'s
            cells, or the error it raised); None to read ``path`` now.
        sandbox: ``"bwrap"`` or ``"none"`` (:mod:`gradflow_lessons.grading.sandbox`).
        hidden: paths the kernel must not see (other submissions, outputs, solutions).
        seed: the grading run's seed for the hidden inputs (None: ``os.urandom``).
    """
    start = time.perf_counter()
    result = Result(label or str(path), exercise.name, 0.0, exercise.max_score, "ok", sandbox=sandbox,
                    seed=seed)
    try:
        if cells is None:
            cells = read_submission(path)
        if isinstance(cells, SubmissionError):
            raise cells
    except SubmissionError as e:
        result.status, result.notes = e.status, [str(e)]
        return result
    check_ids = {c.id for c in exercise.checks}
    originals = {c.id: {strip_markers(c.source).strip(), c.source.strip()} for c in exercise.checks}
    ids = [c.id for c in cells if c.id]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        result.notes.append(f"duplicated cell ids {', '.join(duplicates)}: every copy ran, in order")
    for check_id, sources in originals.items():
        mine = [c for c in cells if c.id == check_id]
        if not mine:
            result.notes.append(f"check cell {check_id} was missing; the grader ran the original")
        elif any(c.source.strip() not in sources for c in mine):
            result.notes.append(f"your edits to check cell {check_id} were ignored; "
                                "the grader ran the original")
    kernel = StudentKernel(timeout, memory_mb, run_as, sandbox, hidden)
    try:
        try:
            kernel.start()
        except Exception as e:  # noqa: BLE001 - e.g. a memory limit too small for Python
            result.status = "grader-error"
            result.notes.append(f"could not start a kernel: {type(e).__name__}: {e}")
            return result
        cell_errors = _run_student_cells(cells, check_ids, kernel)
        result.checks, setup_notes = run_checks(exercise, kernel, seed)
    finally:
        kernel.close()
        result.seconds = time.perf_counter() - start
    result.score = sum(c.earned for c in result.checks)
    result.notes += cell_errors + setup_notes
    if kernel.output_bytes > 10 * 2**20:
        result.notes.append(f"printed {kernel.output_bytes / 2**20:.0f} MB of output (not kept)")
    if "died" in kernel.events:
        result.notes.append(f"the kernel stopped (exit code {kernel.exit_code}): exit(), os._exit(), "
                            "a crash, or the memory limit; checks after that point earned nothing")
    if "killed" in kernel.events:
        result.notes.append("the kernel ignored the interrupt after a timeout and was stopped; "
                            "checks after that point earned nothing")
    result.status = _student_status(result, kernel.events, cell_errors)
    if result.status == "errors" and result.checks and all(c.passed for c in result.checks):
        result.notes.insert(0, "every check passed, but your notebook does not run cleanly from top "
                               "to bottom (see the errors below): fix them before you hand it in")
    return result


def _run_student_cells(cells: list[StudentCell], check_ids: set[str], kernel: StudentKernel) -> list[str]:
    """Run every code cell of the submission except check cells; what went wrong, per cell
    (an unchanged stub raising NotImplementedError is not an error)."""
    errors: list[str] = []
    for number, cell in enumerate(cells, start=1):
        if cell.id in check_ids or (cell.graded and cell.id is None) or not cell.source.strip():
            continue
        try:
            failure = kernel.run_cell(cell.source)
        except KernelGone as e:
            errors.append(f"code cell {number} ({cell.id or 'no id'}): {e}")
            break
        if failure and failure[0] != "NotImplementedError":
            where = f"code cell {number} ({cell.id or 'no id'})"
            errors.append(f"{where} raised {failure[0]}: {failure[1][:300]}")
    return errors
