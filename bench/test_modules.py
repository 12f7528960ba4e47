"""The bench scripts reuse a few of the tests' builders (tiny editors offline, a stub OpenAI server, benchmark
fixtures). tests/ is no package: its modules are loaded here by path, once, under their own names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1] / "tests"


def tests_module(name: str) -> ModuleType:
    """tests/<name>.py as module `name` (its own imports of other tests modules load the same way)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no tests module {name!r} in {TESTS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
