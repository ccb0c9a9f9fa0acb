"""Tests of the check helpers and of `gradflow-grade`: the plain-value wire (in-process),
then an adversarial class built from the real exercise 01, graded into one CSV."""

import builtins
import copy
import csv
import dataclasses
import json
import runpy
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from conftest import answers_for

from gradflow_lessons.checks import CheckFailed, check_close, check_shape, check_true
from gradflow_lessons.grading import wire as grader_wire
from gradflow_lessons.grading.cli import (
    feedback_text,
    grade,
    infer_exercise,
    main,
    pick_exercise,
    self_check,
)
from gradflow_lessons.grading.exercise import Exercise, SubmissionError, bound_names, read_submission
from gradflow_lessons.grading.wire import (
    REFERENCE_MODULE,
    RemoteObject,
    WireError,
    decode,
    encode,
    pack_call,
    restore_changed,
    restore_state,
    serve,
)


def test_check_close_passes_and_prints_a_tick(capsys):
    check_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]), "values")
    assert capsys.readouterr().out.strip() == "\u2713 values"


def test_check_close_reports_the_size_of_the_error_and_the_hint():
    with pytest.raises(CheckFailed, match=r"off by up to 0\.5.*Hint: look here"):
        check_close(torch.tensor([1.5]), torch.tensor([1.0]), "x", hint="look here")


def test_check_close_rejects_an_object_that_claims_to_equal_everything():
    class Liar:
        def __eq__(self, other):
            return True

    with pytest.raises(CheckFailed, match="expected a tensor or a number, got Liar"):
        check_close(Liar(), 1.0, "x")


def test_check_close_rejects_none_with_a_hint_about_returning():
    with pytest.raises(CheckFailed, match="return"):
        check_close(None, 1.0, "x")


def test_check_close_rejects_nan():
    with pytest.raises(CheckFailed, match="NaN"):
        check_close(torch.tensor([float("nan")]), torch.tensor([1.0]), "x")


def test_check_close_rejects_a_broadcastable_but_wrong_shape():
    with pytest.raises(CheckFailed, match="shape"):
        check_close(torch.ones(3, 1), torch.ones(3), "x")


def test_check_close_accepts_numpy_and_numbers():
    check_close(np.array([1.0, 2.0]), torch.tensor([1.0, 2.0]), "numpy", quiet=True)
    check_close(3, 3.0, "int", quiet=True)


def test_check_shape_names_both_shapes():
    with pytest.raises(CheckFailed, match=r"expected shape \[2, 3\], got \[3, 2\]"):
        check_shape(torch.ones(3, 2), (2, 3), "m")


def test_check_true_does_not_accept_merely_truthy_values():
    with pytest.raises(CheckFailed):
        check_true("yes", "flag", "must be True")
    check_true(np.bool_(True), "numpy flag", "ok")
    check_true(torch.tensor(True), "tensor flag", "ok")


def test_a_quiet_check_true_prints_nothing_when_it_passes_and_still_fails(capsys):
    check_true(True, "hidden case", "ok", quiet=True)
    assert capsys.readouterr().out == ""
    check_true(True, "public case", "ok")
    assert "public case" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="hidden case: wrong"):
        check_true(False, "hidden case", "wrong", quiet=True)


# --------------------------------------------------------------------------- the grader's wire

ROOT = Path(__file__).resolve().parent.parent
SOLUTION = ROOT / "solutions" / "01_warmup_jacobians.ipynb"
EXERCISE = ROOT / "exercises" / "01_warmup_jacobians.ipynb"
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


class InProcessKernel:
    """Stands for the student's kernel: serves requests with grader_wire.serve in this
    process (what the real kernel runs), so the wire is tested without a kernel."""

    def remote(self, op, handle=None, name=None, args=None):
        request = {"op": op, "handle": handle, "name": name}
        tensors = []
        if args is not None:
            fields, tensors = pack_call(args)
            request.update(fields)
        reply = json.loads(serve(json.dumps(request)))
        if "error" in reply:
            raise grader_wire.StudentCodeError(*reply["error"])
        value = decode(reply["value"], kernel=self)
        restore_state(tensors, reply["state"])
        if args is not None:
            restore_changed(args, tensors, reply.get("changed"), self)
        return value


