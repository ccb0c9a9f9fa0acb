"""The sandbox around each student kernel (issue 23): five attacks that reach outside a
submission's own grading, graded in ONE call beside correct submissions, and what a
sandboxed kernel can see. Needs bubblewrap (the README's test command installs it)."""

import csv
import os
import shutil
import socket
import uuid
from pathlib import Path

import nbformat
import pytest
from test_grading import EXERCISE, SOLUTION, solved_exercise, with_cell

from gradflow_lessons.grading import sandbox
from gradflow_lessons.grading.cli import class_csv, grade, main, self_check
from gradflow_lessons.grading.exercise import Exercise
from gradflow_lessons.grading.kernel import StudentKernel

ROOT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(sandbox.bwrap_problem() is not None and not os.environ.get("CI"),
                                 reason=f"no sandbox here: {sandbox.bwrap_problem()}")


def attack(source: str) -> str:
    """An attack cell that swallows its own failure, so only its effect can count."""
    body = "\n".join("    " + line for line in source.strip().splitlines())
    return f"try:\n{body}\nexcept BaseException:\n    pass\n"


def _proc_paths(suffix):
    """What a student finds in /proc: the paths on every visible process's command line."""
    return (f"[a for p in __import__('os').listdir('/proc') if p.isdigit() "
            f"for a in open('/proc/' + p + '/cmdline', 'rb').read().decode(errors='ignore').split('\\0') "
            f"if a.endswith({suffix!r})]")


