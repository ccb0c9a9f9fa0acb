"""Mutation testing of an exercise's checks: do they catch a solution with one thing wrong?

    python -m gradflow_lessons.grading.mutants solutions/01_warmup_jacobians.ipynb --seed 0
    python -m gradflow_lessons.grading.mutants solutions/*.ipynb --limit 5     (CI's fast subset)

Each statement between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is mutated, one change
per mutant: an operator (``+``/``-``, ``*``/``/``, ``@``/``*``, ``**``), a comparison
(``<``/``<=``, ``==``/``!=``, ``in``/``not in``), a number, a ``True``/``False``, a unary
minus or a ``not`` dropped, a slice bound dropped, ``min``/``max`` swapped, ``reversed(x)``
-> ``x``, a returned value -> ``None``, a removed statement (also in ``else`` branches).
``print(...)`` calls are left alone: what a solution prints (its evidence, its progress) is
for the learner, and no check reads it (a graded call's output stays in the student's
kernel). Each mutant runs with the exercise's set-up cells and its check cells, hidden
tests included, in a fresh process with a timeout; it is *killed* when a check fails. The
score is killed / mutants; a survivor is either a gap in the checks or an equivalent mutant
(same behaviour), which the report lists for a reader to judge.

The hidden tests draw from ``os.urandom``; here, as in the grader (``--seed``), from a
generator seeded by the run's seed, so every mutant meets the same hidden inputs as the
original solution and a rerun with the printed seed gives the same report.

Speed: one server process imports what the notebook imports (torch, the library) once, then
forks a fresh child per mutant, so a mutant costs its cells' run time, not torch's import.

Why not mutmut or cosmic-ray: both mutate the files of an importable package and run a
test command per mutant; here the code under test is a notebook cell and the tests are
check cells, so either would need the cells extracted to a module and the checks wrapped
as a test suite. The mutator below is 80 lines of ``ast`` on the cell itself.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gradflow_lessons.grading.exercise import Exercise
from gradflow_lessons.grading.markers import SOLUTION_MARKERS

_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.MatMult: ast.Mult, ast.Pow: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
          ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
          ast.In: ast.NotIn, ast.NotIn: ast.In, ast.And: ast.Or, ast.Or: ast.And}
_CALL_SWAPS = {"min": "max", "max": "min", "reversed": "list"}


@dataclass
class Mutant:
    cell_id: str
    line: int
    change: str
    source: str
    killed: bool | None = None


def _regions(source: str) -> list[tuple[int, int]]:
    """Line ranges (1-based, inclusive) between solution markers."""
    regions, start = [], None
    for number, line in enumerate(source.splitlines(), start=1):
        if line.strip() == SOLUTION_MARKERS[0]:
            start = number
        elif line.strip() == SOLUTION_MARKERS[1] and start is not None:
            regions.append((start, number))
            start = None
    return regions


def _is_print(node: ast.AST) -> bool:
    """A ``print(...)`` call: what it shows is for the learner, and no check reads it."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"


def _sites(tree: ast.AST, regions: list[tuple[int, int]]):
    """(node, line, description, apply) for every mutation inside a solution region."""
    printed = {id(n) for call in ast.walk(tree) if _is_print(call) for n in ast.walk(call)}
    inside = lambda node: id(node) not in printed and \
        any(a < getattr(node, "lineno", 0) < b for a, b in regions)  # noqa: E731
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):  # a statement in the region, removed
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for i, stmt in enumerate(block):
                if inside(stmt) and not isinstance(stmt, ast.Return | ast.Pass) and \
                        not (isinstance(stmt, ast.Expr) and _is_print(stmt.value)):
                    yield node, stmt.lineno, f"remove line {stmt.lineno}", \
                        lambda n, i=i, field=field: getattr(n, field).__setitem__(i, ast.Pass())
        if not inside(node):
            continue
        line = node.lineno
        if isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in _SWAPS:
            new = _SWAPS[type(node.op)]
            yield node, line, f"{type(node.op).__name__} -> {new.__name__}", \
                lambda n, new=new: setattr(n, "op", new())
        elif isinstance(node, ast.AugAssign) and type(node.op) in _SWAPS:
            new = _SWAPS[type(node.op)]
            yield node, line, f"{type(node.op).__name__}= -> {new.__name__}=", \
                lambda n, new=new: setattr(n, "op", new())
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _SWAPS:
                    new = _SWAPS[type(op)]
                    yield node, line, f"{type(op).__name__} -> {new.__name__}", \
                        lambda n, i=i, new=new: n.ops.__setitem__(i, new())
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value = node.value
            new_value = 1 if value == 0 else (0 if value == 1 else value + 1)
            yield node, line, f"{value!r} -> {new_value!r}", lambda n, v=new_value: setattr(n, "value", v)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node, line, f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield node, line, "drop unary minus", lambda n: setattr(n, "op", ast.UAdd())
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, line, "drop not", lambda n: setattr(n, "operand", ast.UnaryOp(ast.Not(), n.operand))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALL_SWAPS:
            new_name = _CALL_SWAPS[node.func.id]
            yield node, line, f"{node.func.id}(...) -> {new_name}(...)", \
                lambda n, new_name=new_name: setattr(n.func, "id", new_name)
        elif isinstance(node, ast.Return) and node.value is not None:
            yield node, line, "return None", lambda n: setattr(n, "value", ast.Constant(None))
        if isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                if getattr(node, bound) is not None:
                    yield node, line, f"drop the slice's {bound} bound", \
                        lambda n, bound=bound: setattr(n, bound, None)


