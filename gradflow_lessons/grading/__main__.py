import sys

from gradflow_lessons.grading.cli import main

sys.exit(main())
