"""Set-up for the course's two commands: a virtual environment with the course in it,
and the Debian packages the tests need. Standard library only: it runs before anything
else is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
INDEX = Path("notebooks") / "00_course_index.ipynb"
MIN_PYTHON = (3, 10)


def say(message: str) -> None:
    print(f"[gradflow] {message}", flush=True)


def venv_python() -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV / scripts / ("python.exe" if os.name == "nt" else "python")


def run(command: list[str], **kwargs) -> int:
    return subprocess.call([str(c) for c in command], cwd=ROOT, **kwargs)


def setup() -> Path:
    """Create ``.venv`` and install the course into it; returns its python."""
    if sys.version_info < MIN_PYTHON:
        sys.exit(
            f"[gradflow] Python {'.'.join(map(str, MIN_PYTHON))} or newer is needed, this is "
            f"{sys.version.split()[0]}; run the command with a newer python3."
        )
    if not (ROOT / "pyproject.toml").is_file():
        sys.exit(f"[gradflow] {ROOT} is not the course checkout (no pyproject.toml).")
    python = venv_python()
    if not python.exists():
        say(f"creating the virtual environment {VENV.relative_to(ROOT)}/ ...")
        try:
            venv.create(VENV, with_pip=True)
        except Exception as e:  # e.g. Debian without python3-venv
            sys.exit(
                f"[gradflow] could not create {VENV}: {e}\n"
                "  On Debian/Ubuntu install the venv module first: sudo apt install python3-venv"
            )
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / ".gradflow-installed"
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        say("installing the course and its packages (a few minutes the first time) ...")
        code = run([python, "-m", "pip", "install", "--disable-pip-version-check",
                    "--progress-bar", "on", "-e", ".[test]"])
        if code != 0:
            sys.exit(
                "[gradflow] pip could not install the course (see its message above). "
                "Check your network, then run the same command again: nothing is lost."
            )
        stamp.write_text(wanted)
    else:
        say("packages are up to date")
    return python


def ensure_browser() -> None:
    """Install Debian's chromium for the browser tests when it is missing and we can."""
    if os.environ.get("GRADFLOW_CHROMIUM") or shutil.which("chromium"):
        return
    apt = shutil.which("apt-get")
    if not apt or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say("Chromium not found, so the browser tests will be skipped; install your system's "
            "chromium package or set GRADFLOW_CHROMIUM to a Chromium binary to run them")
        return
    say("installing Debian's chromium for the browser tests (once) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "chromium"]
    if run(install, env=env) != 0 and (run([apt, "update", "-q"], env=env) or run(install, env=env)):
        say("could not install chromium; the browser tests will fail in CI and skip elsewhere")


def ensure_sandbox() -> None:
    """Install Debian's bubblewrap for the grader's sandbox when it is missing and we can."""
    if shutil.which("bwrap") or not sys.platform.startswith("linux"):
        return
    apt = shutil.which("apt-get")
    if not apt or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say("bubblewrap (bwrap) not found, so the grader's sandbox tests will be skipped and "
            "gradflow-grade will ask for --sandbox none; install your system's bubblewrap package")
        return
    say("installing Debian's bubblewrap for the grader's sandbox (once) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "bubblewrap"]
    if run(install, env=env) != 0 and (run([apt, "update", "-q"], env=env) or run(install, env=env)):
        say("could not install bubblewrap; the sandbox tests will fail in CI and skip elsewhere")