@pytest.fixture(scope="module")
def attacked_class(tmp_path_factory):
    """A correct submission, the five attackers, and a second correct submission graded
    last, in one call; a TCP port listening on 127.0.0.1 for the network attack."""
    base = tmp_path_factory.mktemp("attacked")
    submissions, private, grades, loot = (base / n for n in ("submissions", "private", "grades", "loot"))
    for folder in (submissions, private, grades, loot):
        folder.mkdir()
    shutil.copy(SOLUTION, private / SOLUTION.name)
    out = grades / "grades.csv"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    marker = f"gradflow-leftover-{uuid.uuid4().hex}"
    stub = EXERCISE.read_text(encoding="utf-8")
    last = submissions / "z_correct_graded_last.ipynb"
    attacks = {
        "b_overwrites_others": attack(
            f"targets = {_proc_paths('.ipynb')} + [{str(last)!r}]\n"
            f"import glob\ntargets += glob.glob({str(submissions)!r} + '/*.ipynb')\n"
            f"for t in targets:\n    open(t, 'w').write({stub!r})"),
        "c_rewrites_the_csv": attack(
            f"targets = {_proc_paths('.csv')} + [{str(out)!r}]\n"
            "for t in targets:\n"
            "    f = open(t, 'a')\n"
            "    f.write('a_correct.ipynb,01_warmup_jacobians,0,7,ok\\n\"corrupt')\n"
            "    f.close()"),
        "d_copies_the_solutions": attack(
            f"import shutil\nfor t in {_proc_paths('solutions')} + [{str(private)!r}]:\n"
            f"    shutil.copytree(t, {str(loot / 'copy')!r}, dirs_exist_ok=True)\n"
            f"open({str(loot / 'hidden.txt')!r}, 'w').write(open({str(private / SOLUTION.name)!r}).read())"),
        "e_leaves_a_process": attack(
            "import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        sleeper = [sys.executable, '-c', 'import time; time.sleep(600)']\n"
            f"        os.execv(sys.executable, sleeper + [{marker!r}])\n"
            "    os._exit(0)\n"
            "os.wait()"),
        "f_opens_a_connection": attack(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hi')"),
    }
    nbformat.write(solved_exercise(), submissions / "a_correct.ipynb")
    for name, cell in attacks.items():
        nbformat.write(with_cell(solved_exercise(), "cell-12", cell), submissions / f"{name}.ipynb")
    nbformat.write(solved_exercise(), last)
    before = {p: p.read_bytes() for p in submissions.glob("*.ipynb")}
    exercise = Exercise.load(private / SOLUTION.name)
    results = grade([submissions], {exercise.name: exercise}, exercise, out=out, timeout=30,
                    memory_mb=2048, progress=lambda line: None, sandbox="bwrap", jobs=2,
                    private=(private,))
    try:
        connection = listener.accept()[0]
        connection.close()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                survivors.append(int(pid))
        except OSError:
            pass
    for pid in survivors:  # never leave it running, even when the test fails
        os.kill(pid, 9)
    return {"results": results, "out": out, "loot": loot, "submissions": submissions,
            "connected": connected, "survivors": survivors, "before": before}


@pytest.mark.slow
@needs_bwrap
def test_every_correct_submission_keeps_full_marks_beside_the_attackers(attacked_class):
    scores = {Path(r.submission).stem: (r.score, r.status, r.sandbox) for r in attacked_class["results"]}
    assert scores == {stem: (7, "ok", "bwrap") for stem in (
        "a_correct", "b_overwrites_others", "c_rewrites_the_csv", "d_copies_the_solutions",
        "e_leaves_a_process", "f_opens_a_connection", "z_correct_graded_last")}, scores


@pytest.mark.slow
@needs_bwrap
def test_every_row_of_the_csv_is_the_graders(attacked_class):
    out = attacked_class["out"]
    assert out.read_text(encoding="utf-8") == class_csv(
        attacked_class["results"], ["check-tanh-jacobian", "check-backprop", "check-gradient-norms"])
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 7 and all(r["score"] == "7" and r["sandbox"] == "bwrap" for r in rows)


@pytest.mark.slow
@needs_bwrap
def test_no_submission_file_was_changed_and_no_solution_leaked(attacked_class):
    for path, data in attacked_class["before"].items():
        assert path.read_bytes() == data, f"{path.name} was changed during grading"
    assert not any(attacked_class["loot"].iterdir()), list(attacked_class["loot"].iterdir())


@pytest.mark.slow
@needs_bwrap
def test_nothing_a_kernel_started_outlives_it_and_no_connection_was_made(attacked_class):
    assert attacked_class["survivors"] == []
    assert attacked_class["connected"] is False


@pytest.mark.slow
@needs_bwrap
def test_a_sandboxed_kernel_sees_only_its_scratch_folder_and_its_own_processes(tmp_path):
    secret = ROOT / "solutions"
    kernel = StudentKernel(20, 2048, sandbox="bwrap", hidden=(tmp_path,))
    try:
        kernel.start()
        assert kernel.run_cell(
            "import os, pathlib, sys\n"
            f"facts = dict(solutions=os.path.exists({str(secret)!r}),"
            f" tests=os.path.exists({str(ROOT / 'tests')!r}),"
            f" mine=os.path.exists({str(tmp_path)!r}), cwd_is_scratch=os.getcwd().endswith('work'),"
            " processes=len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
            "try:\n"
            f"    open({str(ROOT / 'gradflow_lessons' / 'evil.py')!r}, 'w')\n"
            "    facts['package_writable'] = True\n"
            "except OSError:\n"
            "    facts['package_writable'] = False\n"
            "open('scratch.txt', 'w').write('mine')\n") is None
        facts = kernel.remote("fetch", name="facts")
    finally:
        kernel.close()
    assert facts["solutions"] is False and facts["tests"] is False and facts["mine"] is False
    assert facts["package_writable"] is False and facts["cwd_is_scratch"] is True
    assert facts["processes"] <= 3, facts  # the sandbox's init and the kernel


def test_a_hidden_path_below_an_allowed_folder_is_covered(tmp_path, monkeypatch):
    allowed, scratch = tmp_path / "env", tmp_path / "scratch"
    (allowed / "submissions").mkdir(parents=True)
    (allowed / "grades.csv").write_text("")
    scratch.mkdir()
    monkeypatch.setattr(sandbox, "readable_roots", lambda: [allowed])
    argv = sandbox.command(["python"], scratch, [allowed / "submissions", allowed / "grades.csv",
                                                 ROOT / "solutions"])
    hidden_dir = str(allowed / "submissions")
    assert argv[argv.index(hidden_dir) - 1:][:2] == ["--tmpfs", hidden_dir]
    assert argv[argv.index(str(allowed / "grades.csv")) - 2:][:3] == [
        "--ro-bind", "/dev/null", str(allowed / "grades.csv")]
    assert str(ROOT / "solutions") not in argv  # not below anything the kernel may read
    assert "--unshare-net" in argv and "--unshare-pid" in argv and "--die-with-parent" in argv
    assert argv[argv.index("--bind") + 1] == str(scratch.resolve())


def test_a_checkout_below_tmp_is_bound_over_the_empty_tmp_not_hidden_by_it(tmp_path, monkeypatch):
    """A CI clone or a virtual environment under /tmp: the sandbox's empty /tmp must come
    first, or it hides the Python and the package the kernel needs."""
    below_tmp = Path("/tmp/a-checkout/.venv")
    monkeypatch.setattr(sandbox, "readable_roots", lambda: [below_tmp])
    argv = sandbox.command(["python"], tmp_path, [])
    empty_tmp = next(i for i in range(len(argv) - 1) if argv[i:i + 2] == ["--tmpfs", "/tmp"])
    bound = next(i for i in range(len(argv) - 1) if argv[i:i + 2] == ["--ro-bind", str(below_tmp)])
    assert empty_tmp < bound


def test_the_course_folder_itself_is_not_in_the_sandbox():
    roots = sandbox.readable_roots()
    assert ROOT not in roots and (ROOT / "solutions") not in roots and (ROOT / "tests") not in roots
    assert ROOT / "gradflow_lessons" in roots


def test_grading_refuses_without_a_sandbox_and_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    (tmp_path / "01_warmup_jacobians.ipynb").write_text("")
    code = main([str(tmp_path), "--out", str(tmp_path / "g.csv"), "--solutions", str(ROOT / "solutions")])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install bubblewrap" in err and "--sandbox none" in err
    assert not (tmp_path / "g.csv").exists()


def test_sandbox_none_is_an_explicit_opt_out_recorded_in_the_csv_and_the_feedback(tmp_path):
    (tmp_path / "a_01_warmup_jacobians.ipynb").write_text("")
    out = tmp_path / "g.csv"
    assert main([str(tmp_path), "--out", str(out), "--solutions", str(ROOT / "solutions"),
                 "--sandbox", "none", "--jobs", "1"]) == 0
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert row["sandbox"] == "none" and row["status"] == "empty"
    feedback = next((tmp_path / "g_feedback").glob("*.md")).read_text()
    assert "Sandbox: none" in feedback


@pytest.mark.slow
def test_the_self_check_needs_no_sandbox(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "no bubblewrap on this laptop")
    path = tmp_path / EXERCISE.name
    nbformat.write(solved_exercise(), path)
    result = self_check(path, ROOT / "exercises", timeout=30, show=lambda line: None)
    assert result.score == 7 and result.sandbox == "none"


def test_run_as_is_refused_inside_the_sandbox(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--run-as", "nobody", "--solutions", str(ROOT / "solutions")])
    assert "--sandbox none" in capsys.readouterr().err
