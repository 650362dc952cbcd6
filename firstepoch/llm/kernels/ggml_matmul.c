/* Matrix products with GGUF block-quantized weights, for CPU inference.
 *
 * Weights stay in their GGUF blocks (Q4_0, Q4_1, Q8_0: 32 weights a block, an fp16 scale, Q4_1 also an
 * fp16 minimum). Activations are quantized to 8-bit blocks first (Q8_0, or Q8_1, which also carries
 * d * sum(q)), so each block's dot product is an integer dot product of 32 pairs, scaled once: the same
 * arithmetic as llama.cpp's CPU backend, so results agree with it to float rounding.
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

typedef uint16_t half;
typedef struct { half d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { half d; half m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { half d; int8_t qs[QK]; } block_q8_0;
typedef struct { half d; half s; int8_t qs[QK]; } block_q8_1;

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
    /* round to nearest even, normal range only (scales of activations never leave it) */
    uint32_t bits; memcpy(&bits, &f, 4);
    uint32_t sign = (bits >> 16) & 0x8000; int32_t exp = ((bits >> 23) & 0xff) - 127 + 15; uint32_t man = bits & 0x7fffff;
    if (exp <= 0) return (half)sign;
    if (exp >= 31) return (half)(sign | 0x7c00);
    uint32_t h = sign | exp << 10 | man >> 13, rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (half)h;
#endif
}

/* ------------------------------------------------------------------------- activations to 8-bit blocks */

static void quantize_block(const float *x, int8_t *q, float *d_out, int *sum_out) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
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

/* ------------------------------------------------------------------------------ dot products of rows */

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

static float dot_q4_1(const block_q4_1 *x, const block_q8_1 *y, int64_t nb) {
    float sum_m = 0.0f;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        sum_m += to_float(x[i].m) * to_float(y[i].s);
        __m256 d = _mm256_set1_ps(to_float(x[i].d) * to_float(y[i].d));
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, dot_u8_s8(nibbles(x[i].qs), qy), acc);
    }
    return hsum(acc) + sum_m;
#else
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int s = 0;
        for (int j = 0; j < QK / 2; j++)
            s += (x[i].qs[j] & 0x0f) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + QK / 2];
        sum += to_float(x[i].d) * to_float(y[i].d) * (float)s;
        sum_m += to_float(x[i].m) * to_float(y[i].s);
    }
    return sum + sum_m;
#endif
}

static float dot_q4_0(const block_q4_0 *x, const block_q8_0 *y, int64_t nb) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256 d = _mm256_set1_ps(to_float(x[i].d) * to_float(y[i].d));
        __m256i qx = _mm256_sub_epi8(nibbles(x[i].qs), _mm256_set1_epi8(8));
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, dot_s8_s8(qx, qy), acc);
    }
    return hsum(acc);
#else
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int s = 0;
        for (int j = 0; j < QK / 2; j++)
            s += ((x[i].qs[j] & 0x0f) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK / 2];
        sum += to_float(x[i].d) * to_float(y[i].d) * (float)s;
    }
    return sum;
#endif
}

static float dot_q8_0(const block_q8_0 *x, const block_q8_0 *y, int64_t nb) {
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256 d = _mm256_set1_ps(to_float(x[i].d) * to_float(y[i].d));
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, dot_s8_s8(qx, qy), acc);
    }
    return hsum(acc);
#else
    float sum = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int s = 0;
        for (int j = 0; j < QK; j++) s += x[i].qs[j] * y[i].qs[j];
        sum += to_float(x[i].d) * to_float(y[i].d) * (float)s;
    }
    return sum;
#endif
}

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
              const __m256i qx = nibbles(x[i].qs); const float dx = to_float(x[i].d); const float mx = to_float(x[i].m),
              extra[u] += mx * to_float(b->s);
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_u8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q4_0(const block_q4_0 *x, const block_q8_0 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_0,
              const __m256i qx = _mm256_sub_epi8(nibbles(x[i].qs), _mm256_set1_epi8(8)); const float dx = to_float(x[i].d),
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_s8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}

static void dot4_q8_0(const block_q8_0 *x, const block_q8_0 *y, int64_t nb, float *out) {
    DOT4_BODY(block_q8_0,
              const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs); const float dx = to_float(x[i].d),
              acc[u] = _mm256_fmadd_ps(_mm256_set1_ps(dx * to_float(b->d)),
                                       dot_s8_s8(qx, _mm256_loadu_si256((const __m256i *)b->qs)), acc[u]))
}
#else
#define DOT4_FALLBACK(NAME, WBLOCK, XBLOCK, DOT)                                                           \
    static void NAME(const WBLOCK *x, const XBLOCK *y, int64_t nb, float *out) {                        \
        for (int u = 0; u < 4; u++) out[u] = DOT(x, y + u * nb, nb);                                     \
    }
DOT4_FALLBACK(dot4_q4_1, block_q4_1, block_q8_1, dot_q4_1)
DOT4_FALLBACK(dot4_q4_0, block_q4_0, block_q8_0, dot_q4_0)
DOT4_FALLBACK(dot4_q8_0, block_q8_0, block_q8_0, dot_q8_0)
#endif

/* ---------------------------------------------------------------------------------------- the products */

#define ROWS_PER_TASK 16

#define MATMUL(NAME, WBLOCK, XBLOCK, QUANTIZE, DOT, DOT4)                                                 \
    void NAME(const void *w, int64_t n, int64_t k, const float *x, int64_t t, float *y, void *scratch,    \
              int threads) {                                                                             \
        const int64_t nb = k / QK;                                                                       \
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
                for (int64_t i = start; i < end; i++)                                                    \
                    y[r * n + i] = DOT((const WBLOCK *)w + i * nb, xq + r * nb, nb);                    \
        }                                                                                                \
    }

MATMUL(matmul_q4_0, block_q4_0, block_q8_0, quantize_row_q8_0, dot_q4_0, dot4_q4_0)
MATMUL(matmul_q4_1, block_q4_1, block_q8_1, quantize_row_q8_1, dot_q4_1, dot4_q4_1)
MATMUL(matmul_q8_0, block_q8_0, block_q8_0, quantize_row_q8_0, dot_q8_0, dot4_q8_0)
