"""Grading a class in parallel: N correct submissions of exercise 01, --jobs 1 vs --jobs J.

    python benchmarks/grading.py              # 30 submissions, jobs 1 vs 2, in a sandbox
    python benchmarks/grading.py --n 10 --jobs 4 --sandbox none

Both runs grade the same folder in this one process, one after the other, and must give the
same CSV; the ratio of their wall-clock times is what --jobs buys on this machine. Most of a
submission's time is its kernel starting (Python, torch), which parallelises well; the
checks themselves are a small part.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradflow_lessons.grading.cli import grade  # noqa: E402
from gradflow_lessons.grading.exercise import Exercise  # noqa: E402

NAME = "01_warmup_jacobians"


def solved_exercise() -> nbformat.NotebookNode:
    """exercises/01 with the solution cells filled in, as a student hands it in."""
    reference = nbformat.read(ROOT / "solutions" / f"{NAME}.ipynb", as_version=4)
    solution = {c.id: c.source for c in reference.cells}
    nb = nbformat.read(ROOT / "exercises" / f"{NAME}.ipynb", as_version=4)
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            cell.source = solution[cell.id]
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="submissions (default 30)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs of the parallel run (default 2)")
    parser.add_argument("--sandbox", default="bwrap", choices=("bwrap", "none"))
    args = parser.parse_args()
    exercise = Exercise.load(ROOT / "solutions" / f"{NAME}.ipynb")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        for i in range(args.n):
            nbformat.write(solved_exercise(), folder / f"student{i:03d}_{NAME}.ipynb")
        seconds, csvs = {}, {}
        for jobs in (1, args.jobs):
            out = Path(tmp) / f"jobs{jobs}" / "grades.csv"
            start = time.perf_counter()
            results = grade([folder], {NAME: exercise}, out=out, timeout=60, sandbox=args.sandbox,
                            jobs=jobs, progress=lambda line: None)
            seconds[jobs] = time.perf_counter() - start
            csvs[jobs] = out.read_text()
            full = sum(r.score == r.max_score for r in results)
            print(f"--jobs {jobs}: {args.n} submissions in {seconds[jobs]:.0f} s "
                  f"({seconds[jobs] / args.n:.1f} s each), {full}/{args.n} full marks", flush=True)
    same = "identical" if csvs[1] == csvs[args.jobs] else "DIFFERENT"
    print(f"--jobs {args.jobs} is {seconds[1] / seconds[args.jobs]:.2f}x as fast as --jobs 1 "
          f"({os.cpu_count()} cores, sandbox {args.sandbox}); the two CSVs are {same}")


if __name__ == "__main__":
    main()
