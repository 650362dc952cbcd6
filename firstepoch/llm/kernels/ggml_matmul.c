/* Matrix products with GGUF block-quantized weights, for CPU inference.
 *
 * Weights stay in their GGUF blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32 weights a block, an fp16 scale, Q4_1
 * and Q5_1 also an fp16 minimum, Q5_0 and Q5_1 a fifth bit per weight) and the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256 weights a super-block of
 * 8 or 16 sub-blocks with their own 6- or 8-bit scales). Activations are quantized to 8-bit blocks first
 * (Q8_0; Q8_1, which also carries d * sum(q); Q8_K for the K-quants: 256 values, a float scale and the sums
 * of each 16), so each block's dot product is an integer dot product, scaled once: the arithmetic of
 * llama.cpp's CPU backend. The integer sums go to the same vector lanes as in its AVX2 code and the lanes are
 * scaled and added in its order, so on AVX2 and AVX-512 machines the results are its own bit for bit.
 *
 * y (T, N) = x (T, K) . W^T, W given as N rows of K/32 blocks. Rows are split across OpenMP threads; each
 * thread walks its rows once and reuses each row for all T activation rows (prefill).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define QK 32
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define TILED 1  /* prefill multiplies the 32-weight types in tiles of four rows (see "tiles" below) */
#endif

typedef uint16_t half;
typedef struct { half d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { half d; half m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { half d; int8_t qs[QK]; } block_q8_0;
typedef struct { half d; half s; int8_t qs[QK]; } block_q8_1;
typedef struct { half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { half d; half m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
typedef struct { half d; uint8_t qs[QK / 2]; } block_iq4_nl;  /* 4-bit indices into IQ4_NL_VALUES */
static const int8_t IQ4_NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

#define QK_K 256
typedef struct { half d; half dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { half d; half dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; half d; } block_q6_K;
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; half d; half dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; half d; } block_q3_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

static inline float to_float(half h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { exp = 127 - 15 + 1; while (!(man & 0x400)) { man <<= 1; exp--; } man &= 0x3ff; bits = sign | exp << 23 | man << 13; }
    } else if (exp == 31) { bits = sign | 0x7f800000 | man << 13; }
    else { bits = sign | (exp + 127 - 15) << 23 | man << 13; }
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

static inline half to_half(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    /* round to nearest even, subnormals included (a K-quant's scale of small weights is one) */
    uint32_t bits; memcpy(&bits, &f, 4);
    uint32_t sign = (bits >> 16) & 0x8000; int32_t exp = ((bits >> 23) & 0xff) - 127 + 15; uint32_t man = bits & 0x7fffff;
    if (exp <= 0) {  /* a subnormal half: the 24-bit significand shifted down, rounded; it may round up to normal */
        if (exp < -10) return (half)sign;
        const uint32_t m = man | 0x800000, shift = (uint32_t)(14 - exp), rest = m & ((1u << shift) - 1);
        uint32_t h = m >> shift;
        const uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (h & 1))) h++;
        return (half)(sign | h);
    }
    if (exp >= 31) return (half)(sign | 0x7c00);
    uint32_t h = sign | exp << 10 | man >> 13, rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (half)h;
#endif
}

/* the same, for kquantize.c */
half float_to_half(float f) { return to_half(f); }
float half_to_float(half h) { return to_float(h); }

/* ------------------------------------------------------------------------- activations to 8-bit blocks */

static void quantize_block(const float *x, int8_t *q, float *d_out, int *sum_out) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;  /* fmaxf's result, inlined */
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK; j++) { q[j] = (int8_t)nearbyintf(x[j] * id); sum += q[j]; }  /* half to even */
    *d_out = d; *sum_out = sum;
}

static void quantize_row_q8_0(const float *x, block_q8_0 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++) {
        float d; int sum;
        quantize_block(x + i * QK, y[i].qs, &d, &sum);
        y[i].d = to_half(d);
    }
}

static void quantize_row_q8_1(const float *x, block_q8_1 *y, int64_t k) {
    for (int64_t i = 0; i < k / QK; i++) {
        float d; int sum;
        quantize_block(x + i * QK, y[i].qs, &d, &sum);
        y[i].d = to_half(d);
        y[i].s = to_half(d * (float)sum);
    }
}

/* x rounded to the nearest integer, half to even, by the float trick llama.cpp's K-quant code uses */
static inline int nearest_int(float x) {
    const float shifted = x + 12582912.0f;
    int32_t bits; memcpy(&bits, &shifted, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

/* 256 values a block: the scale maps the value of largest magnitude to -127 (keeping its sign), and each
 * 16 values' quantized sum is kept for the K-quants' minimums and offsets */
static void quantize_row_q8_K(const float *x, block_q8_K *y, int64_t k) {
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;  /* then its first value */
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) == amax) { max = x[j]; break; }
        memset(y[i].qs, 0, QK_K);
        memset(y[i].bsums, 0, sizeof y[i].bsums);
        y[i].d = 0.0f;
        if (amax == 0.0f) continue;
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[i].qs[16 * g + j];
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------------------ dot products of rows */

/* 8 float lanes added as a vector unit's horizontal sum does: i + (i + 4), then (0 + 2) + (1 + 3) */
static inline float lanes8_sum(const float *v) {
    const float r0 = v[0] + v[4], r1 = v[1] + v[5], r2 = v[2] + v[6], r3 = v[3] + v[7];
    return (r0 + r2) + (r1 + r3);
}

#if defined(__AVX2__)
static inline float hsum(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* 32 unsigned bytes times 32 signed bytes, summed in pairs of four to 8 floats */
static inline __m256 dot_u8_s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

static inline __m256i nibbles(const uint8_t *qs) {  /* 16 bytes -> 32 values: low nibbles, then high */
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

static inline __m256 dot_s8_s8(__m256i x, __m256i y) {  /* sign trick: |x| * (y with x's sign) */
    return dot_u8_s8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}
#endif

/* The 32-weight types, one block at a time: their weights as bytes (AVX2) or one by one (the fallback), then
 * one dot product for each kind: signed weights times Q8_0 activations (Q4_0, Q5_0, Q8_0), or unsigned ones times
 * Q8_1 activations plus the block's minimum times the activations' scaled sum (Q4_1, Q5_1). Weight j of a
 * nibble type is byte j's low nibble for j < 16, byte j - 16's high one after; the fifth bit is bit j of qh. */
static inline int nibble(const uint8_t *qs, int j) { return j < QK / 2 ? qs[j] & 0x0f : qs[j - QK / 2] >> 4; }
static inline int fifth_bit(const uint8_t *qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

static inline int weight_q4_0(const block_q4_0 *b, int j) { return nibble(b->qs, j) - 8; }
static inline int weight_q8_0(const block_q8_0 *b, int j) { return b->qs[j]; }
static inline int weight_q5_0(const block_q5_0 *b, int j) { return (nibble(b->qs, j) | fifth_bit(b->qh, j) << 4) - 16; }
static inline int weight_q4_1(const block_q4_1 *b, int j) { return nibble(b->qs, j); }
static inline int weight_q5_1(const block_q5_1 *b, int j) { return nibble(b->qs, j) | fifth_bit(b->qh, j) << 4; }
static inline int weight_iq4_nl(const block_iq4_nl *b, int j) { return IQ4_NL_VALUES[nibble(b->qs, j)]; }

#if defined(__AVX2__)
static inline __m256i bits_to_bytes(const uint8_t *qh) {  /* bit j of 4 bytes -> byte j: 0xff or 0 */
    uint32_t bits; memcpy(&bits, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)bits),
                                               _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                  0x0303030303030303));
    const __m256i select = _mm256_set1_epi64x((int64_t)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
}

static inline __m256i fifth_bits(const uint8_t *qh) {  /* 16 where weight j's fifth bit is set */
    return _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
}

static inline __m256i weights_q4_0(const block_q4_0 *b) { return _mm256_sub_epi8(nibbles(b->qs), _mm256_set1_epi8(8)); }
static inline __m256i weights_q8_0(const block_q8_0 *b) { return _mm256_loadu_si256((const __m256i *)b->qs); }
static inline __m256i weights_q5_0(const block_q5_0 *b) {
    return _mm256_sub_epi8(_mm256_or_si256(nibbles(b->qs), fifth_bits(b->qh)), _mm256_set1_epi8(16));
}
static inline __m256i weights_q4_1(const block_q4_1 *b) { return nibbles(b->qs); }
static inline __m256i weights_q5_1(const block_q5_1 *b) { return _mm256_or_si256(nibbles(b->qs), fifth_bits(b->qh)); }
static inline __m256i weights_iq4_nl(const block_iq4_nl *b) {  /* the table's values of the 32 nibbles */
    const __m128i table = _mm_loadu_si128((const __m128i *)IQ4_NL_VALUES), bits = _mm_loadu_si128((const __m128i *)b->qs);
    return _mm256_set_m128i(_mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bits, 4), _mm_set1_epi8(0x0f))),
                            _mm_shuffle_epi8(table, _mm_and_si128(bits, _mm_set1_epi8(0x0f))));
}
#endif

