"""What crosses between the grader and a student's kernel: plain values only.

The grader runs the check cells in its own process and forwards each call of a student
function to the student's kernel. Two directions, two rules:

- grader -> kernel (arguments): trusted data, so ``pickle`` is fine. Tensors travel as
  plain values with their ``.grad``, and come back after the call, so a function that
  edits its arguments in place (``clip_(parameters)``) behaves as in the notebook; so do
  the lists and dicts it is given (sorted, appended to, an entry edited): the kernel sends
  back, as plain values, each one the call changed, and the grader's copy is made to hold
  the same (its tensors stay the grader's own objects).
  Functions and lambdas written in check cells travel by value (their byte code).
- kernel -> grader (results): untrusted. The kernel sends JSON text; :func:`decode`
  accepts only numbers, strings, lists, tuples, dicts and numeric tensors and arrays,
  checks every size, and never unpickles. Anything else stays in the kernel and the
  grader holds a :class:`RemoteObject` handle, which compares equal to nothing but
  itself: an object that "equals everything" never leaves the student's kernel.

:func:`serve` is the kernel side; the grader calls it with a JSON request.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import io
import json
import marshal
import math
import pickle
import sys
import types

import numpy as np
import torch

MAX_DEPTH = 32
MAX_ITEMS = 2**25  # list items, dict entries and tensor elements in one reply, together
REFERENCE_MODULE = "__gradflow_reference__"  # the grader's namespace for check cells

_DTYPES = {
    str(d): d
    for d in (
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.complex64, torch.complex128,
    )
}
_NUMPY_KINDS = "biufc"


# A check may expect the student's function to raise one of these (``except ValueError``):
# the grader's copy of the error is then also an instance of that built-in class.
_BUILTIN_ERRORS = {
    e.__name__: e
    for e in (ValueError, TypeError, IndexError, KeyError, LookupError, RuntimeError,
              NotImplementedError, ZeroDivisionError, ArithmeticError, AttributeError)
}
_MIXED_ERRORS: dict[str, type] = {}


class StudentCodeError(Exception):
    """The student's code raised, timed out, or its kernel died during a call."""

    def __new__(cls, ename: str = "", evalue: str = "", what: str = "your code"):
        builtin = _BUILTIN_ERRORS.get(ename)
        if cls is StudentCodeError and builtin is not None:
            cls = _MIXED_ERRORS.setdefault(ename, type(f"Student{ename}", (StudentCodeError, builtin), {}))
        return super().__new__(cls, ename, evalue, what)

    def __init__(self, ename: str, evalue: str, what: str = "your code"):
        self.ename, self.evalue, self.what = ename, evalue, what
        super().__init__(f"{what} raised {ename}: {evalue}" if evalue else f"{what} raised {ename}")


class WireError(ValueError):
    """A reply from the kernel that is not a plain value (wrong type, size or shape)."""


# --------------------------------------------------------------------------- kernel side

_HANDLES: dict[int, object] = {}


def _tensor_fields(t: torch.Tensor) -> dict:
    t = torch.Tensor.detach(t)
    if t.layout != torch.strided:
        t = t.to_dense()
    device = str(t.device)
    t = t.to("cpu").contiguous()
    raw = t.view(torch.uint8) if t.dtype == torch.bool else t
    data = raw.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()
    return {"dtype": str(t.dtype), "shape": list(t.shape), "device": device,
            "data": base64.b64encode(data).decode("ascii")}


