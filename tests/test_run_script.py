"""scripts/run.sh: set-up once per pyproject.toml and torch index, torch first and only for the tests, then the verb's command.
pip and python are stood in for by scripts that log their arguments (no packages are installed)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clone(tmp_path):
    """A copy of run.sh and pyproject.toml with a stand-in .venv whose pip and python log to ``log``."""
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "run.sh", root / "scripts" / "run.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    fake = root / ".venv" / "bin"
    fake.mkdir(parents=True)
    log = tmp_path / "log"
    (fake / "pip").write_text(f'#!/bin/sh\necho "pip $*" >> {log}\n')
    (fake / "python").write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
                                 f'echo "python $*" >> {log}\n')
    (fake / "activate").write_text(f'PATH="{fake}:$PATH"\n')
    for name in ("pip", "python"):
        (fake / name).chmod(0o755)
    return root, log


def run(root: Path, log: Path, *args: str, **env: str) -> list[str]:
    """The pip and python calls of ``bash scripts/run.sh args``."""
    log.write_text("")
    done = subprocess.run(["bash", str(root / "scripts" / "run.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "MOE_SHARED_DATA": "/nonexistent", **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_each_verb_installs_once_per_pyproject_then_runs_its_command(clone):
    root, log = clone
    assert run(root, log, "demo", "--limit", "9") == ["python -m pip install -q -e .", "python scripts/demo.py --limit 9"]
    assert run(root, log, "demo") == ["python scripts/demo.py"]
    assert run(root, log, "test", "-x") == ["python -m pip install -q torch==2.13.0", 'python -m pip install -q -e .[test]',
                                            "python -m pytest tests -n 2 -x"]
    assert run(root, log, "test") == ["python -m pytest tests -n 2"]
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n# changed\n")
    assert run(root, log, "demo")[0] == "python -m pip install -q -e ."
    calls = run(root, log, "test", TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert calls[0] == "python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert run(root, log, "test", TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu") == ["python -m pytest tests -n 2"]
    assert run(root, log, "test")[0] == "python -m pip install -q torch==2.13.0"  # another torch index: again


def test_a_missing_verb_or_an_old_python_is_refused(clone):
    root, _ = clone
    usage = subprocess.run(["bash", str(root / "scripts" / "run.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/run.sh demo|test" in usage.stderr
    old = subprocess.run(["bash", str(root / "scripts" / "run.sh"), "demo"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": "false"})
    assert old.returncode == 2 and "needs Python >= 3.11" in old.stderr