def as_student(obj):
    """``obj`` as the grader sees it when the student's kernel holds it."""
    return decode(encode(obj), kernel=InProcessKernel())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int64,
                                   torch.bool, torch.complex64])
def test_tensors_cross_the_wire_bit_for_bit(dtype):
    value = (torch.randn(3, 4) * 5).to(dtype)
    back = decode(encode(value))
    assert back.dtype == dtype and torch.equal(back, value)


def test_plain_containers_cross_the_wire_with_their_types():
    value = {"a": (1, 2.5, float("inf"), [torch.zeros(0)], torch.Size([2])), "b": 3 + 4j, "c": None}
    back = decode(encode(value))
    assert back["a"][:3] == (1, 2.5, float("inf")) and back["a"][4] == (2,)
    assert back["b"] == 3 + 4j and back["c"] is None and type(back["a"]) is tuple


@pytest.mark.parametrize("reply", [
    {"__tensor__": {"dtype": "torch.float64", "shape": [3], "data": "AAAA", "device": "cpu"}},
    {"__tensor__": {"dtype": "object", "shape": [1], "data": "", "device": "cpu"}},
    {"__tensor__": {"dtype": "torch.float64", "shape": [10**7, 10**7], "data": ""}},
    {"__reduce__": ["os.system", "echo hi"]},
    {"__float__": "1e400"},
    {"__dict__": {"x": {"__remote__": "1"}}},
])
def test_the_grader_rejects_anything_that_is_not_a_plain_value(reply):
    with pytest.raises(WireError):
        decode(reply, kernel=InProcessKernel())


