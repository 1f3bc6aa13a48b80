"""The layering contract (pyproject.toml [tool.importlinter]) and lazy CLI imports, under plain pytest too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_imports_only_go_down():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_worker_command_loads_no_other_command():
    # `sluice worker --help` parses the command line as `sluice worker` does, then lists what it imported.
    probe = ("import sys\n"
             "from sluice.cli import main\n"
             "main(['worker', '--help'], standalone_mode=False)\n"
             "print(' '.join(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    for package in ("bench", "predictor", "api", "scaler", "workers"):
        assert not {name for name in loaded if name == package or name.startswith(package + ".")}, package
