"""A Hugging Face Llama-family model folder: `config.json` + `*.safetensors` + `tokenizer.json`.

Weights are read tensor by tensor from the memory-mapped safetensors files (never a pickle) and kept as
bf16; names are Hugging Face's, so loading is a rename table. The tokenizer is the folder's own
`tokenizer.json`; the chat template and BOS/EOS conventions come from `tokenizer_config.json` and
`generation_config.json` when present.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from firstepoch.errors import FirstEpochError
from firstepoch.llm.inference import LIMITS
from firstepoch.models.transformer import TransformerConfig

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# config.json's sizes -> the GGUF keys whose limits (llm.inference.LIMITS) they share
_LIMITED = {"hidden_size": "embedding_length", "num_hidden_layers": "block_count",
            "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
            "intermediate_size": "feed_forward_length", "max_position_embeddings": "context_length",
            "sliding_window": "context_length", "vocab_size": "vocab_size"}


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FirstEpochError(f"{path}: not valid JSON ({exc})") from exc


def config_from_hf(folder: Path, context: int | None = None) -> TransformerConfig:
    c = _json(folder / "config.json")
    architecture = (c.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise FirstEpochError(f"{folder}: architecture {architecture} is not supported yet; supported: "
                              f"{', '.join(ARCHITECTURES)}")
    scaling = c.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise FirstEpochError(f"{folder / 'config.json'}: 'rope_scaling' must be an object")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if scaling and kind not in ("llama3", "default"):
        raise FirstEpochError(f"{folder}: RoPE scaling ({str(kind)[:40]}) is not supported yet (llama3 is)")

    def number(key: str, default=None, kind=int):
        """config.json's `key`: a positive integer within the limits GGUF files get too (or a positive float)."""
        value, most = c.get(key, default), LIMITS.get(_LIMITED.get(key), float("inf"))
        if value is None:
            raise FirstEpochError(f"{folder / 'config.json'}: '{key}' is missing")
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or \
                not 0 < value <= most or value == float("inf"):
            raise FirstEpochError(f"{folder / 'config.json'}: '{key}' is {repr(value)[:40]}, not a positive "
                                  f"{'number' if kind is float else 'integer'}" + (f" up to {most:,}" if kind is int
                                                                                  else ""))
        return value

    dim, heads = number("hidden_size"), number("num_attention_heads")
    if dim % heads or c.get("head_dim", dim // heads) != dim // heads:
        raise FirstEpochError(f"{folder}: a head size other than hidden_size / heads is not supported yet")
    trained = number("max_position_embeddings", 2048)
    if c.get("sliding_window") and c.get("use_sliding_window", True) is not False:  # Mistral v0.1: local attention
        trained = min(trained, number("sliding_window"))  # within the window it is ordinary attention
    return TransformerConfig(  # PyTorch's attention: llama.cpp's fp16 rounding is for matching it on GGUF files
        attention="torch", vocab_size=number("vocab_size"), dim=dim, n_layers=number("num_hidden_layers"),
        n_heads=heads, n_kv_heads=number("num_key_value_heads", heads), hidden_dim=number("intermediate_size"),
        context=min(context or trained, trained), norm_eps=number("rms_norm_eps", 1e-5, float),
        rope_theta=number("rope_theta", 10000.0, float), tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        rope_freq_factors=llama3_freq_factors(folder, scaling, dim // heads, number("rope_theta", 10000.0, float))
        if kind == "llama3" else None)


def llama3_freq_factors(folder: Path, scaling: dict, head_dim: int, theta: float) -> list[float]:
    """Llama 3.1's long-context RoPE as config.json's `rope_scaling` describes it, as one divisor per rotary
    frequency (what a GGUF file holds in rope_freqs): high frequencies kept, those whose wavelength is past
    original_max_position_embeddings / low_freq_factor divided by `factor`, and a smooth blend between."""
    def positive(key: str) -> float:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise FirstEpochError(f"{folder / 'config.json'}: rope_scaling's '{key}' is {repr(value)[:40]}, not a "
                                  f"positive number")
        return float(value)

    factor, low, high = positive("factor"), positive("low_freq_factor"), positive("high_freq_factor")
    original = positive("original_max_position_embeddings")
    if high <= low:
        raise FirstEpochError(f"{folder / 'config.json'}: rope_scaling's high_freq_factor must exceed low_freq_factor")
    factors = []
    for i in range(0, head_dim, 2):
        inv_freq = theta ** (-i / head_dim)
        wavelength = 2 * math.pi / inv_freq
        if wavelength < original / high:
            scaled = inv_freq
        elif wavelength > original / low:
            scaled = inv_freq / factor
        else:
            smooth = (original / wavelength - low) / (high - low)
            scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        factors.append(inv_freq / scaled)
    return factors


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    from firstepoch.llm.tokenizer import LLMTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise FirstEpochError(f"{folder}: no tokenizer.json (a fast tokenizer is needed)")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    settings, generation, config = (_json(folder / name) for name in
                                    ("tokenizer_config.json", "generation_config.json", "config.json"))

    def token_id(value):
        if isinstance(value, dict):
            value = value.get("content")
        return tok.token_to_id(value) if isinstance(value, str) else value

    bos = token_id(settings.get("bos_token")) if settings.get("bos_token") else config.get("bos_token_id")
    eos = token_id(settings.get("eos_token")) if settings.get("eos_token") else config.get("eos_token_id")
    ends = generation.get("eos_token_id", config.get("eos_token_id", eos))
    ends = set(ends if isinstance(ends, list) else [ends]) | ({eos} if isinstance(eos, int) else set())
    eos = eos[0] if isinstance(eos, list) else eos
    if "add_bos_token" in settings:
        add_bos = settings["add_bos_token"]
    else:  # Llama 3 style: the BOS comes from tokenizer.json's post-processor
        add_bos = bos is not None and tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
    # a tokenizer.json parses special tokens in any text: plain and special encoding are the same here
    tokenizer = LLMTokenizer(tok, tok, bos, eos, bool(add_bos), {i for i in ends if i is not None})
    return tokenizer, settings.get("chat_template")


def load_hf_folder(folder: Path, context: int | None = None):
    """A Hugging Face folder -> (Transformer, LLMTokenizer, chat template or None, info)."""
    from safetensors import safe_open

    from firstepoch.llm.inference import build_inference_model, check_fits
    from firstepoch.llm.names import HF, weight_shapes
    from firstepoch.llm.quant import QuantizedLinear

    config = config_from_hf(folder, context)
    files = sorted(folder.glob("*.safetensors"))
    where, handles = {}, []
    for file in files:
        handle = safe_open(str(file), framework="pt")
        handles.append(handle)
        where.update({name: handle for name in handle.keys()})
    parameters = sum(_numel(handle.get_slice(name).get_shape()) for name, handle in where.items())
    check_fits(2 * parameters, folder)
    tokenizer, template = _tokenizer(folder)
    expected = weight_shapes(config)

    def tensor(ours: str) -> torch.Tensor:
        name = HF.theirs(ours)
        if name not in where:
            raise FirstEpochError(f"{folder}: tensor {name} is missing from its safetensors files")
        shape = tuple(where[name].get_slice(name).get_shape())
        if shape != expected[ours]:
            raise FirstEpochError(f"{folder}: tensor {name} has shape {list(shape)} but config.json implies "
                                  f"{list(expected[ours])}")
        return where[name].get_tensor(name)

    model = build_inference_model(config, lambda ours: QuantizedLinear(tensor(ours)), tensor)
    info = {"architecture": "llama", "name": folder.name, "quantization": "BF16",
            "file_bytes": sum(f.stat().st_size for f in files)}
    return model, tokenizer, template, info


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n