def test_a_nested_reply_deeper_than_the_limit_is_rejected():
    deep = 0
    for _ in range(grader_wire.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(WireError, match="deep"):
        decode(deep)


def test_an_object_that_claims_to_equal_everything_stays_in_the_kernel_and_earns_nothing():
    class Liar(float):  # even a float subclass: its value crosses, its __eq__ does not
        def __eq__(self, other):
            return True

    class Anything:
        def __eq__(self, other):
            return True

        def __array__(self, *args, **kwargs):
            return np.ones(3)

    assert type(as_student(Liar(2.0))) is float
    remote = as_student(Anything())
    assert isinstance(remote, RemoteObject) and remote != 1.0 and remote != remote._handle
    with pytest.raises(CheckFailed, match="got Anything"):
        check_close(remote, torch.ones(3), "x")
    with pytest.raises(CheckFailed):
        check_true(remote, "flag", "must be True")


def test_a_student_function_is_called_in_the_kernel_and_edits_its_arguments_in_place():
    def clip_(parameters, max_norm):  # the student's, in the kernel
        parameters = list(parameters)
        total = torch.cat([p.grad.flatten() for p in parameters]).norm()
        for p in parameters:
            p.grad.mul_(min(1.0, max_norm / total.item()))
        return total

    model = torch.nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.cat([g.flatten() for g in grads]).norm()
    total = as_student(clip_)(model.parameters(), 0.5)  # a generator, as in torch's API
    assert torch.allclose(total, norm)
    for p, g in zip(model.parameters(), grads):
        assert torch.allclose(p.grad, g * 0.5 / norm)


@dataclasses.dataclass
class Record:  # a record of a history, as exercise 09 passes them
    step: int
    grad_norm: float


def test_a_student_function_that_edits_the_lists_and_dicts_it_is_given_edits_the_graders():
    def tidy(history, options, weights, *, seen):  # the student's, in the kernel: edits everything
        history.sort(key=lambda r: r.step)
        history[0].grad_norm = 0.0
        options["window"] = 9
        weights[0].mul_(2)  # a tensor in a list: edited in place
        weights.append(weights[0] * 0)
        seen.append(len(history))
        return len(history)

    records = [Record(step, float(step)) for step in (2, 0, 1)]
    history, options, seen = list(records), {"window": 3}, []
    weight = torch.ones(2)
    weights = [weight]
    assert as_student(tidy)(history, options, weights, seen=seen) == 3
    assert [r.step for r in history] == [0, 1, 2] and history[0].grad_norm == 0.0  # as in one process
    assert not any(a is b for a, b in zip(history, records))  # the caller can tell: new records
    assert options == {"window": 9} and seen == [3]
    assert weights[0] is weight and torch.equal(weight, torch.full((2,), 2.0))  # the caller's tensor
    assert len(weights) == 2 and torch.equal(weights[1], torch.zeros(2))


@pytest.mark.parametrize("changed, message", [
    ("not a list", "malformed list"),
    ([[0]], "malformed changed"),
    ([[5, []]], "not given"),
    ([["missing", []]], "not given"),
    ([[1, []]], "changed str argument"),  # not a list or dict: nothing to write into
    ([[0, {"__dict__": {}}]], "changed list argument sent back as dict"),
    ([[0, [{"__given__": 3}]]], "tensor the call was not given"),
    ([[0, [{"__reduce__": ["os.system", "echo hi"]}]]], "unexpected value"),
    ([[0, [9]], [5, []]], "not given"),  # a fitting entry, then one that does not: neither is written
])
def test_a_reply_about_changed_arguments_that_does_not_fit_the_call_is_refused(changed, message):
    history, before = [1, 2], [1, 2]
    with pytest.raises(WireError, match=message):
        restore_changed(((history, "text"), {}), [torch.zeros(1)], changed)
    assert history == before  # nothing written before the reply is known to fit


def test_a_call_that_leaves_its_list_arguments_alone_leaves_the_graders_objects_alone():
    def reader(history, table):
        return sum(history) + len(table)

    history, table = [1, 2, 3], {"a": [1.0]}
    items, inner = list(history), table["a"]
    assert as_student(reader)(history, table) == 7
    assert all(a is b for a, b in zip(history, items)) and table["a"] is inner


def test_functions_written_in_a_check_cell_are_sent_by_value():
    namespace = {"__name__": REFERENCE_MODULE, "torch": torch}
    exec("scale = 3.0\nloss = lambda out, y: scale * ((out - y) ** 2).mean()", namespace)

    def student(loss_fn, out, y):
        return loss_fn(out, y)

    value = as_student(student)(namespace["loss"], torch.ones(2), torch.zeros(2))
    assert value.item() == 3.0


def test_an_error_in_the_student_function_reaches_the_grader_by_name_only():
    def broken(x):
        raise SystemExit("bye")

    with pytest.raises(grader_wire.StudentCodeError, match="SystemExit: bye"):
        as_student(broken)(1)


def test_read_submission_says_what_is_wrong_with_a_file(tmp_path):
    cases = {"empty": b"", "blank": b"  \n", "text": b"{ not json", "binary": bytes(range(256)),
             "list": b"[1, 2]", "markdown": json.dumps(
                 {"cells": [{"cell_type": "markdown", "source": "hi"}]}).encode()}
    statuses = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SubmissionError) as error:
            read_submission(tmp_path / name)
        statuses[name] = error.value.status
    assert statuses == {"empty": "empty", "blank": "empty", "text": "invalid", "binary": "invalid",
                        "list": "invalid", "markdown": "empty"}


def test_read_submission_keeps_duplicated_cells_and_ids_in_order(tmp_path):
    cell = {"cell_type": "code", "id": "same", "metadata": {}, "source": ["x = ", "1"]}
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": [cell, dict(cell, source="x = 2")]}))
    assert [(c.id, c.source) for c in read_submission(tmp_path / "nb.ipynb")] == [
        ("same", "x = 1"), ("same", "x = 2")]


def test_an_exercise_declares_its_checks_points_and_student_names():
    exercise = Exercise.load(SOLUTION)
    assert [c.id for c in exercise.checks] == ["check-tanh-jacobian", "check-backprop",
                                               "check-gradient-norms"]
    assert exercise.max_score == 7
    names = [n for c in exercise.cells if c.kind == "solution" for n in c.names]
    assert names == ["tanh_layer_jacobian", "backprop_through", "gradient_norms"]
    assert bound_names("def f(): pass\nclass C: pass\na, (b, c) = 1, (2, 3)\n%time x = 1") == (
        "f", "C", "a", "b", "c")


