"""GGUF files that lie: metadata that disagrees with the tensors, impossible counts and shapes, wrong types, cut
files. Each one must end in one `FirstEpochError` line (exit 2 from the CLI), never a crash, a hang or a
traceback; the C layers only ever see shapes checked in Python. `FIRSTEPOCH_KERNELS_ASAN=1` runs this file
with the kernels built under AddressSanitizer (tests/llm/test_asan.py)."""
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import firstepoch.llm
from firstepoch.errors import FirstEpochError
from tests.cli_runner import run_commands
from tests.llm.gguf_files import ARRAY, STRING, TOKENS, RawGGUF, tiny_model

U32, I32, F32, BOOL, U64 = 4, 5, 6, 7, 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def parts(tiny):
    return RawGGUF.from_file(tiny)


def load_or_refuse(path):
    """Load a file and, if it loads, generate from it; a refusal must be one FirstEpochError line."""
    try:
        lm = firstepoch.llm.load(path)
    except FirstEpochError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return str(exc)
    text = lm.generate("the", max_new_tokens=3, temperature=0, stream=False)
    assert isinstance(text, str)
    with torch.no_grad():  # a lie that loads must not have made the model compute NaN or inf
        assert torch.isfinite(lm.model(torch.tensor([[1, 3, 4, 5]]))).all()
    return None


def test_the_tiny_model_is_valid_and_runs_the_c_layers(tiny):
    from firstepoch.llm.kernels import compiled_kernels

    lm = firstepoch.llm.load(tiny)
    if compiled_kernels() is None:
        pytest.skip("no C compiler: the kernels are not built here")
    assert lm.model.c_layers is not None  # the C path is the one under test
    assert len(lm.generate("the", max_new_tokens=4, temperature=0, stream=False)) > 0
    reply = lm.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    text = "".join(reply)
    assert reply.stats.completion_tokens in (1, 2) and reply.stats.finish_reason in ("stop", "length"), reply.stats
    assert isinstance(text, str) and reply.stats.prompt_tokens > 1  # the template rendered the message