#if defined(__AVX2__)
#define DOT_SIGNED(NAME, WBLOCK, WEIGHTS, WEIGHT)                                                          \
    static float NAME(const WBLOCK *x, const block_q8_0 *y, int64_t nb) {                               \
        __m256 acc = _mm256_setzero_ps();                                                                \
        for (int64_t i = 0; i < nb; i++) {                                                               \
            __m256 d = _mm256_set1_ps(to_float(x[i].d) * to_float(y[i].d));                              \
            acc = _mm256_fmadd_ps(d, dot_s8_s8(WEIGHTS(x + i), _mm256_loadu_si256((const __m256i *)y[i].qs)), acc); \
        }                                                                                                \
        return hsum(acc);                                                                                \
    }
#define DOT_WITH_MIN(NAME, WBLOCK, WEIGHTS, WEIGHT)                                                        \
    static float NAME(const WBLOCK *x, const block_q8_1 *y, int64_t nb) {                               \
        float sum_m = 0.0f;                                                                              \
        __m256 acc = _mm256_setzero_ps();                                                                \
        for (int64_t i = 0; i < nb; i++) {                                                               \
            sum_m += to_float(x[i].m) * to_float(y[i].s);                                                \
            __m256 d = _mm256_set1_ps(to_float(x[i].d) * to_float(y[i].d));                              \
            acc = _mm256_fmadd_ps(d, dot_u8_s8(WEIGHTS(x + i), _mm256_loadu_si256((const __m256i *)y[i].qs)), acc); \
        }                                                                                                \
        return hsum(acc) + sum_m;                                                                        \
    }
#else
#define DOT_SIGNED(NAME, WBLOCK, WEIGHTS, WEIGHT)                                                          \
    static float NAME(const WBLOCK *x, const block_q8_0 *y, int64_t nb) {                               \
        float sum = 0.0f;                                                                                \
        for (int64_t i = 0; i < nb; i++) {                                                               \
            int s = 0;                                                                                   \
            for (int j = 0; j < QK; j++) s += WEIGHT(x + i, j) * y[i].qs[j];                              \
            sum += to_float(x[i].d) * to_float(y[i].d) * (float)s;                                       \
        }                                                                                                \
        return sum;                                                                                      \
    }
#define DOT_WITH_MIN(NAME, WBLOCK, WEIGHTS, WEIGHT)                                                        \
    static float NAME(const WBLOCK *x, const block_q8_1 *y, int64_t nb) {                               \
        float sum = 0.0f, sum_m = 0.0f;                                                                  \
        for (int64_t i = 0; i < nb; i++) {                                                               \
            int s = 0;                                                                                   \
            for (int j = 0; j < QK; j++) s += WEIGHT(x + i, j) * y[i].qs[j];                              \
            sum += to_float(x[i].d) * to_float(y[i].d) * (float)s;                                       \
            sum_m += to_float(x[i].m) * to_float(y[i].s);                                                \
        }                                                                                                \
        return sum + sum_m;                                                                              \
    }
#endif

DOT_SIGNED(dot_q4_0, block_q4_0, weights_q4_0, weight_q4_0)
DOT_SIGNED(dot_q8_0, block_q8_0, weights_q8_0, weight_q8_0)
DOT_SIGNED(dot_q5_0, block_q5_0, weights_q5_0, weight_q5_0)
DOT_WITH_MIN(dot_q4_1, block_q4_1, weights_q4_1, weight_q4_1)
DOT_WITH_MIN(dot_q5_1, block_q5_1, weights_q5_1, weight_q5_1)

/* IQ4_NL, as llama.cpp's AVX2 loop adds it: blocks in pairs into two accumulators (even, odd), added lane by lane
 * and summed; an odd last block alone, its integer sum scaled (ggml_vec_dot_iq4_nl_q8_0) */
static float dot_iq4_nl(const block_iq4_nl *x, const block_q8_0 *y, int64_t nb) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX2__)
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; i + 1 < nb; i += 2)
        for (int k = 0; k < 2; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(to_float(y[i + k].d) * to_float(x[i + k].d)),
                                     dot_s8_s8(weights_iq4_nl(x + i + k), _mm256_loadu_si256((const __m256i *)y[i + k].qs)),
                                     acc[k]);
    sum = hsum(_mm256_add_ps(acc[0], acc[1]));
#endif
    for (; i < nb; i++) {
        int s = 0;
        for (int j = 0; j < QK; j++) s += weight_iq4_nl(x + i, j) * y[i].qs[j];
#if defined(__AVX512F__)
        sum = fmaf(to_float(y[i].d) * to_float(x[i].d), (float)s, sum);  /* llama.cpp's AVX-512 build fuses it */
#else
        sum += to_float(y[i].d) * to_float(x[i].d) * (float)s;  /* its AVX2 build does not (measured on both) */
#endif
    }
    return sum;
}

/* Q4_K and Q5_K: 8 sub-blocks of 32 with a 6-bit scale and minimum each, packed in 12 bytes */
static inline void scales_and_mins(const uint8_t *q, int32_t *sc, int32_t *mn) {
    for (int j = 0; j < 4; j++) { sc[j] = q[j] & 63; mn[j] = q[j + 4] & 63; }
    for (int j = 4; j < 8; j++) {
        sc[j] = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* minimums times the activations' sums: four lanes, lane l for sub-blocks 2l and 2l + 1 */
static inline void min_lanes(const int32_t *mn, const int16_t *bsums, int32_t *lanes) {
    for (int l = 0; l < 4; l++)
        lanes[l] = mn[2 * l] * (bsums[4 * l] + bsums[4 * l + 1]) + mn[2 * l + 1] * (bsums[4 * l + 2] + bsums[4 * l + 3]);
}

/* Integer sums of one K-quant super-block in 8 lanes as llama.cpp's AVX2 code forms them: lane p holds the
 * products of elements 4p..4p+3 of every 32 of the block, each times its sub-block's scale. `value(t)` gives
 * weight t (0..255) as an unsigned integer, `scale(t)` its sub-block's scale. */
#define K_LANES(VALUE, SCALE, q8, lanes)                                                                  \
    do {                                                                                                 \
        for (int p = 0; p < 8; p++) lanes[p] = 0;                                                         \
        for (int t = 0; t < QK_K; t++) lanes[(t % 32) / 4] += (SCALE) * (VALUE) * (q8)[t];                \
    } while (0)

#if defined(__AVX2__)
static inline __m256i scale_pair(int32_t low, int32_t high) {  /* lanes 0-3 times low, 4-7 times high */
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)high), _mm_set1_epi16((int16_t)low));
}

#endif

#if defined(__AVX2__)
/* A Q4_K or Q5_K super-block unpacked once for any number of activation rows: its 8 sub-blocks' values as bytes
 * (v[2j]: weights 64j..64j+31, v[2j+1]: 64j+32..64j+63), scales, minimums and fp16 scales as floats */
typedef struct { __m256i v[8]; int32_t sc[8], mn[8]; float d, dmin; } k_unpacked;

static inline void unpack_q4_K(const block_q4_K *x, k_unpacked *u) {
    scales_and_mins(x->scales, u->sc, u->mn);
    u->d = to_float(x->d), u->dmin = to_float(x->dmin);
    for (int j = 0; j < 4; j++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
        u->v[2 * j] = _mm256_and_si256(bits, _mm256_set1_epi8(0x0f));
        u->v[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), _mm256_set1_epi8(0x0f));
    }
}

static inline void unpack_q5_K(const block_q5_K *x, k_unpacked *u) {
    scales_and_mins(x->scales, u->sc, u->mn);
    u->d = to_float(x->d), u->dmin = to_float(x->dmin);
    const __m256i hbits = _mm256_loadu_si256((const __m256i *)x->qh), one = _mm256_set1_epi8(1);
    for (int j = 0; j < 4; j++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
        const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one);
        const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one);
        u->v[2 * j] = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi8(0x0f)), _mm256_slli_epi16(h0, 4));
        u->v[2 * j + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), _mm256_set1_epi8(0x0f)),
                                          _mm256_slli_epi16(h1, 4));
    }
}

