"""The grader: grade a class of exercise notebooks without trusting them.

    gradflow-grade submissions/ --out grades.csv      (also python -m gradflow_lessons.grading)

- ``cli``: the command (a CSV row per submission, JSON, feedback files, the self-check);
- ``exercise``: what an exercise grades, and a submission read into memory;
- ``session``: one submission graded: student cells in a kernel, checks here;
- ``kernel``: the sealed student kernel; ``wire``: plain values across to the grader;
- ``markers``: nbgrader's solution/hidden-test markers and the exercises they generate.

This file imports nothing: the student kernel imports ``grading.wire`` through it, and
``from gradflow_lessons.grading import check_close`` (the old home of the checks, now
:mod:`gradflow_lessons.checks`) loads the checks alone.
"""

from __future__ import annotations

_CHECKS = ("PASS", "CheckFailed", "as_tensor", "check_close", "check_shape", "check_true")


def __getattr__(name: str):
    if name in _CHECKS:
        from gradflow_lessons import checks

        return getattr(checks, name)
    if name == "main":
        from gradflow_lessons.grading.cli import main

        return main
    raise AttributeError(f"module 'gradflow_lessons.grading' has no attribute {name!r}")
