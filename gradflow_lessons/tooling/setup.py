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


def _apt_install(package: str, purpose: str, otherwise: str) -> None:
    """Install Debian's ``package`` with apt-get when we are root on a Debian-like system;
    else say what will happen without it (``otherwise``) and how to install it."""
    apt = shutil.which("apt-get")
    if not apt or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say(f"{package} not found, so {otherwise}; install your system's {package} package")
        return
    say(f"installing Debian's {package} for {purpose} (once) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", package]
    if run(install, env=env) != 0 and (run([apt, "update", "-q"], env=env) or run(install, env=env)):
        say(f"could not install {package}; {purpose} will fail in CI and skip elsewhere")


def ensure_browser() -> None:
    """Install Debian's chromium for the browser tests when it is missing and we can."""
    if os.environ.get("GRADFLOW_CHROMIUM") or shutil.which("chromium"):
        return
    _apt_install("chromium", "the browser tests",
                 "the browser tests will be skipped (or set GRADFLOW_CHROMIUM to a Chromium binary)")


def ensure_sandbox() -> None:
    """Install Debian's bubblewrap for the grader's sandbox when it is missing and we can."""
    if shutil.which("bwrap") or not sys.platform.startswith("linux"):
        return
    _apt_install("bubblewrap", "the grader's sandbox tests",
                 "the sandbox tests will be skipped and gradflow-grade will ask for --sandbox none")