/* the 8 integer lanes of an unpacked super-block with one activation block (see K_LANES) */
static inline void k_lanes(const k_unpacked *u, const int8_t *q8, int32_t *lanes) {
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++)
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16((int16_t)u->sc[j]), _mm256_maddubs_epi16(
            u->v[j], _mm256_loadu_si256((const __m256i *)(q8 + 32 * j)))));
    _mm256_storeu_si256((__m256i *)lanes, sumi);
}
#endif

/* one Q4_K super-block's terms into acc (8 lanes) and acc_m (4 lanes), as llama.cpp's AVX2 loop adds them */
static inline void q4_K_terms(float d, float dmin, const int32_t *mn, const int32_t *lanes, const int16_t *bsums,
                              float *acc, float *acc_m) {
    int32_t m[4];
    min_lanes(mn, bsums, m);
    for (int l = 0; l < 4; l++) acc_m[l] = fmaf(dmin, (float)m[l], acc_m[l]);
    for (int p = 0; p < 8; p++) acc[p] = fmaf(d, (float)lanes[p], acc[p]);
}

static inline float q4_K_sum(const float *acc, const float *acc_m) {
    return lanes8_sum(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]));
}

static float dot_q4_K(const block_q4_K *x, const block_q8_K *y, int64_t nb) {
    float acc[8] = {0}, acc_m[4] = {0};
    for (int64_t i = 0; i < nb; i++) {
        int32_t lanes[8];
#if defined(__AVX2__)
        k_unpacked u;
        unpack_q4_K(x + i, &u);
        k_lanes(&u, y[i].qs, lanes);
        q4_K_terms(y[i].d * u.d, -y[i].d * u.dmin, u.mn, lanes, y[i].bsums, acc, acc_m);
#else
        int32_t sc[8], mn[8];
        scales_and_mins(x[i].scales, sc, mn);
        const uint8_t *q = x[i].qs;
        K_LANES((t % 64 < 32 ? q[t / 64 * 32 + t % 32] & 0x0f : q[t / 64 * 32 + t % 32] >> 4), sc[t / 32], y[i].qs, lanes);
        q4_K_terms(y[i].d * to_float(x[i].d), -y[i].d * to_float(x[i].dmin), mn, lanes, y[i].bsums, acc, acc_m);
#endif
    }
    return q4_K_sum(acc, acc_m);
}

/* one Q5_K super-block's terms: its minimums into the scalar summs (fused, as llama.cpp's compiler does) */
static inline void q5_K_terms(float d, float dmin, const int32_t *mn, const int32_t *lanes, const int16_t *bsums,
                              float *acc, float *summs) {
    int32_t m[4];
    min_lanes(mn, bsums, m);
    *summs = fmaf(dmin, (float)((m[0] + m[1]) + (m[2] + m[3])), *summs);
    for (int p = 0; p < 8; p++) acc[p] = fmaf(d, (float)lanes[p], acc[p]);
}

static float dot_q5_K(const block_q5_K *x, const block_q8_K *y, int64_t nb) {
    float acc[8] = {0}, summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t lanes[8];
#if defined(__AVX2__)
        k_unpacked u;
        unpack_q5_K(x + i, &u);
        k_lanes(&u, y[i].qs, lanes);
        q5_K_terms(y[i].d * u.d, -y[i].d * u.dmin, u.mn, lanes, y[i].bsums, acc, &summs);
#else
        int32_t sc[8], mn[8];
        scales_and_mins(x[i].scales, sc, mn);
        const uint8_t *q = x[i].qs, *qh = x[i].qh;
        K_LANES(((t % 64 < 32 ? q[t / 64 * 32 + t % 32] & 0x0f : q[t / 64 * 32 + t % 32] >> 4) |
                 (((qh[t % 32] >> (t / 32)) & 1) << 4)), sc[t / 32], y[i].qs, lanes);
        q5_K_terms(y[i].d * to_float(x[i].d), -y[i].d * to_float(x[i].dmin), mn, lanes, y[i].bsums, acc, &summs);
#endif
    }
    return lanes8_sum(acc) + summs;
}

#if defined(__AVX2__) && !defined(TILED)
/* four activation rows at once: each super-block unpacked once */
static void dot4_q4_K(const block_q4_K *x, const block_q8_K *y, int64_t nb, float *out) {
    float acc[4][8] = {{0}}, acc_m[4][4] = {{0}};
    for (int64_t i = 0; i < nb; i++) {
        k_unpacked u;
        unpack_q4_K(x + i, &u);
        for (int r = 0; r < 4; r++) {
            const block_q8_K *b = y + r * nb + i;
            int32_t lanes[8];
            k_lanes(&u, b->qs, lanes);
            q4_K_terms(b->d * u.d, -b->d * u.dmin, u.mn, lanes, b->bsums, acc[r], acc_m[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = q4_K_sum(acc[r], acc_m[r]);
}

static void dot4_q5_K(const block_q5_K *x, const block_q8_K *y, int64_t nb, float *out) {
    float acc[4][8] = {{0}}, summs[4] = {0};
    for (int64_t i = 0; i < nb; i++) {
        k_unpacked u;
        unpack_q5_K(x + i, &u);
        for (int r = 0; r < 4; r++) {
            const block_q8_K *b = y + r * nb + i;
            int32_t lanes[8];
            k_lanes(&u, b->qs, lanes);
            q5_K_terms(b->d * u.d, -b->d * u.dmin, u.mn, lanes, b->bsums, acc[r], &summs[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = lanes8_sum(acc[r]) + summs[r];
}
#endif

#if defined(__AVX2__)
/* a Q6_K super-block unpacked once: v[4j + k] holds weights 128j + 32k .. + 31 as 6-bit unsigned values */
typedef struct { __m256i v[8]; float d; } q6_unpacked;

static inline void unpack_q6_K(const block_q6_K *x, q6_unpacked *u) {
    u->d = to_float(x->d);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
    for (int j = 0; j < 2; j++) {
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * j));
        const __m256i b2 = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * j + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * j));
        u->v[4 * j] = _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
        u->v[4 * j + 1] = _mm256_or_si256(_mm256_and_si256(b2, m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
        u->v[4 * j + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
        u->v[4 * j + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
    }
}

static inline void q6_lanes(const q6_unpacked *u, const int8_t *sc, const int8_t *q8, int32_t *lanes) {
    __m256i sumi = _mm256_setzero_si256();
    for (int g = 0; g < 8; g++)
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair(sc[2 * g], sc[2 * g + 1]), _mm256_maddubs_epi16(
            u->v[g], _mm256_loadu_si256((const __m256i *)(q8 + 32 * g)))));
    _mm256_storeu_si256((__m256i *)lanes, sumi);
}
#endif

/* one Q6_K super-block's terms: the weights' offset of 32 is minus 32 times each 16 activations' sum times its
 * scale (lane p for sub-blocks 2p, 2p + 1), then the lanes scaled into acc */
static inline void q6_K_terms(float d, const int8_t *sc, int32_t *lanes, const int16_t *bsums, float *acc) {
    for (int p = 0; p < 8; p++) lanes[p] -= 32 * (bsums[2 * p] * sc[2 * p] + bsums[2 * p + 1] * sc[2 * p + 1]);
    for (int p = 0; p < 8; p++) acc[p] = fmaf(d, (float)lanes[p], acc[p]);
}

static float dot_q6_K(const block_q6_K *x, const block_q8_K *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t i = 0; i < nb; i++) {
        int32_t lanes[8];
#if defined(__AVX2__)
        q6_unpacked u;
        unpack_q6_K(x + i, &u);
        q6_lanes(&u, x[i].scales, y[i].qs, lanes);
        q6_K_terms(y[i].d * u.d, x[i].scales, lanes, y[i].bsums, acc);
#else
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        /* weight t = 128 j + 32 k + e: low 4 bits from ql[64 j + 32 (k % 2) + e] (high nibble for k >= 2),
           high 2 bits from qh[32 j + e] at bit 2 k */
        K_LANES(((((ql[t / 128 * 64 + (t / 32 % 2) * 32 + t % 32] >> (t / 64 % 2 * 4)) & 0x0f) |
                  (((qh[t / 128 * 32 + t % 32] >> (t / 32 % 4 * 2)) & 3) << 4))), x[i].scales[t / 16], y[i].qs, lanes);
        q6_K_terms(y[i].d * to_float(x[i].d), x[i].scales, lanes, y[i].bsums, acc);
#endif
    }
    return lanes8_sum(acc);
}

#if defined(__AVX2__) && !defined(TILED)
static void dot4_q6_K(const block_q6_K *x, const block_q8_K *y, int64_t nb, float *out) {
    float acc[4][8] = {{0}};
    for (int64_t i = 0; i < nb; i++) {
        q6_unpacked u;
        unpack_q6_K(x + i, &u);
        for (int r = 0; r < 4; r++) {
            const block_q8_K *b = y + r * nb + i;
            int32_t lanes[8];
            q6_lanes(&u, x[i].scales, b->qs, lanes);
            q6_K_terms(b->d * u.d, x[i].scales, lanes, b->bsums, acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = lanes8_sum(acc[r]);
}
#endif

/* Q2_K: 16 sub-blocks of 16, 2-bit weights laid out as Q3_K's low bits, each sub-block a 4-bit scale (low
 * nibble) and minimum (high nibble). As llama.cpp's AVX2 loop: each super-block adds its minimums' lanes (lane p:
 * sub-blocks 2p, 2p + 1, times their activations' sums) times -dmin, then the weights' lanes times d */
static inline void q2_K_terms(float d, float dmin, const uint8_t *scales, const int16_t *bsums, const int32_t *lanes,
                              float *acc) {
    for (int p = 0; p < 8; p++)
        acc[p] = fmaf(dmin, (float)((scales[2 * p] >> 4) * bsums[2 * p] + (scales[2 * p + 1] >> 4) * bsums[2 * p + 1]),
                      acc[p]);
    for (int p = 0; p < 8; p++) acc[p] = fmaf(d, (float)lanes[p], acc[p]);
}

#if defined(__AVX2__)
static inline void unpack_q2_K(const block_q2_K *x, __m256i *v) {  /* v[c]: weights 32c .. 32c + 31, in [0, 3] */
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int j = 0; j < 2; j++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
        for (int k = 0; k < 4; k++) v[4 * j + k] = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
    }
}
#endif

static float dot_q2_K(const block_q2_K *x, const block_q8_K *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t i = 0; i < nb; i++) {
        int32_t lanes[8];
        const uint8_t *sc = x[i].scales;
#if defined(__AVX2__)
        __m256i v[8], sumi = _mm256_setzero_si256();
        unpack_q2_K(x + i, v);
        for (int c = 0; c < 8; c++)
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair(sc[2 * c] & 0x0f, sc[2 * c + 1] & 0x0f),
                _mm256_maddubs_epi16(v[c], _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * c)))));
        _mm256_storeu_si256((__m256i *)lanes, sumi);
#else
        const uint8_t *qs = x[i].qs;
        K_LANES(((qs[t / 128 * 32 + t % 32] >> (t % 128 / 32 * 2)) & 3), (sc[t / 16] & 0x0f), y[i].qs, lanes);
#endif
        q2_K_terms(y[i].d * to_float(x[i].d), -y[i].d * to_float(x[i].dmin), sc, y[i].bsums, lanes, acc);
    }
    return lanes8_sum(acc);
}

/* Q3_K: 16 sub-blocks of 16, 3-bit weights (2 low bits, and a high bit that, when clear, means -4), 6-bit signed
 * scales (offset 32) packed in 12 bytes: the low nibbles in bytes 0-7 (sub-blocks 0-7, then 8-15 from the high
 * nibbles), the top 2 bits of sub-block s at bits 2 (s / 4) of byte 8 + s % 4 */
static inline void q3_scales(const uint8_t *q, int32_t *sc) {
    for (int s = 0; s < 16; s++) {
        const int low = s < 8 ? q[s] & 0x0f : q[s - 8] >> 4, high = (q[8 + s % 4] >> (2 * (s / 4))) & 3;
        sc[s] = (low | high << 4) - 32;
    }
}

/* one Q3_K super-block's lanes times d into acc: as llama.cpp's AVX2 loop, the -4 of each weight whose high bit
 * is clear goes with that weight's own product (lane p: elements 4p..4p+3 of each 32, times their scale) */
static inline void q3_K_terms(float d, const int32_t *lanes, float *acc) {
    for (int p = 0; p < 8; p++) acc[p] = fmaf(d, (float)lanes[p], acc[p]);
}

#if defined(__AVX2__)
/* a Q3_K super-block unpacked once: v[c] holds weights 32c .. 32c + 31 plus 4, in [0, 7] */
typedef struct { __m256i v[8]; int32_t sc[16]; float d; } q3_unpacked;

static inline void unpack_q3_K(const block_q3_K *x, q3_unpacked *u) {
    q3_scales(x->scales, u->sc);
    u->d = to_float(x->d);
    const __m256i hbits = _mm256_loadu_si256((const __m256i *)x->hmask), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int j = 0; j < 2; j++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
        for (int k = 0; k < 4; k++) {
            const int c = 4 * j + k;
            const __m256i low = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
            const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hbits, c), one);
            u->v[c] = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
        }
    }
}

