"""Run one measurement of a benchmark script in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run_worker_process(script: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``script --worker ARGUMENTS --result FILE`` in a new Python process and return the JSON in FILE.

    Each measurement gets its own process, so that memory left over from one does not count in
    the next.
    """
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, script, "--worker", *arguments, "--result", str(result)]
        subprocess.run(command, check=True)
        return json.loads(result.read_text())
