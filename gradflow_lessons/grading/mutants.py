"""Mutation testing of an exercise's checks: do they catch a solution with one thing wrong?

    python -m gradflow_lessons.grading.mutants solutions/01_warmup_jacobians.ipynb
    python -m gradflow_lessons.grading.mutants solutions/*.ipynb --limit 5     (CI's fast subset)

Each statement between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` is mutated, one change
per mutant: an operator (``+``/``-``, ``*``/``/``, ``@``/``*``, ``**``), a comparison, a
number, a ``True``/``False``, a unary minus, ``reversed(x)`` -> ``x``, a returned value ->
``None``, a removed statement. Each mutant runs with the exercise's set-up cells and its
check cells, hidden tests included, in a fresh Python process with a timeout; it is
*killed* when a check fails. The score is killed / mutants; a survivor is either a gap in
the checks or an equivalent mutant (same behaviour), which the report lists for a reader
to judge.

Why not mutmut or cosmic-ray: both mutate the files of an importable package and run a
test command per mutant; here the code under test is a notebook cell and the tests are
check cells, so either would need the cells extracted to a module and the checks wrapped
as a test suite. The mutator below is 60 lines of ``ast`` on the cell itself.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gradflow_lessons.grading.exercise import Exercise
from gradflow_lessons.grading.markers import SOLUTION_MARKERS

_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
          ast.MatMult: ast.Mult, ast.Pow: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
          ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
          ast.And: ast.Or, ast.Or: ast.And}


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


def _sites(tree: ast.AST, regions: list[tuple[int, int]]):
    """(node, description, apply) for every mutation inside a solution region."""
    inside = lambda node: any(a < getattr(node, "lineno", 0) < b for a, b in regions)  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.For | ast.While | ast.If | ast.With):
            for i, stmt in enumerate(node.body):  # a statement in the region, removed
                if len(node.body) > 1 and inside(stmt) and not isinstance(stmt, ast.Return):
                    yield node, f"remove line {stmt.lineno}", \
                        lambda n, i=i: n.body.__setitem__(i, ast.Pass())
        if not inside(node):
            continue
        if isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in _SWAPS:
            new = _SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__} -> {new.__name__}", \
                lambda n, new=new: setattr(n, "op", new())
        elif isinstance(node, ast.AugAssign) and type(node.op) in _SWAPS:
            new = _SWAPS[type(node.op)]
            yield node, f"{type(node.op).__name__}= -> {new.__name__}=", \
                lambda n, new=new: setattr(n, "op", new())
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _SWAPS:
                    new = _SWAPS[type(op)]
                    yield node, f"{type(op).__name__} -> {new.__name__}", \
                        lambda n, i=i, new=new: n.ops.__setitem__(i, new())
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value = node.value
            new_value = 1 if value == 0 else (0 if value == 1 else value + 1)
            yield node, f"{value!r} -> {new_value!r}", lambda n, v=new_value: setattr(n, "value", v)
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            yield node, f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield node, "drop unary minus", lambda n: setattr(n, "op", ast.UAdd())
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "reversed":
            yield node, "reversed(x) -> x", lambda n: (setattr(n.func, "id", "list"))
        elif isinstance(node, ast.Return) and node.value is not None:
            yield node, "return None", lambda n: setattr(n, "value", ast.Constant(None))


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
            node, change, apply = list(_sites(mutated, regions))[index]
            apply(node)
            source = ast.unparse(ast.fix_missing_locations(mutated))
            if source != original:
                found.append(Mutant(cell.id, getattr(node, "lineno", 0), change, source))
    found.sort(key=lambda m: (m.cell_id, m.line))
    return found


_RUNNER = """
import builtins, contextlib, io, json, sys, warnings
from gradflow_lessons.grading.exercise import _python_source
from gradflow_lessons.grading.session import _Shell
cells = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__", "__builtins__": builtins}
namespace["get_ipython"] = lambda: _Shell(namespace)
failed = []
for kind, cell_id, source in cells:
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \\
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(_python_source(source), cell_id, "exec"), namespace)
    except BaseException as e:
        if kind == "check":
            failed.append(cell_id)
print(json.dumps(failed))
"""


def run_mutant(exercise: Exercise, mutant: Mutant | None, timeout: float = 120) -> list[str] | None:
    """The check cells that fail with ``mutant`` in place (None: the original); None if it
    ran past ``timeout`` (a hang is caught by the grader's timeout: killed)."""
    cells = []
    last = max(i for i, c in enumerate(exercise.cells) if c.kind == "check")
    for cell in exercise.cells[: last + 1]:
        if cell.kind == "skip":
            continue
        source = mutant.source if mutant is not None and cell.id == mutant.cell_id else cell.source
        cells.append((cell.kind, f"<{cell.id}>", source))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cells, f)
    env = {**os.environ, "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([sys.executable, "-c", _RUNNER, f.name], capture_output=True, text=True,
                              timeout=timeout, cwd=exercise.path.parent, env=env)
    except subprocess.TimeoutExpired:
        return None
    finally:
        Path(f.name).unlink(missing_ok=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return ["<the runner crashed>"]


def mutation_report(exercise: Exercise, limit: int | None = None, timeout: float = 120,
                    progress=lambda line: None) -> list[Mutant]:
    """Run the mutants (the first ``limit``, spread over the solution, if given); each gets
    ``killed`` set. Raises RuntimeError if the original solution fails a check."""
    failing = run_mutant(exercise, None, timeout)
    if failing:
        raise RuntimeError(f"{exercise.name}: the solution itself fails {failing}; fix it first")
    chosen = mutants(exercise)
    if limit is not None and len(chosen) > limit:
        step = len(chosen) / limit
        chosen = [chosen[int(i * step)] for i in range(limit)]
    for number, mutant in enumerate(chosen, start=1):
        failed = run_mutant(exercise, mutant, timeout)
        mutant.killed = failed is None or bool(failed)
        progress(f"  [{number}/{len(chosen)}] {mutant.cell_id}:{mutant.line} {mutant.change}: "
                 f"{'killed' if mutant.killed else 'SURVIVED'}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradflow_lessons.grading.mutants",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("solutions", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, help="at most this many mutants per exercise, spread out")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per mutant (default 120)")
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 below this score (0-1)")
    args = parser.parse_args(argv)
    worst = 1.0
    for path in args.solutions:
        exercise = Exercise.load(path)
        print(f"{exercise.name}:", flush=True)
        done = mutation_report(exercise, args.limit, args.timeout, lambda line: print(line, flush=True))
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
