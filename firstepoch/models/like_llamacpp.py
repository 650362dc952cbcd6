"""llama.cpp's CPU arithmetic for the operations of the `Transformer`, in PyTorch: a GGUF model run with
`TransformerConfig.attention == "llamacpp_fp16"` computes each of them as llama.cpp's CPU backend does, so that
its logits are the same bits as there, also where layers.c does not run the model (other architectures than
Llama, or no C compiler). Each function says what it follows; `fma` is a fused multiply-add (one rounding),
computed in double. The exp is that of llama.cpp's AVX-512 code; on other CPUs its last bits differ there.
"""
from __future__ import annotations

import functools

import numpy as np
import torch


def fma(a: torch.Tensor, b, c) -> torch.Tensor:
    """a * b + c rounded once to fp32 (the product of two floats is exact in double)."""
    return (a.double() * torch.as_tensor(b, dtype=torch.float64) + torch.as_tensor(c, dtype=torch.float64)).float()


def _f32(text: str) -> float:
    return float(np.float32(float.fromhex(text)))


SHIFT, LOG2E, LN2_HI, LN2_LO = _f32("0x1.8p23"), _f32("0x1.715476p+0"), _f32("0x1.62e4p-1"), _f32("0x1.7f7d1cp-20")
POLY = [_f32(c) for c in ("0x1.0e4020p-7", "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2", "0x1.ffffecp-1")]


def exp_like_llamacpp(x: torch.Tensor) -> torch.Tensor:
    """e^x for fp32 x <= 0 as ggml's vectorised exp (AVX-512): x = n ln2 + b, a degree-5 polynomial of b times
    2^n; 0 below -192 ln2 (as layers.c's exp_like_llamacpp)."""
    n = fma(x, LOG2E, SHIFT) - SHIFT  # x / ln2 rounded to an integer
    b = fma(-n, LN2_LO, fma(-n, LN2_HI, x))
    u = b * b
    c5, c4, c3, c2, c1 = POLY
    j = fma(fma(fma(b, c5, c4), u, fma(b, c3, c2)), u, fma(b, c1, 1.0))
    return torch.where(n < -192, torch.zeros_like(x), torch.ldexp(j, n))


def softmax_like_llamacpp(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension as ggml's soft_max: exp(s - max), summed in double, times the fp32
    reciprocal of the sum; -inf scores (masked positions) give 0."""
    e = exp_like_llamacpp(scores - scores.amax(-1, keepdim=True))
    e = torch.where(torch.isneginf(scores), torch.zeros_like(e), e)
    return e * (1.0 / e.double().sum(-1, keepdim=True)).float()


def rope_like_llamacpp(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`transformer.apply_rope` (rotate-half pairs i, i + hs/2) as ggml's rope computes it, its compiler fusing
    each output's first product into the sum: fma(x0, cos, -(x1 sin)) and fma(x0, sin, x1 cos)."""
    half = x.shape[-1] // 2
    x0, x1, c, s = x[..., :half], x[..., half:], cos[..., :half], sin[..., :half]
    return torch.cat([fma(x0, c, -(x1 * s)), fma(x0, s, x1 * c)], dim=-1).type_as(x)


def rms_norm_like_llamacpp(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) for fp32 x as ggml's rms_norm: the float squares summed in double, the mean rounded to fp32,
    the scale 1 / sqrt(mean + eps) in fp32."""
    mean = ((x * x).double().sum(-1, keepdim=True) / x.shape[-1]).float()
    return x * (1.0 / torch.sqrt(mean + torch.tensor(eps, dtype=torch.float32)))


def softcap_like_llamacpp(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap) as llama.cpp's graph for Gemma 2 computes it: times the fp32 reciprocal of the cap,
    tanh (the C library's tanhf, correctly rounded here in double), times the cap."""
    scaled = x * float(np.float32(1) / np.float32(cap))
    return torch.tanh(scaled.double()).float() * cap


@functools.cache
def _gelu_table() -> torch.Tensor:
    """ggml's table of GELU over every fp16 input, (65536,) fp32 of fp16 values indexed by the input's bits:
    0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x x))) in fp32 with the inner 1 + (a x) x fused (as its
    compiler fuses it) and tanh correctly rounded, then rounded to fp16 (this equals its table on every input)."""
    f32 = np.float32
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        inner = ((f32(0.044715) * x).astype(np.float64) * x.astype(np.float64) + 1.0).astype(np.float32)
        t = np.tanh(((f32(0.79788456080286535587989211986876) * x) * inner).astype(np.float64)).astype(np.float32)
        y = ((f32(0.5) * x) * (f32(1.0) + t)).astype(np.float16).astype(np.float32)
    return torch.from_numpy(y)


def gelu_like_llamacpp(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh form) as ggml's CPU backend computes it: the table's value at the fp16 rounding of x, 0 below
    -10 and the identity above 10."""
    bits = x.half().view(torch.int16).long() & 0xFFFF
    table = _gelu_table().to(x.device)[bits]
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def rope_tables_like_llamacpp(head_dim: int, length: int, theta: float, freq_factors: list[float] | None = None,
                              scaling_factor: float = 1.0,
                              attn_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_tables` as llama.cpp's CPU backend computes its angles, so that GGUF models' logits stay its own: in
    fp32, each frequency's angle the previous one times base^(-2 / head_dim), divided by its factor, times
    1 / `scaling_factor`; cos and sin rounded to fp32, then times `attn_factor`. (The C library's powf, cosf and
    sinf can differ in a last bit: the decoder takes layers.c's tables where it is compiled.)"""
    f32 = np.float32
    ratio = f32(np.float64(f32(theta)) ** np.float64(f32(-2.0) / f32(head_dim)))
    factors = [f32(f) for f in freq_factors] if freq_factors is not None else None
    scale = f32(1.0) / f32(scaling_factor)
    angle = np.arange(length, dtype=np.float32)
    angles = np.empty((length, head_dim // 2), dtype=np.float32)
    for i in range(head_dim // 2):
        column = angle / factors[i] if factors is not None else angle
        angles[:, i] = column * scale if scaling_factor != 1.0 else column
        angle = angle * ratio
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)  # (T, hd)
    mscale = f32(attn_factor)
    return (torch.from_numpy(np.cos(angles).astype(np.float32) * mscale),
            torch.from_numpy(np.sin(angles).astype(np.float32) * mscale))
