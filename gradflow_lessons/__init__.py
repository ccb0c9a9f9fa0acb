"""gradflow_lessons: the small library behind the gradient-flow course.

One module per topic (see DESIGN.md): ``models`` and ``data`` build the networks and
data sets every lesson uses, ``env`` makes runs reproducible, ``build`` executes the
notebooks, ``grading`` holds the exercise checks.

This file imports nothing heavy on purpose: ``python -m gradflow_lessons.course`` runs
before torch is installed.
"""

__version__ = "0.2.0"
