"""Writing the K-quants (Q4_K, Q5_K, Q6_K), which the gguf package cannot write: llama.cpp's reference search for
each sub-block's scale (and minimum), done in torch for every sub-block of a matrix at once, then packed in
GGUF's block layouts (the ones `blocktypes` reads).

- Q4_K and Q5_K: 8 sub-blocks of 32 a super-block of 256; each sub-block's scale and minimum minimize the
  squared error weighted by rms(sub-block) + |x| over a few candidate scales (least squares for each candidate
  rounding), then both are quantized to 6 bits against the super-block's fp16 d and dmin, and the weights
  rounded once more against the scales as stored.
- Q6_K: 16 sub-blocks of 16, signed 6-bit weights; each sub-block's scale the best of 19 candidates under the
  x^2-weighted error, quantized to 8 bits against the super-block's fp16 d.

Rounding is half to even, as llama.cpp's `nearest_int`. This torch version (used where no C compiler is found)
sums in another order than the C loops of kernels/kquantize.c, so a near-tie can round the other way: 96-100% of
blocks are llama.cpp's (tests/llm/test_kquantize.py compares both versions' blocks with llama.cpp's).
"""
from __future__ import annotations

import numpy as np
import torch

QK_K = 256
TINY = 1e-15  # llama.cpp's GROUP_MAX_EPS: a group whose largest magnitude is below it is all zeros
ROWS_PER_CHUNK = 2048  # bounds the temporaries of a large matrix (the token embedding)


