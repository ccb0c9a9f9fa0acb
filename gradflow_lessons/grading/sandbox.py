"""The sandbox around each student kernel: bubblewrap (DESIGN.md, "Grading trust model").

A submission's kernel runs under ``bwrap`` (https://github.com/containers/bubblewrap, Debian's
``bubblewrap``), which builds a private view of the machine from an allow-list:

- read-only: the system (``/usr``, the libraries, a few files of ``/etc``), the Python
  installation and its site-packages, and the ``gradflow_lessons`` package itself; nothing
  else of the course folder (no ``solutions/``, no submissions, no output folder);
- read-write: the kernel's own scratch folder, and an empty ``/tmp``;
- no network (``--unshare-net``): the grader talks to the kernel over ZMQ's ``ipc``
  transport, Unix sockets in the scratch folder;
- its own PID namespace (``--unshare-pid``): it sees no other process (not the grader's
  command line), and when the kernel ends every process it started ends with it
  (``--die-with-parent`` ends the kernel if the grader dies).

A path the grader must hide but that lies under an allowed one (a submission inside the
virtual environment, say) is covered by an empty folder or file.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

SANDBOXES = ("bwrap", "none")

HOW_TO_INSTALL = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap; conda: conda install -c conda-forge bubblewrap) on a Linux machine that "
    "allows user namespaces (in Docker: --security-opt seccomp=unconfined, or run as root "
    "with --privileged), or pass --sandbox none to grade without it: each kernel then runs "
    "with your user's rights and can read any file you can"
)
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "fonts",
        "passwd", "group", "nsswitch.conf", "mime.types", "os-release", "debian_version")
# --new-session: no terminal to inject keystrokes into (so the kernel is interrupted by a
# message, not by a signal to its process group).
_FLAGS = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
          "--new-session")


class SandboxUnavailable(RuntimeError):
    """No sandbox can start here; the message says how to install one."""


@functools.cache
def bwrap_problem() -> str | None:
    """Why a bubblewrap sandbox cannot start on this machine, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *_FLAGS, "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not run ({e})"
    if done.returncode != 0:
        return f"bwrap cannot create a sandbox here ({done.stderr.strip()[:300]})"
    return None


def require(sandbox: str) -> None:
    """Raise SandboxUnavailable (with how to fix it) unless ``sandbox`` can run here."""
    if sandbox not in SANDBOXES:
        raise ValueError(f"unknown sandbox {sandbox!r}; use one of {', '.join(SANDBOXES)}")
    if sandbox == "bwrap":
        problem = bwrap_problem()
        if problem:
            raise SandboxUnavailable(f"cannot grade in a sandbox: {problem}. To fix it, {HOW_TO_INSTALL}.")


def readable_roots() -> list[Path]:
    """What a student kernel may read: the system, Python, its packages, this package."""
    import gradflow_lessons

    roots = [Path(p) for p in _SYSTEM if os.path.lexists(p)]
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
              os.path.dirname(os.path.realpath(sys.executable))}
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        python.discard(site.getusersitepackages())  # the kernel runs with PYTHONNOUSERSITE=1
    roots += [Path(p) for p in python if os.path.isdir(p)]
    roots.append(Path(gradflow_lessons.__file__).resolve().parent)  # not the course folder
    roots = sorted(set(roots))
    return [r for r in roots if not any(o != r and o in r.parents for o in roots)]


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def command(argv: list[str], scratch: Path, hidden: list[Path] = ()) -> list[str]:
    """``argv`` wrapped in bubblewrap: read-only system and Python, read-write ``scratch``,
    nothing of ``hidden`` (submissions, output, solutions) even where it lies below an
    allowed folder."""
    roots = readable_roots()
    # The environment is the kernel's, already filtered. ipykernel exits when its parent's
    # PID is 1, which the sandbox's init is: --die-with-parent does that job instead.
    args = [shutil.which("bwrap") or "bwrap", "--unsetenv", "JPY_PARENT_PID"]
    # The empty /tmp first: a root that lies below /tmp (a checkout or a virtual environment
    # there, as in a CI clone) is then bound on top of it instead of being hidden by it.
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *_FLAGS]
    for root in roots:
        args += ["--ro-bind", str(root), str(root)]
        real = root.resolve()
        if real != root:
            args += ["--ro-bind", str(real), str(real)]
    for name in _ETC:
        if os.path.lexists(f"/etc/{name}"):
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    scratch = scratch.resolve()
    args += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch / "work")]
    for path in hidden:
        path = Path(path).resolve()
        if path.exists() and _under(path, roots) and not _under(scratch, [path]):
            args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return [*args, "--", *argv]
