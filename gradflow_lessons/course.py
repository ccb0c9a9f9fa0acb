"""The course's two commands: set everything up, then open the course or run the tests.

    python3 -m gradflow_lessons.course start   # set up, open JupyterLab on the course index
    python3 -m gradflow_lessons.course test    # set up, run the whole test suite

Set-up makes a virtual environment in ``.venv`` (once) and installs the course into it
with its test extras (again only when ``pyproject.toml`` changed). This module uses the
standard library alone, since it runs before anything else is installed.
"""

from __future__ import annotations

import os
import sys

from gradflow_lessons.tooling.setup import INDEX, ROOT, ensure_browser, ensure_sandbox, run, say, setup


def start(extra: list[str]) -> int:
    python = setup()
    say(f"opening JupyterLab on {INDEX} (stop it with Ctrl+C) ...")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
        extra = ["--allow-root", *extra]  # containers often run as root; Jupyter refuses without it
    # Serve the whole checkout (lessons link to ../exercises) and land on the index.
    return run([python, "-m", "jupyter", "lab", f"--ServerApp.root_dir={ROOT}",
                f"--LabApp.default_url=/lab/tree/{INDEX.as_posix()}", *extra])


def test(extra: list[str]) -> int:
    python = setup()
    ensure_browser()
    ensure_sandbox()
    say("running the test suite: library tests, then every notebook under nbval ...")
    return run([python, "-m", "pytest", *extra])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"start": start, "test": test, "setup": lambda extra: bool(setup()) and 0}
    if not argv or argv[0] not in commands:
        print("usage:")
        print("  python3 -m gradflow_lessons.course start   # set up, open JupyterLab on the index")
        print("  python3 -m gradflow_lessons.course test    # set up, run the whole test suite")
        print("  python3 -m gradflow_lessons.course setup   # only set up")
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
