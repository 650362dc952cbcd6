/* The Transformer's layers in C for T new tokens at positions [start, start + T): prefill (many tokens at
 * once) and decode (one), with every matrix in GGUF blocks multiplied by ggml_matmul.c.
 *
 * The same layer as `firstepoch.models.transformer.Block` with a KV cache (RMSNorm, RoPE, grouped-query
 * attention over the cached positions, SwiGLU or GeGLU) and the variations of the other architectures
 * (llm/architectures.py: q/k/v biases, per-head QK-norm, post-norms, query scaling, attention softcaps,
 * sliding windows with their own RoPE tables). Its arithmetic follows llama.cpp's CPU backend operation by
 * operation, so that a GGUF model gives the same bits here as there:
 *   - RMSNorm sums the float squares in double, in order;
 *   - RoPE angles are built as its tables are (each pair's angle times a constant ratio), and a pair is
 *     rotated with one fused multiply-add per output;
 *   - the KV cache holds fp16 values; queries and attention weights are rounded to fp16, and products with
 *     the cache are summed in LANES lanes, then pairwise across lanes (its vector units' order), over the
 *     elements of a head in GGUF's order: keys are cached and queries multiplied in that order (pair i at
 *     2i and 2i + 1, where our rotate-half layout has it at i and i + head_dim / 2);
 *   - softmax and SiLU use its vectorised exp (a polynomial scaled by a power of two, `exp_like_llamacpp`).
 * Bit-equal inputs matter because the quantized products round activations to 8 bits: one differing bit can
 * move a value across a rounding boundary, and the difference then grows through the layers.
 * Compiled with -ffp-contract=off, so the compiler fuses nothing: every fused multiply-add is written out.
 * The lane counts and the exp variant follow the instruction set this file is compiled for, as llama.cpp's
 * do; the bit-for-bit agreement is tested on AVX-512 machines (tests/llm/test_models.py).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif

static inline float fp16(float f) {
#if defined(__F16C__)
    return _cvtsh_ss(_cvtss_sh(f, 0));
#else
    return (float)(_Float16)f;
#endif
}

/* the KV cache holds fp16 numbers, as llama.cpp's does: stored as their bits, read back as floats */
static inline uint16_t half_bits(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#else
    _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u;
#endif
}

static inline void halves_to_floats(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(f + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) {
#if defined(__F16C__)
        f[i] = _cvtsh_ss(h[i]);
#else
        _Float16 x; memcpy(&x, h + i, 2); f[i] = (float)x;
#endif
    }
}

/* A KV-cache row of head_dim numbers: fp16 (2 bytes each, llama.cpp's default) or, with `q8`, Q8_0 blocks of 32
 * (an fp16 scale and 32 int8 values, 34 bytes: half the memory again, as llama.cpp's --cache-type q8_0). A Q8_0
 * row is read back as scale times value, and attention then runs in floats as for fp16 rows (llama.cpp's own
 * q8_0 cache takes another path, its flash attention: close to it, not equal). */
static inline int64_t kv_row_bytes(int64_t head_dim, int q8) { return q8 ? head_dim / 32 * 34 : head_dim * 2; }

static void store_kv_row(uint8_t *dst, const float *row, int64_t n, int q8) {
    if (!q8) {
        for (int64_t i = 0; i < n; i++) { const uint16_t h = half_bits(row[i]); memcpy(dst + 2 * i, &h, 2); }
        return;
    }
    for (int64_t b = 0; b < n / 32; b++, dst += 34, row += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fabsf(row[i]) > amax ? fabsf(row[i]) : amax;
        const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const uint16_t h = half_bits(d);
        memcpy(dst, &h, 2);
        for (int i = 0; i < 32; i++) dst[2 + i] = (uint8_t)(int8_t)nearbyintf(row[i] * id);
    }
}

static void load_kv_row(const uint8_t *src, float *out, int64_t n, int q8) {
    if (!q8) {
        halves_to_floats((const uint16_t *)src, out, n);  /* rows of 2 * head_dim bytes keep 2-byte alignment */
        return;
    }
    for (int64_t b = 0; b < n / 32; b++, src += 34, out += 32) {
        uint16_t h;
        float d;
        memcpy(&h, src, 2);
        halves_to_floats(&h, &d, 1);
        for (int i = 0; i < 32; i++) out[i] = d * (float)(int8_t)src[2 + i];
    }
}

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* v[0] + ... + v[n - 1] for n lanes (a power of two, at least 4), added as a vector unit's horizontal sum
 * does: the upper half onto the lower half until four are left, then (0 + 2) + (1 + 3). */
