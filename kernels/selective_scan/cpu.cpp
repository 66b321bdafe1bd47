// Fused CPU selective scan (the ``cpu`` backend of hybridsearch.kernels.selective_scan).
//
// Plain C++17 with no torch headers: compiled on first use by cpu.py with the system compiler (about a second,
// no ninja, no Python headers, independent of torch's C++ ABI) and called through ctypes with raw pointers and
// element strides. See docs/kernels.md for what is fused.
//
// Work split: one task is (sequence b, group g, part p), where a part is up to `part` blocks of W channels of
// the group (W = 16 with AVX-512, 8 with AVX2). A block's fp32 state tile h[N] (W channels each) stays in L1
// while the task walks L in chunks of `chunk` positions; every per-element step is one pass: delta (read, or
// formed from a low-rank dt and dt_proj's weight), softplus(delta + bias), exp(delta A), the update, C . h, the
// D skip and the z gate. The partition never depends on the thread count, every task writes its own outputs and
// partial sums, and the partials are summed afterwards in a fixed order: results are bitwise identical for any
// number of threads, which are torch's OpenMP workers when cpu.py finds its runtime (parallel_for). Vim's two
// directions run as a pair (hs_scan_*_pair): each task's second scan right after its first, adding onto its
// output while it is in cache.
//
// Backward: the forward saves the state entering every chunk; the backward walks the chunks last to first,
// recomputes the chunk's states (and exp(delta A)) from that checkpoint, then runs the reverse recurrence.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// Channels per vector: one register of fp32 of what the build targets (-march=native). A wider generic vector
// than the target's registers is not split into registers but expanded piecewise, much of it lane by lane: on
// an AVX2 machine W = 16 made the forward 4-5x slower than W = 8 (measured, docs/kernels.md).
#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX2__)
constexpr int W = 8;
#else
constexpr int W = 4;  // SSE2, NEON: 128-bit registers
#endif
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }
// max / min with the x86 instructions' semantics (b when either is NaN); GCC compiles the generic ternary to a
// compare and a blend, two instructions on the busiest execution ports, instead of one.
#if defined(__AVX512F__)
inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
#elif defined(__AVX2__)
inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
#endif
inline vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }

// 2^y, for the state decay exp(delta A) = 2^(delta A log2(e)) with A log2(e) computed once per channel: the
// hottest function (once per state and step, forward and backward). y = k + f, |f| <= 1/2; 2^f by a degree-5
// minimax polynomial (relative error 1e-7, 2.5 ulp) in four fused steps; 2^k is added to the exponent bits of that
// result, straight from the bits of y + 1.5 * 2^23, whose low mantissa bits hold k (no float-to-int conversion, no
// multiply: measured 0.94-0.95x the time of mamba-proxy's scan). Clamp: what y needs for the exponent bits to be
// right. `floor`: y is clamped below at -126, so every result is a normal number (below 2^-126 it is 2^-126, about
// 1e-38, where exp would give 0 or a subnormal); `both`: also above at 127, where delta A can be positive (a
// positive A, or delta without softplus; Mamba's A = -exp(A_log) is not); `none`: the caller knows -126 <= y <= 0
// (choose_clamp; the floor would not change a bit there), and the step it saves on the decay's path made the
// scan's forward 0.94-0.96x and its backward 0.98-0.99x the time.
enum class Clamp { none, floor, both };
template <Clamp C>
inline vf vexp2(vf y) {
  const vf yc = C == Clamp::both ? vmax(vmin(y, splat(127.0f)), splat(-126.0f))
                : C == Clamp::floor ? vmax(y, splat(-126.0f)) : y;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const vf t = yc + magic;
  const vf f = yc - (t - magic);
  const vf f2 = f * f;
  const vf lo = f * 6.931470036506653e-1f + 1.0f;
  const vf mid = f * 5.550733581185341e-2f + 2.4022242426872253e-1f;
  const vf hi = f * 1.326472614891827e-3f + 9.671512991189957e-3f;
  const vf p = f2 * (f2 * hi + mid) + lo;
  return (vf)((vi)p + ((vi)t << 23));  // bits(t) = bits(1.5 * 2^23) + k; shifting drops the first term
}

// log1p(e) for 0 <= e <= 1 as e g(e), g of degree 8 fitted to log1p(e) / e at Chebyshev nodes: relative error
// 2e-7 in fp32, and no division (the atanh series it replaces needed e / (2 + e)).
inline vf vlog1p01(vf e) {
  vf g = splat(5.253457929939032e-3f);
  g = g * e - 2.958850748836994e-2f;
  g = g * e + 7.836166769266129e-2f;
  g = g * e - 1.3674770295619965e-1f;
  g = g * e + 1.9111430644989014e-1f;
  g = g * e - 2.4844369292259216e-1f;
  g = g * e + 3.3319270610809326e-1f;
  g = g * e - 4.9999502301216125e-1f;
  g = g * e + 1.0f;
  return e * g;
}

// The per-position exps below go through 2^y as the state decay does: exp(x) = 2^(x log2 e), whose relative error
// grows with |y| as the decay's does (the rounding of y: 3e-7 at |x| = 10). softplus and sigmoid take 0.68x and
// 0.66x the time they took with a Cody-Waite exp (1 ulp) and the atanh series; together they were about a third
// of the forward's work per position and block at N = 8.
constexpr float LOG2E = 1.44269504088896341f;

// torch's softplus (beta 1, threshold 20): x above 20, else max(x, 0) + log1p(exp(-|x|)); a NaN stays NaN (the
// x86 max returns its second operand when either is NaN).
inline vf vsoftplus(vf x, vf* dsp = nullptr) {
  vf e = vexp2<Clamp::floor>(vabs(x) * -LOG2E);
  vf sp = vmax(vf{}, x) + vlog1p01(e);
  if (dsp) {  // its derivative, sigmoid(x), from the same exp: 1 / (1 + e) or e / (1 + e); exactly 1 above 20
    vf r = 1.0f / (1.0f + e);
    *dsp = x > 20.0f ? splat(1.0f) : (x >= 0.0f ? r : e * r);
  }
  return x > 20.0f ? x : sp;
}

inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp2<Clamp::both>(x * -LOG2E)); }