static inline void q3_lanes(const q3_unpacked *u, const int8_t *q8, int32_t *lanes) {
    const __m256i four = _mm256_set1_epi8(4);
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(q8 + 32 * c));
        const __m256i products = _mm256_sub_epi16(_mm256_maddubs_epi16(u->v[c], a), _mm256_maddubs_epi16(four, a));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair(u->sc[2 * c], u->sc[2 * c + 1]), products));
    }
    _mm256_storeu_si256((__m256i *)lanes, sumi);
}
#endif

static float dot_q3_K(const block_q3_K *x, const block_q8_K *y, int64_t nb) {
    float acc[8] = {0};
    for (int64_t i = 0; i < nb; i++) {
        int32_t lanes[8];
#if defined(__AVX2__)
        q3_unpacked u;
        unpack_q3_K(x + i, &u);
        q3_lanes(&u, y[i].qs, lanes);
        q3_K_terms(y[i].d * u.d, lanes, acc);
#else
        int32_t sc[16];
        q3_scales(x[i].scales, sc);
        const uint8_t *qs = x[i].qs, *hm = x[i].hmask;
        K_LANES((((qs[t / 128 * 32 + t % 32] >> (t % 128 / 32 * 2)) & 3) - (((hm[t % 32] >> (t / 32)) & 1) ? 0 : 4)),
                sc[t / 16], y[i].qs, lanes);
        q3_K_terms(y[i].d * to_float(x[i].d), lanes, acc);
#endif
    }
    return lanes8_sum(acc);
}

#if !defined(TILED)
/* The same dot products for four activation rows at once (y, y + nb, y + 2 nb, y + 3 nb): each weight block
 * is loaded and unpacked once for the four, which is what makes prefill faster than four decode steps.
 * Per row the float operations are those of the single-row functions, in the same order. */