static inline float lanes_sum(float *v, int n) {
    for (; n > 4; n /= 2)
        for (int i = 0; i < n / 2; i++) v[i] = v[i + n / 2] + v[i];
    return (v[0] + v[2]) + (v[1] + v[3]);
}

/* e^x with llama.cpp's vectorised polynomial: x = n ln2 + b, e^b from a degree-5 polynomial, times 2^n.
 * Its AVX-512 code scales the polynomial (constant term 1) by 2^n; its AVX2/SSE code computes
 * k + k * (polynomial - 1) with k = 2^n built from the bits of n. Same constants, different last bits. */
#if defined(__AVX512F__) && defined(__AVX512DQ__)
/* Its AVX-512 exp up to the scaling: the polynomial (constant term 1), and n in *n_out. Branch-free, so that
 * loops over it vectorise; j * 2^n (pow2_scaled) is then exact for |n| <= 126. */
static inline float exp_poly_avx512(float x, float *n_out) {
    const float shift = 0x1.8p23f;
    const float n = fmaf(x, 0x1.715476p+0f, shift) - shift;  /* x / ln2 rounded to an integer */
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)), u = b * b;
    *n_out = n;
    return fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                fmaf(0x1.ffffecp-1f, b, 1.0f));
}

static inline float pow2_scaled(float j, float n) { return j * float_of((uint32_t)((int32_t)n + 127) << 23); }
#endif

