"""Shared test set-up: Agg figures, colour-free notebook kernels, paths."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from gradflow_lessons.tooling.build import kernel_environment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


_KERNEL_ENVIRONMENT = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    # nbval's kernels inherit this process's environment: give the test process the
    # builder's kernel environment for the session (on purpose), and undo it at the end.
    saved = dict(os.environ)
    _KERNEL_ENVIRONMENT.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
    os.environ.clear()
    os.environ.update(_KERNEL_ENVIRONMENT.enter_context(kernel_environment(saved)))
    # nbval colours its diffs unless told not to; logs (CI) are not terminals.
    if config.option.color == "auto" and not sys.stdout.isatty():
        config.option.color = "no"


def pytest_unconfigure(config: pytest.Config) -> None:
    _KERNEL_ENVIRONMENT.close()


@pytest.fixture(autouse=True)
def _no_environment_leaks():
    """Restore os.environ after every test: the nbval kernels that run later inherit it
    (a leaked MPLBACKEND=Agg once made every lesson figure disappear)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def root() -> Path:
    return ROOT


def run_notebook(nb, cwd: Path, allow_errors: bool = False, timeout: int = 300):
    """Execute ``nb`` (a NotebookNode, changed in place) in a fresh kernel; returns it."""
    from nbclient import NotebookClient

    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=allow_errors,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    ).execute()
    return nb


def graded_cells(nb):
    """The check cells that carry points (nbgrader's ``grade: true``)."""
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def error_of(cell):
    """The error output of an executed cell, or None."""
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update"]


def find_chromium() -> str:
    """Debian's chromium (never a downloaded browser), or GRADFLOW_CHROMIUM; skips the test
    where there is none, and fails it in CI."""
    path = os.environ.get("GRADFLOW_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    message = ("no Chromium found: install Debian's `chromium` package (the README test command "
               "does) or set GRADFLOW_CHROMIUM to a Chromium binary")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright, closed after the module's tests."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
    executable = find_chromium()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server or a process group the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: tiny models run as fast, and on a
    loaded machine a second thread only waits on the first."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is no package), to run it on a tiny model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tests/wrong_answers/NAME.py lists plausible wrong answers for solutions/NAME.ipynb, and may
# list CORRECT_ANSWERS: right answers written differently (a loop, a vectorised one, float64
# inside), each a (description, {cell id: source}) as well.
def cell_patcher(solution: Path):
    """``patched(cell_id, old, new)`` for the wrong-answer files of ``solution``: ``{cell_id: the
    solution cell's source with old, found there exactly once, replaced by new}``."""
    import nbformat

    sources = {cell.id: cell.source for cell in nbformat.read(solution, as_version=4).cells}

    def patched(cell_id: str, old: str, new: str) -> dict[str, str]:
        source = sources[cell_id]
        if source.count(old) != 1:
            raise ValueError(f"{cell_id} of {solution.name} no longer holds {old!r} once; "
                             "update this wrong answer")
        return {cell_id: source.replace(old, new)}

    return patched


def answers_for(stem: str) -> dict:
    """The globals of ``tests/wrong_answers/<stem>.py`` (``WRONG_ANSWERS``, ``CORRECT_ANSWERS``)."""
    import runpy

    return runpy.run_path(str(ROOT / "tests" / "wrong_answers" / f"{stem}.py"),
                          init_globals={"patched": cell_patcher(ROOT / "solutions" / f"{stem}.ipynb")})
