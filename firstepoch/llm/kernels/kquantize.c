/* Writing K-quant blocks (Q4_K, Q5_K, Q6_K) from fp32 rows, for `firstepoch quantize`: the scale searches of
 * llama.cpp's reference quantizer (see firstepoch/llm/kquantize.py, which does the same in torch where no C
 * compiler is found), in its order of additions, one super-block of 256 values at a time, super-blocks spread
 * over OpenMP threads. The block layouts are GGUF's (blocktypes.py reads them). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SUPER 256
#define TINY 1e-15f  /* a group whose largest magnitude is below this is all zeros */

typedef uint16_t half;
half float_to_half(float f);  /* ggml_matmul.c's conversions, round to nearest even */
float half_to_float(half h);
#define to_half float_to_half
#define from_half half_to_float
static inline int round_even(float v) { return (int)nearbyintf(v); }  /* the default rounding: half to even */
static inline int clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* x (n values) ~ scale * L - offset, L in [0, nmax]: the scale returned, the offset (>= 0) in *offset, L filled.
 * Candidate roundings of the span at nmax + rmin + step * rdelta levels, each fitted by weighted least squares;
 * the best under the w-weighted squared error wins, and the next candidate is rounded from its minimum. */
static float fit_with_min(const float *x, const float *w, int n, int nmax, float rmin, float rdelta, int steps,
                          uint8_t *L, float *offset) {
    float lo = x[0], hi = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, n);
        *offset = -lo;
        return 0.0f;
    }
    float iscale = nmax / (hi - lo), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clamp(round_even(iscale * (x[i] - lo)), 0, nmax);
        const float diff = scale * L[i] + lo - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t trial[32];
    for (int step = 0; step <= steps; step++) {
        iscale = (rmin + rdelta * step + nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clamp(round_even(iscale * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det <= 0) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det, this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (this_min > 0) {  /* the minimum stays at or below 0: the scale alone */
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float error = 0;
        for (int i = 0; i < n; i++) {
            const float diff = this_scale * trial[i] + this_min - x[i];
            error += w[i] * (diff * diff);
        }
        if (error < best) {
            memcpy(L, trial, n);
            best = error, scale = this_scale, lo = this_min;
        }
    }
    *offset = -lo;
    return scale;
}

/* Q4_K (nmax 15) and Q5_K (31): 8 sub-blocks of 32, each its scale and minimum, both to 6 bits against the
 * super-block's d and dmin; levels[256] are the weights rounded against the scales as stored. */
static void with_minimum(const float *x, int nmax, float rmin, int steps, uint8_t *head, uint8_t *levels) {
    float scales[8], offsets[8], w[32], max_scale = 0, max_offset = 0;
    for (int j = 0; j < 8; j++) {
        const float *g = x + 32 * j;
        float sum_x2 = 0;
        for (int i = 0; i < 32; i++) sum_x2 += g[i] * g[i];
        const float rms = sqrtf(sum_x2 / 32);
        for (int i = 0; i < 32; i++) w[i] = rms + fabsf(g[i]);
        scales[j] = fit_with_min(g, w, 32, nmax, rmin, 0.1f, steps, levels + 32 * j, &offsets[j]);
        max_scale = scales[j] > max_scale ? scales[j] : max_scale;
        max_offset = offsets[j] > max_offset ? offsets[j] : max_offset;
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f, inv_offset = max_offset > 0 ? 63.0f / max_offset : 0.0f;
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)clamp(round_even(inv_scale * scales[j]), 0, 63);
        mn[j] = (uint8_t)clamp(round_even(inv_offset * offsets[j]), 0, 63);
    }
    const half d = to_half(max_scale / 63.0f), dmin = to_half(max_offset / 63.0f);
    memcpy(head, &d, 2);
    memcpy(head + 2, &dmin, 2);
    uint8_t *packed = head + 4;  /* 12 bytes: the low 6 bits of sub-blocks 0-3, then 4-7's nibbles and top bits */
    for (int j = 0; j < 4; j++) {
        packed[j] = sc[j] | (uint8_t)((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | (uint8_t)((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4));
    }
    for (int j = 0; j < 8; j++) {
        const float step = from_half(d) * sc[j];
        if (step == 0) continue;  /* its values are all -offset: the levels from the search do */
        const float offset = from_half(dmin) * mn[j];
        for (int i = 0; i < 32; i++) levels[32 * j + i] = (uint8_t)clamp(round_even((x[32 * j + i] + offset) / step), 0, nmax);
    }
}

static void nibble_pairs(const uint8_t *levels, uint8_t *qs) {  /* each 64 levels -> 32 bytes, low then high */
    for (int c = 0; c < 4; c++)
        for (int i = 0; i < 32; i++) qs[32 * c + i] = (uint8_t)((levels[64 * c + i] & 0x0f) | ((levels[64 * c + 32 + i] & 0x0f) << 4));
}

static void block_q4_k(const float *x, uint8_t *out) {  /* 144 bytes: d, dmin, 12 scale bytes, 128 of nibbles */
    uint8_t levels[SUPER];
    with_minimum(x, 15, -1.0f, 20, out, levels);
    nibble_pairs(levels, out + 16);
}

static void block_q5_k(const float *x, uint8_t *out) {  /* 176 bytes: ... 32 bytes of fifth bits, 128 of nibbles */
    uint8_t levels[SUPER];
    with_minimum(x, 31, -0.5f, 15, out, levels);
    uint8_t *qh = out + 16;
    memset(qh, 0, 32);
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 32; i++) qh[i] |= (uint8_t)((levels[32 * j + i] >> 4) << j);
    nibble_pairs(levels, out + 48);
}

/* x (16 values) ~ scale * L, L in [-nmax, nmax): the best of 19 candidate roundings under the x^2-weighted error */
static float fit_signed(const float *x, int nmax, int8_t *L) {
    float peak = 0, amax = 0;
    for (int i = 0; i < 16; i++)
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); peak = x[i]; }
    if (amax < TINY) {
        memset(L, 0, 16);
        return 0.0f;
    }
    float scale = 0, best = 0;
    for (int step = 0; step <= 18; step++) {  /* step 0: nmax levels itself; then nmax -0.9 .. +0.9 */
        const int offset = step == 0 ? 0 : step <= 9 ? step - 10 : step - 9;
        const float iscale = step == 0 ? -nmax / peak : -(nmax + 0.1f * offset) / peak;
        float sum_lx = 0, sum_l2 = 0;
        int8_t trial[16];
        for (int i = 0; i < 16; i++) {
            const int l = clamp(round_even(iscale * x[i]), -nmax, nmax - 1);
            trial[i] = (int8_t)(l + nmax);
            const float w = x[i] * x[i];
            sum_lx += w * x[i] * l;
            sum_l2 += w * l * l;
        }
        if (step == 0) {
            memcpy(L, trial, 16);
            scale = sum_l2 != 0 ? sum_lx / sum_l2 : 0.0f;
            best = scale * sum_lx;
        } else if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
            memcpy(L, trial, 16);
            scale = sum_lx / sum_l2;
            best = scale * sum_lx;
        }
    }
    return scale;
}

