"""`krause.allocator`: scripts re-execute themselves once with tcmalloc preloaded and can hand
its cached memory back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from krause.allocator import DISABLE_ENV, TCMALLOC_CANDIDATES

SCRIPT = """
import os, sys
from krause.allocator import reexec_with_tcmalloc, release_free_memory
print("start", flush=True)
print(reexec_with_tcmalloc(), os.environ.get("LD_PRELOAD", ""), sys.argv[1:])
print("main module:", sys.modules["__main__"].__spec__ is not None)
release_free_memory()  # tcmalloc's C entry point must exist (a no-op under glibc)
"""


def run(tmp_path, as_module: bool = False, **env) -> list[str]:
    script = tmp_path / "tcmalloc_probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", DISABLE_ENV)} | env
    target = ["-m", script.stem] if as_module else [str(script)]
    result = subprocess.run(
        [sys.executable, *target, "--flag", "x"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(
    not any(Path(p).exists() for p in TCMALLOC_CANDIDATES), reason="tcmalloc not installed"
)
@pytest.mark.parametrize("as_module", [False, True], ids=["script", "python-m"])
def test_reexecutes_once_with_tcmalloc_and_the_same_arguments(tmp_path, as_module):
    lines = run(tmp_path, as_module)
    assert lines[0] == lines[1] == "start"  # the script ran twice: before and after the exec
    assert lines[2].startswith("tcmalloc ") and "libtcmalloc" in lines[2]
    assert lines[2].endswith("['--flag', 'x']")
    assert lines[3] == f"main module: {as_module}"  # `python -m` is re-run with `-m`


def test_can_be_disabled(tmp_path):
    assert run(tmp_path, **{DISABLE_ENV: "1"}) == [
        "start",
        "glibc malloc  ['--flag', 'x']",
        "main module: False",
    ]