static inline float exp_like_llamacpp(float x) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
    float n;
    const float j = exp_poly_avx512(x, &n);
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    return fabsf(n) <= 126.0f ? pow2_scaled(j, n) : scalbnf(j, (int)n);
#elif defined(__x86_64__) && defined(__SSE2__)
#if defined(__FMA__)
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif
    const float shift = 0x1.8p23f;
    const float z = MADD(x, 0x1.715476p+0f, shift);
    const float n = z - shift;  /* x / ln2 rounded to an integer */
    const float b = MADD(-n, 0x1.7f7d1cp-20f, MADD(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = MADD(MADD(MADD(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, MADD(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         0x1.ffffecp-1f * b);
    const uint32_t e = bits_of(z) << 23;
    const float k = float_of(e + bits_of(1.0f));
    if (fabsf(n) <= 126.0f) return MADD(k, j, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = float_of(g + 0x7f000000u), s2 = float_of(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return MADD(s2, j, s2) * s1;
#undef MADD
#else
    return expf(x);
#endif
}

/* ------------------------------------------------------------------------------------- row operations */

/* out = x / rms(x) * weight for `rows` rows of n */
void rms_norm_rows(const float *x, const float *weight, float eps, int64_t n, int64_t rows, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)(xr[i] * xr[i]);
        const float mean = (float)(sum / n);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++) o[i] = xr[i] * scale * weight[i];
    }
}

/* gate_up rows hold [gate (n), up (n)]; out = silu(gate) * up */
static void swiglu_rows(const float *gate_up, int64_t n, int64_t rows, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * n, *u = g + n;
        float *o = out + r * n;
        const int64_t vector = n - n % LANES;  /* its vector loop; the rest goes through the C library's expf */
        int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
        /* exp_like_llamacpp without its branches, so that the compiler vectorises the loop; the rare values
           past |n| = 126 are done again one by one */
        int wide = 0;
        for (; i < vector; i++) {
            float n2;
            const float j = exp_poly_avx512(-g[i], &n2);
            wide |= fabsf(n2) > 126.0f;
            o[i] = g[i] / (1.0f + pow2_scaled(j, n2)) * u[i];
        }
        if (wide)
            for (int64_t k = 0; k < vector; k++)
                if (fabsf(g[k]) > 80.0f) o[k] = g[k] / (1.0f + exp_like_llamacpp(-g[k])) * u[k];
#endif
        for (; i < vector; i++) o[i] = g[i] / (1.0f + exp_like_llamacpp(-g[i])) * u[i];
        for (; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];  /* its scalar tail */
    }
}

/* ggml's GELU (tanh form) of every fp16 input, computed once as its init computes it (its compiler fuses
 * 1 + (a x) x into one multiply-add), kept as fp16 values */
static float gelu_table[1 << 16];
static int gelu_ready;

static void make_gelu_table(void) {
    #pragma omp critical(gelu_table)
    if (!gelu_ready) {
        for (int i = 0; i < 1 << 16; i++) {
            const uint16_t bits = (uint16_t)i;
            _Float16 h; memcpy(&h, &bits, 2);
            const float x = (float)h;
            const float inner = fmaf(0.044715f * x, x, 1.0f);
            gelu_table[i] = fp16((0.5f * x) * (1.0f + tanhf((0.79788456080286535587989211986876f * x) * inner)));
        }
        gelu_ready = 1;
    }
}

/* gate_up rows hold [gate (n), up (n)]; out = gelu(gate) * up, as ggml's geglu: the table at the gate's fp16
 * value, 0 at -10 and below, the gate itself at 10 and above */
static void geglu_rows(const float *gate_up, int64_t n, int64_t rows, float *out) {
    make_gelu_table();
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * n, *u = g + n;
        float *o = out + r * n;
        for (int64_t i = 0; i < n; i++) {
            if (g[i] <= -10.0f) { o[i] = 0.0f; continue; }
            if (g[i] >= 10.0f) { o[i] = g[i] * u[i]; continue; }
            const _Float16 h = (_Float16)g[i];
            uint16_t bits; memcpy(&bits, &h, 2);
            o[i] = gelu_table[bits] * u[i];
        }
    }
}

/* The cos and sin of every position's angles, (n_positions, head_dim / 2) each: pair i of position p turns
 * by p * base^(-2i / head_dim), the powers built by repeated multiplication. */
void rope_tables_like_llamacpp(float base, int64_t head_dim, int64_t n_positions, const float *freq_factors,
                               float freq_scale, float mscale, float *cos_out, float *sin_out) {
    /* freq_factors: NULL, or head_dim / 2 divisors of the angles (Llama 3.1's rope_freqs), as ggml applies them */
    const int64_t half = head_dim / 2;
    const float ratio = powf(base, -2.0f / (float)head_dim);
    for (int64_t p = 0; p < n_positions; p++) {
        float theta = (float)p;
        for (int64_t i = 0; i < half; i++) {
            const float angle = freq_scale * (freq_factors ? theta / freq_factors[i] : theta);
            cos_out[p * half + i] = cosf(angle) * mscale;  /* mscale: LongRoPE's attention factor, else 1 */
            sin_out[p * half + i] = sinf(angle) * mscale;
            theta *= ratio;
        }
    }
}

/* Where element d of a rotate-half head vector sits in GGUF's interleaved layout. */
static inline int64_t gguf_order(int64_t d, int64_t head_dim) {
    const int64_t half = head_dim / 2;
    return d < half ? 2 * d : 2 * (d - half) + 1;
}

/* Rotate `heads` vectors of head_dim in place; pairs are (i, i + head_dim / 2) ("rotate half" layout). */
static void rope(float *v, int64_t heads, int64_t head_dim, const float *cos, const float *sin) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *x = v + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            const float x0 = x[i], x1 = x[i + half];
            x[i] = fmaf(x0, cos[i], -(x1 * sin[i]));
            x[i + half] = fmaf(x0, sin[i], x1 * cos[i]);
        }
    }
}

/* ------------------------------------------------------------------------------------------ attention */

/* llama.cpp multiplies by the fp16 cache in two orders: a matrix product of several query rows (prefill)
 * keeps one LANES-wide sum per output (element i goes to lane i % LANES), a single query (decode) keeps
 * GROUPS of them (block b of LANES elements goes to sum b % GROUPS; the sums are then added 0 + 2, 1 + 3,
 * 0 + 1). The products are exact (fp16 times fp16), so only this order of additions matters. */
#define GROUPS 4

/* a . b over n: `groups` 1 or GROUPS as above; with GROUPS, elements past the last whole GROUPS * LANES
 * block are added one by one in double (its vector loop's remainder). n is a multiple of LANES. */