def mutants(exercise: Exercise) -> list[Mutant]:
    """Every single-change mutant of the exercise's solution cells, in source order."""
    found: list[Mutant] = []
    for cell in exercise.cells:
        if cell.kind != "solution":
            continue
        regions = _regions(cell.source)
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        original = ast.unparse(tree)
        count = sum(1 for _ in _sites(tree, regions))
        for index in range(count):
            mutated = copy.deepcopy(tree)
            node, line, change, apply = list(_sites(mutated, regions))[index]
            apply(node)
            source = ast.unparse(ast.fix_missing_locations(mutated))
            if source != original:
                found.append(Mutant(cell.id, line, change, source))
    found.sort(key=lambda m: (m.cell_id, m.line))
    return found


# The server: imports once, then forks one child per mutant. Requests and replies are one
# JSON line each on stdin/stdout; a child reports through its own pipe, its stdout and
# stderr go to /dev/null, and it is killed at the deadline.
_SERVER = r"""
import builtins, contextlib, importlib, io, json, os, random, select, signal, sys, time, warnings
from gradflow_lessons.grading.exercise import _python_source
from gradflow_lessons.grading.session import _Shell
protocol = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # what an import prints is not a reply
for name in json.loads(sys.argv[1]):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(name)
    except Exception:
        pass
try:  # what torch and matplotlib load on first use (torch.func: sympy; a text: the fonts), once
    import torch
    from torch.func import jacrev
    jacrev(torch.sin)(torch.zeros(1))
    torch.nn.Linear(1, 1)(torch.zeros(1)).sum().backward()
    if "matplotlib" in sys.modules:
        from matplotlib.figure import Figure
        Figure().add_subplot().set_title("warm-up")
        Figure().savefig(io.BytesIO(), format="png")
except Exception:
    pass

def run(cells, seed, out):
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    draw = random.Random(seed)
    os.urandom = lambda n: draw.randbytes(n)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    namespace["get_ipython"] = lambda: _Shell(namespace)
    failed = []
    for kind, cell_id, source in cells:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(_python_source(source), cell_id, "exec"), namespace)
        except BaseException:
            if kind == "check":
                failed.append(cell_id)
    os.write(out, json.dumps(failed).encode())

for request in sys.stdin:
    request = json.loads(request)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            run(request["cells"], request["seed"], write)
        finally:
            os._exit(0)
    os.close(write)
    deadline, chunks, reply = time.monotonic() + request["timeout"], [], None
    while True:
        left = deadline - time.monotonic()
        ready = select.select([read, sys.stdin], [], [], max(left, 0))[0] if left > 0 else []
        if sys.stdin in ready:  # the caller went away (it sends nothing while it waits): stop
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            sys.exit(0)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            reply = {"timeout": True}
            break
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    if reply is None:
        try:
            reply = {"failed": json.loads(b"".join(chunks))}
        except ValueError:
            reply = {"failed": ["<the mutant's process crashed>"]}
    protocol.write(json.dumps(reply) + "\n")
    protocol.flush()
"""


def _imported_modules(exercise: Exercise) -> list[str]:
    """Top-level modules the exercise's cells import (the server imports them once)."""
    names = ["torch", "numpy", "gradflow_lessons.checks"]
    for cell in exercise.cells:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
    return list(dict.fromkeys(names))


