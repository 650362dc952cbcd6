"""Building firstepoch's C kernels: cached once a machine, and a compiler without OpenMP still builds them."""
import shutil

import pytest

from firstepoch.llm import kernels


@pytest.fixture
def compiler():
    found = shutil.which("cc") or shutil.which("gcc")
    if found is None:
        pytest.skip("no C compiler")
    return found


def test_the_library_is_built_once_and_cached(compiler, tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_HOME", str(tmp_path))
    first = kernels._build(compiler)
    assert first.is_file() and first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    assert kernels._build(compiler) == first and first.stat().st_mtime_ns == stamp


def test_without_openmp_the_next_flags_are_tried(compiler, tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTEPOCH_HOME", str(tmp_path))
    monkeypatch.setattr(kernels, "FLAG_SETS", [[*kernels.FLAGS, "-fno-such-flag"], kernels.FLAG_SETS[1]])
    assert kernels._build(compiler) is not None
    monkeypatch.setattr(kernels, "FLAG_SETS", [[*kernels.FLAGS, "-fno-such-flag"]])
    with pytest.warns(UserWarning, match="using bf16 weights"):
        assert kernels._build(compiler) is None
