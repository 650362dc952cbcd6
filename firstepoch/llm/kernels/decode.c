/* One decoder layer of the Transformer for one new token, in C: the decode step of generation.
 *
 * The same arithmetic as `firstepoch.models.transformer.Block` with a KV cache (RMSNorm, rotate-half RoPE,
 * grouped-query attention over the cached positions, SwiGLU), with its matrices in GGUF blocks multiplied
 * by ggml_matmul.c. Doing the whole layer in one call removes the per-op overhead of about 25 small PyTorch
 * ops a layer, which at batch 1 costs as much as the matrix products themselves. Prefill (many tokens at
 * once) stays in PyTorch, which writes the same KV cache this code reads and extends.
 */
#include <math.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* llama.cpp keeps its KV cache in fp16 and rounds queries and attention weights to fp16 for the products
 * with it; rounding the same values here makes our results follow its results. */
static inline float fp16(float f) {
#if defined(__F16C__)
    return _cvtsh_ss(_cvtss_sh(f, 0));
#else
    return (float)(_Float16)f;
#endif
}

void matmul_q4_0(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);
void matmul_q4_1(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);
void matmul_q8_0(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);

typedef void (*matmul_fn)(const void *, int64_t, int64_t, const float *, int64_t, float *, void *, int);
static const matmul_fn MATMULS[] = {matmul_q4_0, matmul_q4_1, matmul_q8_0};  /* by type code 0, 1, 2 */

static void rms_norm(const float *x, const float *weight, float eps, int64_t n, float *out) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

/* q . k over head_dim (a multiple of 16) with 16 partial sums, a loop gcc vectorizes as written */
static inline float dot16(const float *a, const float *b, int64_t n) {
    float part[16] = {0};
    for (int64_t d = 0; d < n; d += 16)
        for (int u = 0; u < 16; u++) part[u] += a[d + u] * b[d + u];
    float sum = 0.0f;
    for (int u = 0; u < 16; u++) sum += part[u];
    return sum;
}

static void rope(float *v, int64_t heads, int64_t head_dim, const float *cos, const float *sin) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *x = v + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            const float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * cos[i] - x2 * sin[i];
            x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
        }
    }
}

/* x (dim) is updated in place. Matrices: qkv (q, k, v rows stacked), o, gate_up (gate, up rows stacked),
 * down; `types` gives their block types. Cache: (n_kv, max_len, head_dim) floats each for keys and
 * values; this token is written at `pos`. cos/sin: this position's rows (head_dim). work: floats for
 * h (dim), qkv, attention output (dim), gate_up (2 * hidden), scores (n_heads * max_len). */
void decode_layer(float *x, const float *attn_norm, const float *mlp_norm, float eps,
                  const void *w_qkv, const void *w_o, const void *w_gate_up, const void *w_down, const int *types,
                  int64_t dim, int64_t n_heads, int64_t n_kv, int64_t head_dim, int64_t hidden,
                  float *k_cache, float *v_cache, int64_t max_len, int64_t pos, const float *cos, const float *sin,
                  float *work, void *scratch, int threads) {
    const int64_t q_rows = n_heads * head_dim, kv_rows = n_kv * head_dim, group = n_heads / n_kv;
    float *h = work, *qkv = h + dim, *attn = qkv + q_rows + 2 * kv_rows, *gate_up = attn + dim;
    float *scores = gate_up + 2 * hidden;

    rms_norm(x, attn_norm, eps, dim, h);
    MATMULS[types[0]](w_qkv, q_rows + 2 * kv_rows, dim, h, 1, qkv, scratch, threads);
    float *q = qkv, *k = qkv + q_rows, *v = k + kv_rows;
    rope(q, n_heads, head_dim, cos, sin);
    rope(k, n_kv, head_dim, cos, sin);
    for (int64_t g = 0; g < n_kv; g++)
        for (int64_t d = 0; d < head_dim; d++) {
            k_cache[(g * max_len + pos) * head_dim + d] = fp16(k[g * head_dim + d]);
            v_cache[(g * max_len + pos) * head_dim + d] = fp16(v[g * head_dim + d]);
        }

    const float scale = 1.0f / sqrtf((float)head_dim);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t head = 0; head < n_heads; head++) {
        float qh[head_dim];
        for (int64_t d = 0; d < head_dim; d++) qh[d] = fp16(q[head * head_dim + d]);
        const float *keys = k_cache + (head / group) * max_len * head_dim;
        const float *values = v_cache + (head / group) * max_len * head_dim;
        float *s = scores + head * max_len, *out = attn + head * head_dim, top = -INFINITY;
        double total = 0.0;
        for (int64_t j = 0; j <= pos; j++) {
            s[j] = dot16(qh, keys + j * head_dim, head_dim) * scale;
            top = s[j] > top ? s[j] : top;
        }
        for (int64_t j = 0; j <= pos; j++) { s[j] = expf(s[j] - top); total += s[j]; }
        for (int64_t d = 0; d < head_dim; d++) out[d] = 0.0f;
        for (int64_t j = 0; j <= pos; j++) {
            const float p = fp16(s[j] * (float)(1.0 / total));
            for (int64_t d = 0; d < head_dim; d++) out[d] += p * values[j * head_dim + d];
        }
    }
    MATMULS[types[1]](w_o, dim, q_rows, attn, 1, h, scratch, threads);
    for (int64_t i = 0; i < dim; i++) x[i] += h[i];

    rms_norm(x, mlp_norm, eps, dim, h);
    MATMULS[types[2]](w_gate_up, 2 * hidden, dim, h, 1, gate_up, scratch, threads);
    for (int64_t i = 0; i < hidden; i++) {
        const float g = gate_up[i];
        gate_up[i] = g / (1.0f + expf(-g)) * gate_up[hidden + i];  /* silu(gate) * up */
    }
    MATMULS[types[3]](w_down, dim, hidden, gate_up, 1, h, scratch, threads);
    for (int64_t i = 0; i < dim; i++) x[i] += h[i];
}

/* Every layer's pointers, so that a whole decode step is one call. */
typedef struct {
    const float *attn_norm, *mlp_norm;
    const void *w_qkv, *w_o, *w_gate_up, *w_down;
    float *k_cache, *v_cache;
    int types[4];
} layer_weights;

void decode_layers(float *x, const layer_weights *layers, int64_t n_layers, float eps, int64_t dim, int64_t n_heads,
                   int64_t n_kv, int64_t head_dim, int64_t hidden, int64_t max_len, int64_t pos, const float *cos,
                   const float *sin, float *work, void *scratch, int threads) {
    for (int64_t l = 0; l < n_layers; l++) {
        const layer_weights *w = layers + l;
        decode_layer(x, w->attn_norm, w->mlp_norm, eps, w->w_qkv, w->w_o, w->w_gate_up, w->w_down, w->types, dim,
                     n_heads, n_kv, head_dim, hidden, w->k_cache, w->v_cache, max_len, pos, cos, sin, work, scratch,
                     threads);
    }
}