static inline float dot_f16(const float *a, const float *b, int64_t n, int groups) {
    float acc[GROUPS][LANES] = {{0}};
    int64_t whole = n;
    if (groups == 1) {  /* loops of constant width, which the compiler turns into vector instructions */
        for (int64_t c = 0; c < n; c += LANES)
            for (int l = 0; l < LANES; l++) acc[0][l] += a[c + l] * b[c + l];
    } else {
        whole = n - n % (GROUPS * LANES);
        for (int64_t c = 0; c < whole; c += GROUPS * LANES)
            for (int g = 0; g < GROUPS; g++)
                for (int l = 0; l < LANES; l++) acc[g][l] += a[c + g * LANES + l] * b[c + g * LANES + l];
        for (int l = 0; l < LANES; l++) acc[0][l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    double total = lanes_sum(acc[0], LANES);
    for (int64_t i = whole; i < n; i++) total += (double)(a[i] * b[i]);
    return (float)total;
}

/* One head's attention for one query over positions [0, n): scores, softmax, weighted sum of values.
 * groups: 1 for a query of a prefill, GROUPS for a decode step (see dot_f16). s: n floats of scratch;
 * acc: GROUPS * LANES * head_dim floats of scratch. interleaved: keys are in GGUF's order (llama), else in the
 * query's (the other architectures, whose RoPE rotates halves as llama.cpp's NEOX mode does). softcap (0: none)
 * caps each score before the scale, as llama.cpp's graph does for Gemma 2; window (0: none): only the last
 * `window` positions are seen, the others count as llama.cpp's masked ones (-inf, so exp gives 0). */
static void attend(const float *q, const uint8_t *keys, const uint8_t *values, int q8, int64_t n, int64_t head_dim,
                   float scale, int groups, float *s, float *acc, float *out, int interleaved, float softcap,
                   int64_t window) {
    const int64_t row_bytes = kv_row_bytes(head_dim, q8);
    float qh[head_dim], floats[head_dim];  /* floats: a key's or value's row, from fp16 */
    for (int64_t d = 0; d < head_dim; d++) qh[interleaved ? gguf_order(d, head_dim) : d] = fp16(q[d]);
    float top = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        load_kv_row(keys + j * row_bytes, floats, head_dim, q8);
        float score = dot_f16(qh, floats, head_dim, groups);
        if (softcap != 0.0f) score = tanhf(score * (1.0f / softcap)) * softcap;
        s[j] = window > 0 && n - 1 - j >= window ? -INFINITY : score * scale;
        top = s[j] > top ? s[j] : top;
    }
    double total = 0.0;  /* blocks of LANES exp values, each summed across lanes, added in double */
    for (int64_t c = 0; c < n; c += LANES) {
        float block[LANES];
        for (int l = 0; l < LANES; l++) block[l] = c + l < n ? (s[c + l] = exp_like_llamacpp(s[c + l] - top)) : 0.0f;
        total += (double)lanes_sum(block, LANES);
    }
    const float inverse = (float)(1.0 / total);
    /* the weighted sum of values is dot_f16 of the weights with each column of values, for all columns at
       once: acc[group][lane][column]; the cache past position n holds zeros there, which add nothing */
    memset(acc, 0, sizeof(float) * groups * LANES * head_dim);
    for (int64_t j = 0; j < n; j++) {
        const float p = fp16(s[j] * inverse);
        float *v = floats;
        load_kv_row(values + j * row_bytes, v, head_dim, q8);
        float *a = acc + (((j / LANES) % groups) * LANES + j % LANES) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) a[d] += p * v[d];
    }
    /* each column's lanes summed as lanes_sum adds them, for all columns at once (rows of acc added whole) */
    const int64_t row = LANES * head_dim;  /* group g, lane l: acc + g * row + l * head_dim */
    if (groups != 1)
        for (int64_t i = 0; i < row; i++) acc[i] = (acc[i] + acc[2 * row + i]) + (acc[row + i] + acc[3 * row + i]);
    for (int n = LANES; n > 4; n /= 2)
        for (int64_t i = 0; i < n / 2 * head_dim; i++) acc[i] = acc[i + n / 2 * head_dim] + acc[i];
    for (int64_t d = 0; d < head_dim; d++)
        out[d] = (acc[d] + acc[2 * head_dim + d]) + (acc[head_dim + d] + acc[3 * head_dim + d]);
}

