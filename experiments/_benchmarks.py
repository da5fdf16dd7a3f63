"""The benchmarks' machine description and JSON output, shared with the experiments."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "benchmarks_common", Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"
)
assert _spec is not None and _spec.loader is not None
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)

emit = _common.emit
machine = _common.machine
