"""nbgrader's side of the course: a preprocessor that makes its release match ``exercises/``.

Used by the course's ``nbgrader_config.py`` (needs ``pip install nbgrader``). nbgrader keeps
notebook metadata in its release; ``exercises/`` drops the builder's source hash and the
widget state saved by the solution run (300 KB in exercise 09), and so does this.
"""

from __future__ import annotations

from nbgrader.preprocessors import NbGraderPreprocessor

from gradflow_lessons.grading.markers import DROPPED_METADATA


class StripNotebookMetadata(NbGraderPreprocessor):
    """Drop the notebook metadata that :func:`markers.generate_exercise` drops."""

    def preprocess(self, nb, resources):
        for key in DROPPED_METADATA:
            nb.metadata.pop(key, None)
        return nb, resources