static void block_q6_k(const float *x, uint8_t *out) {  /* 210 bytes: 128 of low nibbles, 64 of 2-bit pairs, 16 scales, d */
    int8_t levels[SUPER];
    float scales[16], top = 0, top_abs = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_signed(x + 16 * j, 32, levels + 16 * j);
        if (fabsf(scales[j]) > top_abs) { top_abs = fabsf(scales[j]); top = scales[j]; }
    }
    memset(out, 0, 210);
    if (top_abs < TINY) return;
    const float iscale = -128.0f / top;
    const half d = to_half(1 / iscale);
    int8_t *sc = (int8_t *)(out + 192);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)(round_even(iscale * scales[j]) < 127 ? round_even(iscale * scales[j]) : 127);
    memcpy(out + 208, &d, 2);
    for (int j = 0; j < 16; j++) {
        const float step = from_half(d) * sc[j];
        if (step == 0) continue;
        for (int i = 0; i < 16; i++) levels[16 * j + i] = (int8_t)(clamp(round_even(x[16 * j + i] / step), -32, 31) + 32);
    }
    uint8_t *ql = out, *qh = out + 128;
    for (int h = 0; h < 2; h++)  /* each 128 levels: four rows of 32, nibbles of rows 0|2 and 1|3, top bits of all 4 */
        for (int i = 0; i < 32; i++) {
            const uint8_t *q = (const uint8_t *)levels + 128 * h + i;
            ql[64 * h + i] = (uint8_t)((q[0] & 0x0f) | ((q[64] & 0x0f) << 4));
            ql[64 * h + 32 + i] = (uint8_t)((q[32] & 0x0f) | ((q[96] & 0x0f) << 4));
            qh[32 * h + i] = (uint8_t)((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
        }
}

/* blocks super-blocks of x (blocks * 256 fp32) -> out (blocks * block bytes): type 4 Q4_K, 5 Q5_K, 6 Q6_K */
void quantize_k_blocks(int type, const float *x, uint8_t *out, int64_t blocks, int threads) {
    const int64_t size = type == 4 ? 144 : type == 5 ? 176 : 210;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        if (type == 4) block_q4_k(x + b * SUPER, out + b * size);
        else if (type == 5) block_q5_k(x + b * SUPER, out + b * size);
        else block_q6_k(x + b * SUPER, out + b * size);
    }
}
