"""The results pages in docs/results/ are rendered from their JSON, never typed by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_results_page_is_what_its_json_renders():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "render_results.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
