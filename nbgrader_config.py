"""nbgrader configuration for this course: its release matches exercises/.

Copy this file into your nbgrader course directory (next to source/), put each
solutions/NN_name.ipynb in source/<assignment>/, and run ``nbgrader generate_assignment``.
What it sets, and why (tests/test_nbgrader.py checks each):
- the same stubs as exercises/ (one ``raise NotImplementedError(...)`` line per solution
  region, "_Write your answer here._" in markdown answers);
- notebook metadata stripped as in exercises/ (no saved widget state, no build hash);
- hidden tests kept out of the feedback students get;
- a 60 s cell timeout, as gradflow-grade's default --timeout.
Read the README ("For instructors on nbgrader") for what nbgrader does not protect.
"""

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    GetGrades,
    IncludeHeaderFooter,
    InstantiateTests,
    LockCells,
    SaveCells,
)

from gradflow_lessons.grading.markers import CODE_STUB, MARKDOWN_STUB
from gradflow_lessons.grading.nbgrader_plugin import ShortTracebacks, StripNotebookMetadata

c = get_config()  # noqa: F821 - defined by nbgrader when it loads this file

c.ClearSolutions.code_stub = {"python": CODE_STUB}
c.ClearSolutions.text_stub = MARKDOWN_STUB
# nbgrader 0.9's default list, with the metadata stripped before the checksums are taken.
c.GenerateAssignment.preprocessors = [
    IncludeHeaderFooter, InstantiateTests, LockCells, ClearSolutions, ClearOutput,
    StripNotebookMetadata, CheckCellMetadata, ComputeChecksums, SaveCells, ClearHiddenTests,
    ClearMarkScheme, ComputeChecksums, CheckCellMetadata,
]
# Feedback is made from the autograded notebook, which holds the hidden tests again: in the
# check cells' sources, and in the lines their tracebacks quote.
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, ShortTracebacks, CSSHTMLHeaderPreprocessor]
c.Execute.timeout = 60
