"""The C kernels under AddressSanitizer: the GGUF tests, hostile files included, run clean with a debug build of
the kernels (FIRSTEPOCH_KERNELS_ASAN=1), and the sanitizer is shown to be watching (an out-of-bounds call of
our own, made afterwards in the same process, is caught)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
# the tests that hand the kernels real and hostile files (tests/llm/test_gguf.py trains a GPT, which imports
# triton, whose C++ runtime does not start under the sanitizer); the command-line test starts processes of its own
SUITE = ["tests/llm/test_hostile_gguf.py", "tests/llm/test_decoder.py", "-k", "not command_line"]


@pytest.fixture(scope="module")
def asan_env(tmp_path_factory):
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    runtime = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(runtime).is_file():
        pytest.skip(f"{compiler} has no AddressSanitizer runtime (libasan.so)")
    home = tmp_path_factory.mktemp("asan-home")
    return {**os.environ, "LD_PRELOAD": runtime, "FIRSTEPOCH_KERNELS_ASAN": "1", "FIRSTEPOCH_HOME": str(home),
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


# in one process (each start costs the sanitizer's and torch's start-up): the suite, then a read past a buffer of
# our own making, which the sanitizer must catch (so a clean suite is known to have been watched)
SCRIPT = """
import sys, pytest, torch
code = pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]])
print(f"suite exit code {int(code)}", flush=True)
if code == 0:
    from firstepoch.llm.kernels import compiled_kernels
    x, w, out = torch.ones(64), torch.ones(64), torch.empty(64)
    library = compiled_kernels().library  # the C function: Kernels.rms_norm_rows takes sizes from its tensors
    library.rms_norm_rows(x.data_ptr(), w.data_ptr(), 1e-5, 64, 2, out.data_ptr())  # 2 rows of 64: 1 too many
"""


def test_the_gguf_tests_run_clean_under_the_sanitizer_and_it_is_watching(asan_env):
    result = subprocess.run([sys.executable, "-c", SCRIPT, *SUITE], env=asan_env, capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    suite, report = result.stdout, result.stderr
    assert "suite exit code 0" in suite, (suite + report)[-4000:]
    assert " passed" in suite and "AddressSanitizer" not in suite
    assert result.returncode != 0 and report.count("ERROR: AddressSanitizer") == 1, report[-3000:]
    assert "heap-buffer-overflow" in report and "rms_norm_rows" in report, report[-3000:]
