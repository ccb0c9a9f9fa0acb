"""Build the course: execute every notebook in place and generate exercises/ from solutions/.

    python -m gradflow_lessons.build            # execute all, regenerate exercises
    python -m gradflow_lessons.build notebooks/01_gradient_dynamics.ipynb
    python -m gradflow_lessons.build --check    # fail, naming each file, if out of date

Stored outputs are therefore always what the code produced, and ``pytest --nbval``
proves they still are. A notebook is written back only when every cell ran: a failing
cell or a dead kernel leaves the file on disk exactly as it was.

Exercises follow nbgrader's markers:

- ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` becomes one ``raise NotImplementedError``
  line at the marker's indentation (in markdown cells, a "write your answer" line);
- ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat

from gradflow_lessons.grading.markers import MarkerError, generate_exercise

NOTEBOOK_DIRS = ("notebooks", "solutions")
EXERCISE_DIR = "exercises"
CELL_TIMEOUT_S = 300
BUILD_METADATA_KEY = "gradflow"


class BuildError(RuntimeError):
    """A notebook could not be built; the message names the file, the cell and the fix."""


# --------------------------------------------------------------------------- exercises


def exercise_path(solution_path: Path) -> Path:
    return solution_path.parent.parent / EXERCISE_DIR / solution_path.name


def render(nb: nbformat.NotebookNode) -> str:
    """The exact text a notebook is stored as (what ``--check`` compares)."""
    return nbformat.writes(nb) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so an interrupted build loses nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a notebook is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_notebook(path: Path) -> nbformat.NotebookNode:
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # invalid JSON, wrong schema, not a file
        raise BuildError(
            f"{path}: not a readable notebook ({type(e).__name__}: {e}); restore it with "
            f"`git checkout -- {path}` or fix the JSON"
        ) from e


# --------------------------------------------------------------------------- execution


def source_hash(nb: nbformat.NotebookNode) -> str:
    """Hash of every cell's type and source: it changes when a cell is edited."""
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return h.hexdigest()[:16]


IPYTHON_CONFIG = (
    'c.InteractiveShell.colors = "nocolor"\n'
    "c.HistoryManager.enabled = False\n"
    "c.IPKernelApp.log_level = \"ERROR\"  # no TCP-encryption warning on every start\n"
)


@contextlib.contextmanager
def kernel_environment(base: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment for notebook kernels, as a dict to hand to the kernel manager.

    A colour-free IPython profile (readable failures in logs and nbval diffs) in a
    temporary folder that is removed on exit, whose startup file gives every inline
    figure alt text (:mod:`gradflow_lessons.tooling.figure_alt`), a fixed hash seed, and
    no ``MPLBACKEND`` (lessons draw inline figures). ``os.environ`` is read, never changed.

    Args:
        base: the environment to start from (default: a copy of ``os.environ``).
    """
    with tempfile.TemporaryDirectory(prefix="gradflow-ipython-") as ipython_dir:
        profile = Path(ipython_dir) / "profile_default"
        profile.mkdir()
        (profile / "ipython_kernel_config.py").write_text(IPYTHON_CONFIG)
        (profile / "ipython_config.py").write_text(IPYTHON_CONFIG)
        (profile / "startup").mkdir()
        (profile / "startup" / "00-gradflow-figure-alt.py").write_text(
            "__import__('gradflow_lessons.tooling.figure_alt').tooling.figure_alt.install()\n"
        )
        env = dict(os.environ if base is None else base)
        env.pop("MPLBACKEND", None)
        env.update(
            IPYTHONDIR=ipython_dir,
            PYTHONHASHSEED="0",
            PYDEVD_DISABLE_FILE_VALIDATION="1",  # silences a debugpy warning on stderr
        )
        yield env


@dataclass
class Executed:
    path: Path
    seconds: float
    cells: int


def execute_notebook(path: Path, cell_timeout: int = CELL_TIMEOUT_S) -> Executed:
    """Run ``path`` top to bottom in a fresh kernel and store its outputs in place.

    Raises:
        BuildError: a cell raised, timed out, or the kernel died. The file is untouched.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = read_notebook(path)
    current = {"index": -1}

    def on_cell_start(cell, cell_index):  # nbclient hook
        current["index"] = cell_index

    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        record_timing=False,  # no timestamps: a rebuild changes only what the code changed
        resources={"metadata": {"path": str(path.parent.resolve())}},
        on_cell_start=on_cell_start,
    )
    start = time.perf_counter()
    unchanged = "the notebook on disk is unchanged"
    try:
        with kernel_environment() as env:
            client.execute(env=env)
    except CellExecutionError as e:
        raise BuildError(
            f"{path}: cell {current['index']} raised {e.ename}: {e.evalue}\n"
            f"  {unchanged}; open it in JupyterLab, fix the cell and build again."
        ) from None
    except CellTimeoutError:
        raise BuildError(
            f"{path}: cell {current['index']} ran longer than {cell_timeout} s; {unchanged}. "
            "Lessons must run in under a minute: make the experiment smaller."
        ) from None
    except DeadKernelError:
        raise BuildError(
            f"{path}: the kernel died while running cell {current['index']} (out of memory, "
            f"or a crash in native code); {unchanged}. Run that cell in JupyterLab to see it."
        ) from None
    seconds = time.perf_counter() - start
    nb.metadata[BUILD_METADATA_KEY] = {"source_hash": source_hash(nb)}
    write_atomically(path, render(nb))
    return Executed(path, seconds, sum(c.cell_type == "code" for c in nb.cells))


