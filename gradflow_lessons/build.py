"""Moved to :mod:`gradflow_lessons.tooling.build`; this name keeps
``python -m gradflow_lessons.build`` and old imports working."""

import sys

from gradflow_lessons.tooling.build import *  # noqa: F403
from gradflow_lessons.tooling.build import main

if __name__ == "__main__":
    sys.exit(main())