#if defined(__AVX2__)
#define DOT4_BODY(XBLOCK_T, PREPARE, TERM)                                                                 \
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
    float extra[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                                           \
    for (int64_t i = 0; i < nb; i++) {                                                                   \
        PREPARE;                                                                                         \
        for (int u = 0; u < 4; u++) {                                                                    \
            const XBLOCK_T *b = y + u * nb + i;                                                          \
            TERM;                                                                                        \
        }                                                                                                \
    }                                                                                                    \
    for (int u = 0; u < 4; u++) out[u] = hsum(acc[u]) + extra[u];

static void dot4_q4_1(const block_q4_1 *x, const block_q8_1 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_1,
              const __m256i qx = weights_q4_1(x + i); const float dx = to_float(x[i].d); const float mx = to_float(x[i].m),
              extra[u] += mx * to_float(b->s);
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_u8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q4_0(const block_q4_0 *x, const block_q8_0 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_0,
              const __m256i qx = weights_q4_0(x + i); const float dx = to_float(x[i].d),
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_s8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q5_0(const block_q5_0 *x, const block_q8_0 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_0,
              const __m256i qx = weights_q5_0(x + i); const float dx = to_float(x[i].d),
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_s8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q5_1(const block_q5_1 *x, const block_q8_1 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_1,
              const __m256i qx = weights_q5_1(x + i); const float dx = to_float(x[i].d);
              const float mx = to_float(x[i].m),
              extra[u] += mx * to_float(b->s);
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_u8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q8_0(const block_q8_0 *x, const block_q8_0 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_0,
              const __m256i qx = weights_q8_0(x + i); const float dx = to_float(x[i].d),
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_s8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}
#endif

#endif

/* the types whose four-row products are four one-row products (llama.cpp too multiplies them row by row) */
#define DOT4_BY_ROWS(NAME, WBLOCK, XBLOCK, DOT)                                                            \
    static void NAME(const WBLOCK *x, const XBLOCK *y, int64_t nb, float *out) {                        \
        for (int u = 0; u < 4; u++) out[u] = DOT(x, y + u * nb, nb);                                     \
    }
#if !defined(__AVX2__)
DOT4_BY_ROWS(dot4_q4_1, block_q4_1, block_q8_1, dot_q4_1)
DOT4_BY_ROWS(dot4_q4_0, block_q4_0, block_q8_0, dot_q4_0)
DOT4_BY_ROWS(dot4_q8_0, block_q8_0, block_q8_0, dot_q8_0)
DOT4_BY_ROWS(dot4_q5_0, block_q5_0, block_q8_0, dot_q5_0)
DOT4_BY_ROWS(dot4_q5_1, block_q5_1, block_q8_1, dot_q5_1)
DOT4_BY_ROWS(dot4_q4_K, block_q4_K, block_q8_K, dot_q4_K)
DOT4_BY_ROWS(dot4_q5_K, block_q5_K, block_q8_K, dot_q5_K)
DOT4_BY_ROWS(dot4_q6_K, block_q6_K, block_q8_K, dot_q6_K)
#endif
#if !defined(TILED)
DOT4_BY_ROWS(dot4_iq4_nl, block_iq4_nl, block_q8_0, dot_iq4_nl)  /* llama.cpp: pairs of blocks, row by row */
DOT4_BY_ROWS(dot4_q3_K, block_q3_K, block_q8_K, dot_q3_K)
DOT4_BY_ROWS(dot4_q2_K, block_q2_K, block_q8_K, dot_q2_K)
#endif

/* ------------------------------------------------------------- prefill in tiles of four rows (AVX-512) */

/* With AVX-512, prefill quantizes its activations four rows at a time into tiles that hold the same block of the
 * four rows side by side, so one 512-bit register takes that block of two rows and a weight block is multiplied
 * with two rows in each instruction. Each row's lanes and float operations stay those of the one-row functions:
 * the integer dot products are exact whichever way they are formed, and each lane's scale and accumulation are
 * the same operations in the same order. AVX-512 has no byte sign instruction, so signed weights are taken with
 * an offset that makes them unsigned, (w + o) . a - o sum(a) = w . a, the tile carrying o times each 4 values'
 * sum (the lanes the products go to); the scales are the floats of the fp16 ones llama.cpp stores. */
#if defined(TILED)
/* d: the four rows' scales, rows 0 and 1 (then 2 and 3) each in 8 lanes as the products' lanes take them */
typedef struct { int8_t qs[4][QK]; int32_t neg_offset[4][8]; float d[2][16]; } tile_q8_0;
typedef struct { int8_t qs[4][QK]; float d[2][16]; float s[4]; } tile_q8_1;

static void quantize_tile_q8_0(const float *x, int64_t k, tile_q8_0 *y, int offset) {
    for (int u = 0; u < 4; u++)
        for (int64_t i = 0; i < k / QK; i++) {
            float d; int sum;
            int8_t *q = y[i].qs[u];
            quantize_block(x + u * k + i * QK, q, &d, &sum);
            for (int l = 0; l < 8; l++) y[i].d[u / 2][8 * (u % 2) + l] = to_float(to_half(d));
            for (int p = 0; p < 8; p++)
                y[i].neg_offset[u][p] = -offset * (q[4 * p] + q[4 * p + 1] + q[4 * p + 2] + q[4 * p + 3]);
        }
}
static void quantize_tile_q8_0_8(const float *x, int64_t k, tile_q8_0 *y) { quantize_tile_q8_0(x, k, y, 8); }
static void quantize_tile_q8_0_16(const float *x, int64_t k, tile_q8_0 *y) { quantize_tile_q8_0(x, k, y, 16); }
static void quantize_tile_q8_0_128(const float *x, int64_t k, tile_q8_0 *y) { quantize_tile_q8_0(x, k, y, 128); }

static void quantize_tile_q8_1(const float *x, int64_t k, tile_q8_1 *y) {
    for (int u = 0; u < 4; u++)
        for (int64_t i = 0; i < k / QK; i++) {
            float d; int sum;
            quantize_block(x + u * k + i * QK, y[i].qs[u], &d, &sum);
            for (int l = 0; l < 8; l++) y[i].d[u / 2][8 * (u % 2) + l] = to_float(to_half(d));
            y[i].s[u] = to_float(to_half(d * (float)sum));
        }
}

/* a block's 32 weights as unsigned bytes, twice (one copy for each row of a pair): the nibbles (low ones
 * first) of Q4_0 (w + 8) and Q4_1; with the fifth bit, Q5_0 (w + 16) and Q5_1; Q8_0 + 128 */
static inline __m512i nibbles2(const uint8_t *qs) {
    const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)qs));
    return _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xff00ff00u, v, 4), _mm512_set1_epi8(0x0f));
}
static inline __m512i with_fifth2(__m512i v, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, 4);
    return _mm512_mask_add_epi8(v, _cvtu64_mask64((uint64_t)bits | (uint64_t)bits << 32), v, _mm512_set1_epi8(16));
}
static inline __m512i weights2_q4_0(const block_q4_0 *b) { return nibbles2(b->qs); }
static inline __m512i weights2_q4_1(const block_q4_1 *b) { return nibbles2(b->qs); }
static inline __m512i weights2_q5_0(const block_q5_0 *b) { return with_fifth2(nibbles2(b->qs), b->qh); }
static inline __m512i weights2_q5_1(const block_q5_1 *b) { return with_fifth2(nibbles2(b->qs), b->qh); }
static inline __m512i weights2_q8_0(const block_q8_0 *b) {
    return _mm512_xor_si512(_mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qs)),
                            _mm512_set1_epi8((char)0x80));
}

static inline float hsum_low(__m512 v) { return hsum(_mm512_castps512_ps256(v)); }
static inline float hsum_high(__m512 v) { return hsum(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))); }

/* each row's 8 lanes of a tile's accumulators summed as lanes8_sum does */
#define K_SUMS(out, acc01, acc23)                                                                          \
    (out[0] = hsum_low(acc01), out[1] = hsum_high(acc01), out[2] = hsum_low(acc23), out[3] = hsum_high(acc23))

/* the scales of rows 0 and 1 (or 2 and 3) of a tile, each in its 8 lanes */
#define PAIR(a, b) _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)

/* R (1 or 2) weight rows, x and x + nb, times a tile's four activation rows -> out[4 r + u]. Each weight block
 * is unpacked once for the four rows and each tile block loaded once for the R weight rows; per output the
 * operations are those of the one-row function, in its order. PRODUCT(u): the integer lanes of rows u, u + 1;
 * MIN: the Q8_1 types' minimum terms (extra[r]). */
