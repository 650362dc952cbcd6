"""Many `firstepoch` command lines in one fresh interpreter: for tests of refusals, where each case would
otherwise pay a process start and `import torch` (seconds) for a one-line answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
_SCRIPT = """
import contextlib, io, json, sys
from firstepoch.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["firstepoch", *args]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # a traceback in a real process
            code, err = 1, io.StringIO(err.getvalue() + f"Traceback: {type(exc).__name__}: {exc}")
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_commands(commands: list[list[str]], cwd=None, env: dict | None = None, timeout: float = 600):
    """[(exit code, stdout, stderr)] of `firstepoch ARGS` for each ARGS in `commands`, run one after another
    in one new Python process, each as the command line would run it (its exit code, its two streams)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps([[str(a) for a in c] for c in commands])],
                            capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(r) for r in json.loads(result.stdout.splitlines()[-1])]