// ---- element types: 1 = float32, 2 = bfloat16, 3 = float16 (torch's rounding: to nearest even) -------------
struct F32 {
  using T = float;
  static float in(T v) { return v; }
  static T out(float f) { return f; }
};
struct BF16 {
  using T = uint16_t;
  static float in(T v) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static T out(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return T((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return T(u >> 16);
  }
};
struct F16 {
  using T = uint16_t;
  static float in(T h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16, ex = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (ex == 0) {
      float f = float(man) * 5.9604644775390625e-8f;  // subnormal: man * 2^-24
      std::memcpy(&u, &f, 4);
      u |= sign;
    } else if (ex == 31) {
      u = sign | 0x7f800000u | (man << 13);
    } else {
      u = sign | ((ex + 112) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static T out(float f) {  // round to nearest even (F. Giesen's float_to_half_fast3_rtne)
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    if (u >= 0x47800000u) return T(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));  // overflow, inf, NaN
    if (u < 0x38800000u) {  // subnormal half or zero: let the fp32 adder round
      float g;
      std::memcpy(&g, &u, 4);
      g += 0.5f;
      std::memcpy(&u, &g, 4);
      return T(sign | (u - 0x3f000000u));
    }
    uint32_t odd = (u >> 13) & 1u;
    u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
    return T(sign | (u >> 13));
  }
};

}  // namespace

extern "C" {

// A strided tensor argument: element strides in the documented axis order; dtype 0 means absent.
struct TArg {
  void* data;
  int64_t dtype;
  int64_t s[4];
};

struct ScanArgs {
  int64_t batch, dim, L, N, G;
  int64_t chunk;     // positions per chunk (checkpoint spacing)
  int64_t part;      // channel blocks per task
  int64_t nthreads;
  int64_t softplus, reverse;
  TArg u, delta, z, B, C;              // u, delta, z: (batch, dim, L); B, C: (batch, G, N, L)
  TArg out;                            // (batch, dim, L)
  TArg dout, du, ddelta, dz, dB, dC;   // backward, same axes as their inputs
  const float *A, *D, *bias, *h0, *dlast;  // fp32 contiguous (dim, N), (dim), (dim), (batch, dim, N) x 2
  float *last, *ckpt;                  // (batch, dim, N); checkpoints (hs_scan_ckpt_size floats)
  float *dA, *dD, *dbias, *dh0;        // (dim, N), (dim), (dim), (batch, dim, N)
  // Two scans into one output (Vim's directions, averaged): out = scale * y, plus out's contents when accumulate;
  // the backward reads scale * dout as y's gradient and adds dz to dz's contents when accumulate.
  double scale;
  int64_t accumulate;
  // delta as the low-rank product of Mamba's dt_proj, fused: delta[d, t] = sum_r dtw[d, r] dtr[r, t] when R > 0
  // (then `delta` and `ddelta` are unused), so the (batch, dim, L) delta and its gradient never exist in memory.
  int64_t R;
  TArg dtr, ddtr;      // (batch, R, L), axes as B's with the group's stride unused: s[0], -, s[2] (r), s[3] (l)
  const float* dtw;    // fp32 contiguous (dim, R)
  float* ddtw;         // (dim, R)
};

// The depthwise causal conv1d of the Mamba mixer, with its SiLU: out = silu(bias + sum_k w[k] x[t - K + 1 + k])
// (reverse: x[t + K - 1 - k], the conv of the flipped sequence, flipped back).
struct ConvArgs {
  int64_t batch, dim, L, K, nthreads, silu, reverse;
  TArg x, out, dout, dx;          // (batch, dim, L)
  const float *w, *bias;          // fp32 contiguous (dim, K), (dim)
  float *dw, *dbias;              // (dim, K), (dim)
  int64_t accumulate;             // the backward adds dx onto dx's contents (Vim's two directions' convs of one x)
};

// RMSNorm of the blocks: out = x / sqrt(mean(x^2) + eps) * w over each row of d features.
struct NormArgs {
  int64_t rows, d, nthreads;
  TArg x, out, dout, dx;  // (rows, d): s[0] the row stride, s[1] = 1
  const float* w;         // fp32 contiguous (d)
  float *rstd, *dw;       // (rows): 1 / sqrt(mean(x^2) + eps), written forward, read backward; (d)
  double eps;
};

}  // extern "C"

namespace {

#if (defined(__AVX2__) || defined(__AVX512F__)) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define HS_TRANSPOSE 1
// One level of a W x W transpose in registers: rows i and i + S (bit S of i clear) swap their off-diagonal S x S
// blocks, r[i][c] <-> r[i + S][c - S] for every column c with bit S set. After every level S = W/2, ..., 1 the
// rows are the columns. One two-vector shuffle per row and level: log2(W) x W in all.
template <int S, int... C>
inline void transpose_level(vf* r, std::integer_sequence<int, C...>) {
  for (int i = 0; i < W; ++i)
    if (!(i & S)) {
      const vf a = r[i], b = r[i + S];
      r[i] = __builtin_shufflevector(a, b, ((C & S) ? W + C - S : C)...);
      r[i + S] = __builtin_shufflevector(a, b, ((C & S) ? W + C : C + S)...);
    }
}

// r[c][k] -> r[k][c] for a W x W block of fp32.
inline void transpose(vf* r) {
  constexpr auto lanes = std::make_integer_sequence<int, W>{};
  if constexpr (W == 16) transpose_level<8>(r, lanes);
  transpose_level<4>(r, lanes);
  transpose_level<2>(r, lanes);
  transpose_level<1>(r, lanes);
}
#endif

template <class Ty>
void load_tile_t(const typename Ty::T* p, int64_t sd, int64_t sl, int nc, int nt, float* dst) {
  if (sd == 1 && nc == W) {  // channels innermost (the models' layout): one vector per position
    if constexpr (std::is_same_v<Ty, F32>)
      for (int i = 0; i < nt; ++i) std::memcpy(dst + i * W, p + i * sl, sizeof(vf));
    else
      for (int i = 0; i < nt; ++i)
        for (int c = 0; c < W; ++c) dst[i * W + c] = Ty::in(p[i * sl + c]);
    return;
  }
  if (nc < W)
    for (int i = 0; i < nt; ++i)
      for (int c = nc; c < W; ++c) dst[i * W + c] = 0.0f;
  int i0 = 0;
#ifdef HS_TRANSPOSE
  if constexpr (std::is_same_v<Ty, F32>) {
    if (sl == 1 && nc == W)  // (batch, dim, L) contiguous: W positions of W channels at a time, transposed
      for (; i0 + W <= nt; i0 += W) {
        vf r[W];
        for (int c = 0; c < W; ++c) std::memcpy(&r[c], p + c * sd + i0, sizeof(vf));
        transpose(r);
        std::memcpy(dst + i0 * W, r, sizeof(r));
      }
  }
#endif
  if (sl == 1) {
    for (int c = 0; c < nc; ++c) {
      const typename Ty::T* q = p + c * sd;
      for (int i = i0; i < nt; ++i) dst[i * W + c] = Ty::in(q[i]);
    }
  } else {
    for (int i = 0; i < nt; ++i) {
      const typename Ty::T* q = p + i * sl;
      for (int c = 0; c < nc; ++c) dst[i * W + c] = Ty::in(q[c * sd]);
    }
  }
}

// Positions [t0, t0 + nt) of channels [d0, d0 + nc) of sequence b into dst[i] (lanes >= nc are 0).
void load_tile(const TArg& a, int64_t b, int64_t d0, int nc, int64_t t0, int nt, vf* dst) {
  float* f = reinterpret_cast<float*>(dst);
  int64_t off = b * a.s[0] + d0 * a.s[1] + t0 * a.s[2];
  switch (a.dtype) {
    case 1: load_tile_t<F32>(static_cast<const float*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
    case 2: load_tile_t<BF16>(static_cast<const uint16_t*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
    default: load_tile_t<F16>(static_cast<const uint16_t*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
  }
}

// Asks for the cache lines of the tile load_tile reads two blocks later (with W = 8 two blocks share each 64-byte
// line). Channels innermost (the models' layout), a block's tile is nt short pieces a whole row apart, a pattern
// the hardware prefetcher does not pick up within 17 or 64 rows; in a training step the scan's inputs are no
// longer in cache and each block's loads waited for memory (a profile of vim-proxy's scan forward + backward:
// load_tile 12 % of the samples, 5 % with this). Always inlined: GCC deletes a call to an out-of-line function
// whose only effect is a prefetch.
__attribute__((always_inline)) inline void prefetch_tile(const TArg& a, int64_t b, int64_t d0, int64_t t0, int nt) {
  if (!a.dtype || a.s[1] != 1) return;  // other layouts: their loads walk memory in order
  const int64_t size = a.dtype == 1 ? 4 : 2, step = a.s[2] * size;
  const char* p = static_cast<const char*>(a.data) + (b * a.s[0] + d0 + t0 * a.s[2]) * size;
  if (uintptr_t(p) / 64 == uintptr_t(p - W * size) / 64) return;  // asked for with the block before
  for (int i = 0; i < nt; ++i) __builtin_prefetch(p + i * step);
}

template <class Ty>
void store_tile_t(typename Ty::T* p, int64_t sd, int64_t sl, int nc, int nt, const float* src) {
  // fp32: one vector copy per position (in an AVX-512 build for an Intel CPU GCC left the loop below scalar, 16
  // loads and 16 stores per position; the copy made vim-proxy's scan forward + backward 0.96x the time)
  if (sd == 1 && nc == W) {
    if constexpr (std::is_same_v<Ty, F32>)
      for (int i = 0; i < nt; ++i) std::memcpy(p + i * sl, src + i * W, sizeof(vf));
    else
      for (int i = 0; i < nt; ++i)
        for (int c = 0; c < W; ++c) p[i * sl + c] = Ty::out(src[i * W + c]);
    return;
  }
  int i0 = 0;
#ifdef HS_TRANSPOSE
  if constexpr (std::is_same_v<Ty, F32>) {
    if (sl == 1 && nc == W)
      for (; i0 + W <= nt; i0 += W) {
        vf r[W];
        std::memcpy(r, src + i0 * W, sizeof(r));
        transpose(r);
        for (int c = 0; c < W; ++c) std::memcpy(p + c * sd + i0, &r[c], sizeof(vf));
      }
  }
#endif
  if (sl == 1) {
    for (int c = 0; c < nc; ++c) {
      typename Ty::T* q = p + c * sd;
      for (int i = i0; i < nt; ++i) q[i] = Ty::out(src[i * W + c]);
    }
  } else {
    for (int i = 0; i < nt; ++i) {
      typename Ty::T* q = p + i * sl;
      for (int c = 0; c < nc; ++c) q[c * sd] = Ty::out(src[i * W + c]);
    }
  }
}

void store_tile(const TArg& a, int64_t b, int64_t d0, int nc, int64_t t0, int nt, const vf* src) {
  const float* f = reinterpret_cast<const float*>(src);
  int64_t off = b * a.s[0] + d0 * a.s[1] + t0 * a.s[2];
  switch (a.dtype) {
    case 1: store_tile_t<F32>(static_cast<float*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
    case 2: store_tile_t<BF16>(static_cast<uint16_t*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
    default: store_tile_t<F16>(static_cast<uint16_t*>(a.data) + off, a.s[1], a.s[2], nc, nt, f); break;
  }
}

template <class Ty>
void load_bc_t(const typename Ty::T* p, int64_t sn, int64_t sl, int N, int nt, float* dst) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < nt; ++i) dst[i * N + n] = Ty::in(p[n * sn + i * sl]);
}

// B or C of sequence b, group g, positions [t0, t0 + nt) into dst[i * N + n].
void load_bc(const TArg& a, int64_t b, int64_t g, int N, int64_t t0, int nt, float* dst) {
  int64_t off = b * a.s[0] + g * a.s[1] + t0 * a.s[3];
  switch (a.dtype) {
    case 1: load_bc_t<F32>(static_cast<const float*>(a.data) + off, a.s[2], a.s[3], N, nt, dst); break;
    case 2: load_bc_t<BF16>(static_cast<const uint16_t*>(a.data) + off, a.s[2], a.s[3], N, nt, dst); break;
    default: load_bc_t<F16>(static_cast<const uint16_t*>(a.data) + off, a.s[2], a.s[3], N, nt, dst); break;
  }
}

template <class Ty>
void store_bc_t(typename Ty::T* p, int64_t sn, int64_t sl, int N, int nt, const float* src) {
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < nt; ++i) p[n * sn + i * sl] = Ty::out(src[i * N + n]);
}

void store_bc(const TArg& a, int64_t b, int64_t g, int N, int64_t t0, int nt, const float* src) {
  int64_t off = b * a.s[0] + g * a.s[1] + t0 * a.s[3];
  switch (a.dtype) {
    case 1: store_bc_t<F32>(static_cast<float*>(a.data) + off, a.s[2], a.s[3], N, nt, src); break;
    case 2: store_bc_t<BF16>(static_cast<uint16_t*>(a.data) + off, a.s[2], a.s[3], N, nt, src); break;
    default: store_bc_t<F16>(static_cast<uint16_t*>(a.data) + off, a.s[2], a.s[3], N, nt, src); break;
  }
}

template <std::size_t... I>
inline vf gather(const float* p, int64_t stride, std::index_sequence<I...>) {
  return vf{p[int64_t(I) * stride]...};
}

// Per-channel fp32 vector of a (dim,) or (dim, N) parameter: lanes c < nc from p[(d0 + c) * stride]. A full
// vector is built in registers (a load, or element inserts): writing lanes to memory one by one and reading
// them back as a vector stalls store-to-load forwarding (measured: 7 % of the conv's forward on AVX2).
inline vf lanes(const float* p, int64_t d0, int nc, int64_t stride) {
  if (nc == W) {
    if (stride == 1) {
      vf v;
      std::memcpy(&v, p + d0, sizeof(v));
      return v;
    }
    return gather(p + d0 * stride, stride, std::make_index_sequence<W>{});
  }
  vf v{};
  for (int c = 0; c < nc; ++c) v[c] = p[(d0 + c) * stride];
  return v;
}

// The first m <= W floats at p as a vector, the other lanes 0; and the reverse: masked loads and stores with
// AVX-512, else copies of m floats (a library call: load_states and store_states take them only for whole vectors).
#if defined(__AVX512F__)
constexpr bool MASKED = true;
#else
constexpr bool MASKED = false;
#endif
inline vf load_first(const float* p, int m) {
  vf v{};
#if defined(__AVX512F__)
  v = (vf)_mm512_maskz_loadu_ps(__mmask16((1u << m) - 1), p);
#else
  std::memcpy(&v, p, sizeof(float) * m);
#endif
  return v;
}

inline void store_first(float* p, vf v, int m) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, __mmask16((1u << m) - 1), (__m512)v);
#else
  std::memcpy(p, &v, sizeof(float) * m);
#endif
}

// v[n] = lanes c < nc of column n of the fp32 rows p[c * N + n] (the other lanes 0), and the reverse: a block's
// slice of a (dim, N) or (batch, dim, N) tensor (A, the initial and last states, their gradients) as N vectors of
// its channels. A whole block goes W columns at a time through the register transpose; lane by lane it was N x W
// scalar loads or stores per block (at vim-proxy's shape, a tenth of the backward task's samples in a profile).
// Without masked loads and stores, only for N a multiple of W (an AVX2 build with the low-rank delta's R = 4
// columns and Additional-scan's N = 10 through the transpose: vim-proxy training steps 1.03-1.06x the time).
inline void load_states(const float* p, int N, int nc, vf* v) {
#ifdef HS_TRANSPOSE
  if (nc == W && N > 1 && (MASKED || N % W == 0)) {
    for (int n0 = 0; n0 < N; n0 += W) {
      const int m = std::min(W, N - n0);
      vf r[W];
      for (int c = 0; c < W; ++c) r[c] = m == W ? lanes(p + c * N + n0, 0, W, 1) : load_first(p + c * N + n0, m);
      transpose(r);
      for (int k = 0; k < m; ++k) v[n0 + k] = r[k];
    }
    return;
  }
#endif
  for (int n = 0; n < N; ++n) v[n] = lanes(p + n, 0, nc, N);
}

inline void store_states(const vf* v, int N, int nc, float* p) {
  if (N == 1) {  // a (dim,) vector
    std::memcpy(p, v, sizeof(float) * nc);
    return;
  }
#ifdef HS_TRANSPOSE
  if (nc == W && (MASKED || N % W == 0)) {
    for (int n0 = 0; n0 < N; n0 += W) {
      const int m = std::min(W, N - n0);
      vf r[W];
      for (int k = 0; k < W; ++k) r[k] = k < m ? v[n0 + k] : vf{};
      transpose(r);
      for (int c = 0; c < W; ++c) {
        if (m == W)
          std::memcpy(p + c * N + n0, &r[c], sizeof(vf));
        else
          store_first(p + c * N + n0, r[c], m);
      }
    }
    return;
  }
#endif
  for (int c = 0; c < nc; ++c)
    for (int n = 0; n < N; ++n) p[c * N + n] = v[n][c];
}

inline float hsum(vf v) {  // fixed pairwise order
  float s[W];
  std::memcpy(s, &v, sizeof(v));
  for (int w = W / 2; w > 0; w /= 2)
    for (int c = 0; c < w; ++c) s[c] += s[c + w];
  return s[0];
}

// out[e] = sum of the lanes of v[e], e < n: W sums at a time by a shuffle butterfly (log2 W levels, each halving
// every partial sum), the rest one by one. The order of additions is fixed either way.
void hsums(const vf* v, int64_t n, float* out) {
  int64_t e = 0;
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define HS_FOLD(a, b, ...) (__builtin_shufflevector(a, b, __VA_ARGS__))
#if defined(__AVX512F__)
  for (; e + 16 <= n; e += 16) {
    const vf* x = v + e;
    vf l1[8], l2[4], l3[2];
    for (int i = 0; i < 8; ++i)
      l1[i] = HS_FOLD(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
              HS_FOLD(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; ++i)
      l2[i] = HS_FOLD(l1[2 * i], l1[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
              HS_FOLD(l1[2 * i], l1[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; ++i)
      l3[i] = HS_FOLD(l2[2 * i], l2[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
              HS_FOLD(l2[2 * i], l2[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    vf r = HS_FOLD(l3[0], l3[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           HS_FOLD(l3[0], l3[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    std::memcpy(out + e, &r, sizeof(r));
  }
#elif defined(__AVX2__)
  for (; e + 8 <= n; e += 8) {
    const vf* x = v + e;
    vf l1[4], l2[2];
    for (int i = 0; i < 4; ++i)
      l1[i] = HS_FOLD(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
              HS_FOLD(x[2 * i], x[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; ++i)
      l2[i] = HS_FOLD(l1[2 * i], l1[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
              HS_FOLD(l1[2 * i], l1[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    vf r = HS_FOLD(l2[0], l2[1], 0, 2, 4, 6, 8, 10, 12, 14) + HS_FOLD(l2[0], l2[1], 1, 3, 5, 7, 9, 11, 13, 15);
    std::memcpy(out + e, &r, sizeof(r));
  }
#endif
#undef HS_FOLD
#endif
  for (; e < n; ++e) out[e] = hsum(v[e]);
}

struct Geometry {
  int64_t K, nblk, nparts, nchunks, ntasks, T;
  bool cap;  // whether delta A can be positive, so 2^(delta A log2 e) needs its upper clamp
  explicit Geometry(const ScanArgs& a) {
    cap = !a.softplus;  // softplus makes delta >= 0: then only a positive (or NaN) A needs the cap
    for (int64_t e = 0; e < a.dim * a.N && !cap; ++e) cap = !(a.A[e] <= 0.0f);
    K = a.dim / a.G;
    nblk = (K + W - 1) / W;
    nparts = (nblk + a.part - 1) / a.part;
    T = a.chunk;
    nchunks = (a.L + T - 1) / T;
    ntasks = a.batch * a.G * nparts;
  }
  // The state entering chunk ci is checkpointed unless the scan enters it first (then it is the initial state, or
  // zero): slot = the chunk's place in scan order - 1, or -1.
  int64_t ckpt_slot(const ScanArgs& a, int64_t ci) const { return (a.reverse ? nchunks - 1 - ci : ci) - 1; }
  // checkpoint of block `blk` (of group g, sequence b) entering chunk ci (slot >= 0): N vectors
  int64_t ckpt_off(const ScanArgs& a, int64_t b, int64_t g, int64_t blk, int64_t ci) const {
    return ((((b * a.G + g) * nblk + blk) * (nchunks - 1) + ckpt_slot(a, ci)) * a.N) * W;
  }
};

struct Scratch {
  std::vector<vf> h, Av, A2v, dH, dAacc, Dv, biasv, dDacc, dbacc, Wv, dWacc;
  std::vector<vf> u, dt, dsp, z, dout, y, du, ddl, dz, acc, yk, ddtk, sBk, hs, dAs, dBacc, dCacc, dtacc;
  std::vector<float> Bs, Cs, dtr, red;
  void reserve(const ScanArgs& a, bool backward) {
    size_t P = size_t(a.part), N = size_t(a.N), T = size_t(a.chunk);
    for (auto* v : {&h, &Av, &A2v, &dH, &dAacc}) v->resize(P * N);
    for (auto* v : {&Dv, &biasv, &dDacc, &dbacc}) v->resize(P);
    for (auto* v : {&Wv, &dWacc}) v->resize(P * size_t(a.R));
    dtr.resize(T * size_t(a.R));
    for (auto* v : {&u, &dt, &dsp, &z, &dout, &y, &du, &ddl, &dz, &acc, &yk, &ddtk, &sBk}) v->resize(T);
    Bs.resize(T * N);
    Cs.resize(T * N);
    if (backward) {
      hs.resize((T + 1) * N);
      dAs.resize(T * N);
      dBacc.resize(T * N);
      dCacc.resize(T * N);
      dtacc.resize(T * size_t(a.R));
      red.resize(T * std::max<size_t>(N, size_t(a.R)));
    }
  }
};

// t[i] = scale * t[i], plus what `dst` holds at those positions when accumulating (ScanArgs::scale, accumulate).
void scale_onto(const ScanArgs& a, const TArg& dst, Scratch& s, int64_t b, int64_t d0, int nc, int64_t t0, int nt,
                vf* t, bool scale, bool accumulate) {
  if (scale && a.scale != 1.0) {
    const vf sc = splat(float(a.scale));
    for (int i = 0; i < nt; ++i) t[i] *= sc;
  }
  if (accumulate && a.accumulate) {
    load_tile(dst, b, d0, nc, t0, nt, s.acc.data());
    for (int i = 0; i < nt; ++i) t[i] += s.acc[i];
  }
}

// u, delta (+ bias, softplus), z of one block and chunk; dsp = d softplus / d raw when wanted. A low-rank delta
// (ScanArgs::R) from the chunk's s.dtr and the block's weight vectors Wv.
void load_inputs(const ScanArgs& a, Scratch& s, int64_t b, int64_t d0, int nc, int64_t t0, int nt, vf bias,
                 const vf* Wv, bool want_dsp) {
  load_tile(a.u, b, d0, nc, t0, nt, s.u.data());
  if (a.R) {
    for (int i = 0; i < nt; ++i) {
      const float* r_i = &s.dtr[size_t(i) * a.R];
      vf d{};
      for (int64_t r = 0; r < a.R; ++r) d += Wv[r] * r_i[r];
      s.dt[i] = d;
    }
  } else {
    load_tile(a.delta, b, d0, nc, t0, nt, s.dt.data());
  }
  for (int i = 0; i < nt; ++i) {
    vf raw = s.dt[i] + bias;
    if (a.softplus) {
      s.dt[i] = vsoftplus(raw, want_dsp ? &s.dsp[i] : nullptr);
    } else {
      s.dt[i] = raw;
    }
  }
  if (a.z.dtype) load_tile(a.z, b, d0, nc, t0, nt, s.z.data());
}

// fn(std::integral_constant<int, NF>, std::integral_constant<Clamp, C>): N compiled in for the common sizes of
// Mamba and Vim (8, 16; NF = 0 for any other N), which keeps the state and the carried gradient in registers, and
// the decay's clamp (choose_clamp).
template <class F>
void with_shape(int N, Clamp clamp, F fn) {
  auto go = [&](auto nf) {
    switch (clamp) {
      case Clamp::none: fn(nf, std::integral_constant<Clamp, Clamp::none>{}); break;
      case Clamp::floor: fn(nf, std::integral_constant<Clamp, Clamp::floor>{}); break;
      default: fn(nf, std::integral_constant<Clamp, Clamp::both>{}); break;
    }
  };
  switch (N) {
    case 8: go(std::integral_constant<int, 8>{}); break;
    case 16: go(std::integral_constant<int, 16>{}); break;
    default: go(std::integral_constant<int, 0>{}); break;
  }
}

// The decay's clamp for one block and chunk: with softplus and A <= 0 (no Geometry::cap), y = delta A log2(e) lies
// in [max(delta) min(A log2 e), 0], and no clamp is needed when that bound is >= -126 in every lane (an infinite
// delta fails the test and keeps the floor; a NaN delta makes the state NaN through delta u either way).
inline Clamp choose_clamp(const Geometry& g_, const Scratch& s, const vf* A2v, int N, int nt) {
  if (g_.cap) return Clamp::both;
  vf dmax{}, amin{};
  for (int i = 0; i < nt; ++i) dmax = vmax(s.dt[i], dmax);
  for (int n = 0; n < N; ++n) amin = vmin(A2v[n], amin);
  const vf lo = dmax * amin;
  for (int c = 0; c < W; ++c)
    if (!(lo[c] >= -126.0f)) return Clamp::floor;
  return Clamp::none;
}

// States per register group of the steps (GS): the loops keep a group's state (and, backward, its carried gradient
// and dA sums) in registers and walk the chunk once per group, carrying the per-position sums (C . h; the backward's
// d(delta) and B . dh) in scratch between groups, in the same order of additions. With 16 vector registers (AVX2)
// all N = 16 states and their gradients cannot stay in registers and the compiler spilled them every step (groups
// of 8: the forward 0.88-0.97x the time, forward + backward about 0.95x; groups of 4 no better); with 32 (AVX-512)
// they can, and one group is all N.
#if defined(__AVX512F__)
constexpr int GS = 16;
#else
constexpr int GS = 8;
#endif
constexpr int group_of(int NF) { return NF && NF > GS && NF % GS == 0 ? GS : NF; }

// The steps of one block through one chunk, in scan order: out = (C . h + D u) * silu(z) into s.y.
template <int NF, Clamp Cl>
void forward_steps(const ScanArgs& a, Scratch& s, vf* h, const vf* A2v, vf Dv, int nt, int n_dyn) {
  const int N = NF ? NF : n_dyn;
  constexpr int G = group_of(NF);
  const int ng = G ? G : N;
  vf hl[G ? G : 1];
  vf* hr = G ? hl : h;  // a run-time N: one group, its state in memory
  for (int n0 = 0; n0 < N; n0 += ng) {
    if (G)
      for (int n = 0; n < ng; ++n) hl[n] = h[n0 + n];
    for (int k = 0; k < nt; ++k) {
      const int i = a.reverse ? nt - 1 - k : k;
      const vf dt = s.dt[i], du = dt * s.u[i];
      const float *Bi = &s.Bs[i * N + n0], *Ci = &s.Cs[i * N + n0];
      vf y = n0 ? s.y[i] : vf{};
#pragma GCC unroll 16
      for (int n = 0; n < ng; ++n) {
        vf hn = vexp2<Cl>(dt * A2v[n0 + n]) * hr[n] + du * Bi[n];
        hr[n] = hn;
        y += hn * Ci[n];
      }
      s.y[i] = y;
    }
    if (G)
      for (int n = 0; n < ng; ++n) h[n0 + n] = hl[n];
  }
  for (int i = 0; i < nt; ++i) {
    vf y = s.y[i] + Dv * s.u[i];
    if (a.z.dtype) y *= s.z[i] * vsigmoid(s.z[i]);
    s.y[i] = y;
  }
}

void forward_task(const ScanArgs& a, const Geometry& g_, int64_t task, Scratch& s) {
  const int N = int(a.N);
  const int64_t p = task % g_.nparts, g = (task / g_.nparts) % a.G, b = task / (g_.nparts * a.G);
  const int64_t blk0 = p * a.part, nb = std::min(a.part, g_.nblk - blk0);
  for (int64_t j = 0; j < nb; ++j) {
    int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
    int nc = int(std::min<int64_t>(W, g_.K - kk));
    load_states(a.A + d0 * N, N, nc, &s.A2v[j * N]);
    for (int n = 0; n < N; ++n) s.A2v[j * N + n] *= LOG2E;
    if (a.h0)
      load_states(a.h0 + (b * a.dim + d0) * N, N, nc, &s.h[j * N]);
    else
      std::fill_n(&s.h[j * N], N, vf{});
    s.Dv[j] = a.D ? lanes(a.D, d0, nc, 1) : vf{};
    s.biasv[j] = a.bias ? lanes(a.bias, d0, nc, 1) : vf{};
    if (a.R) load_states(a.dtw + d0 * a.R, int(a.R), nc, &s.Wv[j * a.R]);
  }
  for (int64_t cc = 0; cc < g_.nchunks; ++cc) {
    const int64_t ci = a.reverse ? g_.nchunks - 1 - cc : cc, t0 = ci * g_.T;
    const int nt = int(std::min(g_.T, a.L - t0));
    load_bc(a.B, b, g, N, t0, nt, s.Bs.data());
    load_bc(a.C, b, g, N, t0, nt, s.Cs.data());
    if (a.R) load_bc(a.dtr, b, 0, int(a.R), t0, nt, s.dtr.data());
    for (int64_t j = 0; j < nb; ++j) {
      int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
      int nc = int(std::min<int64_t>(W, g_.K - kk));
      vf* h = &s.h[j * N];
      const vf* A2v = &s.A2v[j * N];
      if (a.ckpt && g_.ckpt_slot(a, ci) >= 0)
        std::memcpy(a.ckpt + g_.ckpt_off(a, b, g, blk0 + j, ci), h, sizeof(vf) * N);
      load_inputs(a, s, b, d0, nc, t0, nt, s.biasv[j], s.Wv.data() + j * a.R, false);
      if (j + 2 < nb)
        for (const TArg* t : {&a.u, &a.delta, &a.z}) prefetch_tile(*t, b, d0 + 2 * W, t0, nt);
      with_shape(N, choose_clamp(g_, s, A2v, N, nt), [&](auto nf, auto cl) {
        forward_steps<decltype(nf)::value, decltype(cl)::value>(a, s, h, A2v, s.Dv[j], nt, N);
      });
      scale_onto(a, a.out, s, b, d0, nc, t0, nt, s.y.data(), true, true);
      store_tile(a.out, b, d0, nc, t0, nt, s.y.data());
    }
  }
  if (a.last)
    for (int64_t j = 0; j < nb; ++j) {
      int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
      store_states(&s.h[j * N], N, int(std::min<int64_t>(W, g_.K - kk)), a.last + (b * a.dim + d0) * N);
    }
}

// Scratch for the cross-task sums of the backward: written per task, summed in a fixed order afterwards.
struct Partials {
  std::vector<float> dB, dC;  // (batch, G, nparts, T-major L x N) when nparts > 1
  std::vector<float> ddtr;    // (batch, G x nparts, T-major L x R) when G x nparts > 1: d(dtr) sums every channel
  std::vector<float> dA, dD, dbias, ddtw;  // (batch, dim, N), (batch, dim), (batch, dim), (batch, dim, R)
};

// One block through one chunk of the backward: recompute the chunk's states from s.hs[0] (its checkpoint), then
// the reverse recurrence; writes s.du, s.ddl, s.dz, accumulates dB / dC (s.dBacc, s.dCacc), dA, dD, d(bias). One
// walk of the chunk per state group (group_of), the per-position sums carried in s.yk, s.ddtk, s.sBk.
template <int NF, Clamp Cl>
void backward_steps(const ScanArgs& a, Scratch& s, const vf* Av, const vf* A2v, vf* dH, vf* dAacc, int64_t j,
                    int nt, int n_dyn, bool want_bc) {
  const int N = NF ? NF : n_dyn;
  constexpr int G = group_of(NF);
  const int ng = G ? G : N;
  vf* hs = s.hs.data();
  vf* dAs = s.dAs.data();
  // Recompute in scan order k: hs[k + 1] = h after step k, dAs[k] = exp(delta A) of step k, yk[k] = C . h.
  for (int n0 = 0; n0 < N; n0 += ng) {
    for (int k = 0; k < nt; ++k) {
      const int i = a.reverse ? nt - 1 - k : k;
      const vf dt = s.dt[i], du = dt * s.u[i];
      const float *Bi = &s.Bs[i * N + n0], *Ci = &s.Cs[i * N + n0];
      const vf* hp = hs + k * N + n0;
      vf* hn = hs + (k + 1) * N + n0;
      vf* ea = dAs + k * N + n0;
      vf y = n0 ? s.yk[k] : vf{};
#pragma GCC unroll 16
      for (int n = 0; n < ng; ++n) {
        vf e = vexp2<Cl>(dt * A2v[n0 + n]);
        vf h = e * hp[n] + du * Bi[n];
        ea[n] = e;
        hn[n] = h;
        y += h * Ci[n];
      }
      s.yk[k] = y;
    }
  }
  // output side: out = (y + D u) * silu(z). The sums over positions (dD here, d(bias) below) are carried in
  // registers: through s (which the compiler must assume the other stores alias) each step waited on the last
  // one's store (a profile of vim-proxy's backward had d(bias)'s store at 4.5 % of its samples).
  const vf Dv = s.Dv[j];
  vf dDsum = s.dDacc[j];
  for (int k = 0; k < nt; ++k) {
    const int i = a.reverse ? nt - 1 - k : k;
    vf dy = s.dout[i];
    if (a.z.dtype) {
      vf zz = s.z[i], sig = vsigmoid(zz);
      s.dz[i] = dy * (s.yk[k] + Dv * s.u[i]) * sig * (1.0f + zz * (1.0f - sig));
      dy *= zz * sig;
    }
    s.y[i] = dy;  // from here on y holds dL/dy
    dDsum += dy * s.u[i];
  }
  s.dDacc[j] = dDsum;
  // Reverse recurrence: dh_k = C_k dy_k + exp(delta_{k+1} A) dh_{k+1}.
  vf dHl[G ? G : 1], dAl[G ? G : 1];
  vf* dHr = G ? dHl : dH;  // a run-time N: one group, walked in memory
  vf* dAr = G ? dAl : dAacc;
  for (int n0 = 0; n0 < N; n0 += ng) {
    if (G)
      for (int n = 0; n < ng; ++n) dHl[n] = dH[n0 + n], dAl[n] = dAacc[n0 + n];
    for (int k = nt - 1; k >= 0; --k) {
      const int i = a.reverse ? nt - 1 - k : k;
      const vf dt = s.dt[i], dy = s.y[i], du = dt * s.u[i];
      const float *Bi = &s.Bs[i * N + n0], *Ci = &s.Cs[i * N + n0];
      const vf* hp = hs + k * N + n0;
      const vf* hn = hs + (k + 1) * N + n0;
      const vf* ea = dAs + k * N + n0;
      vf* dBa = &s.dBacc[size_t(i) * N + n0];
      vf* dCa = &s.dCacc[size_t(i) * N + n0];
      vf ddt = n0 ? s.ddtk[k] : vf{}, sB = n0 ? s.sBk[k] : vf{};
#pragma GCC unroll 16
      for (int n = 0; n < ng; ++n) {
        vf dh = dHr[n] + dy * Ci[n];
        if (want_bc) {
          dCa[n] += dy * hn[n];
          dBa[n] += dh * du;
        }
        vf q = dh * ea[n] * hp[n];  // dL / d(delta A)
        ddt += q * Av[n0 + n];
        sB += dh * Bi[n];
        dAr[n] += q * dt;
        dHr[n] = ea[n] * dh;
      }
      s.ddtk[k] = ddt;
      s.sBk[k] = sB;
    }
    if (G)
      for (int n = 0; n < ng; ++n) dH[n0 + n] = dHl[n], dAacc[n0 + n] = dAl[n];
  }
  vf dbsum = s.dbacc[j];
  for (int k = nt - 1; k >= 0; --k) {
    const int i = a.reverse ? nt - 1 - k : k;
    const vf dt = s.dt[i], u = s.u[i], sB = s.sBk[k];
    vf ddt = s.ddtk[k] + sB * u;
    if (a.softplus) ddt *= s.dsp[i];
    s.ddl[i] = ddt;
    s.du[i] = sB * dt + s.y[i] * Dv;
    dbsum += ddt;
  }
  s.dbacc[j] = dbsum;
}

void backward_task(const ScanArgs& a, const Geometry& g_, int64_t task, Scratch& s, Partials& P) {
  const int N = int(a.N);
  const int64_t p = task % g_.nparts, g = (task / g_.nparts) % a.G, b = task / (g_.nparts * a.G);
  const int64_t blk0 = p * a.part, nb = std::min(a.part, g_.nblk - blk0);
  for (int64_t j = 0; j < nb; ++j) {
    int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
    int nc = int(std::min<int64_t>(W, g_.K - kk));
    load_states(a.A + d0 * N, N, nc, &s.Av[j * N]);
    if (a.dlast)
      load_states(a.dlast + (b * a.dim + d0) * N, N, nc, &s.dH[j * N]);
    else
      std::fill_n(&s.dH[j * N], N, vf{});
    for (int n = 0; n < N; ++n) {
      s.A2v[j * N + n] = s.Av[j * N + n] * LOG2E;
      s.dAacc[j * N + n] = vf{};
    }
    s.Dv[j] = a.D ? lanes(a.D, d0, nc, 1) : vf{};
    s.biasv[j] = a.bias ? lanes(a.bias, d0, nc, 1) : vf{};
    s.dDacc[j] = vf{};
    s.dbacc[j] = vf{};
    if (a.R) load_states(a.dtw + d0 * a.R, int(a.R), nc, &s.Wv[j * a.R]);
    std::fill_n(&s.dWacc[j * a.R], a.R, vf{});
  }
  const bool want_bc = a.dB.dtype || a.dC.dtype;
  const size_t nR = size_t(a.R);
  for (int64_t cc = 0; cc < g_.nchunks; ++cc) {
    const int64_t ci = a.reverse ? cc : g_.nchunks - 1 - cc, t0 = ci * g_.T;
    const int nt = int(std::min(g_.T, a.L - t0));
    load_bc(a.B, b, g, N, t0, nt, s.Bs.data());
    load_bc(a.C, b, g, N, t0, nt, s.Cs.data());
    if (a.R) {
      load_bc(a.dtr, b, 0, int(a.R), t0, nt, s.dtr.data());
      std::fill(s.dtacc.begin(), s.dtacc.begin() + size_t(nt) * nR, vf{});
    }
    if (want_bc) {
      std::fill(s.dBacc.begin(), s.dBacc.begin() + size_t(nt) * N, vf{});
      std::fill(s.dCacc.begin(), s.dCacc.begin() + size_t(nt) * N, vf{});
    }
    for (int64_t j = 0; j < nb; ++j) {
      int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
      int nc = int(std::min<int64_t>(W, g_.K - kk));
      const vf* Av = &s.Av[j * N];
      const vf* A2v = &s.A2v[j * N];
      vf* dH = &s.dH[j * N];
      vf* dAacc = &s.dAacc[j * N];
      load_inputs(a, s, b, d0, nc, t0, nt, s.biasv[j], s.Wv.data() + j * a.R, true);
      load_tile(a.dout, b, d0, nc, t0, nt, s.dout.data());
      if (j + 2 < nb)
        for (const TArg* t : {&a.u, &a.delta, &a.z, &a.dout}) prefetch_tile(*t, b, d0 + 2 * W, t0, nt);
      scale_onto(a, a.dout, s, b, d0, nc, t0, nt, s.dout.data(), true, false);
      if (g_.ckpt_slot(a, ci) >= 0)
        std::memcpy(s.hs.data(), a.ckpt + g_.ckpt_off(a, b, g, blk0 + j, ci), sizeof(vf) * N);
      else if (a.h0)  // the forward entered this chunk first: the initial state
        load_states(a.h0 + (b * a.dim + d0) * N, N, nc, s.hs.data());
      else
        std::fill_n(s.hs.data(), N, vf{});
      with_shape(N, choose_clamp(g_, s, A2v, N, nt), [&](auto nf, auto cl) {
        backward_steps<decltype(nf)::value, decltype(cl)::value>(a, s, Av, A2v, dH, dAacc, j, nt, N, want_bc);
      });
      if (a.du.dtype) store_tile(a.du, b, d0, nc, t0, nt, s.du.data());
      if (a.R) {  // through the low-rank product: d(dtr) over this block's channels, d(dtw) over positions
        // r outer: each d(dtw) sum runs over the positions in a register (the same additions in the same order
        // as position by position, where every step waited on the last one's store)
        for (size_t r = 0; r < nR; ++r) {
          const vf w = s.Wv[j * nR + r];
          vf dW = s.dWacc[j * nR + r];
          for (int i = 0; i < nt; ++i) {
            const vf g = s.ddl[i];
            s.dtacc[i * nR + r] += w * g;
            dW += g * s.dtr[i * nR + r];
          }
          s.dWacc[j * nR + r] = dW;
        }
      } else if (a.ddelta.dtype) {
        store_tile(a.ddelta, b, d0, nc, t0, nt, s.ddl.data());
      }
      if (a.dz.dtype) {
        scale_onto(a, a.dz, s, b, d0, nc, t0, nt, s.dz.data(), false, true);
        store_tile(a.dz, b, d0, nc, t0, nt, s.dz.data());
      }
    }
    if (want_bc) {
      for (int pair = 0; pair < 2; ++pair) {
        const TArg& dst = pair ? a.dC : a.dB;
        if (!dst.dtype) continue;
        const std::vector<vf>& acc = pair ? s.dCacc : s.dBacc;
        float* red = s.red.data();
        hsums(acc.data(), int64_t(nt) * N, red);
        if (g_.nparts == 1) {
          store_bc(dst, b, g, N, t0, nt, red);
        } else {
          float* part = (pair ? P.dC : P.dB).data() + ((b * a.G + g) * g_.nparts + p) * a.L * N + t0 * N;
          std::memcpy(part, red, sizeof(float) * nt * N);
        }
      }
    }
    if (a.R && a.ddtr.dtype) {
      hsums(s.dtacc.data(), int64_t(nt) * a.R, s.red.data());
      const int64_t q = g * g_.nparts + p, nq = a.G * g_.nparts;  // this task's share of the channel sum
      if (nq == 1)
        store_bc(a.ddtr, b, 0, int(a.R), t0, nt, s.red.data());
      else
        std::memcpy(P.ddtr.data() + ((b * nq + q) * a.L + t0) * a.R, s.red.data(), sizeof(float) * nt * nR);
    }
  }
  for (int64_t j = 0; j < nb; ++j) {
    int64_t kk = (blk0 + j) * W, d0 = g * g_.K + kk;
    int nc = int(std::min<int64_t>(W, g_.K - kk));
    const int64_t row = b * a.dim + d0;
    if (a.dh0) store_states(&s.dH[j * N], N, nc, a.dh0 + row * N);
    if (a.dA) store_states(&s.dAacc[j * N], N, nc, P.dA.data() + row * N);
    if (a.dD) store_states(&s.dDacc[j], 1, nc, P.dD.data() + row);
    if (a.dbias) store_states(&s.dbacc[j], 1, nc, P.dbias.data() + row);
    if (a.ddtw) store_states(&s.dWacc[j * a.R], int(a.R), nc, P.ddtw.data() + row * a.R);
  }
}

// libgomp's entry point for a parallel region (GCC's OpenMP ABI, also exported by LLVM's and Intel's runtimes):
// fn(data) on num_threads threads, this one included. Set by hs_set_openmp to the runtime torch runs on, so the
// kernels' threads are torch's own: right after a torch operator its OpenMP workers spin-wait for more work for a
// while, and threads of our own would share the cores with them (measured: a 2-thread scan after a matmul took
// twice the 1-thread time).
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<GompParallel> gomp_parallel{nullptr};

// Tasks 0 .. ntasks - 1 shared out to up to nthreads threads (this one included), each with its own scratch from
// init(). Which thread runs a task never changes a result: every task writes its own outputs or partials.
template <class Init, class F>
void parallel_for(int64_t ntasks, int64_t nthreads, Init init, F fn) {
  nthreads = std::max<int64_t>(1, std::min(nthreads, ntasks));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto worker = [&]() {  // no exception may leave a thread (std::terminate) or an OpenMP region (undefined)
    try {
      auto s = init();
      for (int64_t t; !failed.load(std::memory_order_relaxed) && (t = next.fetch_add(1)) < ntasks;) fn(t, s);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  const GompParallel omp = gomp_parallel.load();
  if (nthreads == 1) {
    worker();
  } else if (omp) {
    omp([](void* w) { (*static_cast<decltype(worker)*>(w))(); }, &worker, unsigned(nthreads), 0);
  } else {
    std::vector<std::thread> pool;
    try {
      for (int64_t i = 1; i < nthreads; ++i) pool.emplace_back(worker);
    } catch (...) {  // fewer threads than asked: the tasks are shared out among those there are
    }
    worker();
    for (auto& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
}

template <class F>
void parallel_tasks(int64_t ntasks, int64_t nthreads, const ScanArgs& a, bool backward, F fn) {
  parallel_for(ntasks, nthreads, [&] {
    Scratch s;
    s.reserve(a, backward);
    return s;
  }, fn);
}

// ---- depthwise causal conv1d (+ SiLU) -------------------------------------------------------------------------
// One task per (sequence, block of W channels); the whole sequence of the block sits in scratch, padded by K - 1
// zeros at both ends, so every position reads the same way: xp[j] = x[j - (K - 1)]. Vim's two directions (the
// conv and the reverse conv of one x) run as a pair (hs_conv_*_pair): each task reads its x once for both, and
// the backward sums the two directions' x gradients in scratch and writes them once.
struct ConvScratch {
  std::vector<vf> xp, pre, dp, dx, w, dw;
  void reserve(const ConvArgs& a) {
    size_t pad = size_t(a.L + 2 * (a.K - 1));
    xp.assign(pad, vf{});
    dp.assign(pad, vf{});
    pre.resize(size_t(a.L));
    dx.resize(size_t(a.L));
    w.resize(size_t(a.K));
    dw.resize(size_t(a.K));
  }
};

// The weights as (K, dim), once per call: a block's tap is then one vector load, where the ABI's (dim, K) needs
// a gather of W strided floats per tap and task.
std::vector<float> conv_taps(const ConvArgs& a) {
  std::vector<float> wt(size_t(a.K * a.dim));
  for (int64_t d = 0; d < a.dim; ++d)
    for (int64_t k = 0; k < a.K; ++k) wt[k * a.dim + d] = a.w[d * a.K + k];
  return wt;
}

void conv_load_x(const ConvArgs& a, ConvScratch& s, int64_t b, int64_t d0, int nc) {
  for (int64_t t0 = 0; t0 < a.L; t0 += 256) {  // load_tile takes int lengths: read in slices
    int nt = int(std::min<int64_t>(256, a.L - t0));
    load_tile(a.x, b, d0, nc, t0, nt, s.xp.data() + (a.K - 1) + t0);
  }
}

// A block's K tap vectors, into `regs` (KF of them, in registers) or, for a run-time K, into s.w.
template <int KF>
vf* conv_weights(const ConvArgs& a, const float* wt, ConvScratch& s, int64_t d0, int nc, vf* regs) {
  vf* w = KF ? regs : s.w.data();
  for (int64_t k = 0; k < (KF ? KF : a.K); ++k) w[k] = lanes(wt + k * a.dim, d0, nc, 1);
  return w;
}

// The pre-activation of one block from s.xp into s.pre, or its SiLU when `act`; KF: a compile-time K, or 0.
template <int KF>
void conv_pre(const ConvArgs& a, const float* wt, ConvScratch& s, int64_t d0, int nc, bool act) {
  const int64_t K = KF ? KF : a.K, L = a.L;
  vf wl[KF ? KF : 1];
  vf* w = conv_weights<KF>(a, wt, s, d0, nc, wl);
  const vf bias = a.bias ? lanes(a.bias, d0, nc, 1) : vf{};
  const vf* xp = s.xp.data() + (a.reverse ? 2 * (K - 1) : 0);
  const int64_t step = a.reverse ? -1 : 1;
  for (int64_t t = 0; t < L; ++t) {
    vf acc = bias;
    for (int64_t k = 0; k < K; ++k) acc += w[k] * xp[t + step * k];
    s.pre[t] = acc;
  }
  if (act)
    for (int64_t t = 0; t < L; ++t) s.pre[t] *= vsigmoid(s.pre[t]);
}

void conv_store(const ConvArgs& a, const TArg& dst, int64_t b, int64_t d0, int nc, const std::vector<vf>& src) {
  for (int64_t t0 = 0; t0 < a.L; t0 += 256)
    store_tile(dst, b, d0, nc, t0, int(std::min<int64_t>(256, a.L - t0)), src.data() + t0);
}

// One direction's outputs of the block whose x is in s.xp.
template <int KF>
void conv_forward_block(const ConvArgs& a, const float* wt, ConvScratch& s, int64_t b, int64_t d0, int nc) {
  conv_pre<KF>(a, wt, s, d0, nc, a.silu);
  conv_store(a, a.out, b, d0, nc, s.pre);
}

// One direction's backward of the block whose x is in s.xp: d(w), d(bias) into its partials, x's gradient into
// s.dx (added onto it when `add`).
template <int KF>
void conv_backward_block(const ConvArgs& a, const float* wt, ConvScratch& s, int64_t b, int64_t d0, int nc,
                         float* pw, float* pb, bool add) {
  const int64_t K = KF ? KF : a.K, L = a.L;
  conv_pre<KF>(a, wt, s, d0, nc, false);
  vf* dp = s.dp.data() + (K - 1);  // dp[t] = dL/d(pre-activation) at t; zeros beyond both ends
  for (int64_t t0 = 0; t0 < L; t0 += 256)
    load_tile(a.dout, b, d0, nc, t0, int(std::min<int64_t>(256, L - t0)), dp + t0);
  // One pass over t: the SiLU's derivative, d(bias) and d(w) with an accumulator per tap (independent chains;
  // a compile-time K keeps them in registers).
  vf db{};
  vf dwl[KF ? KF : 1];
  vf* dwacc = KF ? dwl : s.dw.data();
  for (int64_t k = 0; k < K; ++k) dwacc[k] = vf{};
  const vf* xp = s.xp.data() + (a.reverse ? 2 * (K - 1) : 0);
  const int64_t step = a.reverse ? -1 : 1;
  for (int64_t t = 0; t < L; ++t) {
    vf d = dp[t];
    if (a.silu) {
      const vf pre = s.pre[t], sig = vsigmoid(pre);
      d *= sig * (1.0f + pre * (1.0f - sig));
      dp[t] = d;
    }
    db += d;
    if (a.dw)
      for (int64_t k = 0; k < K; ++k) dwacc[k] += d * xp[t + step * k];
  }
  if (a.dw) {
    if (KF)
      for (int64_t k = 0; k < K; ++k) s.dw[k] = dwl[k];
    for (int c = 0; c < nc; ++c)
      for (int64_t k = 0; k < K; ++k) pw[(b * a.dim + d0 + c) * K + k] = s.dw[k][c];
  }
  if (a.dbias)
    for (int c = 0; c < nc; ++c) pb[b * a.dim + d0 + c] = db[c];
  if (a.dx.dtype) {
    // x[s] fed output t = s + K - 1 - k (forward) or s - (K - 1) + k (reverse) through tap k.
    vf wl[KF ? KF : 1];
    const vf* w = conv_weights<KF>(a, wt, s, d0, nc, wl);
    const vf* dq = s.dp.data() + (a.reverse ? 0 : 2 * (K - 1));
    const int64_t back = a.reverse ? 1 : -1;
    for (int64_t t = 0; t < L; ++t) {
      vf acc{};
      for (int64_t k = 0; k < K; ++k) acc += w[k] * dq[t + back * k];
      s.dx[t] = add ? s.dx[t] + acc : acc;
    }
  }
}

// x's gradient of the block from s.dx, plus what dx holds when the call accumulates.
void conv_store_dx(const ConvArgs& a, ConvScratch& s, int64_t b, int64_t d0, int nc) {
  for (int64_t t0 = 0; t0 < a.L; t0 += 256) {
    const int nt = int(std::min<int64_t>(256, a.L - t0));
    if (a.accumulate) {
      load_tile(a.dx, b, d0, nc, t0, nt, s.pre.data() + t0);
      for (int64_t t = t0; t < t0 + nt; ++t) s.dx[t] += s.pre[t];
    }
    store_tile(a.dx, b, d0, nc, t0, nt, s.dx.data() + t0);
  }
}

template <class F>
void parallel_conv(const ConvArgs& a, F fn) {
  const int64_t nblk = (a.dim + W - 1) / W;
  parallel_for(a.batch * nblk, a.nthreads, [&] {
    ConvScratch s;
    s.reserve(a);
    return s;
  }, [&](int64_t task, ConvScratch& s) {
    const int64_t b = task / nblk, d0 = (task % nblk) * W;
    fn(s, b, d0, int(std::min<int64_t>(W, a.dim - d0)));
  });
}

// fn(std::integral_constant<int, KF>): Mamba's d_conv 4 compiled in (the taps unrolled), else K at run time.
template <class F>
void with_taps(int64_t K, F fn) {
  if (K == 4)
    fn(std::integral_constant<int, 4>{});
  else
    fn(std::integral_constant<int, 0>{});
}

// A pair's two convs share the task split and the scratch.
bool same_shape(const ConvArgs& a, const ConvArgs& b) {
  return b.batch == a.batch && b.dim == a.dim && b.L == a.L && b.K == a.K;
}

// The conv of x (a), and with b the reverse conv of the same x (Vim's pair): each task reads x once.
int conv_forward(const ConvArgs* a, const ConvArgs* b) {
  try {
    if (b && !same_shape(*a, *b)) return 2;
    const std::vector<float> wa = conv_taps(*a), wb = b ? conv_taps(*b) : std::vector<float>{};
    with_taps(a->K, [&](auto kf) {
      constexpr int KF = decltype(kf)::value;
      parallel_conv(*a, [&](ConvScratch& s, int64_t bi, int64_t d0, int nc) {
        conv_load_x(*a, s, bi, d0, nc);
        conv_forward_block<KF>(*a, wa.data(), s, bi, d0, nc);
        if (b) conv_forward_block<KF>(*b, wb.data(), s, bi, d0, nc);
      });
    });
    return 0;
  } catch (...) {
    return 1;
  }
}

// Per-sequence partials of d(w), d(bias) summed over the batch in a fixed order.
void conv_sum_partials(const ConvArgs& a, const std::vector<float>& pw, const std::vector<float>& pb) {
  for (int pair = 0; pair < 2; ++pair) {
    float* dst = pair ? a.dbias : a.dw;
    if (!dst) continue;
    const std::vector<float>& src = pair ? pb : pw;
    const int64_t n = pair ? a.dim : a.dim * a.K;
    std::copy(src.begin(), src.begin() + n, dst);
    for (int64_t b = 1; b < a.batch; ++b)
      for (int64_t e = 0; e < n; ++e) dst[e] += src[b * n + e];
  }
}

// With b (the reverse conv of a's x): x's gradient is the two directions' sum, written once to a's dx.
int conv_backward(const ConvArgs* a, const ConvArgs* b) {
  try {
    if (b && !same_shape(*a, *b)) return 2;
    static thread_local std::vector<float> own[4];  // d(w), d(bias) partials per direction, reused across calls
    std::vector<float>* P = own;                      // what the workers' lambdas capture: this thread's buffers
    for (int i = 0; i < (b ? 2 : 1); ++i) {
      const ConvArgs& c = i ? *b : *a;
      if (c.dw) P[2 * i].resize(std::max(P[2 * i].size(), size_t(c.batch * c.dim * c.K)));
      if (c.dbias) P[2 * i + 1].resize(std::max(P[2 * i + 1].size(), size_t(c.batch * c.dim)));
    }
    const std::vector<float> wa = conv_taps(*a), wb = b ? conv_taps(*b) : std::vector<float>{};
    const bool want_dx = a->dx.dtype != 0;
    with_taps(a->K, [&](auto kf) {
      constexpr int KF = decltype(kf)::value;
      parallel_conv(*a, [&](ConvScratch& s, int64_t bi, int64_t d0, int nc) {
        conv_load_x(*a, s, bi, d0, nc);
        conv_backward_block<KF>(*a, wa.data(), s, bi, d0, nc, P[0].data(), P[1].data(), false);
        if (b) conv_backward_block<KF>(*b, wb.data(), s, bi, d0, nc, P[2].data(), P[3].data(), want_dx);
        if (want_dx) conv_store_dx(*a, s, bi, d0, nc);
      });
    });
    conv_sum_partials(*a, P[0], P[1]);
    if (b) conv_sum_partials(*b, P[2], P[3]);
    return 0;
  } catch (...) {
    return 1;
  }
}

// ---- RMSNorm ------------------------------------------------------------------------------------------------
// One task per NORM_ROWS rows (a fixed split: the d(w) partials per task are summed in task order, so results do
// not depend on the thread count). A row is read into fp32 scratch padded with zeros to whole vectors.
constexpr int64_t NORM_ROWS = 64;

struct NormScratch {
  std::vector<vf> x, g, w;
  int64_t nv = 0;
  explicit NormScratch(const NormArgs& a) : nv((a.d + W - 1) / W) {
    x.assign(size_t(nv), vf{});
    g.assign(size_t(nv), vf{});
    w.assign(size_t(nv), vf{});
    std::memcpy(w.data(), a.w, sizeof(float) * size_t(a.d));
  }
};

template <class Ty>
void load_row_t(const typename Ty::T* p, int64_t d, float* dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] = Ty::in(p[c]);
}

void load_row(const TArg& a, int64_t r, int64_t d, vf* dst) {
  float* f = reinterpret_cast<float*>(dst);
  switch (a.dtype) {
    case 1: load_row_t<F32>(static_cast<const float*>(a.data) + r * a.s[0], d, f); break;
    case 2: load_row_t<BF16>(static_cast<const uint16_t*>(a.data) + r * a.s[0], d, f); break;
    default: load_row_t<F16>(static_cast<const uint16_t*>(a.data) + r * a.s[0], d, f); break;
  }
}

template <class Ty>
void store_row_t(typename Ty::T* p, int64_t d, const float* src) {
  for (int64_t c = 0; c < d; ++c) p[c] = Ty::out(src[c]);
}

void store_row(const TArg& a, int64_t r, int64_t d, const vf* src) {
  const float* f = reinterpret_cast<const float*>(src);
  switch (a.dtype) {
    case 1: store_row_t<F32>(static_cast<float*>(a.data) + r * a.s[0], d, f); break;
    case 2: store_row_t<BF16>(static_cast<uint16_t*>(a.data) + r * a.s[0], d, f); break;
    default: store_row_t<F16>(static_cast<uint16_t*>(a.data) + r * a.s[0], d, f); break;
  }
}

void norm_forward_task(const NormArgs& a, int64_t task, NormScratch& s) {
  const float inv_d = 1.0f / float(a.d);
  for (int64_t r = task * NORM_ROWS, end = std::min(a.rows, r + NORM_ROWS); r < end; ++r) {
    load_row(a.x, r, a.d, s.x.data());
    vf ss{};
    for (int64_t v = 0; v < s.nv; ++v) ss += s.x[v] * s.x[v];
    const float rstd = 1.0f / std::sqrt(hsum(ss) * inv_d + float(a.eps));
    if (a.rstd) a.rstd[r] = rstd;
    for (int64_t v = 0; v < s.nv; ++v) s.x[v] = s.x[v] * rstd * s.w[v];
    store_row(a.out, r, a.d, s.x.data());
  }
}

// dx = rstd (w dy) - rstd^3 / d (sum_j w_j dy_j x_j) x;  d(w) += dy x rstd, into this task's partial.
void norm_backward_task(const NormArgs& a, int64_t task, NormScratch& s, float* pdw) {
  const float inv_d = 1.0f / float(a.d);
  std::vector<vf> dw(size_t(s.nv), vf{});
  for (int64_t r = task * NORM_ROWS, end = std::min(a.rows, r + NORM_ROWS); r < end; ++r) {
    load_row(a.x, r, a.d, s.x.data());
    load_row(a.dout, r, a.d, s.g.data());
    const float rstd = a.rstd[r];
    vf dot{};
    for (int64_t v = 0; v < s.nv; ++v) {
      dw[v] += s.g[v] * s.x[v] * rstd;
      s.g[v] *= s.w[v];
      dot += s.g[v] * s.x[v];
    }
    const float k = rstd * rstd * rstd * inv_d * hsum(dot);
    for (int64_t v = 0; v < s.nv; ++v) s.g[v] = s.g[v] * rstd - s.x[v] * k;
    if (a.dx.dtype) store_row(a.dx, r, a.d, s.g.data());
  }
  if (pdw) std::memcpy(pdw, dw.data(), sizeof(float) * size_t(a.d));
}

template <class F>
void parallel_norm(const NormArgs& a, F fn) {
  parallel_for((a.rows + NORM_ROWS - 1) / NORM_ROWS, a.nthreads, [&] { return NormScratch(a); }, fn);
}

}  // namespace

extern "C" {

int64_t hs_scan_abi_version() { return 4; }

int64_t hs_scan_vector_width() { return W; }  // fp32 lanes per vector in this build

// The OpenMP runtime's GOMP_parallel for the kernels' threads (see gomp_parallel), or null for threads of their own.
void hs_set_openmp(void* gomp_parallel_fn) { gomp_parallel.store(reinterpret_cast<GompParallel>(gomp_parallel_fn)); }

// Return 0, 1 after an exception, 2 for a pair whose shapes differ. A pair's b is the reverse conv of a's x; its
// x gradient goes to a's dx (b's dx is not read).
int hs_conv_forward(const ConvArgs* a) { return conv_forward(a, nullptr); }
int hs_conv_backward(const ConvArgs* a) { return conv_backward(a, nullptr); }
int hs_conv_forward_pair(const ConvArgs* a, const ConvArgs* b) { return conv_forward(a, b); }
int hs_conv_backward_pair(const ConvArgs* a, const ConvArgs* b) { return conv_backward(a, b); }

int hs_norm_forward(const NormArgs* a) {
  try {
    parallel_norm(*a, [&](int64_t t, NormScratch& s) { norm_forward_task(*a, t, s); });
    return 0;
  } catch (...) {
    return 1;
  }
}

int hs_norm_backward(const NormArgs* a) {
  try {
    static thread_local std::vector<float> partials;  // (tasks, d), reused across calls
    std::vector<float>& pw = partials;  // a reference: what the workers' lambdas capture
    const int64_t ntasks = (a->rows + NORM_ROWS - 1) / NORM_ROWS;
    if (a->dw) pw.resize(std::max(pw.size(), size_t(ntasks * a->d)));
    parallel_norm(*a, [&](int64_t t, NormScratch& s) {
      norm_backward_task(*a, t, s, a->dw ? pw.data() + t * a->d : nullptr);
    });
    if (a->dw) {  // fixed-order sum over the tasks
      std::copy(pw.begin(), pw.begin() + a->d, a->dw);
      for (int64_t t = 1; t < ntasks; ++t)
        for (int64_t c = 0; c < a->d; ++c) a->dw[c] += pw[t * a->d + c];
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

int64_t hs_scan_ckpt_size(const ScanArgs* a) {
  Geometry g(*a);
  return a->batch * a->G * g.nblk * (g.nchunks - 1) * a->N * W;  // none for the chunk entered first
}

}  // extern "C"

namespace {

// The second direction of a pair runs each task right after the first's, while the tiles both touch (z, and the
// output it adds onto; dout and dz in the backward) are still in cache. Both must have one task split and scratch.
bool same_split(const ScanArgs& a, const Geometry& ga, const ScanArgs& b, const Geometry& gb) {
  return ga.ntasks == gb.ntasks && ga.nparts == gb.nparts && a.N == b.N && a.chunk == b.chunk && a.part == b.part &&
         a.batch == b.batch && a.dim == b.dim && a.L == b.L && a.G == b.G && a.R == b.R;
}

int scan_forward(const ScanArgs* a, const ScanArgs* b) {
  try {
    const Geometry ga(*a), gb = b ? Geometry(*b) : ga;  // a copy, not a second pass over A, when single
    if (b && !same_split(*a, ga, *b, gb)) return 2;
    parallel_tasks(ga.ntasks, a->nthreads, *a, false, [&](int64_t t, Scratch& s) {
      forward_task(*a, ga, t, s);
      if (b) forward_task(*b, gb, t, s);
    });
    return 0;
  } catch (...) {
    return 1;
  }
}

void reserve_partials(const ScanArgs* a, const Geometry& g, Partials& P) {
  if (g.nparts > 1) {
    if (a->dB.dtype) P.dB.resize(std::max(P.dB.size(), size_t(a->batch * a->G * g.nparts * a->L * a->N)));
    if (a->dC.dtype) P.dC.resize(std::max(P.dC.size(), size_t(a->batch * a->G * g.nparts * a->L * a->N)));
  }
  if (a->dA) P.dA.resize(std::max(P.dA.size(), size_t(a->batch * a->dim * a->N)));
  if (a->dD) P.dD.resize(std::max(P.dD.size(), size_t(a->batch * a->dim)));
  if (a->dbias) P.dbias.resize(std::max(P.dbias.size(), size_t(a->batch * a->dim)));
  if (a->R && a->ddtr.dtype && a->G * g.nparts > 1)
    P.ddtr.resize(std::max(P.ddtr.size(), size_t(a->batch * a->G * g.nparts * a->L * a->R)));
  if (a->ddtw) P.ddtw.resize(std::max(P.ddtw.size(), size_t(a->batch * a->dim * a->R)));
}

// Fixed-order sums: over parts for dB / dC, over groups and parts for d(dtr), over the batch for dA, dD,
// d(delta_bias), d(dtw).
void sum_partials(const ScanArgs* a, const Geometry& g, const Partials& P) {
  const int64_t N = a->N, L = a->L;
  if (g.nparts > 1) {
    std::vector<float> row(size_t(L * N));
    for (int pair = 0; pair < 2; ++pair) {
      const TArg& dst = pair ? a->dC : a->dB;
      if (!dst.dtype) continue;
      const std::vector<float>& src = pair ? P.dC : P.dB;
      for (int64_t bg = 0; bg < a->batch * a->G; ++bg) {
        const float* q = src.data() + bg * g.nparts * L * N;
        std::copy(q, q + L * N, row.begin());
        for (int64_t p = 1; p < g.nparts; ++p)
          for (int64_t e = 0; e < L * N; ++e) row[e] += q[p * L * N + e];
        store_bc(dst, bg / a->G, bg % a->G, int(N), 0, int(L), row.data());
      }
    }
  }
  auto batch_sum = [&](const std::vector<float>& src, float* dst, int64_t n) {
    std::copy(src.begin(), src.begin() + n, dst);
    for (int64_t b = 1; b < a->batch; ++b)
      for (int64_t e = 0; e < n; ++e) dst[e] += src[b * n + e];
  };
  if (a->dA) batch_sum(P.dA, a->dA, a->dim * N);
  if (a->dD) batch_sum(P.dD, a->dD, a->dim);
  if (a->dbias) batch_sum(P.dbias, a->dbias, a->dim);
  if (a->ddtw) batch_sum(P.ddtw, a->ddtw, a->dim * a->R);
  const int64_t nq = a->G * g.nparts, R = a->R;
  if (R && a->ddtr.dtype && nq > 1) {
    std::vector<float> row(size_t(L * R));
    for (int64_t b = 0; b < a->batch; ++b) {
      const float* q = P.ddtr.data() + b * nq * L * R;
      std::copy(q, q + L * R, row.begin());
      for (int64_t k = 1; k < nq; ++k)
        for (int64_t e = 0; e < L * R; ++e) row[e] += q[k * L * R + e];
      store_bc(a->ddtr, b, 0, int(R), 0, int(L), row.data());
    }
  }
}

int scan_backward(const ScanArgs* a, const ScanArgs* b) {
  try {
    const Geometry ga(*a), gb = b ? Geometry(*b) : ga;  // a copy, not a second pass over A, when single
    if (b && !same_split(*a, ga, *b, gb)) return 2;
    // Reused across calls (every entry is written before it is read): a fresh buffer of this size would cost
    // page faults on every backward. References: the workers' lambdas must see this thread's buffers.
    static thread_local Partials calling_thread[2];
    Partials &Pa = calling_thread[0], &Pb = calling_thread[1];
    reserve_partials(a, ga, Pa);
    if (b) reserve_partials(b, gb, Pb);
    parallel_tasks(ga.ntasks, a->nthreads, *a, true, [&](int64_t t, Scratch& s) {
      backward_task(*a, ga, t, s, Pa);
      if (b) backward_task(*b, gb, t, s, Pb);
    });
    sum_partials(a, ga, Pa);
    if (b) sum_partials(b, gb, Pb);
    return 0;
  } catch (...) {
    return 1;
  }
}

}  // namespace

extern "C" {

// Return 0, 1 after an exception (out of memory, no thread), 2 for a pair whose shapes differ: the caller raises.
int hs_scan_forward(const ScanArgs* a) { return scan_forward(a, nullptr); }
int hs_scan_backward(const ScanArgs* a) { return scan_backward(a, nullptr); }
// Vim's two directions: b's output (and in the backward its dz) added onto a's as ScanArgs::accumulate says.
int hs_scan_forward_pair(const ScanArgs* a, const ScanArgs* b) { return scan_forward(a, b); }
int hs_scan_backward_pair(const ScanArgs* a, const ScanArgs* b) { return scan_backward(a, b); }

}  // extern "C"