# --------------------------------------------------------------------------- checking


def notebook_problems(path: Path) -> list[str]:
    """Why ``path`` is not a freshly built notebook (empty when it is)."""
    try:
        nb = read_notebook(path)
    except (BuildError, MarkerError) as e:
        return [str(e)]
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    if any(n is None for n in counts) or counts != list(range(1, len(code) + 1)):
        problems.append(f"{path}: not executed top to bottom in one kernel")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs):
            problems.append(f"{path}: cell {index} has an error output")
    stored = nb.metadata.get(BUILD_METADATA_KEY, {}).get("source_hash")
    if stored != source_hash(nb):
        problems.append(f"{path}: cells were edited after the notebook was last built")
    return problems


def exercise_problems(solution_path: Path) -> list[str]:
    """Why the exercise generated from ``solution_path`` differs from the one on disk."""
    target = exercise_path(solution_path)
    try:
        expected = render(generate_exercise(read_notebook(solution_path), str(solution_path)))
    except (BuildError, MarkerError) as e:
        return [str(e)]
    if not target.exists():
        return [f"{target}: missing (it is generated from {solution_path})"]
    if target.read_text(encoding="utf-8") != expected:
        return [f"{target}: differs from what {solution_path} generates (never edit it by hand)"]
    return []


def course_notebooks(root: Path) -> list[Path]:
    return [p for d in NOTEBOOK_DIRS for p in sorted((root / d).glob("*.ipynb"))]


def check(root: Path) -> list[str]:
    """Every reason the built course in ``root`` is out of date."""
    problems: list[str] = []
    for path in course_notebooks(root):
        problems += notebook_problems(path)
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    for path in solutions:
        problems += exercise_problems(path)
    names = {p.name for p in solutions}
    for path in sorted((root / EXERCISE_DIR).glob("*.ipynb")):
        if path.name not in names:
            problems.append(f"{path}: has no source in solutions/; delete it or add the solution")
    return problems


# --------------------------------------------------------------------------- command


def build(root: Path, paths: list[Path], cell_timeout: int = CELL_TIMEOUT_S) -> list[str]:
    """Execute ``paths`` (every course notebook when empty) and regenerate exercises.

    Prints one progress line per notebook; returns the failures (one line each) and goes
    on after a failure, so one broken lesson does not hide the state of the others."""
    targets = paths or course_notebooks(root)
    failures = []
    total_start = time.perf_counter()
    for number, path in enumerate(targets, start=1):
        label = f"[{number}/{len(targets)}] {path.relative_to(root) if path.is_absolute() else path}"
        print(f"{label} ...", end=" ", flush=True)
        try:
            done = execute_notebook(path, cell_timeout)
            print(f"{done.cells} cells in {done.seconds:.1f} s", flush=True)
        except (BuildError, MarkerError) as e:
            print("FAILED", flush=True)
            failures.append(str(e))
            continue
    for solution in sorted((root / "solutions").glob("*.ipynb")):
        if paths and solution.resolve() not in {p.resolve() for p in paths}:
            continue
        try:
            exercise = generate_exercise(read_notebook(solution), str(solution))
            write_atomically(exercise_path(solution), render(exercise))
            print(f"generated {exercise_path(solution).relative_to(root)}", flush=True)
        except (BuildError, MarkerError) as e:
            failures.append(str(e))
    print(f"built in {time.perf_counter() - total_start:.0f} s", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradflow_lessons.build",
        description="Execute the course notebooks in place and generate exercises/.",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to build (default: all)")
    parser.add_argument("--check", action="store_true", help="only report what is out of date")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the course checkout")
    parser.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT_S, metavar="S")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "notebooks").is_dir():
        parser.error(f"{root} has no notebooks/ folder; run this from the course checkout or pass --root")
    for path in args.paths:
        if not path.is_file():
            parser.error(f"{path}: no such notebook")
    if args.check:
        problems = check(root)
        for line in problems:
            print(line)
        if problems:
            print(f"{len(problems)} problem(s): run `python -m gradflow_lessons.build` to rebuild.")
            return 1
        print("course is up to date")
        return 0
    failures = build(root, [p.resolve() for p in args.paths], args.cell_timeout)
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
