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


class ShortTracebacks(NbGraderPreprocessor):
    """Feedback: an error in a check cell as ``ename: evalue`` only. IPython's traceback
    quotes the lines around the failing one, hidden tests included, which nbgrader's
    ``ClearHiddenTests`` (it clears sources, not outputs) leaves in the feedback."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources
