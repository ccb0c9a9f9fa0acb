"""A fresh, limited IPython kernel for one untrusted submission.

Each submission gets its own kernel, started in an empty scratch directory with its own
``HOME`` and IPython profile (nothing it writes reaches the next student), a memory limit
(``RLIMIT_DATA``, Linux and macOS), no core dumps, a file-size limit, a time limit per cell
and per graded call, and a total time limit. Output is counted and dropped. A kernel that
ignores an interrupt is killed with its whole process group. With ``sandbox="bwrap"`` it
runs inside bubblewrap (:mod:`gradflow_lessons.grading.sandbox`) and is reached over Unix
sockets in its scratch folder.

Student cells run through nbclient's ``NotebookClient`` (per-cell timeout with an interrupt,
``allow_errors``, ``DeadKernelError``, an output hook that counts and drops output). Two
things nbclient does not do stay here: a graded call is an ``execute_request`` with
``user_expressions`` (the reply carries the value; nbclient has no way to ask for one), and
after an interrupt nbclient neither waits for the kernel to come back nor kills one that
ignores it, nor does it know a total time budget per submission.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradflow_lessons.grading import sandbox as sandboxes
from gradflow_lessons.grading.wire import (
    RemoteObject,
    StudentCodeError,
    WireError,
    decode,
    pack_call,
    restore_changed,
    restore_state,
)

MAX_REPLY_BYTES = 256 * 2**20  # larger messages from the kernel are dropped by zmq
INTERRUPT_GRACE_S = 5.0
STARTUP_S = 120.0  # starting a kernel and importing torch, on a busy machine
TOTAL_TIME_FACTOR = 5  # a submission's code may run for at most this many --timeout in all


_LAUNCHER = """\
import os, sys
try:
    import resource
    limit = int(os.environ.pop("GRADFLOW_MEMORY_BYTES", "0"))
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**29, 2**29))
except (ImportError, ValueError, OSError):
    pass  # no resource limits on this platform: the time limit still applies
user = os.environ.pop("GRADFLOW_RUN_AS", "")
if user:  # started as root: read the connection file, then become a user who cannot read solutions/
    import pwd
    entry = pwd.getpwnam(user)
    private = os.path.join(os.path.dirname(sys.argv[2]), "kernel-user.json")
    with open(sys.argv[2], "rb") as f, open(private, "wb") as g:
        g.write(f.read())
    os.chown(private, entry.pw_uid, entry.pw_gid)
    sys.argv[2] = private
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
sys.argv = ["ipykernel_launcher"] + sys.argv[1:]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""
_KERNEL_CONFIG = (
    'c.InteractiveShell.colors = "nocolor"\n'
    "c.HistoryManager.enabled = False\n"
    'c.IPKernelApp.log_level = "ERROR"\n'
)
_ENV_KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "SYSTEMROOT")


class KernelGone(Exception):
    """The kernel is dead (or was killed after a timeout); nothing more can run."""


