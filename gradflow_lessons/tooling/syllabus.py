"""The course map: one entry per lesson, the single source for the index notebook and README.

    python -m gradflow_lessons.syllabus     # prints the README's course-map table
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Lesson:
    number: str
    title: str
    notebook: str  # file name in notebooks/
    objectives: str
    minutes: int
    exercise: str = ""  # file name in exercises/, if the lesson has one

    def is_written(self, root: Path) -> bool:
        return (root / "notebooks" / self.notebook).is_file()


LESSONS: tuple[Lesson, ...] = (
    Lesson("00", "Course index", "00_course_index.ipynb",
           "How the course works; check your environment; find every lesson", 10),
    Lesson("01", "Gradient dynamics", "01_gradient_dynamics.ipynb",
           "Backprop as a product of Jacobians, verified against autograd; why that product "
           "shrinks or grows geometrically with depth", 25, "01_warmup_jacobians.ipynb"),
    Lesson("02", "Vanishing gradients", "02_vanishing_gradients.ipynb",
           "sigma' <= 0.25 so 0.25^L; activations and depth measured live; saturation; "
           "Xavier vs Kaiming init; dead ReLUs", 40, "02_gradient_flow_experiment.ipynb"),
    Lesson("03", "Exploding gradients", "03_exploding_gradients.ipynb",
           "Spectral radius > 1 in recurrences and deep nets; RNN gradients over time; what an "
           "explosion looks like in training", 30),
    Lesson("04", "Gradient clipping", "04_gradient_clipping.ipynb",
           "Clip by value vs by norm; choosing the threshold from recorded norms; what too "
           "aggressive clipping does; AGC", 30, "04_clip_by_norm.ipynb"),
    Lesson("05", "Monitoring gradient flow", "05_monitoring_gradient_flow.ipynb",
           "Hooks by hand, then GradientMonitor; reading gradient-flow plots of healthy and "
           "broken networks", 35),
    Lesson("06", "Residual and dense connections", "06_residual_and_dense.ipynb",
           "Why I + dF/dx keeps gradients alive; DenseNet paths; when skips are not enough "
           "and how scaling or normalisation fixes it", 35),
    Lesson("07", "Gradient noise scale", "07_gradient_noise_scale.ipynb",
           "Per-sample gradients and their covariance; B_simple; small- vs large-batch regime",
           40, "07_gradient_noise_scale.ipynb"),
    Lesson("08", "Hessian analysis", "08_hessian_analysis.ipynb",
           "Hessian-vector products; power iteration and Lanczos; trace; spectrum; edge of "
           "stability", 40),
    Lesson("09", "Diagnose and fix", "09_diagnose_and_fix.ipynb",
           "Detect vanishing, exploding, dead, saturated and non-finite gradients (and a too-high "
           "learning rate) and apply the prescribed fix", 40, "09_gradient_dashboard.ipynb"),
    Lesson("10", "Interview deep-dive", "10_interview_questions.ipynb",
           "Sigmoid vs ReLU and dead ReLUs; why skips work and when they do not; choosing a "
           "clipping threshold, each backed by an experiment", 30),
)


def markdown_table(root: Path | None = None, links: bool = False) -> str:
    """The course map as a markdown table.

    Args:
        root: the course checkout; lessons not written yet are marked "(in preparation)".
        links: link each written lesson and exercise (relative to notebooks/).
    """
    rows = [
        "| # | lesson | you will learn to | min | exercise |",
        "|---|---|---|---|---|",
    ]
    for lesson in LESSONS:
        title = lesson.title
        written = root is None or lesson.is_written(root)
        if links and written:
            title = f"[{title}]({lesson.notebook})"
        if not written:
            title += " (in preparation)"
        exercise = lesson.exercise.removesuffix(".ipynb")
        if links and exercise and root is not None and (root / "exercises" / lesson.exercise).is_file():
            exercise = f"[{exercise}](../exercises/{lesson.exercise})"
        rows.append(f"| {lesson.number} | {title} | {lesson.objectives} | {lesson.minutes} | {exercise} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