/* ---------------------------------------------------------------------------------------------- layers */

#define MATMUL_OF(name) void name(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);
MATMUL_OF(matmul_q4_0) MATMUL_OF(matmul_q4_1) MATMUL_OF(matmul_q8_0) MATMUL_OF(matmul_q5_0)
MATMUL_OF(matmul_q4_k) MATMUL_OF(matmul_q5_k) MATMUL_OF(matmul_q6_k) MATMUL_OF(matmul_q5_1) MATMUL_OF(matmul_q3_k)
MATMUL_OF(matmul_q2_k) MATMUL_OF(matmul_iq4_nl)

typedef void (*matmul_fn)(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);
/* by BlockType.code (blocktypes.py) */
static const matmul_fn MATMULS[] = {matmul_q4_0, matmul_q4_1, matmul_q8_0, matmul_q5_0, matmul_q4_k, matmul_q5_k,
                                    matmul_q6_k, matmul_q5_1, matmul_q3_k, matmul_q2_k,
                                    matmul_iq4_nl};

typedef struct {
    const float *attn_norm, *mlp_norm;
    const void *w_q, *w_k, *w_v, *w_o, *w_gate, *w_up, *w_down;
    uint8_t *k_cache, *v_cache;  /* (n_kv, max_len) rows of head_dim numbers each (kv_row_bytes) */
    int types[7];              /* block types of q, k, v, o, gate, up, down */
    int qkv_stacked, gate_up_stacked;  /* k's rows follow q's and v's k's in one array of one type (up's gate's) */
    /* the other architectures' (NULL where the model has none): biases of q, k, v; RMSNorm weights of each
       query and key head and of the attention and MLP outputs */
    const float *q_bias, *k_bias, *v_bias, *q_norm, *k_norm, *attn_post_norm, *mlp_post_norm;
    const float *cos, *sin;  /* this layer's RoPE tables: a row of head_dim a position, pair i's at i (and i + half) */
    int64_t window;          /* a local layer's sliding window; 0: every position */
} layer_weights;

typedef struct {
    int64_t dim, n_heads, n_kv, head_dim, hidden, max_len;
    float eps;
    float query_scale;   /* 0: scores scaled by 1/sqrt(head_dim); else queries by this, scores not */
    float attn_softcap;  /* 0: none */
    int gelu;            /* the MLP's gate: 0 SiLU, 1 GELU */
    int interleaved;     /* keys cached in GGUF's order (llama) or as they are (the others) */
    int kv_q8;           /* the KV cache's rows: 0 fp16, 1 Q8_0 */
} layer_shape;

/* Floats of `work` that forward_layers needs for T tokens. */
int64_t layers_work_size(const layer_shape *c, int64_t T, int threads) {
    const int64_t qkv = (c->n_heads + 2 * c->n_kv) * c->head_dim, widest = qkv > 2 * c->hidden ? qkv : 2 * c->hidden;
    return T * (c->dim + qkv + c->n_heads * c->head_dim + 3 * c->hidden + widest) +
           (int64_t)threads * (c->max_len + GROUPS * LANES * c->head_dim);
}

/* y (T, rows[0] + ... ) = x (T, k) times matrices stacked by rows: one product when they are one array of one
 * type (`stacked`), else one each, its rows placed in y's columns through `tmp` (T * the widest part floats). */
static void stacked_matmul(const void *const *w, const int *types, const int64_t *rows, int parts, int stacked,
                           int64_t k, const float *x, int64_t T, float *y, float *tmp, void *scratch, int threads) {
    int64_t total = 0;
    for (int p = 0; p < parts; p++) total += rows[p];
    if (stacked) {
        MATMULS[types[0]](w[0], total, k, x, T, y, scratch, threads);
        return;
    }
    for (int64_t p = 0, offset = 0; p < parts; offset += rows[p], p++) {
        MATMULS[types[p]](w[p], rows[p], k, x, T, tmp, scratch, threads);
        for (int64_t t = 0; t < T; t++) memcpy(y + t * total + offset, tmp + t * rows[p], sizeof(float) * rows[p]);
    }
}

static inline void add_rows(float *x, const float *bias, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += bias[i];
}

