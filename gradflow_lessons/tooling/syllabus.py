"""The course map: one entry per lesson, the single source for the index notebook and README.

    python -m gradflow_lessons.syllabus             # prints the README's course-map table
    python -m gradflow_lessons.syllabus --estimate  # stored minutes beside an estimate from the notebooks

Minutes are a careful learner's time, estimated from the committed notebooks (``estimate_minutes``):
every word of prose and code read at 150 words per minute, 2.5 minutes per figure (run the
cell, read the figure), 1 minute per other cell that prints a result, and for the exercise its
words (check cells are run, not read) plus 5 minutes per point of its graded checks; each part
rounded up to 5 minutes. The stored values are that estimate when the lesson last changed;
``--estimate`` shows where they drifted.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

WORDS_PER_MINUTE = 150  # careful technical reading, prose and code alike
MINUTES_PER_FIGURE = 2.5  # run the cell, look at the figure
MINUTES_PER_RESULT = 1.0  # run a cell that prints a result
MINUTES_PER_POINT = 5.0  # per nbgrader point of a graded check: write the code, run the check, fix it


@dataclass(frozen=True)
class Lesson:
    number: str
    title: str
    notebook: str  # file name in notebooks/
    objectives: str
    minutes: int  # the whole lesson, its exercise included
    exercise: str = ""  # file name in exercises/, if the lesson has one
    exercise_minutes: int = 0  # the exercise's share of ``minutes``

    def is_written(self, root: Path) -> bool:
        return (root / "notebooks" / self.notebook).is_file()


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "Course index", "00_course_index.ipynb",
           "How the course works; check your environment; find every lesson", 10),
    Lesson("01", "Gradient dynamics", "01_gradient_dynamics.ipynb",
           "Backprop as a product of Jacobians, verified against autograd; why that product "
           "shrinks or grows geometrically with depth", 60, "01_warmup_jacobians.ipynb", exercise_minutes=40),
    Lesson("02", "Vanishing gradients", "02_vanishing_gradients.ipynb",
           "sigma' <= 0.25 so 0.25^L; activations and depth measured live; saturation; "
           "Xavier vs Kaiming init; dead ReLUs", 95, "02_gradient_flow_experiment.ipynb",
           exercise_minutes=40),
    Lesson("03", "Exploding gradients", "03_exploding_gradients.ipynb",
           "Spectral radius > 1 in recurrences and deep nets; RNN gradients over time; what an "
           "explosion looks like in training", 30),
    Lesson("04", "Gradient clipping", "04_gradient_clipping.ipynb",
           "Clip by value vs by norm; choosing the threshold from recorded norms; what too "
           "aggressive clipping does; AGC", 95, "04_clip_by_norm.ipynb", exercise_minutes=45),
    Lesson("05", "Monitoring gradient flow", "05_monitoring_gradient_flow.ipynb",
           "Hooks by hand, then GradientMonitor; reading gradient-flow plots of healthy and "
           "broken networks", 50),
    Lesson("06", "Residual and dense connections", "06_residual_and_dense.ipynb",
           "Why I + dF/dx keeps gradients alive; DenseNet paths; when skips are not enough "
           "and how scaling or normalisation fixes it", 40),
    Lesson("07", "Gradient noise scale", "07_gradient_noise_scale.ipynb",
           "Per-sample gradients and their covariance; B_simple; small- vs large-batch regime",
           100, "07_gradient_noise_scale.ipynb", exercise_minutes=50),
    Lesson("08", "Hessian analysis", "08_hessian_analysis.ipynb",
           "Hessian-vector products; power iteration and Lanczos; trace; spectrum; edge of "
           "stability", 35),
    Lesson("09", "Diagnose and fix", "09_diagnose_and_fix.ipynb",
           "Detect vanishing, exploding, dead, saturated and non-finite gradients (and a too-high "
           "learning rate) and apply the prescribed fix", 115, "09_gradient_dashboard.ipynb",
           exercise_minutes=75),
    Lesson("10", "Interview deep-dive", "10_interview_questions.ipynb",
           "Sigmoid vs ReLU and dead ReLUs; why skips work and when they do not; choosing a "
           "clipping threshold, each backed by an experiment", 60),
    Lesson("11a", "Gates and normalisation", "11a_gates_and_normalisation.ipynb",
           "The LSTM cell state as a residual path through time; vanilla RNN vs GRU vs LSTM on long-range "
           "memory; what normalisation does to the gradient of a deep network without skips", 30),
    Lesson("11b", "Transformers and real data", "11b_transformers_and_real_data.ipynb",
           "Pre-norm vs post-norm Transformers and warm-up; attention entropy as a saturation diagnostic; "
           "the first checks on real data (initial loss, symmetry breaking, a CNN's gradient flow)", 25),
    Lesson("12", "Mixed precision", "12_mixed_precision.ipynb",
           "float32, float16 and bfloat16 on the number line; which gradients underflow, layer by layer; "
           "loss scaling by hand and with GradScaler; norms and clipping in low precision", 125,
           "12_loss_scaling.ipynb", exercise_minutes=70),
    Lesson("13", "The gradient clinic", "13_gradient_clinic.ipynb",
           "A method for a run that does not converge: examine with the tools, name the illness from a "
           "number, treat minimally, prove it on fresh seeds", 120, "13_gradient_clinic.ipynb",
           exercise_minutes=110),
)


def _words(nb) -> int:
    """Words of prose and code a learner reads; an exercise's check cells are run, not read."""
    cells = [cell for cell in nb.cells
             if cell.cell_type in ("markdown", "code") and "check" not in cell.metadata.get("tags", [])]
    return sum(len(re.findall(r"\S+", cell.source)) for cell in cells)