def quantize_k(x: np.ndarray, qtype: str, use_c: bool = True) -> np.ndarray:
    """x (rows, k) fp32, k a multiple of 256 -> the rows' blocks (rows, k / 256 * block bytes) uint8: by the
    compiled kernels (kernels/kquantize.c, the same search in C) where they are built, else in torch."""
    from firstepoch.llm.blocktypes import BLOCK_TYPES
    from firstepoch.llm.kernels import compiled_kernels

    rows, k = x.shape
    if k % QK_K:
        raise ValueError(f"{qtype} takes rows of a multiple of {QK_K} values, not {k}")
    kernels = compiled_kernels() if use_c else None
    if kernels is not None:
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((rows, k // QK_K * BLOCK_TYPES[qtype].block_bytes), np.uint8)
        kernels.library.quantize_k_blocks(int(qtype[1]), x.ctypes.data, out.ctypes.data, rows * k // QK_K,
                                          torch.get_num_threads())
        return out
    encode = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}[qtype]
    chunks = [encode(torch.from_numpy(np.ascontiguousarray(x[at:at + ROWS_PER_CHUNK], np.float32)).reshape(-1, QK_K))
              for at in range(0, rows, ROWS_PER_CHUNK)]
    return torch.cat(chunks).reshape(rows, -1).numpy()


def _sum(v: torch.Tensor) -> torch.Tensor:
    return v.sum(-1)


def _scale_and_min(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, steps: int):
    """Each row of x (groups, n): the scale and minimum (as a positive offset) of x ~ scale * L - offset with L
    in [0, nmax], minimizing the w-weighted squared error (llama.cpp's make_qkx2_quants). Each candidate
    rounding is taken from the best minimum found so far, as there."""
    minimum, top = x.amin(-1).clamp(max=0.0), x.amax(-1)
    flat = top == minimum
    sum_w, sum_x = _sum(w), _sum(w * x)
    one = torch.ones_like(top)

    def levels(numerator, minimum):
        iscale = numerator / torch.where(flat, one, top - minimum)
        return torch.round(iscale[:, None] * (x - minimum[:, None])).clamp(0, nmax)

    scale = 1 / (nmax / torch.where(flat, one, top - minimum))
    L = levels(torch.full_like(top, float(nmax)), minimum)
    best = _sum(w * (scale[:, None] * L + minimum[:, None] - x) ** 2)
    for step in range(steps + 1):
        numerator = torch.tensor(rmin, dtype=torch.float32) + torch.tensor(rdelta, dtype=torch.float32) * step + nmax
        candidate = levels(numerator.expand_as(top), minimum)
        sum_l, sum_l2, sum_xl = _sum(w * candidate), _sum(w * candidate * candidate), _sum(w * candidate * x)
        det = sum_w * sum_l2 - sum_l ** 2
        solvable = det > 0
        det = torch.where(solvable, det, one)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0  # the minimum is kept at or below 0: then the scale alone, by least squares
        this_scale = torch.where(positive, sum_xl / torch.where(sum_l2 > 0, sum_l2, one), this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        error = _sum(w * (this_scale[:, None] * candidate + this_min[:, None] - x) ** 2)
        better = solvable & (error < best)
        L = torch.where(better[:, None], candidate, L)
        best, scale, minimum = (torch.where(better, error, best), torch.where(better, this_scale, scale),
                                torch.where(better, this_min, minimum))
    return torch.where(flat, torch.zeros_like(scale), scale), -minimum


def _half(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16)


def _pack_scales(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """8 six-bit scales and minimums (blocks, 8) -> the 12 bytes Q4_K and Q5_K keep them in."""
    out = torch.zeros(sc.shape[0], 12, dtype=torch.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _with_minimum(x: torch.Tensor, nmax: int, rmin: float, steps: int):
    """Q4_K, Q5_K: super-blocks x (blocks, 256) -> d, dmin (fp16 bytes), the 12 scale bytes; levels (blocks, 256)."""
    groups = x.reshape(-1, 32)
    w = (_sum(groups * groups) / 32).sqrt()[:, None] + groups.abs()
    scales, mins = (v.reshape(-1, 8) for v in _scale_and_min(groups, w, nmax, rmin, 0.1, steps))
    max_scale, max_min = scales.amax(-1), mins.amax(-1)
    inv_scale = torch.where(max_scale > 0, 63 / torch.where(max_scale > 0, max_scale, 1), 0.0)
    inv_min = torch.where(max_min > 0, 63 / torch.where(max_min > 0, max_min, 1), 0.0)
    sc = torch.round(inv_scale[:, None] * scales).clamp(0, 63).to(torch.uint8)
    mn = torch.round(inv_min[:, None] * mins).clamp(0, 63).to(torch.uint8)
    d, dmin = _half(max_scale / 63), _half(max_min / 63)
    step = (d.float()[:, None] * sc.float())[:, :, None]  # (blocks, 8, 1)
    offset = (dmin.float()[:, None] * mn.float())[:, :, None]
    levels = torch.round((x.reshape(-1, 8, 32) + offset) / torch.where(step == 0, 1, step)).clamp(0, nmax)
    levels = torch.where(step == 0, 0, levels).to(torch.uint8).reshape(-1, QK_K)
    head = torch.cat([d.view(torch.uint8).reshape(-1, 2), dmin.view(torch.uint8).reshape(-1, 2),
                      _pack_scales(sc, mn)], dim=1)
    return head, levels


def _nibble_pairs(levels: torch.Tensor) -> torch.Tensor:
    """Each 64 values -> 32 bytes: value l in the low nibble of byte l, value l + 32 in its high nibble."""
    q = levels.reshape(-1, 4, 2, 32) & 0x0F
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _q4_k(x: torch.Tensor) -> torch.Tensor:
    head, levels = _with_minimum(x, 15, -1.0, 20)
    return torch.cat([head, _nibble_pairs(levels)], dim=1)


def _q5_k(x: torch.Tensor) -> torch.Tensor:
    head, levels = _with_minimum(x, 31, -0.5, 15)
    fifth = (levels >> 4).reshape(-1, 8, 32)  # sub-block j's fifth bits at bit j of the 32 bytes
    qh = (fifth << torch.arange(8, dtype=torch.uint8)[None, :, None]).sum(1).to(torch.uint8)
    return torch.cat([head, qh, _nibble_pairs(levels)], dim=1)


def _signed_scales(x: torch.Tensor, nmax: int = 32) -> torch.Tensor:
    """Each row of x (groups, 16): the scale of x ~ scale * L with L in [-nmax, nmax) under the x^2-weighted
    error, the best of 19 candidate roundings (llama.cpp's make_qx_quants with rmse_type 1)."""
    amax_at = x.abs().argmax(-1, keepdim=True)
    peak = x.gather(-1, amax_at).squeeze(-1)
    empty = peak.abs() < TINY
    peak = torch.where(empty, torch.ones_like(peak), peak)
    w = x * x

    def fit(iscale):
        L = torch.round(iscale[:, None] * x).clamp(-nmax, nmax - 1)
        return _sum(w * x * L), _sum(w * L * L)

    f32 = torch.float32
    sum_lx, sum_l2 = fit(-torch.tensor(nmax, dtype=f32) / peak)
    scale = torch.where(sum_l2 > 0, sum_lx / torch.where(sum_l2 > 0, sum_l2, 1), 0.0)
    best = scale * sum_lx
    for step in [s for s in range(-9, 10) if s != 0]:
        sum_lx, sum_l2 = fit(-(nmax + torch.tensor(0.1, dtype=f32) * step) / peak)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        this = sum_lx / torch.where(sum_l2 > 0, sum_l2, 1)
        scale, best = torch.where(better, this, scale), torch.where(better, this * sum_lx, best)
    return torch.where(empty, torch.zeros_like(scale), scale)


def _q6_k(x: torch.Tensor) -> torch.Tensor:
    scales = _signed_scales(x.reshape(-1, 16)).reshape(-1, 16)
    at = scales.abs().argmax(-1, keepdim=True)
    top = scales.gather(-1, at).squeeze(-1)
    empty = top.abs() < TINY
    iscale = -128 / torch.where(empty, torch.ones_like(top), top)
    d = torch.where(empty, 0.0, _half(1 / iscale).float())
    sc = torch.round(iscale[:, None] * scales).clamp(max=127)
    sc = torch.where(empty[:, None], 0.0, sc)
    step = (d[:, None] * sc)[:, :, None]  # (blocks, 16, 1)
    levels = torch.round(x.reshape(-1, 16, 16) / torch.where(step == 0, 1, step)).clamp(-32, 31)
    levels = torch.where(empty[:, None, None], -32, torch.where(step == 0, 0, levels))  # an empty block: all 0
    levels = (levels + 32).to(torch.uint8).reshape(-1, 2, 4, 32)  # per 128: 4 rows of 32
    low, high = levels & 0x0F, levels >> 4
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=-1)  # (blocks, 2, 64)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)  # (blocks, 2, 32)
    return torch.cat([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.to(torch.int8).view(torch.uint8),
                      _half(d).view(torch.uint8).reshape(-1, 2)], dim=1)
