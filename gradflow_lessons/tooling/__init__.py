"""The course's own tooling: set-up (``setup``), the notebook build (``build``) and the
course map (``syllabus``). Learners and the toolkit never import it; ``course.py`` is the
README's thin entry point into it.
"""