def _up_to_5(minutes: float) -> int:
    return 5 * math.ceil(minutes / 5 - 1e-9)


def estimate_minutes(root: Path, lesson: Lesson) -> tuple[int, int]:
    """(lesson, exercise) minutes from the committed notebooks, each rounded up to 5 (see the module doc)."""
    import nbformat  # the course's dependency; the toolkit never imports this module

    nb = nbformat.read(root / "notebooks" / lesson.notebook, as_version=4)
    figures = results = 0
    for cell in nb.cells:
        outputs = cell.get("outputs", []) if cell.cell_type == "code" else []
        if any("image/png" in o.get("data", {}) for o in outputs):
            figures += 1
        elif outputs:
            results += 1
    reading = _words(nb) / WORDS_PER_MINUTE + MINUTES_PER_FIGURE * figures + MINUTES_PER_RESULT * results
    exercise = 0
    if lesson.exercise and (root / "exercises" / lesson.exercise).is_file():
        ex = nbformat.read(root / "exercises" / lesson.exercise, as_version=4)
        checks = [c for c in ex.cells if "check" in c.metadata.get("tags", [])]
        points = sum(c.metadata.get("nbgrader", {}).get("points", 2) for c in checks)  # the effort asked
        exercise = _up_to_5(_words(ex) / WORDS_PER_MINUTE + MINUTES_PER_POINT * points)
    return _up_to_5(reading), exercise


def markdown_table(root: Path | None = None, links: bool = False, site: bool = False) -> str:
    """The course map as a markdown table.

    Args:
        root: the course checkout; lessons not written yet are marked "(in preparation)".
        links: link each written lesson and exercise (relative to notebooks/).
        site: link them as the course site does (lesson pages under notebooks/, each
            exercise to its solution page, which offers the exercise for download).
    """
    rows = [
        "| # | lesson | you will learn to | min | exercise |",
        "|---|---|---|---|---|",
    ]
    for lesson in LESSONS:
        title = lesson.title
        written = root is None or lesson.is_written(root)
        if (links or site) and written:
            title = f"[{title}]({'notebooks/' if site else ''}{lesson.notebook})"
        if not written:
            title += " (in preparation)"
        exercise = lesson.exercise.removesuffix(".ipynb")
        handed_out = root is not None and (root / "exercises" / lesson.exercise).is_file()
        if (links or site) and exercise and handed_out:
            exercise = f"[{exercise}]({'solutions/' if site else '../exercises/'}{lesson.exercise})"
        minutes = str(lesson.minutes)
        if lesson.exercise_minutes:
            minutes += f" ({lesson.exercise_minutes} exercise)"
        rows.append(f"| {lesson.number} | {title} | {lesson.objectives} | {minutes} | {exercise} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if "--estimate" in sys.argv:
        here = Path.cwd()
        for lesson in LESSONS:
            if lesson.is_written(here):
                reading, exercise = estimate_minutes(here, lesson)
                print(f"{lesson.number}: stored {lesson.minutes} ({lesson.exercise_minutes} exercise), "
                      f"estimate {reading + exercise} ({exercise} exercise)")
    else:
        print(markdown_table())