class MutantRunner:
    """Runs an exercise's cells with one mutant in place, each in a fresh forked process.

    ``seed``: the hidden tests' ``os.urandom`` draws from ``random.Random(seed)``, the same
    for every mutant. A context manager: the server process ends on exit.
    """

    def __init__(self, exercise: Exercise, seed: int, timeout: float = 120):
        self.exercise, self.seed, self.timeout = exercise, seed, timeout
        env = {**os.environ, "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": ""}
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # a forked child cannot reuse threads
            env[name] = "1"
        self.server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(_imported_modules(exercise))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=exercise.path.parent, env=env)

    def __enter__(self) -> MutantRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.server.poll() is None:
            self.server.stdin.close()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def run(self, mutant: Mutant | None, seed: int | None = None) -> list[str] | None:
        """The check cells that fail with ``mutant`` in place (None: the original); None if it
        ran past the timeout (a hang is caught by the grader's timeout: killed). ``seed``: of
        the hidden inputs for this run only (default: the runner's)."""
        cells = []
        last = max(i for i, c in enumerate(self.exercise.cells) if c.kind == "check")
        for cell in self.exercise.cells[: last + 1]:
            if cell.kind == "skip":
                continue
            source = mutant.source if mutant is not None and cell.id == mutant.cell_id else cell.source
            cells.append((cell.kind, f"<{cell.id}>", source))
        request = {"cells": cells, "seed": self.seed if seed is None else seed, "timeout": self.timeout}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError("the mutation server stopped")
        reply = json.loads(line)
        return None if reply.get("timeout") else reply["failed"]


def run_mutant(exercise: Exercise, mutant: Mutant | None, timeout: float = 120,
               seed: int = 0) -> list[str] | None:
    """One run of :class:`MutantRunner` (for a single mutant)."""
    with MutantRunner(exercise, seed, timeout) as runner:
        return runner.run(mutant)


def mutation_report(exercise: Exercise, limit: int | None = None, timeout: float = 120,
                    progress=lambda line: None, seed: int | None = None) -> list[Mutant]:
    """Run the mutants (the first ``limit``, spread over the solution, if given); each gets
    ``killed`` set. ``seed``: of the hidden inputs (None: drawn fresh, and reported through
    ``progress``). Raises RuntimeError if the original solution fails a check."""
    if seed is None:
        seed = secrets.randbits(32)
        progress(f"  seed of the hidden inputs: {seed} (rerun with --seed {seed})")
    chosen = mutants(exercise)
    if limit is not None and len(chosen) > limit:
        step = len(chosen) / limit
        chosen = [chosen[int(i * step)] for i in range(limit)]
    with MutantRunner(exercise, seed, timeout) as runner:
        failing = runner.run(None)
        if failing is None or failing:
            raise RuntimeError(f"{exercise.name}: the solution itself fails {failing or 'in time'}; "
                               "fix it first")
        for number, mutant in enumerate(chosen, start=1):
            failed = runner.run(mutant)
            mutant.killed = failed is None or bool(failed)
            how = "timeout" if failed is None else ", ".join(failed)
            progress(f"  [{number}/{len(chosen)}] {mutant.cell_id}:{mutant.line} {mutant.change}: "
                     f"{'killed (' + how + ')' if mutant.killed else 'SURVIVED'}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradflow_lessons.grading.mutants",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("solutions", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, help="at most this many mutants per exercise, spread out")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per mutant (default 120)")
    parser.add_argument("--seed", type=int, help="seed of the hidden inputs (default: drawn fresh, printed)")
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 below this score (0-1)")
    args = parser.parse_args(argv)
    worst = 1.0
    for path in args.solutions:
        exercise = Exercise.load(path)
        print(f"{exercise.name}:", flush=True)
        done = mutation_report(exercise, args.limit, args.timeout, lambda line: print(line, flush=True),
                               seed=args.seed)
        killed = sum(m.killed for m in done)
        score = killed / len(done) if done else 1.0
        worst = min(worst, score)
        print(f"{exercise.name}: {killed}/{len(done)} mutants killed ({score:.0%})", flush=True)
        for m in done:
            if not m.killed:
                print(f"  survived: {m.cell_id} line {m.line}: {m.change}")
    return 0 if worst >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