/* Where each row of a call goes: its position, the sequence whose cache slot it uses (a cache holds `slots`
 * sequences, one after the other), and whether it is a decode step, whose attention sums as llama.cpp's one-token
 * steps do (see dot_f16), or a row of a prefill. Rows of several sequences share the matrix products; each
 * row's arithmetic is the same as if its sequence ran alone. */
typedef struct { int64_t pos, slot; int decode; } row_place;

static void layer(float *x, const layer_weights *w, const layer_shape *c, const row_place *rows, int64_t T,
                  float *work, void *scratch, int threads) {
    const float *cos = w->cos, *sin = w->sin;
    const int64_t dim = c->dim, head_dim = c->head_dim, hidden = c->hidden, n_heads = c->n_heads, n_kv = c->n_kv;
    const int64_t q_rows = n_heads * head_dim, kv_rows = n_kv * head_dim, qkv_rows = q_rows + 2 * kv_rows;
    const int64_t group = n_heads / n_kv, max_len = c->max_len, row_bytes = kv_row_bytes(head_dim, c->kv_q8);
    const int64_t slot_size = n_kv * max_len * row_bytes;  /* bytes */
    float *h = work, *qkv = h + T * dim, *attn = qkv + T * qkv_rows, *gate_up = attn + T * q_rows;
    float *act = gate_up + T * 2 * hidden, *tmp = act + T * hidden;
    float *per_thread = tmp + T * (qkv_rows > 2 * hidden ? qkv_rows : 2 * hidden);
    const void *qkv_w[3] = {w->w_q, w->w_k, w->w_v}, *gate_up_w[2] = {w->w_gate, w->w_up};
    const int64_t qkv_parts[3] = {q_rows, kv_rows, kv_rows}, gate_up_parts[2] = {hidden, hidden};

    rms_norm_rows(x, w->attn_norm, c->eps, dim, T, h);
    stacked_matmul(qkv_w, w->types, qkv_parts, 3, w->qkv_stacked, dim, h, T, qkv, tmp, scratch, threads);
    for (int64_t t = 0; t < T; t++) {
        float *q = qkv + t * qkv_rows, *k = q + q_rows, *v = k + kv_rows;
        const int64_t pos = rows[t].pos;
        uint8_t *k_cache = w->k_cache + rows[t].slot * slot_size, *v_cache = w->v_cache + rows[t].slot * slot_size;
        if (w->q_bias) { add_rows(q, w->q_bias, q_rows); add_rows(k, w->k_bias, kv_rows); add_rows(v, w->v_bias, kv_rows); }
        if (w->q_norm) {  /* each head on its own, in place */
            rms_norm_rows(q, w->q_norm, c->eps, head_dim, n_heads, q);
            rms_norm_rows(k, w->k_norm, c->eps, head_dim, n_kv, k);
        }
        rope(q, n_heads, head_dim, cos + pos * head_dim, sin + pos * head_dim);
        rope(k, n_kv, head_dim, cos + pos * head_dim, sin + pos * head_dim);
        if (c->query_scale != 0.0f)
            for (int64_t i = 0; i < q_rows; i++) q[i] *= c->query_scale;
        for (int64_t g = 0; g < n_kv; g++) {
            float key[head_dim];
            for (int64_t d = 0; d < head_dim; d++) key[c->interleaved ? gguf_order(d, head_dim) : d] = k[g * head_dim + d];
            store_kv_row(k_cache + (g * max_len + pos) * row_bytes, key, head_dim, c->kv_q8);
            store_kv_row(v_cache + (g * max_len + pos) * row_bytes, v + g * head_dim, head_dim, c->kv_q8);
        }
    }
    const float scale = c->query_scale != 0.0f ? 1.0f : 1.0f / sqrtf((float)head_dim);
    #pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t head = 0; head < n_heads; head++)
        for (int64_t t = 0; t < T; t++) {
#if defined(_OPENMP)
            float *mine = per_thread + (int64_t)omp_get_thread_num() * (max_len + GROUPS * LANES * head_dim);
#else
            float *mine = per_thread;
#endif
            const int64_t kv = rows[t].slot * slot_size + (head / group) * max_len * row_bytes;
            attend(qkv + t * qkv_rows + head * head_dim, w->k_cache + kv, w->v_cache + kv, c->kv_q8, rows[t].pos + 1,
                   head_dim,
                   scale, rows[t].decode ? GROUPS : 1, mine, mine + max_len, attn + t * q_rows + head * head_dim,
                   c->interleaved, c->attn_softcap, w->window);
        }
    MATMULS[w->types[3]](w->w_o, dim, q_rows, attn, T, h, scratch, threads);
    if (w->attn_post_norm) rms_norm_rows(h, w->attn_post_norm, c->eps, dim, T, h);
    for (int64_t i = 0; i < T * dim; i++) x[i] += h[i];

    rms_norm_rows(x, w->mlp_norm, c->eps, dim, T, h);
    stacked_matmul(gate_up_w, w->types + 4, gate_up_parts, 2, w->gate_up_stacked, dim, h, T, gate_up, tmp, scratch,
                   threads);
    if (c->gelu) geglu_rows(gate_up, hidden, T, act);
    else swiglu_rows(gate_up, hidden, T, act);
    MATMULS[w->types[6]](w->w_down, dim, hidden, act, T, h, scratch, threads);
    if (w->mlp_post_norm) rms_norm_rows(h, w->mlp_post_norm, c->eps, dim, T, h);
    for (int64_t i = 0; i < T * dim; i++) x[i] += h[i];
}

