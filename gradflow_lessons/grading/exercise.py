"""What an exercise grades, and what a submission holds (DESIGN.md, "Grading trust model").

How an exercise declares what is graded: by the cells of its notebook in solutions/.

- **solution cells** (nbgrader ``solution: true`` or tag ``solution``) belong to the student.
  The names they bind at top level (functions, classes, variables) are what the grader
  evaluates.
- **check cells** (nbgrader ``grade: true`` with ``points``) are the grader's. They run in
  the grader's own process, with their hidden tests, exactly as written in solutions/.
- **other code cells** (imports, seeding, data) run in both places. Cells tagged
  ``grader-skip`` run only in the student's kernel (a long demo the checks do not need).

A submission is read into memory, whole, before any student code runs
(:func:`read_submission`); nothing the student's code does to the file afterwards counts.
"""


from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 50 * 2**20

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

    def __reduce__(self):  # crosses to the worker processes of --jobs
        return SubmissionError, (self.status, str(self))


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