class StudentKernel:
    """One fresh IPython kernel for one submission: scratch directory, memory limit,
    per-cell and total time limits, output counted and dropped, optionally sandboxed.

    Args:
        timeout: seconds per cell and per graded call.
        memory_mb: the kernel's memory limit (0: none).
        run_as: a user to become (grading as root without a sandbox).
        sandbox: ``"bwrap"`` or ``"none"``.
        hidden: paths the kernel must not see even if they lie below what it may read.
    """

    def __init__(self, timeout: float, memory_mb: int, run_as: str = "", sandbox: str = "none",
                 hidden: tuple[Path, ...] = ()):
        sandboxes.require(sandbox)
        if run_as and sandbox != "none":
            raise ValueError("--run-as works without a sandbox only (--sandbox none); the "
                             "sandbox already keeps the kernel away from your files")
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.run_as = run_as
        self.sandbox = sandbox
        self.hidden = tuple(hidden)
        self.scratch = Path(tempfile.mkdtemp(prefix="gradflow-grade-"))
        self.events: set[str] = set()
        self.output_bytes = 0
        self.exit_code: int | None = None
        self._names: dict[int, str] = {}
        self._dead = False
        self.km = self.kc = self._context = self._client = None

    def start(self) -> None:
        import zmq
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpec

        work, home = self.scratch / "work", self.scratch / "home"
        profile = self.scratch / "ipython" / "profile_default"
        for folder in (work, home, profile, self.scratch / "tmp"):
            folder.mkdir(parents=True)
        (profile / "ipython_kernel_config.py").write_text(_KERNEL_CONFIG)
        env = {k: os.environ[k] for k in _ENV_KEPT if k in os.environ}
        env.update(
            HOME=str(home), TMPDIR=str(self.scratch / "tmp"), IPYTHONDIR=str(profile.parent),
            MPLBACKEND="Agg", MPLCONFIGDIR=str(home), PYTHONHASHSEED="0", PYTHONNOUSERSITE="1",
            PYDEVD_DISABLE_FILE_VALIDATION="1", GRADFLOW_MEMORY_BYTES=str(self.memory_mb * 2**20),
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),  # the package, if not installed
            # Grading runs on the CPU: the same numbers on every machine, and a GPU driver
            # would not fit in the memory limit.
            CUDA_VISIBLE_DEVICES="",
        )
        if self.run_as:
            import pwd

            entry = pwd.getpwnam(self.run_as)  # KeyError: no such user
            env["GRADFLOW_RUN_AS"] = self.run_as
            for folder in [self.scratch, *self.scratch.rglob("*")]:
                os.chown(folder, entry.pw_uid, entry.pw_gid)
        argv = [sys.executable, "-s", "-c", _LAUNCHER, "-f", "{connection_file}"]
        manager: dict = {"connection_file": str(self.scratch / "kernel.json")}
        if self.sandbox == "bwrap":
            # No network in the sandbox: ZMQ over Unix sockets in the bound scratch folder.
            argv = sandboxes.command(argv, self.scratch, list(self.hidden))
            manager.update(transport="ipc", ip=str(self.scratch / "zmq"))
        spec = KernelSpec(argv=argv, display_name="gradflow grader", language="python",
                          interrupt_mode="message" if self.sandbox == "bwrap" else "signal")
        self.km = KernelManager(**manager)
        self.km._kernel_spec = spec
        # The kernel's own stdout/stderr (os.write(1, ...)) go nowhere, not to the grader's terminal.
        self.km.start_kernel(cwd=str(work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._context = zmq.Context()
        self._context.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        self.kc = self.km.client(context=self._context)
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=STARTUP_S)
        self._connection = self.km.get_connection_info()
        # Import torch and the reply code before the clock starts: a slow import on a busy
        # machine is not the student's time, and an interrupted import would break replies.
        self.budget_end = time.monotonic() + STARTUP_S
        content = self.execute("__import__('gradflow_lessons.grading.wire') and None", limit=STARTUP_S)
        # The kernel has read its connection file: remove it, so that no other process
        # (a leftover from an earlier submission) can find the key and talk to this kernel.
        Path(self.km.connection_file).unlink(missing_ok=True)
        (self.scratch / "kernel-user.json").unlink(missing_ok=True)
        if content.get("status") != "ok":
            raise RuntimeError(f"the kernel could not import the grader: {content.get('evalue')}")
        self.budget_end = time.monotonic() + TOTAL_TIME_FACTOR * self.timeout

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.kc is not None:
                self.kc.stop_channels()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.kc.stop_channels()
        with contextlib.suppress(Exception):
            if self.km is not None and self.km.has_kernel:
                self.km.shutdown_kernel(now=True)  # SIGKILL to the kernel's process group
        with contextlib.suppress(Exception):
            if self._context is not None:
                self._context.term()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- execution

    def _check_alive(self) -> None:
        if self._dead:
            raise KernelGone("the kernel is no longer running")
        if not self.km.is_alive():
            self._dead = True
            process = getattr(self.km.provisioner, "process", None)
            self.exit_code = process.poll() if process is not None else None
            if "killed" not in self.events:
                self.events.add("died")
            raise KernelGone("the kernel stopped")

    def _count_output(self, content: dict) -> None:
        self.output_bytes += len(content.get("text", "")) + len(json.dumps(content.get("data", "")))

    def _drain_iopub(self, msg_id: str) -> None:
        """Count and drop the output of ``msg_id`` (nbclient counted its cells' already)."""
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=0)
            except queue.Empty:
                return
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                self._count_output(msg.get("content", {}))

    def _spent(self) -> dict:
        self.events.add("timeout")
        return {"status": "error", "ename": "TimeoutError",
                "evalue": f"the time for this submission ({TOTAL_TIME_FACTOR} x --timeout) is spent"}

    def _kill(self) -> None:
        self.events.add("killed")
        self._dead = True
        with contextlib.suppress(Exception):
            self.km.shutdown_kernel(now=True)
        raise KernelGone(f"did not finish within {self.timeout:g} s and ignored the interrupt")

    def execute(self, code: str, user_expressions: dict | None = None, limit: float | None = None,
                kill_on_timeout: bool = False) -> dict:
        """Run ``code``; the shell reply's content. On a timeout the kernel is interrupted
        (and killed if that does not stop it; at once with ``kill_on_timeout``) and the
        content has ``ename`` TimeoutError.

        Raises:
            KernelGone: the kernel died, or was killed because it ignored the interrupt.
        """
        self._check_alive()
        if time.monotonic() >= self.budget_end:
            return self._spent()
        msg_id = self.kc.execute(code, store_history=False, user_expressions=user_expressions or {},
                                 allow_stdin=False, stop_on_error=False)
        deadline = min(time.monotonic() + (limit or self.timeout), self.budget_end)
        interrupted_at = None
        while True:
            self._drain_iopub(msg_id)
            try:
                reply = self.kc.get_shell_msg(timeout=0.02)
            except queue.Empty:
                reply = None
            if reply is not None and reply.get("parent_header", {}).get("msg_id") == msg_id:
                content = reply["content"]
                if interrupted_at is not None:
                    return {"status": "error", "ename": "TimeoutError",
                            "evalue": f"did not finish within {self.timeout:g} s and was interrupted"}
                return content
            self._check_alive()
            now = time.monotonic()
            if interrupted_at is None and now > deadline:
                if kill_on_timeout:
                    self._kill()
                self.events.add("timeout")
                interrupted_at = now
                self.km.interrupt_kernel()
            elif interrupted_at is not None and now > interrupted_at + INTERRUPT_GRACE_S:
                self._kill()

    def _notebook_client(self):
        """nbclient's executor on this kernel: output counted and dropped, errors allowed,
        an interrupt on a timeout (its reply then says TimeoutError)."""
        if self._client is None:
            import nbformat
            from jupyter_client.asynchronous import AsyncKernelClient
            from nbclient import NotebookClient

            kernel = self

            class Client(NotebookClient):
                def output(self, outs, msg, display_id, cell_index):  # count, keep nothing
                    kernel._count_output(msg.get("content", {}))

            self._client = Client(
                nbformat.v4.new_notebook(), km=self.km, allow_errors=True, interrupt_on_timeout=True,
                error_on_timeout={"ename": "TimeoutError",
                                  "evalue": f"did not finish within {self.timeout:g} s and was interrupted"},
                record_timing=False, iopub_timeout=1, store_widget_state=False)
            # nbclient needs an asynchronous client (a blocking one stalls its event loop
            # while it waits for output); a second client of the same kernel.
            self._client.kc = AsyncKernelClient(parent=self.km)
            self._client.kc.load_connection_info(self._connection)
            self._client.kc.start_channels()
        return self._client

    def _run_with_nbclient(self, source: str) -> dict:
        """One cell through nbclient; the content of its reply."""
        import nbformat
        from nbclient.exceptions import DeadKernelError

        self._check_alive()
        left = self.budget_end - time.monotonic()
        if left <= 0:
            return self._spent()
        client = self._notebook_client()
        client.timeout = max(1, int(min(self.timeout, left) + 0.999))
        replies: list[dict] = []
        client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.append(execute_reply)
        try:
            client.nb.cells = [nbformat.v4.new_code_cell(source)]
            client.execute_cell(client.nb.cells[0], 0)
        except DeadKernelError:
            self._check_alive()  # raises KernelGone, recording the exit
            raise KernelGone("the kernel stopped") from None
        content = replies[-1]["content"] if replies else {"status": "error", "ename": "Error"}
        if content.get("ename") == "TimeoutError" and "interrupted" in content.get("evalue", ""):
            self.events.add("timeout")
            # nbclient interrupted it and moved on: give the kernel the grace period to come
            # back (a short execute answers only after the interrupted one), else kill it.
            self.budget_end += INTERRUPT_GRACE_S  # the probe's own time is not the student's
            self.execute("pass", limit=INTERRUPT_GRACE_S, kill_on_timeout=True)
            self.budget_end -= INTERRUPT_GRACE_S
        return content

    def run_cell(self, source: str) -> tuple[str, str] | None:
        """Run one student cell; ``(ename, evalue)`` if it failed, else None."""
        content = self._run_with_nbclient(source)
        if any(p.get("source") == "ask_exit" for p in content.get("payload", []) if isinstance(p, dict)):
            self.events.add("exit")  # exit() or quit(): a notebook front end would stop here
        if content.get("status") == "ok":
            return None
        ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
        self._note_error(ename, evalue)
        return ename, evalue

    def _note_error(self, ename: str, evalue: str) -> None:
        if ename == "SystemExit":
            self.events.add("exit")
        elif ename == "MemoryError" or "can't allocate memory" in evalue:
            self.events.add("memory")

    # ---- calls from the check cells

    def remote(self, op: str, handle: int | None = None, name: str | None = None, args=None):
        """Forward one operation to the student's kernel; its plain, decoded result.

        Raises:
            StudentCodeError: the student's code raised, timed out or killed the kernel,
                or sent back something that is not a plain value.
        """
        what = name if op == "fetch" else self._names.get(handle, "your code")
        request: dict = {"op": op, "handle": handle, "name": name}
        tensors: list = []
        if args is not None:
            fields, tensors = pack_call(args)
            request.update(fields)
        serve = "__import__('gradflow_lessons.grading.wire').grading.wire.serve"
        expression = f"{serve}({json.dumps(request)!r})"
        try:
            content = self.execute("", {"reply": expression})
        except KernelGone as e:
            raise StudentCodeError("KernelDied", f"{e}; nothing more of your code can run", what) from None
        if content.get("status") != "ok":
            ename = content.get("ename", "Error")
            raise StudentCodeError(ename, content.get("evalue", ""), what)
        try:
            answer = content["user_expressions"]["reply"]
            if answer.get("status") != "ok":
                raise StudentCodeError(str(answer.get("ename")), str(answer.get("evalue")), what)
            value = answer["data"]["text/plain"]
            reply = json.loads(ast.literal_eval(value))
            if "error" in reply:
                ename, evalue = (str(x) for x in reply["error"])
                self._note_error(ename, evalue)
                raise StudentCodeError(ename, evalue, what)
            result = decode(reply["value"], kernel=self)
            if tensors:
                restore_state(tensors, reply.get("state"))
            if args is not None:
                restore_changed(args, tensors, reply.get("changed"), self)
        except StudentCodeError:
            raise
        except (WireError, ValueError, KeyError, TypeError, SyntaxError, MemoryError) as e:
            raise StudentCodeError("WireError", f"sent back something that is not a plain value ({e})",
                                   what) from None
        if op == "fetch" and isinstance(result, RemoteObject):
            self._names[result._handle] = name
        return result

    def fetch(self, name: str) -> object:
        """The student's value for ``name``, or a stand-in that fails when used."""
        try:
            return self.remote("fetch", name=name)
        except StudentCodeError as e:
            return NotDefined(name, e)


class NotDefined:
    """Stands for a name the student's notebook did not define (or could not send)."""

    def __init__(self, name: str, error: StudentCodeError):
        self._error = error if error.ename != "NameError" else StudentCodeError(
            "NameError", f"{name!r} is not defined in your notebook; did you rename or delete it?", name)

    def __call__(self, *args, **kwargs):
        raise self._error

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise self._error