#define TILE_ROWS(NAME, WBLOCK, TILE_T, WEIGHTS, PRODUCT, MIN)                                             \
    static inline __attribute__((always_inline)) void NAME##_rows(const WBLOCK *x, const TILE_T *y, int64_t nb, \
                                                                   float *out, const int R) {            \
        __m512 acc[2][2] = {{_mm512_setzero_ps(), _mm512_setzero_ps()}, {_mm512_setzero_ps(), _mm512_setzero_ps()}}; \
        __m128 extra[2] = {_mm_setzero_ps(), _mm_setzero_ps()};                                          \
        (void)extra;                                                                                     \
        for (int64_t i = 0; i < nb; i++) {                                                               \
            const TILE_T *b = y + i;                                                                     \
            for (int r = 0; r < R; r++) {                                                                \
                const WBLOCK *w = x + r * nb + i;                                                        \
                const __m512i w2 = WEIGHTS(w);                                                           \
                const __m512 wd = _mm512_set1_ps(to_float(w->d));                                        \
                acc[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(wd, _mm512_loadu_ps(b->d[0])),                 \
                                            _mm512_cvtepi32_ps(PRODUCT(0)), acc[r][0]);                  \
                acc[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(wd, _mm512_loadu_ps(b->d[1])),                 \
                                            _mm512_cvtepi32_ps(PRODUCT(2)), acc[r][1]);                  \
                MIN;                                                                                     \
            }                                                                                            \
        }                                                                                                \
        for (int r = 0; r < R; r++) {                                                                    \
            float m[4];                                                                                  \
            _mm_storeu_ps(m, extra[r]);                                                                  \
            out[4 * r] = hsum_low(acc[r][0]), out[4 * r + 1] = hsum_high(acc[r][0]);                     \
            out[4 * r + 2] = hsum_low(acc[r][1]), out[4 * r + 3] = hsum_high(acc[r][1]);                 \
            if (MIN_OF_##TILE_T) for (int u = 0; u < 4; u++) out[4 * r + u] += m[u];                      \
        }                                                                                                \
    }                                                                                                    \
    static void NAME(const WBLOCK *x, const TILE_T *y, int64_t nb, float *out) { NAME##_rows(x, y, nb, out, 1); } \
    static void NAME##2(const WBLOCK *x, const TILE_T *y, int64_t nb, float *out) { NAME##_rows(x, y, nb, out, 2); }
#define MIN_OF_tile_q8_0 0
#define MIN_OF_tile_q8_1 1

/* signed weights offset to unsigned: the products start from the tile's minus offset times each 4 values' sum */
#define SIGNED_PRODUCT(u) _mm512_dpbusd_epi32(_mm512_loadu_si512(b->neg_offset[u]), w2, _mm512_loadu_si512(b->qs[u]))
#define UNSIGNED_PRODUCT(u) _mm512_dpbusd_epi32(_mm512_setzero_si512(), w2, _mm512_loadu_si512(b->qs[u]))
#define WITH_MIN extra[r] = _mm_add_ps(extra[r], _mm_mul_ps(_mm_set1_ps(to_float(w->m)), _mm_loadu_ps(b->s)))

TILE_ROWS(tile_dot_q4_0, block_q4_0, tile_q8_0, weights2_q4_0, SIGNED_PRODUCT, )
TILE_ROWS(tile_dot_q5_0, block_q5_0, tile_q8_0, weights2_q5_0, SIGNED_PRODUCT, )
TILE_ROWS(tile_dot_q8_0, block_q8_0, tile_q8_0, weights2_q8_0, SIGNED_PRODUCT, )
TILE_ROWS(tile_dot_q4_1, block_q4_1, tile_q8_1, weights2_q4_1, UNSIGNED_PRODUCT, WITH_MIN)
TILE_ROWS(tile_dot_q5_1, block_q5_1, tile_q8_1, weights2_q5_1, UNSIGNED_PRODUCT, WITH_MIN)

/* IQ4_NL in tiles: its table's values plus 128 (unsigned), the tile's offsets taking the 128 off again; blocks in
 * pairs into two accumulators and an odd last block alone, as dot_iq4_nl */
static const uint8_t IQ4_NL_OFFSET[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};

static inline __attribute__((always_inline)) void tile_iq4_nl_rows(const block_iq4_nl *x, const tile_q8_0 *y,
                                                                   int64_t nb, float *out, const int R) {
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)IQ4_NL_OFFSET));
    __m512 acc[2][2][2];  /* [weight row][activation rows 01, 23][block parity] */
    for (int r = 0; r < 2; r++)
        for (int u = 0; u < 2; u++) acc[r][u][0] = acc[r][u][1] = _mm512_setzero_ps();
    const int64_t paired = nb - nb % 2;
    for (int64_t i = 0; i < paired; i++) {
        const tile_q8_0 *b = y + i;
        for (int r = 0; r < R; r++) {
            const block_iq4_nl *w = x + r * nb + i;
            const __m512i w2 = _mm512_shuffle_epi8(table, nibbles2(w->qs));
            const __m512 wd = _mm512_set1_ps(to_float(w->d));
            for (int u = 0; u < 2; u++)
                acc[r][u][i % 2] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_loadu_ps(b->d[u]), wd),
                                                   _mm512_cvtepi32_ps(SIGNED_PRODUCT(2 * u)), acc[r][u][i % 2]);
        }
    }
    for (int r = 0; r < R; r++) {
        const __m512 s01 = _mm512_add_ps(acc[r][0][0], acc[r][0][1]), s23 = _mm512_add_ps(acc[r][1][0], acc[r][1][1]);
        K_SUMS((out + 4 * r), s01, s23);
        if (paired == nb) continue;
        const tile_q8_0 *b = y + paired;  /* the odd last block: each activation row's integer sum, scaled */
        const block_iq4_nl *w = x + r * nb + paired;
        const __m512i w2 = _mm512_shuffle_epi8(table, nibbles2(w->qs));
        int32_t lanes[2][16];
        _mm512_storeu_si512(lanes[0], SIGNED_PRODUCT(0));
        _mm512_storeu_si512(lanes[1], SIGNED_PRODUCT(2));
        for (int u = 0; u < 4; u++) {
            int sum = 0;
            for (int l = 0; l < 8; l++) sum += lanes[u / 2][8 * (u % 2) + l];
            out[4 * r + u] = fmaf(b->d[u / 2][8 * (u % 2)] * to_float(w->d), (float)sum, out[4 * r + u]);
        }
    }
}
static void tile_dot_iq4_nl(const block_iq4_nl *x, const tile_q8_0 *y, int64_t nb, float *out) {
    tile_iq4_nl_rows(x, y, nb, out, 1);
}
static void tile_dot_iq4_nl2(const block_iq4_nl *x, const tile_q8_0 *y, int64_t nb, float *out) {
    tile_iq4_nl_rows(x, y, nb, out, 2);
}

/* The K-quants in tiles: a super-block's sub-block j of the four rows side by side, each row's scale and 16-value
 * sums as block_q8_K has them (the same 292 bytes a row). A sub-block's 32 weights are multiplied with two rows in
 * one 512-bit maddubs, whose pair sums go times the sub-block's scale into the row's 8 lanes by one dpwssd: the
 * lanes llama.cpp's AVX2 maddubs, madd and add form, exact integers either way. */
typedef struct { int8_t qs[QK_K / 32][4][32]; float d[4]; int16_t bsums[4][QK_K / 16]; } tile_q8_K;

static void quantize_tile_q8_K(const float *x, int64_t k, tile_q8_K *y) {
    for (int u = 0; u < 4; u++)
        for (int64_t i = 0; i < k / QK_K; i++) {
            block_q8_K b;
            quantize_row_q8_K(x + u * k + i * QK_K, &b, QK_K);
            y[i].d[u] = b.d;
            memcpy(y[i].bsums[u], b.bsums, sizeof b.bsums);
            for (int j = 0; j < QK_K / 32; j++) memcpy(y[i].qs[j][u], b.qs + 32 * j, 32);
        }
}

/* lanes of rows (0, 1) and (2, 3) plus one sub-block: 32 weights as bytes, its two rows' int16 scales */
#define K_SUB(s01, s23, b, j, v, scale)                                                                  \
    do {                                                                                                 \
        const __m512i v2 = _mm512_broadcast_i64x4(v);                                                    \
        s01 = _mm512_dpwssd_epi32(s01, _mm512_maddubs_epi16(v2, _mm512_loadu_si512((b)->qs[j][0])), scale); \
        s23 = _mm512_dpwssd_epi32(s23, _mm512_maddubs_epi16(v2, _mm512_loadu_si512((b)->qs[j][2])), scale); \
    } while (0)

/* the four rows' scales times the weights' d, as the lanes of (0, 1) and (2, 3) take them */
#define ROW_SCALES(b, weight_d, d01, d23)                                                                 \
    const __m512 rows_d = _mm512_castps128_ps512(_mm_mul_ps(_mm_loadu_ps((b)->d), _mm_set1_ps(weight_d))); \
    const __m512 d01 = _mm512_permutexvar_ps(PAIR(0, 1), rows_d), d23 = _mm512_permutexvar_ps(PAIR(2, 3), rows_d)

/* a super-block's integer lanes of rows (0, 1) and (2, 3) times each row's scale times the weights' d, into the
 * accumulators */
#define K_SCALED(b, weight_d, s01, s23, acc01, acc23)                                                      \
    do {                                                                                                 \
        ROW_SCALES(b, weight_d, d01, d23);                                                               \
        acc01 = _mm512_fmadd_ps(d01, _mm512_cvtepi32_ps(s01), acc01);                                    \
        acc23 = _mm512_fmadd_ps(d23, _mm512_cvtepi32_ps(s23), acc23);                                    \
    } while (0)

/* the minimums' integer terms of four rows, row u's lane l (0-3) at 4u + l: sub-blocks 2l and 2l + 1 */
static inline __m512i tile_min_lanes(const int32_t *mn, const tile_q8_K *b) {
    const __m512i m = _mm512_set_epi16(mn[7], mn[7], mn[6], mn[6], mn[5], mn[5], mn[4], mn[4], mn[3], mn[3], mn[2],
                                       mn[2], mn[1], mn[1], mn[0], mn[0], mn[7], mn[7], mn[6], mn[6], mn[5], mn[5],
                                       mn[4], mn[4], mn[3], mn[3], mn[2], mn[2], mn[1], mn[1], mn[0], mn[0]);
    __m512i e01 = _mm512_madd_epi16(_mm512_loadu_si512(b->bsums[0]), m);  /* row's lane j: mn[j] (bs[2j] + bs[2j+1]) */
    __m512i e23 = _mm512_madd_epi16(_mm512_loadu_si512(b->bsums[2]), m);
    e01 = _mm512_add_epi32(e01, _mm512_srli_epi64(e01, 32));  /* even lanes: sub-blocks 2l and 2l + 1 */
    e23 = _mm512_add_epi32(e23, _mm512_srli_epi64(e23, 32));
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi32(e01, evens, e23);
}

