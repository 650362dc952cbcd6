"""The C kernels under AddressSanitizer: the GGUF tests, hostile files included, run clean with a debug build of
the kernels (FIRSTEPOCH_KERNELS_ASAN=1), and the sanitizer is shown to be watching (an out-of-bounds call of
our own is caught)."""
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


def test_the_sanitizer_catches_a_read_past_a_buffer(asan_env):
    overflow = ("import torch; from firstepoch.llm.kernels import ggml_matmul; x = torch.ones(64); "
                "w = torch.ones(64); out = torch.empty(64); "
                "ggml_matmul().rms_norm_rows(x.data_ptr(), w.data_ptr(), 1e-5, 64, 2, out.data_ptr())")
    result = subprocess.run([sys.executable, "-c", overflow], env=asan_env, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-2000:]


def test_the_gguf_tests_run_clean_under_the_sanitizer(asan_env):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE], env=asan_env,
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    output = result.stdout + result.stderr
    assert "AddressSanitizer" not in output, output[-4000:]
    assert result.returncode == 0, output[-4000:]
    assert " passed" in output.splitlines()[-1]
