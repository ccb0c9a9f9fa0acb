"""Grade one submission without trusting it (DESIGN.md, "Grading trust model").

How an exercise declares what is graded: by the cells of its notebook in solutions/.

- **solution cells** (nbgrader ``solution: true`` or tag ``solution``) belong to the student.
  The names they bind at top level (functions, classes, variables) are what the grader
  evaluates.
- **check cells** (nbgrader ``grade: true`` with ``points``) are the grader's. They run in
  the grader's own process, with their hidden tests, exactly as written in solutions/.
  A call of a student function inside a check is sent to the student's kernel with the
  check's arguments, and only the plain result (numbers, tensors, lists...) comes back
  (see :mod:`gradflow_lessons.grader_wire`). The check helpers then compare it here.
- **other code cells** (imports, seeding, data) run in both places. Cells tagged
  ``grader-skip`` run only in the student's kernel (a long demo the checks do not need).

The student's notebook therefore only ever provides the code of its non-check cells: it
runs, check cells removed, in a fresh kernel with a time and a memory limit, in an empty
scratch directory, and the hidden tests are never written to disk nor sent to it.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gradflow_lessons.build import strip_markers
from gradflow_lessons.grader_kernel import KernelGone, StudentKernel
from gradflow_lessons.grader_wire import REFERENCE_MODULE, StudentCodeError

MAX_FILE_BYTES = 50 * 2**20

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
    "not-attempted": "every check failed on an unchanged stub (NotImplementedError)",
    "errors": "a cell raised an error; grading went on",
    "ok": "everything ran",
}


# --------------------------------------------------------------------------- exercises


@dataclass
class ReferenceCell:
    id: str
    kind: str  # "setup", "solution", "check", "skip"
    source: str
    points: float = 0.0
    names: tuple[str, ...] = ()


def _python_source(source: str) -> str:
    """IPython syntax (``%magic``, ``!cmd``) rewritten as plain Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def bound_names(source: str) -> tuple[str, ...]:
    """Names a cell binds at top level: ``def``, ``class`` and assignments."""
    names: list[str] = []
    try:
        tree = ast.parse(_python_source(source))
    except SyntaxError:
        return ()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return tuple(dict.fromkeys(names))


@dataclass
class Exercise:
    """A reference notebook (from solutions/ to grade, from exercises/ to self-check)."""

    name: str
    path: Path
    cells: list[ReferenceCell]

    @property
    def checks(self) -> list[ReferenceCell]:
        return [c for c in self.cells if c.kind == "check"]

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.checks)

    @classmethod
    def load(cls, path: Path) -> Exercise:
        """Read ``path``; raises ValueError naming the fix when it has no graded check."""
        import nbformat

        nb = nbformat.read(path, as_version=4)
        cells = []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            meta = cell.metadata.get("nbgrader", {})
            tags = cell.metadata.get("tags", [])
            cell_id = cell.get("id") or f"cell-{index}"
            if "grader-skip" in tags:
                kind = "skip"
            elif meta.get("solution") or "solution" in tags:
                kind = "solution"
            elif meta.get("grade"):
                kind = "check"
            else:
                kind = "setup"
            names = bound_names(cell.source) if kind == "solution" else ()
            cells.append(ReferenceCell(cell_id, kind, cell.source, float(meta.get("points", 0)), names))
        exercise = cls(path.stem, path, cells)
        if not exercise.checks:
            raise ValueError(f"{path}: no graded check cell (nbgrader grade: true with points)")
        return exercise


# --------------------------------------------------------------------------- submissions


class SubmissionError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class StudentCell:
    id: str | None
    source: str
    tags: tuple[str, ...] = ()
    graded: bool = False


def read_submission(path: Path) -> list[StudentCell]:
    """The code cells of a submitted notebook, read leniently (only sources matter).

    Raises:
        SubmissionError: with status ``empty`` or ``invalid`` and the reason.
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SubmissionError("invalid", f"file is {size / 2**20:.0f} MB; clear the outputs and resubmit")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("invalid", "not UTF-8 text, so not a notebook") from None
    except OSError as e:
        raise SubmissionError("invalid", f"cannot read the file ({e.strerror})") from None
    if not text.strip():
        raise SubmissionError("empty", "the file is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SubmissionError("invalid", f"not valid notebook JSON ({e})") from None
    if isinstance(data, dict) and "worksheets" in data:  # nbformat 3
        import nbformat

        try:
            data = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
        except Exception as e:  # noqa: BLE001
            raise SubmissionError("invalid", f"an old notebook that cannot be converted ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise SubmissionError("invalid", "JSON without a list of cells, so not a notebook")
    cells = []
    for raw in data["cells"]:
        if not isinstance(raw, dict) or raw.get("cell_type") != "code":
            continue
        source = raw.get("source", "")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        if not isinstance(source, str):
            continue
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        nbgrader = meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else {}
        tags = tuple(t for t in meta.get("tags", []) if isinstance(t, str)) if isinstance(
            meta.get("tags"), list) else ()
        cell_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        cells.append(StudentCell(cell_id, source, tags, nbgrader.get("grade") is True))
    if not any(c.source.strip() for c in cells):
        raise SubmissionError("empty", "the notebook has no code")
    return cells


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


def run_checks(exercise: Exercise, kernel: StudentKernel) -> tuple[list[CheckResult], list[str]]:
    """Run the exercise's own cells in this process, student names bound to the kernel.

    Returns the result of every check cell and notes on set-up cells that failed."""
    namespace: dict = {"__name__": REFERENCE_MODULE, "__builtins__": builtins}
    namespace["get_ipython"] = lambda: _Shell(namespace)
    results, notes = [], []
    last = max(i for i, c in enumerate(exercise.cells) if c.kind == "check")
    with _grader_state_kept():
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
                     label: str | None = None, run_as: str = "") -> Result:
    """Grade ``path`` against ``exercise``; always returns a Result (never raises for
    anything the submission does)."""
    start = time.perf_counter()
    result = Result(label or str(path), exercise.name, 0.0, exercise.max_score, "ok")
    try:
        cells = read_submission(path)
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
    kernel = StudentKernel(timeout, memory_mb, run_as)
    try:
        try:
            kernel.start()
        except Exception as e:  # noqa: BLE001 - e.g. a memory limit too small for Python
            result.status = "grader-error"
            result.notes.append(f"could not start a kernel: {type(e).__name__}: {e}")
            return result
        cell_errors = _run_student_cells(cells, check_ids, kernel)
        result.checks, setup_notes = run_checks(exercise, kernel)
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