static void tile_dot_q4_K(const block_q4_K *x, const tile_q8_K *y, int64_t nb, float *out) {
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps(), acc_m = _mm512_setzero_ps();
    const __m512i four = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (int64_t i = 0; i < nb; i++) {
        const tile_q8_K *b = y + i;
        int32_t sc[8], mn[8];
        scales_and_mins(x[i].scales, sc, mn);
        __m512i s01 = _mm512_setzero_si512(), s23 = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            K_SUB(s01, s23, b, 2 * j, _mm256_and_si256(bits, _mm256_set1_epi8(0x0f)), _mm512_set1_epi16((int16_t)sc[2 * j]));
            K_SUB(s01, s23, b, 2 * j + 1, _mm256_and_si256(_mm256_srli_epi16(bits, 4), _mm256_set1_epi8(0x0f)),
                  _mm512_set1_epi16((int16_t)sc[2 * j + 1]));
        }
        K_SCALED(b, to_float(x[i].d), s01, s23, acc01, acc23);
        /* -d * dmin of each row, in its four lanes */
        const __m128 dmin = _mm_mul_ps(_mm_xor_ps(_mm_loadu_ps(b->d), _mm_set1_ps(-0.0f)), _mm_set1_ps(to_float(x[i].dmin)));
        acc_m = _mm512_fmadd_ps(_mm512_permutexvar_ps(four, _mm512_castps128_ps512(dmin)),
                                _mm512_cvtepi32_ps(tile_min_lanes(mn, b)), acc_m);
    }
    float m[16];
    _mm512_storeu_ps(m, acc_m);
    K_SUMS(out, acc01, acc23);
    for (int u = 0; u < 4; u++) out[u] += (m[4 * u] + m[4 * u + 2]) + (m[4 * u + 1] + m[4 * u + 3]);
}

static void tile_dot_q5_K(const block_q5_K *x, const tile_q8_K *y, int64_t nb, float *out) {
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
    float summs[4] = {0};
    for (int64_t i = 0; i < nb; i++) {
        const tile_q8_K *b = y + i;
        k_unpacked u;
        unpack_q5_K(x + i, &u);
        __m512i s01 = _mm512_setzero_si512(), s23 = _mm512_setzero_si512();
        for (int j = 0; j < 8; j++) K_SUB(s01, s23, b, j, u.v[j], _mm512_set1_epi16((int16_t)u.sc[j]));
        K_SCALED(b, u.d, s01, s23, acc01, acc23);
        int32_t m[16];
        _mm512_storeu_si512(m, tile_min_lanes(u.mn, b));
        for (int r = 0; r < 4; r++)
            summs[r] = fmaf(-b->d[r] * u.dmin, (float)((m[4 * r] + m[4 * r + 1]) + (m[4 * r + 2] + m[4 * r + 3])), summs[r]);
    }
    K_SUMS(out, acc01, acc23);
    for (int r = 0; r < 4; r++) out[r] += summs[r];
}

static void tile_dot_q6_K(const block_q6_K *x, const tile_q8_K *y, int64_t nb, float *out) {
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const tile_q8_K *b = y + i;
        q6_unpacked u;
        unpack_q6_K(x + i, &u);
        const int8_t *sc = x[i].scales;
        /* the weights' offset of 32: minus 32 times each 16 values' sum times its scale, in the rows' lanes */
        const __m512i scales = _mm512_broadcast_i64x4(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)));
        __m512i s01 = _mm512_slli_epi32(_mm512_madd_epi16(_mm512_loadu_si512(b->bsums[0]), scales), 5);
        __m512i s23 = _mm512_slli_epi32(_mm512_madd_epi16(_mm512_loadu_si512(b->bsums[2]), scales), 5);
        s01 = _mm512_sub_epi32(_mm512_setzero_si512(), s01), s23 = _mm512_sub_epi32(_mm512_setzero_si512(), s23);
        for (int g = 0; g < 8; g++) K_SUB(s01, s23, b, g, u.v[g], _mm512_broadcast_i64x4(scale_pair(sc[2 * g], sc[2 * g + 1])));
        K_SCALED(b, u.d, s01, s23, acc01, acc23);
    }
    K_SUMS(out, acc01, acc23);
}

static void tile_dot_q3_K(const block_q3_K *x, const tile_q8_K *y, int64_t nb, float *out) {
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
    const __m512i four = _mm512_set1_epi8(4);
    for (int64_t i = 0; i < nb; i++) {
        const tile_q8_K *b = y + i;
        q3_unpacked u;
        unpack_q3_K(x + i, &u);
        __m512i s01 = _mm512_setzero_si512(), s23 = _mm512_setzero_si512();
        for (int c = 0; c < 8; c++) {  /* each weight's -4 with its own product, as in q3_lanes */
            const __m512i v2 = _mm512_broadcast_i64x4(u.v[c]);
            const __m512i scale = _mm512_broadcast_i64x4(scale_pair(u.sc[2 * c], u.sc[2 * c + 1]));
            const __m512i a01 = _mm512_loadu_si512(b->qs[c][0]), a23 = _mm512_loadu_si512(b->qs[c][2]);
            s01 = _mm512_dpwssd_epi32(s01, _mm512_sub_epi16(_mm512_maddubs_epi16(v2, a01), _mm512_maddubs_epi16(four, a01)), scale);
            s23 = _mm512_dpwssd_epi32(s23, _mm512_sub_epi16(_mm512_maddubs_epi16(v2, a23), _mm512_maddubs_epi16(four, a23)), scale);
        }
        K_SCALED(b, u.d, s01, s23, acc01, acc23);
    }
    K_SUMS(out, acc01, acc23);
}

static void tile_dot_q2_K(const block_q2_K *x, const tile_q8_K *y, int64_t nb, float *out) {
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const tile_q8_K *b = y + i;
        const uint8_t *sc = x[i].scales;
        __m256i v[8];
        unpack_q2_K(x + i, v);
        /* the minimums first, lane p of each row: sub-blocks 2p and 2p + 1 times their activations' sums */
        const __m512i mins = _mm512_broadcast_i64x4(_mm256_cvtepu8_epi16(
            _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)sc), 4), _mm_set1_epi8(0x0f))));
        const __m128 neg_d = _mm_xor_ps(_mm_loadu_ps(b->d), _mm_set1_ps(-0.0f));
        const __m512 dmin = _mm512_castps128_ps512(_mm_mul_ps(neg_d, _mm_set1_ps(to_float(x[i].dmin))));
        acc01 = _mm512_fmadd_ps(_mm512_permutexvar_ps(PAIR(0, 1), dmin),
                                _mm512_cvtepi32_ps(_mm512_madd_epi16(_mm512_loadu_si512(b->bsums[0]), mins)), acc01);
        acc23 = _mm512_fmadd_ps(_mm512_permutexvar_ps(PAIR(2, 3), dmin),
                                _mm512_cvtepi32_ps(_mm512_madd_epi16(_mm512_loadu_si512(b->bsums[2]), mins)), acc23);
        __m512i s01 = _mm512_setzero_si512(), s23 = _mm512_setzero_si512();
        for (int c = 0; c < 8; c++)
            K_SUB(s01, s23, b, c, v[c], _mm512_broadcast_i64x4(scale_pair(sc[2 * c] & 0x0f, sc[2 * c + 1] & 0x0f)));
        K_SCALED(b, to_float(x[i].d), s01, s23, acc01, acc23);
    }
    K_SUMS(out, acc01, acc23);
}

/* two weight rows of a K-quant: each super-block's scales unpacked for each row anyway, so one after the other */
#define TWO_ROWS(NAME, WBLOCK)                                                                                 static void NAME##2(const WBLOCK *x, const tile_q8_K *y, int64_t nb, float *out) {                          NAME(x, y, nb, out);                                                                                     NAME(x + nb, y, nb, out + 4);                                                                        }
TWO_ROWS(tile_dot_q4_K, block_q4_K)
TWO_ROWS(tile_dot_q5_K, block_q5_K)
TWO_ROWS(tile_dot_q6_K, block_q6_K)
TWO_ROWS(tile_dot_q3_K, block_q3_K)
TWO_ROWS(tile_dot_q2_K, block_q2_K)
#endif

/* ---------------------------------------------------------------------------------------- the products */

#define ROWS_PER_TASK 16
/* Decode reads each weight once, from memory: its rows are prefetched this many bytes ahead of the row being
 * multiplied. On a 2-core Xeon the hardware prefetcher alone kept a thread at about 3 GB/s; with this, the
 * Q4_1 products of a decode step read 2.5x faster (benchmarks/llm_vs_llamacpp.py). A prefetch never faults, so
 * the last rows' prefetches past the matrix are harmless. */
