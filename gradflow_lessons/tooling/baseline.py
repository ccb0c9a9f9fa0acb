"""Another checkout's ``gradflow_lessons``, imported beside this one, for the benchmarks that
time an older version against the current one in the same run (``--baseline DIR``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

NAME = "gradflow_baseline"


def baseline_module(checkout: str, module: str) -> ModuleType:
    """``gradflow_lessons.<module>`` of the checkout at ``checkout``, imported as
    ``gradflow_baseline.<module>`` (one baseline checkout per process: the first one stays).

    Raises:
        SystemExit: ``checkout`` has no ``gradflow_lessons/<module>.py`` (the message says how to
            make one).
    """
    package = Path(checkout) / "gradflow_lessons"
    if not (package / f"{module}.py").exists():
        raise SystemExit(f"--baseline {checkout}: no gradflow_lessons/{module}.py there; make one with "
                         "`git worktree add --detach DIR REVISION`")
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            NAME, package / "__init__.py", submodule_search_locations=[str(package)])
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = loaded
        spec.loader.exec_module(loaded)
    return importlib.import_module(f"{NAME}.{module}")
