"""A BERT encoder (the body of sentence-transformers models such as all-MiniLM-L6-v2), read top-down:
embeddings, attention, feed-forward, layer, encoder. Parameter names follow Hugging Face's `BertModel`, so
loading a `model.safetensors` is a rename table (query/key/value are fused into one matmul on load)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from firstepoch.errors import FirstEpochError


@dataclass
class BertConfig:
    vocab_size: int = 30522
    dim: int = 384
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise FirstEpochError(f"BERT config: hidden_size {self.dim} is not a multiple of "
                                  f"num_attention_heads {self.n_heads}")

    @classmethod
    def from_hf(cls, path: str | Path) -> "BertConfig":
        """From a Hugging Face `config.json` of a BERT-type model."""
        c = json.loads(Path(path).read_text(encoding="utf-8"))
        if c.get("model_type", "bert") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise FirstEpochError(f"{path}: only BERT encoders with GELU are supported (model_type "
                                  f"{c.get('model_type')!r}, hidden_act {c.get('hidden_act')!r})")
        return cls(vocab_size=c["vocab_size"], dim=c["hidden_size"], n_layers=c["num_hidden_layers"],
                   n_heads=c["num_attention_heads"], hidden_dim=c["intermediate_size"],
                   max_positions=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                   norm_eps=c.get("layer_norm_eps", 1e-12))

    def to_dict(self) -> dict:
        return asdict(self)


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.position_embeddings = nn.Embedding(c.max_positions, c.dim)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        positions = torch.arange(ids.shape[1], device=ids.device)
        # a single sentence: every token has type 0
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.qkv = nn.Linear(c.dim, 3 * c.dim)  # query, key, value fused (three HF tensors concatenated)
        self.dense = nn.Linear(c.dim, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.LayerNorm(x + self.dense(y))  # post-norm, as in BERT


class FeedForward(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.intermediate = nn.Linear(c.dim, c.hidden_dim)
        self.output = nn.Linear(c.hidden_dim, c.dim)
        self.LayerNorm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.output(F.gelu(self.intermediate(x))))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.feed_forward = FeedForward(c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.feed_forward(self.attention(x, mask))


class BertEncoder(nn.Module):
    """Token ids (B, T) and a padding mask (B, T) in, contextual token vectors (B, T, C) out."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.n_layers))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        # (B, 1, 1, T): padded keys are never attended to; None when nothing is padded (the fast path)
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        return x

    @classmethod
    def from_hf(cls, folder: str | Path) -> "BertEncoder":
        """Build from a Hugging Face folder (`config.json` + `model.safetensors`); every tensor is checked."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(BertConfig.from_hf(folder / "config.json"))
        hf = {k.removeprefix("bert."): v for k, v in load_file(folder / "model.safetensors").items()}
        try:
            model.load_state_dict(_rename(hf, model.config.n_layers), strict=True)
        except (KeyError, RuntimeError) as exc:
            raise FirstEpochError(f"{folder / 'model.safetensors'}: not the BERT weights its config.json "
                                  f"describes ({str(exc).splitlines()[0]})") from None
        return model.eval()


def _rename(hf: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face `BertModel` names -> ours; query/key/value concatenated into `qkv`."""
    out = {k: hf[k] for k in hf if k.startswith("embeddings.") and k != "embeddings.position_ids"}
    for i in range(n_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attention.qkv.{kind}"] = torch.cat(
                [hf[src + f"attention.self.{p}.{kind}"] for p in ("query", "key", "value")])
            for ours, theirs in (("attention.dense", "attention.output.dense"),
                                 ("attention.LayerNorm", "attention.output.LayerNorm"),
                                 ("feed_forward.intermediate", "intermediate.dense"),
                                 ("feed_forward.output", "output.dense"),
                                 ("feed_forward.LayerNorm", "output.LayerNorm")):
                out[dst + f"{ours}.{kind}"] = hf[src + f"{theirs}.{kind}"]
    return out