def test_the_exercise_is_found_from_the_file_name_or_the_check_ids(tmp_path):
    exercises = {"01_warmup_jacobians": Exercise.load(SOLUTION), "99_other": Exercise.load(SOLUTION)}
    renamed = tmp_path / "alice.ipynb"
    renamed.write_bytes(EXERCISE.read_bytes())
    assert infer_exercise(Path("x/01_warmup_jacobians_alice.ipynb"), exercises).name == SOLUTION.stem
    assert infer_exercise(renamed, exercises) is exercises["01_warmup_jacobians"]
    assert infer_exercise(tmp_path / "missing.ipynb", exercises) is None
    assert pick_exercise("01", {"01_warmup_jacobians": 1, "04_clip": 2}) == 1
    with pytest.raises(ValueError, match="matches 0"):
        pick_exercise("05", {"01_warmup_jacobians": 1})


# --------------------------------------------------------------------------- a real class

def solved_exercise():
    """exercises/01 with the solution cells filled in, as a student would hand it in."""
    solution = {c.id: c.source for c in nbformat.read(SOLUTION, as_version=4).cells}
    nb = nbformat.read(EXERCISE, as_version=4)
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            cell.source = solution[cell.id]
    return nb


def with_cell(nb, before_id, source):
    index = next(i for i, c in enumerate(nb.cells) if c.id == before_id)
    nb.cells.insert(index, nbformat.v4.new_code_cell(source))
    return nb


def edit(nb, cell_id, change):
    for cell in nb.cells:
        if cell.id == cell_id:
            cell.source = change(cell.source)
    return nb


PATCH_EVERYTHING = """\
import builtins, torch, gradflow_lessons.checks as g
g.check_close = g.check_shape = g.check_true = lambda *a, **k: print("\\u2713 all good")
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
builtins.AssertionError = g.CheckFailed = type("Nothing", (Exception,), {})
"""
LIAR = """\
class Liar:
    def __eq__(self, other): return True
    def __array__(self, *a, **k): return __import__("numpy").ones((5, 3))
def tanh_layer_jacobian(W, b, h_in): return Liar()
"""
WRONG = dict(runpy.run_path(str(ROOT / "tests/wrong_answers/01_warmup_jacobians.py"))["WRONG_ANSWERS"])


