"""The Transformer against a from-scratch reference, its KV cache against a full forward pass."""
import math

import pytest
import torch

from firstepoch import FirstEpochError
from firstepoch.models.transformer import Transformer, TransformerConfig


def tiny(**overrides):
    torch.manual_seed(0)
    config = TransformerConfig(**{"vocab_size": 50, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                  "context": 32, **overrides})
    return Transformer(config).eval()


def reference_forward(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """Everything spelled out with plain tensor ops: RoPE as complex rotations of (i, i + half) pairs,
    attention as an explicit masked softmax, K/V heads repeated for grouped-query attention."""
    c = model.config
    B, T = ids.shape
    hs, half = c.head_dim, c.head_dim // 2

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * w

    def rope(x):  # (B, h, T, hs)
        freqs = torch.tensor([c.rope_theta ** (-2 * i / hs) for i in range(half)])
        rot = torch.polar(torch.ones(T, half), torch.arange(T)[:, None] * freqs[None, :])
        z = torch.complex(x[..., :half], x[..., half:]) * rot
        return torch.cat([z.real, z.imag], dim=-1)

    x = model.embed_tokens.weight[ids]
    for layer in model.layers:
        a = layer.attn
        h = rms(x, layer.attn_norm.weight)
        q = (h @ a.q_proj.weight.T).view(B, T, c.n_heads, hs).transpose(1, 2)
        k = (h @ a.k_proj.weight.T).view(B, T, c.n_kv_heads, hs).transpose(1, 2)
        v = (h @ a.v_proj.weight.T).view(B, T, c.n_kv_heads, hs).transpose(1, 2)
        group = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        q, k = rope(q), rope(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + y @ a.o_proj.weight.T
        h = rms(x, layer.mlp_norm.weight)
        m = layer.mlp
        gate = h @ m.gate_proj.weight.T
        x = x + (gate * torch.sigmoid(gate) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return rms(x, model.norm.weight) @ model.lm_head.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_forward_equals_the_reference(n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(ids), reference_forward(model, ids), atol=1e-5)


def test_kv_cache_decoding_equals_a_full_forward_pass():
    model = tiny()
    ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        model.setup_cache(batch=2)
        pieces = [model(ids[:, :7], start=0)]  # prefill
        pieces += [model(ids[:, t:t + 1], start=t) for t in range(7, 12)]  # one token at a time
        pieces.append(model(ids[:, 12:20], start=12))  # a chunk after a cached prefix
        model.clear_cache()
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_attention_is_causal():
    model = tiny()
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 8] = (ids[0, 8] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :8], b[:, :8]) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_tied_embeddings_share_one_tensor_and_learning_works():
    model = tiny().train()
    assert model.lm_head.weight is model.embed_tokens.weight
    ids = torch.arange(0, 33).remainder(7).unsqueeze(0)  # a short repeating sequence
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[0, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.3  # far below the uniform 7-way entropy (1.95)


@pytest.mark.parametrize("overrides, message", [
    ({"dim": 30}, "not divisible by n_heads"),
    ({"n_kv_heads": 3}, "not a multiple of n_kv_heads"),
    ({"dim": 36, "n_heads": 4}, "must be even"),
    ({"attention": "flash"}, "attention 'flash' is not one of torch, llamacpp_fp16"),
])
def test_bad_configs_say_what_is_wrong(overrides, message):
    with pytest.raises(FirstEpochError, match=message):
        TransformerConfig(vocab_size=10, **overrides)


def test_too_many_positions_is_a_clear_error():
    with pytest.raises(FirstEpochError, match="do not fit the model's context of 32"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


def test_config_round_trips_through_json():
    import json

    config = tiny().config
    assert TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_factories_build_the_layers_under_their_state_dict_names():
    reference = tiny(tie_embeddings=False)
    built = []

    def linear(in_features, out_features, name):  # the reference's own weights, as a loader would give them
        built.append(name)
        layer = torch.nn.Linear(in_features, out_features, bias=False)
        layer.weight = reference.get_submodule(name).weight
        return layer

    model = Transformer(reference.config, linear=linear, embedding=lambda vocab, dim: reference.embed_tokens).eval()
    assert [f"{name}.weight" for name in built] == [n for n in reference.state_dict() if n.endswith("proj.weight")
                                                    or n == "lm_head.weight"]
    ids = torch.tensor([[1, 5, 9, 2]])
    assert torch.equal(model(ids), reference(ids))  # the factories' weights as they were: nothing initialised


def test_llamacpp_attention_rounds_like_an_fp16_cache():
    torch_model, fp16_model = tiny(), tiny(attention="llamacpp_fp16")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        a, b = torch_model(ids), fp16_model(ids)
    assert not torch.equal(a, b) and (a - b).abs().max() < 1e-2  # the same weights, rounded differently