/* x (T, dim): the new tokens' embeddings, updated in place through every layer; their keys and values are
 * written to each layer's cache at positions [start, start + T) (keys in GGUF's order for llama, see gguf_order).
 * work: layers_work_size floats; scratch: bytes for the 8-bit activations of T rows of the widest input. */
void forward_layers(float *x, const layer_weights *layers, int64_t n_layers, const layer_shape *shape, int64_t start,
                    int64_t T, float *work, void *scratch, int threads) {
    row_place rows[T];
    for (int64_t t = 0; t < T; t++) rows[t] = (row_place){start + t, 0, T == 1};
    for (int64_t l = 0; l < n_layers; l++) layer(x, layers + l, shape, rows, T, work, scratch, threads);
}

/* The same for rows of several sequences at once (continuous batching): row t at position pos[t] of cache slot
 * slot[t], a decode step where decode[t] (else a row of a prefill, whose earlier rows come before it in x).
 * The caller checks that every position is below max_len and every slot below the caches' slot count. */
void forward_rows(float *x, const layer_weights *layers, int64_t n_layers, const layer_shape *shape,
                  const int64_t *pos, const int64_t *slot, const int32_t *decode, int64_t T, float *work,
                  void *scratch, int threads) {
    row_place rows[T];
    for (int64_t t = 0; t < T; t++) rows[t] = (row_place){pos[t], slot[t], decode[t] != 0};
    for (int64_t l = 0; l < n_layers; l++) layer(x, layers + l, shape, rows, T, work, scratch, threads);
}

/* Attention as the Transformer's PyTorch path calls it for the architectures layers.c does not run: T queries
 * q (n_heads, T, head_dim) at the last T of n_pos positions, keys and values of n_kv heads (head h's rows
 * kv_stride numbers after head h - 1's, fp16, in the query's order) -> out (n_heads, T, head_dim).
 * work: threads * (n_pos + GROUPS * LANES * head_dim) floats. */
void attention_rows(const float *q, const uint16_t *k, const uint16_t *v, int64_t n_heads, int64_t n_kv, int64_t head_dim,
                    int64_t kv_stride, int64_t n_pos, int64_t T, float scale, float softcap, int64_t window,
                    float *out, float *work, int threads) {
    const int64_t group = n_heads / n_kv, per_thread = n_pos + GROUPS * LANES * head_dim;
    #pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t head = 0; head < n_heads; head++)
        for (int64_t t = 0; t < T; t++) {
#if defined(_OPENMP)
            float *mine = work + (int64_t)omp_get_thread_num() * per_thread;
#else
            float *mine = work;
#endif
            const int64_t kv = (head / group) * kv_stride;
            attend(q + (head * T + t) * head_dim, (const uint8_t *)(k + kv), (const uint8_t *)(v + kv), 0,
                   n_pos - T + t + 1, head_dim, scale,
                   T == 1 ? GROUPS : 1, mine, mine + n_pos, out + (head * T + t) * head_dim, 0, softcap, window);
        }
}