def encode(obj: object, depth: int = 0, given: dict[int, int] | None = None) -> object:
    """``obj`` as JSON-ready plain data; anything else becomes a handle kept in the kernel.
    ``given`` maps ``id()`` of the tensors the grader sent to their index: those go back as
    references, so that the grader keeps its own tensor objects."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply to send to the grader")
    if given and isinstance(obj, torch.Tensor) and id(obj) in given:
        return {"__given__": given[id(obj)]}
    if obj is None or type(obj) in (bool, str):
        return obj
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else {"__float__": str(value)}
    if isinstance(obj, complex | np.complexfloating):
        return {"__complex__": [encode(obj.real), encode(obj.imag)]}
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": _tensor_fields(obj)}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in _NUMPY_KINDS:
        return {"__ndarray__": _tensor_fields(torch.from_numpy(np.ascontiguousarray(obj)))}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj)}
    if type(obj) is list:
        return [encode(x, depth + 1, given) for x in obj]
    if isinstance(obj, tuple):  # also torch.Size and named tuples
        return {"__tuple__": [encode(x, depth + 1, given) for x in obj]}
    if type(obj) is dict and all(type(k) is str for k in obj):
        return {"__dict__": {k: encode(v, depth + 1, given) for k, v in obj.items()}}
    handle = len(_HANDLES) + 1
    _HANDLES[handle] = obj
    return {"__remote__": handle, "type": type(obj).__name__[:80]}


def _main_global(name: str) -> object:
    """A class or function defined in the notebook (the kernel's ``__main__``)."""
    return getattr(sys.modules["__main__"], name)


def _make_function(code: bytes, glob: dict, name: str, defaults, kwdefaults, closure):
    namespace = {"__builtins__": builtins, **glob}
    cells = tuple(types.CellType(v) for v in closure) if closure is not None else None
    fn = types.FunctionType(marshal.loads(code), namespace, name, defaults, cells)
    fn.__kwdefaults__ = kwdefaults
    namespace.setdefault(name, fn)  # recursion
    return fn


def _rebuild_tensor(fields: dict) -> torch.Tensor:
    value = _decode_tensor(fields["value"])
    if fields.get("parameter"):
        value = torch.nn.Parameter(value, requires_grad=fields["requires_grad"])
    elif fields["requires_grad"]:
        value.requires_grad_(True)
    if fields.get("grad") is not None:
        value.grad = _decode_tensor(fields["grad"])
    return value


class _ArgUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, tensors: list[torch.Tensor]):
        super().__init__(io.BytesIO(data))
        self.tensors = tensors

    def persistent_load(self, pid):
        kind, index = pid
        return self.tensors[index] if kind == "t" else _HANDLES[index]


class _Fingerprint(pickle.Pickler):
    """Pickles an argument to compare it before and after a call; its tensors by identity (their
    values travel back in the reply's ``state``)."""

    def persistent_id(self, obj):
        return ("t", id(obj)) if isinstance(obj, torch.Tensor) else None