# each lie of the hardening issue, by itself
LIES = {
    "embedding_length disagrees with every tensor": (lambda r: r.set("llama.embedding_length", U32, 128).set(
        "llama.rope.dimension_count", U32, 32), "token_embd.weight has shape"),
    "feed_forward_length far above the tensors": (lambda r: r.set("llama.feed_forward_length", U32, 8192),
                                                  "ffn_gate.weight has shape"),
    "ffn_down stored transposed": (lambda r: r.tensor("blk.0.ffn_down.weight", shape=(64, 128)),
                                   "ffn_down.weight has shape [64, 128]"),
    "general.alignment 0": (lambda r: r.set("general.alignment", U32, 0), "general.alignment"),
    "general.alignment not a power of two": (lambda r: r.set("general.alignment", U32, 48), "power of two"),
    "general.alignment a string": (lambda r: r.set("general.alignment", STRING, "32"), "general.alignment"),
    "arrays nested 5,000 deep": (lambda r: r.set("deep", ARRAY, struct.pack("<IQ", ARRAY, 1) * 4999 +
                                                 struct.pack("<IQ", U32, 0)), "nested"),
    "head_count 0": (lambda r: r.set("llama.attention.head_count", U32, 0), "head_count is 0"),
    "head_count a float": (lambda r: r.set("llama.attention.head_count", F32, 4.0), "not an integer"),
    "head_count per layer": (lambda r: r.set("llama.attention.head_count_kv", ARRAY, (U32, [2, 2])),
                             "not an integer"),
    "block_count a billion": (lambda r: r.set("llama.block_count", U32, 10**9), "block_count"),
    "block_count above the tensors": (lambda r: r.set("llama.block_count", U32, 3), "blk.2.attn_norm"),
    "a shape whose product overflows": (lambda r: r.tensor("blk.0.attn_q.weight", shape=(2**32, 2**32, 2**32)),
                                        "more than the file"),
    "five dimensions": (lambda r: r.tensor("output_norm.weight", shape=(64, 1, 1, 1, 1)), "dimensions"),
    "100 embedding rows for 265 tokens": (lambda r: r.tensor("token_embd.weight", shape=(64, 100),
                                                             data=bytes(100 * 2 * 34)),
                                          "[64, 100] but the metadata implies [64, 265]"),
    "unknown_token_id out of range": (lambda r: r.set("tokenizer.ggml.unknown_token_id", U32, 9999),
                                      "unknown_token_id is 9999"),
    "eos_token_id negative": (lambda r: r.set("tokenizer.ggml.eos_token_id", I32, -5), "eos_token_id"),
    "tokens stored as integers": (lambda r: r.set("tokenizer.ggml.tokens", ARRAY, (U32, list(range(265)))),
                                  "tokenizer.ggml.tokens"),
    "scores shorter than the tokens": (lambda r: r.set("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 10)),
                                       "scores"),
    "a NaN norm epsilon": (lambda r: r.set("llama.attention.layer_norm_rms_epsilon", F32, float("nan")),
                           "layer_norm_rms_epsilon"),
    "a string too long for the file": (lambda r: r.set("general.name", STRING, b"x"), None),  # patched below
    "an unknown value type": (lambda r: r.set("general.name", 99, b""), "unknown metadata value type"),
    "a tensor twice": (lambda r: setattr(r, "tensors", r.tensors + r.tensors[:1]) or r, "appears twice"),
    "a chat template that is a number": (lambda r: r.set("tokenizer.chat_template", U32, 7), None),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_each_lie_is_one_clear_line(tmp_path, parts, lie):
    edit, expected = LIES[lie]
    raw = edit(RawGGUF(list(parts.metadata), list(parts.tensors)))
    data = raw.to_bytes()
    if lie == "a string too long for the file":  # general.name's length field says 2^40 bytes
        at = data.index(b"general.name") + len("general.name") + 4
        data = data[:at] + struct.pack("<Q", 2**40) + data[at + 8:]
        expected = "more than the file"
    path = tmp_path / "lie.gguf"
    path.write_bytes(data)
    refusal = load_or_refuse(path)
    if expected is None:
        assert refusal is None  # harmless: the model loads and runs
    else:
        assert refusal is not None and expected in refusal, refusal


def test_the_command_line_says_one_line_and_exits_2(tmp_path, parts):
    paths = []
    for i, (lie, (edit, expected)) in enumerate(LIES.items()):
        if expected is not None and lie != "a string too long for the file":
            paths.append(str(edit(RawGGUF(list(parts.metadata), list(parts.tensors))).write(tmp_path / f"{i}.gguf")))
    results = run_commands([["generate", path, "hi", "--max-tokens", "2"] for path in paths])
    for path, (code, _, stderr) in zip(paths, results):
        lines = [line for line in stderr.splitlines() if not line.startswith("warning:")]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: "), (path, code, stderr)
    chat = subprocess.run([sys.executable, "-m", "firstepoch", "chat", paths[0]], capture_output=True, text=True,
                          input="", timeout=120)
    assert chat.returncode == 2 and chat.stderr.count("\n") == 1 and "Traceback" not in chat.stderr, chat.stderr


# ---------------------------------------------------------------------------------------- property-based

HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@HYPOTHESIS
@given(data=st.data())
def test_any_truncation_is_refused(tmp_path_factory, tiny, data):
    whole = tiny.read_bytes()
    cut = data.draw(st.integers(0, len(whole) - 1))
    path = tmp_path_factory.mktemp("cut") / "cut.gguf"
    path.write_bytes(whole[:cut])
    assert load_or_refuse(path) is not None


@HYPOTHESIS
@given(data=st.data())
def test_any_header_bytes_load_or_are_refused(tmp_path_factory, tiny, parts, data):
    whole = bytearray(tiny.read_bytes())
    header = len(parts.header())
    for _ in range(data.draw(st.integers(1, 6))):
        whole[data.draw(st.integers(4, header - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("flip") / "flip.gguf"
    path.write_bytes(bytes(whole))
    load_or_refuse(path)


COUNT = st.one_of(st.integers(0, 400), st.sampled_from([2**31, 2**32, 2**63, 2**64 - 1]))


@HYPOTHESIS
@given(version=st.sampled_from([1, 2, 3, 4, 2**32 - 1]), n_tensors=COUNT, n_values=COUNT)
def test_any_header_counts_load_or_are_refused(tmp_path_factory, tiny, version, n_tensors, n_values):
    whole = bytearray(tiny.read_bytes())
    whole[4:24] = struct.pack("<IQQ", version, n_tensors, n_values)
    path = tmp_path_factory.mktemp("counts") / "counts.gguf"
    path.write_bytes(bytes(whole))
    load_or_refuse(path)


VALUES = st.one_of(
    st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 10, 11]), st.integers(-2**63, 2**64 - 1)),
    st.tuples(st.sampled_from([6, 12]), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    st.tuples(st.just(BOOL), st.booleans()),
    st.tuples(st.just(STRING), st.text(max_size=20)),
    st.tuples(st.just(ARRAY), st.tuples(st.just(U32), st.lists(st.integers(0, 2**32 - 1), max_size=300))),
    st.tuples(st.just(ARRAY), st.tuples(st.just(STRING), st.lists(st.text(max_size=5), max_size=300))),
)
RANGES = {0: (0, 255), 1: (-128, 127), 2: (0, 2**16 - 1), 3: (-2**15, 2**15 - 1), 4: (0, 2**32 - 1),
          5: (-2**31, 2**31 - 1), 10: (0, 2**64 - 1), 11: (-2**63, 2**63 - 1)}


@HYPOTHESIS
@given(data=st.data())
def test_any_metadata_value_loads_or_is_refused(tmp_path_factory, parts, data):
    key = data.draw(st.sampled_from([k for k, _, _ in parts.metadata]))
    kind, value = data.draw(VALUES)
    if kind in RANGES:
        low, high = RANGES[kind]
        value = min(max(value, low), high)
    raw = RawGGUF(list(parts.metadata), list(parts.tensors)).set(key, kind, value)
    load_or_refuse(raw.write(tmp_path_factory.mktemp("meta") / "meta.gguf"))


DIMENSION = st.sampled_from([0, 1, 2, 32, 64, 100, 128, 265, 2**31, 2**32 + 64, 2**63])


@HYPOTHESIS
@given(data=st.data())
def test_any_tensor_shape_loads_or_is_refused(tmp_path_factory, parts, data):
    name = data.draw(st.sampled_from([t[0] for t in parts.tensors]))
    shape = tuple(data.draw(st.lists(DIMENSION, min_size=0, max_size=5)))
    raw = RawGGUF(list(parts.metadata), list(parts.tensors)).tensor(name, shape=shape)
    load_or_refuse(raw.write(tmp_path_factory.mktemp("shape") / "shape.gguf"))


def test_vocabulary_of_the_right_length_but_wrong_types(tmp_path, parts):
    tokens = [t if i != 7 else "" for i, t in enumerate(TOKENS)]
    raw = RawGGUF(list(parts.metadata), list(parts.tensors)).set("tokenizer.ggml.tokens", ARRAY, (STRING, tokens))
    assert "non-empty strings" in load_or_refuse(raw.write(tmp_path / "empty-token.gguf"))


# the keys the other architectures read (llm/architectures.py), each given values a lying file may hold
ARCH_KEYS = ["gemma3.attention.sliding_window", "gemma3.attention.sliding_window_pattern",
             "gemma3.attention.key_length", "gemma3.attention.value_length", "gemma3.rope.freq_base",
             "gemma3.rope.freq_base_swa", "gemma3.final_logit_softcapping", "gemma3.rope.scaling.factor",
             "gemma3.rope.scaling.attn_factor"]
ARCH_LIES = [(4, 0), (4, 2**32 - 1), (5, -1), (10, 2**63), (6, float("nan")), (6, float("inf")), (6, -1.0), (6, 0.0),
             (12, 1e300), (12, 1e-300), (STRING, "eight"), (ARRAY, (4, [8, 8]))]


def test_lies_in_the_other_architectures_keys_load_or_are_refused(tmp_path):
    """Each key a gemma3 file adds, set to each lie: it loads and generates, or is refused in one line naming the
    file; a sliding window of 0 means none, as in llama.cpp."""
    parts = RawGGUF.from_file(tiny_model(tmp_path / "gemma3.gguf", arch="gemma3"))
    refused = 0
    for key in ARCH_KEYS:
        for kind, value in ARCH_LIES:
            raw = RawGGUF(list(parts.metadata), list(parts.tensors)).set(key, kind, value)
            refused += isinstance(load_or_refuse(raw.write(tmp_path / "lie.gguf")), str)
    assert refused >= len(ARCH_KEYS) * len(ARCH_LIES) // 2  # most lies are refused, not silently taken
    raw = RawGGUF(list(parts.metadata), list(parts.tensors)).set("gemma3.attention.sliding_window", 4, 0)
    assert firstepoch.llm.load(raw.write(tmp_path / "no-window.gguf")).model.config.sliding_window is None
