"""Moved to :mod:`gradflow_lessons.tooling.syllabus`; this name keeps old imports and
``python -m gradflow_lessons.syllabus`` working."""

import runpy

from gradflow_lessons.tooling.syllabus import *  # noqa: F403
from gradflow_lessons.tooling.syllabus import LESSONS, Lesson, markdown_table  # noqa: F401

if __name__ == "__main__":
    runpy.run_module("gradflow_lessons.tooling.syllabus", run_name="__main__")