def _fingerprints(args: tuple, kwargs: dict) -> dict[int | str, bytes]:
    """The pickled bytes of each list and dict argument (by position or keyword); one that
    cannot be pickled (a lambda inside, a generator) is left out and never reported changed."""
    out = {}
    for key, value in [*enumerate(args), *kwargs.items()]:
        if type(value) in (list, dict):
            buffer = io.BytesIO()
            try:
                _Fingerprint(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
            except Exception:  # noqa: BLE001 - whatever the student's objects raise: not compared
                continue
            out[key] = buffer.getvalue()
    return out


def serve(request_json: str) -> str:
    """Kernel side: run one request from the grader; reply with JSON text.

    Requests: ``fetch`` a notebook global by name; ``call``, ``getattr``, ``getitem``,
    ``len`` or ``list`` on a handle. Errors (also ``SystemExit``) become ``{"error": ...}``.
    """
    try:
        request = json.loads(request_json)
        op, target = request["op"], _HANDLES.get(request.get("handle"))
        tensors: list[torch.Tensor] = []
        changed: list = []
        if op == "fetch":
            main = sys.modules["__main__"]
            if not hasattr(main, request["name"]):
                raise NameError(f"name {request['name']!r} is not defined")
            value = getattr(main, request["name"])
        elif op in ("call", "getitem"):
            try:
                tensors = [_rebuild_tensor(f) for f in request["tensors"]]
                args, kwargs = _ArgUnpickler(base64.b64decode(request["args"]), tensors).load()
            except Exception as e:  # noqa: BLE001 - not the student's fault
                return json.dumps({"error": ["GraderError", f"{type(e).__name__}: {e}"]})
            if op == "call":
                before = _fingerprints(args, kwargs)
                value = target(*args, **kwargs)
                after = _fingerprints(args, kwargs)
                changed = [key for key in after if before.get(key) != after[key]]
            else:
                value = target[args[0]]
        elif op == "getattr":
            value = getattr(target, request["name"])
        elif op == "len":
            value = len(target)
        elif op == "list":
            value = list(target)
        else:
            raise ValueError(f"unknown request {op!r}")
        state = [
            {"data": _tensor_fields(t), "grad": None if t.grad is None else _tensor_fields(t.grad)}
            for t in tensors
        ]
        reply = {"value": encode(value), "state": state}
        if changed:
            given = {id(t): k for k, t in enumerate(tensors)}
            reply["changed"] = [[key, encode(args[key] if type(key) is int else kwargs[key], 0, given)]
                                for key in changed]
        return json.dumps(reply)
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        return json.dumps({"error": [type(e).__name__, str(e)[:2000]]})


# --------------------------------------------------------------------------- grader side


class RemoteObject:
    """A student object that stayed in the kernel. Calls, attributes, items, ``len`` and
    iteration are forwarded; it equals nothing but itself and converts to no number."""

    __slots__ = ("_kernel", "_handle")
    _classes: dict[str, type] = {}

    def __new__(cls, kernel, handle: int, type_name: str = "object"):
        name = "".join(c for c in type_name if c.isalnum() or c == "_") or "object"
        if name not in RemoteObject._classes:  # error messages name the student's type
            RemoteObject._classes[name] = type(name, (RemoteObject,), {"__slots__": ()})
        obj = object.__new__(RemoteObject._classes[name])
        obj._kernel, obj._handle = kernel, handle
        return obj

    def __call__(self, *args, **kwargs):
        return self._kernel.remote("call", self._handle, args=(args, kwargs))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._kernel.remote("getattr", self._handle, name=name)

    def __getitem__(self, key):
        return self._kernel.remote("getitem", self._handle, args=((key,), {}))

    def __len__(self) -> int:
        value = self._kernel.remote("len", self._handle)
        if type(value) is not int:
            raise TypeError("len() of a student object did not return an int")
        return value

    def __iter__(self):
        return iter(self._kernel.remote("list", self._handle))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object in the student's kernel>"


def _decode_tensor(fields: object) -> torch.Tensor:
    if not isinstance(fields, dict) or fields.get("dtype") not in _DTYPES:
        raise WireError("a tensor of an unsupported dtype")
    dtype, shape = _DTYPES[fields["dtype"]], fields.get("shape")
    if not (isinstance(shape, list) and len(shape) <= MAX_DEPTH
            and all(type(n) is int and 0 <= n <= MAX_ITEMS for n in shape)):
        raise WireError("a tensor with an invalid shape")
    numel = math.prod(shape)
    if numel > MAX_ITEMS:
        raise WireError(f"a tensor with {numel} elements (at most {MAX_ITEMS})")
    data = fields.get("data")
    if not isinstance(data, str):
        raise WireError("a tensor without data")
    raw = base64.b64decode(data.encode("ascii"), validate=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != numel * itemsize:
        raise WireError("a tensor whose data does not match its shape")
    if numel == 0:
        tensor = torch.empty(shape, dtype=dtype)
    elif dtype == torch.bool:
        tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(torch.bool).reshape(shape)
    else:
        tensor = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    device = fields.get("device", "cpu")
    if isinstance(device, str) and device != "cpu" and device.split(":")[0] in ("cuda", "mps"):
        try:
            tensor = tensor.to(device)
        except (RuntimeError, AssertionError):
            pass  # no such device here: compare on the CPU
    return tensor


def decode(data: object, kernel=None, _budget: list | None = None, _depth: int = 0,
           given: list[torch.Tensor] | None = None) -> object:
    """Plain data from :func:`encode` back into Python values, checking every type and size;
    a reference to one of the ``given`` tensors (the call's arguments) is that tensor.

    Raises:
        WireError: anything that is not one of the plain forms, too deep, or too large.
    """
    budget = _budget if _budget is not None else [MAX_ITEMS]
    if _depth > MAX_DEPTH:
        raise WireError("a value nested too deeply")
    budget[0] -= 1
    if budget[0] < 0:
        raise WireError(f"a value with more than {MAX_ITEMS} items")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(x, kernel, budget, _depth + 1, given) for x in data]
    if type(data) is not dict or len(data) not in (1, 2):
        raise WireError(f"an unexpected {type(data).__name__}")
    if "__tensor__" in data or "__ndarray__" in data:
        tensor = _decode_tensor(data.get("__tensor__", data.get("__ndarray__")))
        budget[0] -= tensor.numel()
        if budget[0] < 0:
            raise WireError(f"a value with more than {MAX_ITEMS} items")
        return tensor if "__tensor__" in data else tensor.cpu().numpy()
    if "__tuple__" in data and type(data["__tuple__"]) is list:
        return tuple(decode(x, kernel, budget, _depth + 1, given) for x in data["__tuple__"])
    if "__dict__" in data and type(data["__dict__"]) is dict:
        return {str(k): decode(v, kernel, budget, _depth + 1, given) for k, v in data["__dict__"].items()}
    if data.get("__float__") in ("nan", "inf", "-inf"):
        return float(data["__float__"])
    if "__complex__" in data:
        re, im = (decode(x, kernel, budget, _depth + 1, given) for x in data["__complex__"])
        if type(re) is not float and type(re) is not int or type(im) not in (int, float):
            raise WireError("a complex number with non-numeric parts")
        return complex(re, im)
    if data.get("__dtype__") in _DTYPES:
        return _DTYPES[data["__dtype__"]]
    if "__given__" in data:
        index = data["__given__"]
        if given is None or type(index) is not int or not 0 <= index < len(given):
            raise WireError("a reference to a tensor the call was not given")
        return given[index]
    if type(data.get("__remote__")) is int and kernel is not None:
        return RemoteObject(kernel, data["__remote__"], str(data.get("type", "object")))
    raise WireError("an unexpected value")


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class _ArgPickler(pickle.Pickler):
    """Pickles call arguments; tensors go into a side table sent as plain values."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def persistent_id(self, obj):
        if isinstance(obj, torch.Tensor):
            if id(obj) not in self._index:
                self._index[id(obj)] = len(self.tensors)
                self.tensors.append(obj)
            return ("t", self._index[id(obj)])
        if isinstance(obj, RemoteObject):
            return ("r", obj._handle)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        if isinstance(obj, types.GeneratorType):
            return iter, (list(obj),)
        if getattr(obj, "__module__", None) != REFERENCE_MODULE:
            return NotImplemented
        if isinstance(obj, types.FunctionType):  # written in a check cell: send by value
            code = obj.__code__
            glob = {n: obj.__globals__[n] for n in _global_names(code)
                    if n in obj.__globals__ and n != obj.__name__}
            closure = tuple(c.cell_contents for c in obj.__closure__) if obj.__closure__ else None
            return _make_function, (marshal.dumps(code), glob, obj.__name__, obj.__defaults__,
                                    obj.__kwdefaults__, closure)
        if isinstance(obj, type):  # defined in a public cell: the student's kernel has it too
            return _main_global, (obj.__qualname__,)
        return NotImplemented


def _tensor_request(t: torch.Tensor) -> dict:
    return {
        "value": _tensor_fields(t),
        "requires_grad": bool(t.requires_grad),
        "parameter": isinstance(t, torch.nn.Parameter),
        "grad": None if t.grad is None else _tensor_fields(t.grad),
    }


def pack_call(args: tuple) -> tuple[dict, list[torch.Tensor]]:
    """Request fields for a call with ``args``, and the tensors to update after it."""
    buffer = io.BytesIO()
    pickler = _ArgPickler(buffer)
    try:
        pickler.dump(args)
    except Exception as e:
        raise TypeError(
            f"the grader cannot send this argument to the student's kernel ({e}); pass "
            "tensors, numbers, lists, dicts, modules or functions, and define classes in a "
            "public (not hidden) cell"
        ) from e
    fields = {"args": base64.b64encode(buffer.getvalue()).decode("ascii"),
              "tensors": [_tensor_request(t) for t in pickler.tensors]}
    return fields, pickler.tensors


def restore_changed(args: tuple, tensors: list[torch.Tensor], changed: object, kernel=None) -> None:
    """Make the list and dict arguments the student's function changed hold what the kernel's
    copies hold after the call (``changed``: ``[[position or keyword, plain value], ...]``), as
    one process would have left them; the call's own tensors stay the caller's objects.

    Raises:
        WireError: an entry that names no list or dict argument, or a value of another type.
    """
    if changed is None:
        return
    positional, named = args
    if type(changed) is not list:
        raise WireError("a malformed list of changed arguments")
    writes = []  # all checked before any is made
    for entry in changed:
        if not (type(entry) is list and len(entry) == 2):
            raise WireError("a malformed changed argument")
        key, data = entry
        if type(key) is int and 0 <= key < len(positional):
            target = positional[key]
        elif type(key) is str and key in named:
            target = named[key]
        else:
            raise WireError("a changed argument that the call was not given")
        value = decode(data, kernel, given=tensors)
        if type(target) not in (list, dict) or type(value) is not type(target):
            raise WireError(f"a changed {type(target).__name__} argument sent back as {type(value).__name__}")
        writes.append((target, value))
    for target, value in writes:
        if type(target) is list:
            target[:] = value
        else:
            target.clear()
            target.update(value)


def restore_state(tensors: list[torch.Tensor], state: object) -> None:
    """Apply in-place changes the student's function made to tensors it was given."""
    if type(state) is not list or len(state) != len(tensors):
        raise WireError("a reply without the state of the arguments")
    for tensor, entry in zip(tensors, state):
        if type(entry) is not dict:
            raise WireError("a malformed argument state")
        data = _decode_tensor(entry.get("data")).to(tensor.device)
        grad = entry.get("grad")
        with torch.no_grad():
            if data.shape == tensor.shape and data.dtype == tensor.dtype:
                if not torch.equal(data, tensor.detach()):
                    tensor.copy_(data)
            else:
                tensor.data = data
        new_grad = None if grad is None else _decode_tensor(grad).to(tensor.device)
        old_grad = tensor.grad
        if new_grad is None or old_grad is None or not (
            old_grad.shape == new_grad.shape and old_grad.dtype == new_grad.dtype
            and torch.equal(old_grad, new_grad)
        ):
            try:
                tensor.grad = new_grad
            except RuntimeError as e:
                raise WireError(f"the student's function left a .grad that does not fit: {e}") from e
