"""The command-line scripts as modules, run in-process (``scripts/`` is not a package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script_module(name: str) -> ModuleType:
    """``scripts/{name}.py``, freshly loaded."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(name: str):
    """The ``main(argv)`` of ``scripts/{name}.py``."""
    return script_module(name).main