#define PREFETCH_DISTANCE 2048

static inline void prefetch_ahead(const void *row, int64_t bytes) {
    for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch((const char *)row + PREFETCH_DISTANCE + at, 0, 3);
}

#define MATMUL(NAME, BLOCK, WBLOCK, XBLOCK, QUANTIZE, DOT, DOT4)                                          \
    void NAME(const void *w, int64_t n, int64_t k, const float *x, int64_t t, float *y, void *scratch,    \
              int threads) {                                                                             \
        const int64_t nb = k / BLOCK;                                                                    \
        XBLOCK *xq = (XBLOCK *)scratch;                                                                  \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if(t > 1)")                      \
        for (int64_t r = 0; r < t; r++) QUANTIZE(x + r * k, xq + r * nb, k);                             \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                \
        for (int64_t start = 0; start < n; start += ROWS_PER_TASK) {                                     \
            const int64_t end = start + ROWS_PER_TASK < n ? start + ROWS_PER_TASK : n;                   \
            int64_t r = 0;                                                                               \
            for (; r + 4 <= t; r += 4)                                                                   \
                for (int64_t i = start; i < end; i++) {                                                  \
                    float four[4];                                                                       \
                    DOT4((const WBLOCK *)w + i * nb, xq + r * nb, nb, four);                             \
                    for (int u = 0; u < 4; u++) y[(r + u) * n + i] = four[u];                            \
                }                                                                                        \
            for (; r < t; r++)                                                                           \
                for (int64_t i = start; i < end; i++) {                                                  \
                    prefetch_ahead((const WBLOCK *)w + i * nb, nb * (int64_t)sizeof(WBLOCK));            \
                    y[r * n + i] = DOT((const WBLOCK *)w + i * nb, xq + r * nb, nb);                    \
                }                                                                                        \
        }                                                                                                \
    }

#if defined(TILED)
/* the 32-weight types: whole tiles of four rows (prefill), then the rows left one by one (decode) */
#define MATMUL_TILED(NAME, BLOCK, WBLOCK, XBLOCK, QUANTIZE, DOT, TILE, QUANTIZE_TILE, TILE_DOT)            \
    void NAME(const void *w, int64_t n, int64_t k, const float *x, int64_t t, float *y, void *scratch,    \
              int threads) {                                                                             \
        const int64_t nb = k / BLOCK, tiles = t / 4, rest = t - 4 * tiles;                                \
        TILE *xt = (TILE *)scratch;                                                                      \
        XBLOCK *xq = (XBLOCK *)(xt + tiles * nb);                                                        \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if(t > 1)")                      \
        for (int64_t j = 0; j < tiles + rest; j++) {                                                     \
            if (j < tiles) QUANTIZE_TILE(x + 4 * j * k, k, xt + j * nb);                                 \
            else QUANTIZE(x + (4 * tiles + j - tiles) * k, xq + (j - tiles) * nb, k);                    \
        }                                                                                                \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                \
        for (int64_t start = 0; start < n; start += ROWS_PER_TASK) {                                     \
            const int64_t end = start + ROWS_PER_TASK < n ? start + ROWS_PER_TASK : n;                   \
            for (int64_t j = 0; j < tiles; j++)                                                          \
                for (int64_t i = start; i < end; i += 2) {                                               \
                    float eight[8];                                                                      \
                    const int two = i + 1 < end;                                                         \
                    if (j == 0) prefetch_ahead((const WBLOCK *)w + i * nb, (1 + two) * nb * (int64_t)sizeof(WBLOCK)); \
                    if (two) TILE_DOT##2((const WBLOCK *)w + i * nb, xt + j * nb, nb, eight);            \
                    else TILE_DOT((const WBLOCK *)w + i * nb, xt + j * nb, nb, eight);                   \
                    for (int u = 0; u < 4; u++) y[(4 * j + u) * n + i] = eight[u];                       \
                    if (two) for (int u = 0; u < 4; u++) y[(4 * j + u) * n + i + 1] = eight[4 + u];     \
                }                                                                                        \
            for (int64_t r = 0; r < rest; r++)                                                           \
                for (int64_t i = start; i < end; i++) {                                                  \
                    prefetch_ahead((const WBLOCK *)w + i * nb, nb * (int64_t)sizeof(WBLOCK));            \
                    y[(4 * tiles + r) * n + i] = DOT((const WBLOCK *)w + i * nb, xq + r * nb, nb);       \
                }                                                                                        \
        }                                                                                                \
    }

MATMUL_TILED(matmul_q4_0, QK, block_q4_0, block_q8_0, quantize_row_q8_0, dot_q4_0, tile_q8_0, quantize_tile_q8_0_8,
             tile_dot_q4_0)
MATMUL_TILED(matmul_q4_1, QK, block_q4_1, block_q8_1, quantize_row_q8_1, dot_q4_1, tile_q8_1, quantize_tile_q8_1,
             tile_dot_q4_1)
MATMUL_TILED(matmul_q8_0, QK, block_q8_0, block_q8_0, quantize_row_q8_0, dot_q8_0, tile_q8_0, quantize_tile_q8_0_128,
             tile_dot_q8_0)
MATMUL_TILED(matmul_q5_0, QK, block_q5_0, block_q8_0, quantize_row_q8_0, dot_q5_0, tile_q8_0, quantize_tile_q8_0_16,
             tile_dot_q5_0)
MATMUL_TILED(matmul_q5_1, QK, block_q5_1, block_q8_1, quantize_row_q8_1, dot_q5_1, tile_q8_1, quantize_tile_q8_1,
             tile_dot_q5_1)
MATMUL_TILED(matmul_iq4_nl, QK, block_iq4_nl, block_q8_0, quantize_row_q8_0, dot_iq4_nl, tile_q8_0,
             quantize_tile_q8_0_128, tile_dot_iq4_nl)
#else
MATMUL(matmul_q4_0, QK, block_q4_0, block_q8_0, quantize_row_q8_0, dot_q4_0, dot4_q4_0)
MATMUL(matmul_q4_1, QK, block_q4_1, block_q8_1, quantize_row_q8_1, dot_q4_1, dot4_q4_1)
MATMUL(matmul_q8_0, QK, block_q8_0, block_q8_0, quantize_row_q8_0, dot_q8_0, dot4_q8_0)
MATMUL(matmul_q5_0, QK, block_q5_0, block_q8_0, quantize_row_q8_0, dot_q5_0, dot4_q5_0)
MATMUL(matmul_q5_1, QK, block_q5_1, block_q8_1, quantize_row_q8_1, dot_q5_1, dot4_q5_1)
MATMUL(matmul_iq4_nl, QK, block_iq4_nl, block_q8_0, quantize_row_q8_0, dot_iq4_nl, dot4_iq4_nl)
#endif
#if defined(TILED)
MATMUL_TILED(matmul_q4_k, QK_K, block_q4_K, block_q8_K, quantize_row_q8_K, dot_q4_K, tile_q8_K, quantize_tile_q8_K,
             tile_dot_q4_K)
MATMUL_TILED(matmul_q5_k, QK_K, block_q5_K, block_q8_K, quantize_row_q8_K, dot_q5_K, tile_q8_K, quantize_tile_q8_K,
             tile_dot_q5_K)
MATMUL_TILED(matmul_q6_k, QK_K, block_q6_K, block_q8_K, quantize_row_q8_K, dot_q6_K, tile_q8_K, quantize_tile_q8_K,
             tile_dot_q6_K)
MATMUL_TILED(matmul_q3_k, QK_K, block_q3_K, block_q8_K, quantize_row_q8_K, dot_q3_K, tile_q8_K, quantize_tile_q8_K,
             tile_dot_q3_K)
MATMUL_TILED(matmul_q2_k, QK_K, block_q2_K, block_q8_K, quantize_row_q8_K, dot_q2_K, tile_q8_K, quantize_tile_q8_K,
             tile_dot_q2_K)
#else
MATMUL(matmul_q4_k, QK_K, block_q4_K, block_q8_K, quantize_row_q8_K, dot_q4_K, dot4_q4_K)
MATMUL(matmul_q5_k, QK_K, block_q5_K, block_q8_K, quantize_row_q8_K, dot_q5_K, dot4_q5_K)
MATMUL(matmul_q6_k, QK_K, block_q6_K, block_q8_K, quantize_row_q8_K, dot_q6_K, dot4_q6_K)
MATMUL(matmul_q3_k, QK_K, block_q3_K, block_q8_K, quantize_row_q8_K, dot_q3_K, dot4_q3_K)
MATMUL(matmul_q2_k, QK_K, block_q2_K, block_q8_K, quantize_row_q8_K, dot_q2_K, dot4_q2_K)
#endif