def class_of_submissions(folder: Path) -> dict[str, str]:
    """Write the adversarial class to ``folder``; returns {file stem: what it tries}."""
    cases = {}

    def add(name, nb, what):
        (folder / f"{name}.ipynb").write_text(json.dumps(nb), encoding="utf-8")  # keeps bad ids
        cases[name] = what

    stub = nbformat.read(EXERCISE, as_version=4)
    add("stub", stub, "the untouched exercise")
    add("solution_file", nbformat.read(SOLUTION, as_version=4), "the solution itself, hidden tests and all")
    blanked = solved_exercise()
    for cell in blanked.cells:
        if cell.id == "check-backprop":
            cell.source = "print('\\u2713 Task 2')"
    blanked.cells = [c for c in blanked.cells if c.id != "check-gradient-norms"]
    add("correct_tampered_checks", blanked, "correct code, one check blanked, one deleted")
    faked = copy.deepcopy(stub)
    for cell in faked.cells:
        if cell.id.startswith("check-"):
            cell.source = "print('\\u2713 passed')"
    add("stub_faked_checks", faked, "stubs with every check replaced by a printed tick")
    add("patched_helpers", with_cell(copy.deepcopy(stub), "cell-02", PATCH_EVERYTHING),
        "stubs with check helpers, torch.allclose and AssertionError replaced")
    wrong = with_cell(edit(solved_exercise(), "solution-backprop",
                           lambda s: WRONG["backprop that forgets the transpose (J @ v instead of v @ J)"][
                               "solution-backprop"]), "cell-02", PATCH_EVERYTHING)
    add("wrong_and_patched", wrong, "a wrong Task 2 with every helper patched")
    add("liar", with_cell(solved_exercise(), "cell-05", LIAR), "Task 1 returns an object equal to everything")
    exits = with_cell(solved_exercise(), "cell-02", "import sys\nsys.exit('done early')")
    add("sys_exit", edit(exits, "solution-gradient-norms", lambda s: s.replace(
        '"""Norms', 'raise SystemExit(0)\n    """Norms')), "sys.exit() early, SystemExit in Task 3")
    add("kills_itself", edit(solved_exercise(), "solution-backprop", lambda s: s.replace(
        '"""dL/dh_0', 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n    """dL/dh_0')),
        "Task 2 kills its own kernel when called")
    add("os_exit", with_cell(solved_exercise(), "cell-05", "import os\nos._exit(3)"),
        "os._exit() after Task 1")
    add("endless_loop", with_cell(solved_exercise(), "cell-12", "while True:\n    pass"),
        "an endless loop after correct code")
    add("endless_loop_in_function", edit(solved_exercise(), "solution-gradient-norms", lambda s: s.replace(
        '"""Norms', 'while True: pass\n    """Norms')), "Task 3 never returns")
    add("loop_ignoring_interrupts", with_cell(solved_exercise(), "cell-12",
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"),
        "an endless loop that ignores the interrupt")
    noisy = "import sys, warnings\nprint('note', file=sys.stderr)\nwarnings.warn('careful')"
    add("noise", edit(with_cell(solved_exercise(), "cell-02", noisy),
                      "solution-tanh-jacobian", lambda s: s.replace(
                          "    h = torch", "    import warnings; warnings.warn('slow')\n    h = torch")),
        "correct code that writes to stderr and warns, also inside a graded function")
    duplicated = solved_exercise()
    duplicated.cells += [copy.deepcopy(c) for c in duplicated.cells[1:8]]
    add("duplicated_cells", duplicated, "every cell up to Task 2 pasted twice, ids and all")
    loud = with_cell(solved_exercise(), "cell-12", "for _ in range(200):\n    print('x' * 100_000)")
    loud.cells[0].source = "y" * 20_000_000
    add("huge_outputs", loud, "20 MB printed while grading and 20 MB stored in the file")
    add("memory_hog", with_cell(solved_exercise(), "cell-12", "hog = bytearray(8 * 2**30)"),
        "8 GB allocated after correct code")
    (folder / "invalid.ipynb").write_text("{ this is not json")
    (folder / "empty.ipynb").write_text("")
    cases.update(invalid="not JSON", empty="an empty file")
    return cases


EXPECTED = {  # stem: (score, status)
    "stub": (0, "not-attempted"),
    "solution_file": (7, "ok"),
    "correct_tampered_checks": (7, "ok"),
    "stub_faked_checks": (0, "not-attempted"),
    "patched_helpers": (0, "not-attempted"),
    "wrong_and_patched": (4, "ok"),
    "liar": (5, "ok"),
    "sys_exit": (5, "exit"),
    "kills_itself": (2, "kernel-died"),
    "os_exit": (0, "kernel-died"),
    "endless_loop": (7, "timeout"),
    "endless_loop_in_function": (5, "timeout"),
    "loop_ignoring_interrupts": (0, "timeout"),
    "noise": (7, "ok"),
    "duplicated_cells": (7, "ok"),
    "huge_outputs": (7, "ok"),
    "memory_hog": (7, "memory"),
    "invalid": (0, "invalid"),
    "empty": (0, "empty"),
}


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """The whole adversarial class graded by one command into one CSV (each in its own kernel)."""
    folder = tmp_path_factory.mktemp("submissions")
    class_of_submissions(folder)
    out = tmp_path_factory.mktemp("grades") / "grades.csv"
    lines = []
    results = grade([folder], {SOLUTION.stem: Exercise.load(SOLUTION)}, out=out, timeout=6,
                    memory_mb=2048, progress=lines.append)
    rows = {Path(r["submission"]).stem: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    return {"rows": rows, "results": {Path(r.submission).stem: r for r in results}, "out": out,
            "lines": lines}


def test_the_adversarial_class_covers_every_expected_case(tmp_path):
    assert set(class_of_submissions(tmp_path)) == set(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_each_submission_gets_its_row_with_the_score_and_status_it_earned(graded_class, stem):
    row = graded_class["rows"][stem]
    result = graded_class["results"][stem]
    assert (float(row["score"]), row["status"]) == EXPECTED[stem], "\n".join(
        [c.message for c in result.checks] + result.notes)
    assert row["exercise"] == "01_warmup_jacobians" and float(row["max_score"]) == 7


@pytest.mark.slow
def test_the_class_csv_json_and_feedback_files_have_one_entry_per_submission(graded_class):
    out = graded_class["out"]
    with out.open(encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["student_id", "name", "submission", "exercise", "score", "max_score", "status",
                      "sandbox", "check-tanh-jacobian", "check-backprop", "check-gradient-norms", "feedback"]
    report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert len(report["submissions"]) == len(graded_class["rows"]) == len(EXPECTED)
    feedback = sorted((out.parent / "grades_feedback").glob("*.md"))
    assert len(feedback) == len(EXPECTED)
    assert len(graded_class["lines"]) == len(EXPECTED)
    assert graded_class["lines"][0].startswith(f"[1/{len(EXPECTED)}] ")


@pytest.mark.slow
def test_feedback_names_each_check_and_gives_a_hint_for_a_failure(graded_class):
    result = graded_class["results"]["wrong_and_patched"]
    text = feedback_text(result)
    assert "\u2713 check-tanh-jacobian: 2/2" in text and "\u2717 check-backprop: 0/3" in text
    assert "Hint: go from the output backwards" in text


@pytest.mark.slow
def test_tampered_checks_are_restored_and_reported(graded_class):
    notes = " ".join(graded_class["results"]["correct_tampered_checks"].notes)
    assert "edits to check cell check-backprop were ignored" in notes
    assert "check cell check-gradient-norms was missing" in notes


@pytest.mark.slow
def test_a_student_kernel_never_sees_the_hidden_tests_or_the_solutions(tmp_path):
    """The student's code looks everywhere it can reach for the hidden tests' text: its
    working directory, its home, and every cell it was sent. It finds nothing."""
    spy = with_cell(solved_exercise(), "cell-12", (
        "import os, sys\n"
        "seen = []\n"
        "for top in (os.getcwd(), os.path.expanduser('~')):\n"
        "    for folder, _, files in os.walk(top):\n"
        "        seen += [open(os.path.join(folder, f), errors='ignore').read() for f in files]\n"
        "seen += [str(x) for x in sys.modules['__main__'].__dict__.get('In', [])]\n"
        "leaked = any('HIDDEN ' + 'TESTS' in s or 'ur' + 'andom' in s for s in seen)\n"
        "def tanh_layer_jacobian(W, b, h_in):\n"
        "    if leaked or len(os.listdir('.')):\n"
        "        raise RuntimeError('found the hidden tests')\n"
        "    h = torch.tanh(W @ h_in + b)\n"
        "    return (1 - h**2).unsqueeze(1) * W\n"))
    path = tmp_path / "01_warmup_jacobians.ipynb"
    nbformat.write(spy, path)
    results = grade([path], {SOLUTION.stem: Exercise.load(SOLUTION)}, out=tmp_path / "g.csv",
                    timeout=20, progress=lambda line: None)
    assert results[0].score == 7, [c.message for c in results[0].checks]


@pytest.mark.slow
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_grades_its_solution_full_and_its_stub_zero(solution, tmp_path):
    exercise = Exercise.load(solution)
    results = grade([solution, ROOT / "exercises" / solution.name], {solution.stem: exercise},
                    out=tmp_path / "g.csv", timeout=60, progress=lambda line: None)
    full, stub = results
    assert full.score == exercise.max_score > 0, [c.message for c in full.checks] + full.notes
    assert stub.score == 0 and stub.status == "not-attempted", [c.message for c in stub.checks]


@pytest.mark.slow
def test_an_answer_that_sorts_the_callers_list_in_its_kernel_loses_the_points_as_in_the_notebook(tmp_path):
    # the list crosses to the kernel as a copy: only the kernel's reply about it can show the sort
    description = "heat-map table that copies a tuple into a list but sorts a caller's list in place"
    solution = ROOT / "solutions" / "09_gradient_dashboard.ipynb"
    cells = next(c for d, c in answers_for(solution.stem)["WRONG_ANSWERS"] if d == description)
    nb = nbformat.read(solution, as_version=4)
    for cell in nb.cells:
        cell.source = cells.get(cell.id, cell.source)
    path = tmp_path / solution.name
    nbformat.write(nb, path)
    exercise = Exercise.load(solution)
    result, = grade([path], {solution.stem: exercise}, out=tmp_path / "g.csv", timeout=60,
                    progress=lambda line: None)
    failed = [c.message for c in result.checks if not c.passed]
    assert result.score < exercise.max_score and any("changed the caller's" in m for m in failed), failed


@pytest.mark.slow
def test_self_check_reports_check_by_check_with_the_public_checks_only(tmp_path):
    edited = solved_exercise()
    edited = edit(edited, "check-backprop", lambda s: "print('\u2713 Task 2')")
    edited = edit(edited, "solution-gradient-norms", lambda s: s.replace("norms.append(grad.norm())", "pass"))
    path = tmp_path / EXERCISE.name
    nbformat.write(edited, path)
    lines = []
    result = self_check(path, ROOT / "exercises", timeout=20, show=lines.append)
    assert [(c.id, c.earned) for c in result.checks] == [
        ("check-tanh-jacobian", 2), ("check-backprop", 3), ("check-gradient-norms", 0)]
    text = "\n".join(lines)
    assert "\u2717 check-gradient-norms" in text and "Hint: start with ||grad_output||" in text
    assert "hidden cases" not in " ".join(c.output for c in result.checks)
    assert "Public checks: 5/7 points" in text


def test_the_command_grades_unreadable_files_into_rows_and_goes_on(tmp_path, capsys):
    (tmp_path / "a_01_warmup_jacobians.ipynb").write_text("")
    (tmp_path / "b_01_warmup_jacobians.ipynb").write_text("garbage")
    out = tmp_path / "grades.csv"
    assert main([str(tmp_path), "--out", str(out), "--solutions", str(ROOT / "solutions")]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["status"], r["score"], r["max_score"]) for r in rows] == [("empty", "0", "7"),
                                                                       ("invalid", "0", "7")]
    assert "[2/2]" in capsys.readouterr().out


def test_the_command_refuses_an_unknown_exercise_and_names_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--exercise", "nope", "--solutions", str(ROOT / "solutions")])
    assert "01_warmup_jacobians" in capsys.readouterr().err


def test_the_grader_leaves_no_trace_in_this_process():
    assert builtins.AssertionError is AssertionError and torch.get_default_dtype() == torch.float32


def _nobody_can_run_this_python() -> bool:
    import os
    import subprocess
    import sys

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    probe = "import os; os.setgid(65534); os.setuid(65534); import json, torch, ipykernel, gradflow_lessons"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd="/").returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _nobody_can_run_this_python(),
                    reason="needs root, and a Python that the user nobody can read")
def test_run_as_puts_the_solutions_out_of_the_student_kernels_reach(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / SOLUTION.name).write_bytes(SOLUTION.read_bytes())
    spy = edit(solved_exercise(), "solution-tanh-jacobian", lambda s: s.replace(
        "    h = torch", f"    open({str(private / SOLUTION.name)!r}).read()\n    h = torch"))
    path = tmp_path / SOLUTION.name
    nbformat.write(spy, path)
    results = grade([path], {SOLUTION.stem: Exercise.load(private / SOLUTION.name)},
                    out=tmp_path / "g.csv", timeout=20, run_as="nobody", progress=lambda line: None)
    assert [c.earned for c in results[0].checks] == [0, 3, 2]
    assert "PermissionError" in results[0].checks[0].message


def test_a_student_error_is_also_the_builtin_error_a_check_may_expect():
    from gradflow_lessons.grading.wire import StudentCodeError

    error = StudentCodeError("ValueError", "need at least 2 samples", "noise_statistics")
    assert isinstance(error, ValueError) and isinstance(error, StudentCodeError)
    assert str(error) == "noise_statistics raised ValueError: need at least 2 samples"
    assert not isinstance(StudentCodeError("SystemExit", ""), ValueError)


def test_the_grading_command_leaves_the_callers_environment_as_it_was(monkeypatch):
    import os

    from gradflow_lessons.grading import main

    monkeypatch.delenv("MPLBACKEND", raising=False)
    with pytest.raises(SystemExit):
        main(["--self-check", "no-such-notebook.ipynb"])
    assert "MPLBACKEND" not in os.environ


def test_a_grading_seed_draws_the_same_hidden_inputs_again_and_then_lets_go_of_os_urandom():
    import os

    from gradflow_lessons.grading.session import _hidden_inputs_from

    real = os.urandom
    with _hidden_inputs_from(1234):
        first = [os.urandom(4), os.urandom(8)]
    with _hidden_inputs_from(1234):
        again = [os.urandom(4), os.urandom(8)]
    with _hidden_inputs_from(99):
        other = [os.urandom(4), os.urandom(8)]
    assert first == again != other and os.urandom is real
