#include "codec.h"

#include <math.h>
#include <string.h>

#include "err.h"
#include "proto/ps.pb-c.h"

_Static_assert(PS_CODEC_NONE == PS__CODEC__CODEC_NONE, "PS_CODEC_NONE");
_Static_assert(PS_CODEC_FP16 == PS__CODEC__CODEC_FP16, "PS_CODEC_FP16");
_Static_assert(PS_CODEC_INT8 == PS__CODEC__CODEC_INT8, "PS_CODEC_INT8");
_Static_assert(PS_CODEC_TOPK == PS__CODEC__CODEC_TOPK, "PS_CODEC_TOPK");
/* The frames are little-endian; so is every machine this builds for. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian");

static const char *const names[] = {"none", "fp16", "int8", "topk"};

const char *ps_codec_name(int codec) {
  return codec >= 0 && codec <= PS_CODEC_TOPK ? names[codec] : "unknown";
}

int ps_codec_parse(const char *name) {
  for (int i = 0; name && i <= PS_CODEC_TOPK; i++)
    if (strcmp(name, names[i]) == 0) return i;
  return -1;
}

uint64_t ps_codec_topk_count(uint64_t n, float fraction) {
  if (n == 0) return 0;
  double k = ceil((double)fraction * (double)n);
  if (!(k >= 1)) return 1;
  if (k >= (double)n) return n;
  return (uint64_t)k;
}

static uint64_t int8_blocks(uint64_t n) {
  return (n + PS_CODEC_INT8_BLOCK - 1) / PS_CODEC_INT8_BLOCK;
}

size_t ps_codec_encoded_bytes(int codec, uint64_t n, uint64_t k) {
  switch (codec) {
    case PS_CODEC_FP16:
      return (size_t)n * 2;
    case PS_CODEC_INT8:
      return (size_t)(int8_blocks(n) * sizeof(float) + n);
    case PS_CODEC_TOPK:
      return (size_t)k * (sizeof(uint32_t) + sizeof(float));
    default:
      return (size_t)n * sizeof(float);
  }
}

int ps_codec_check_size(int codec, uint64_t n, size_t bytes, char *err,
                        size_t errlen) {
  if (n == 0)
    return ps_errf(err, errlen, PS_ERR_PROTO, "%s of 0 values",
                   ps_codec_name(codec));
  if (codec == PS_CODEC_TOPK) {
    const size_t pair = sizeof(uint32_t) + sizeof(float);
    if (n > UINT32_MAX)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "topk of %llu values: indices are 32 bits",
                     (unsigned long long)n);
    if (bytes == 0 || bytes % pair != 0 || bytes / pair > n)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "topk frame of %zu bytes is not 1 to %llu pairs of 8 "
                     "bytes",
                     bytes, (unsigned long long)n);
    return PS_OK;
  }
  if (codec != PS_CODEC_FP16 && codec != PS_CODEC_INT8 &&
      codec != PS_CODEC_NONE)
    return ps_errf(err, errlen, PS_ERR_PROTO, "unknown codec %d", codec);
  size_t want = ps_codec_encoded_bytes(codec, n, 0);
  if (bytes != want)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s frame of %llu values must have %zu bytes, it has %zu",
                   ps_codec_name(codec), (unsigned long long)n, want, bytes);
  return PS_OK;
}

/* ---- fp16 -----------------------------------------------------------------
 */

uint16_t ps_fp16_from_float(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof(x));
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) /* Inf, or NaN kept quiet with its top payload */
    return (uint16_t)(sign | 0x7c00u |
                      (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
  if (ax >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* >= 65536 */
  if (ax < 0x38800000u) { /* below 2^-14: a subnormal half, or 0 */
    if (ax < 0x33000000u) return (uint16_t)sign; /* <= 2^-25 */
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t h = (ax >> 13) - (112u << 10); /* rebias 127 -> 15 */
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* may carry to Inf */
  return (uint16_t)(sign | h);
}

float ps_fp16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t bits;
  if (e == 0) {
    float v = (float)m * 0x1p-24f; /* exact */
    memcpy(&bits, &v, sizeof(bits));
    bits |= sign;
  } else if (e == 31) {
    bits = sign | 0x7f800000u | (m << 13);
  } else {
    bits = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

static void fp16_encode_c(const float *x, uint64_t n, unsigned char *dst) {
  for (uint64_t i = 0; i < n; i++) {
    uint16_t h = ps_fp16_from_float(x[i]);
    memcpy(dst + 2 * i, &h, 2);
  }
}

static void fp16_decode_c(const unsigned char *src, uint64_t n, float *out) {
  for (uint64_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, src + 2 * i, 2);
    out[i] = ps_fp16_to_float(h);
  }
}

/* x86-64: the F16C instructions, where the CPU has them (checked once at
 * run time, so the build needs no -mf16c). They round to nearest even and
 * keep NaN payloads as the C code does; test_codec holds the two equal. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define PS_CODEC_HAVE_F16C 1

__attribute__((target("avx,f16c"))) static void fp16_encode_f16c(
    const float *x, uint64_t n, unsigned char *dst) {
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), h);
  }
  fp16_encode_c(x + i, n - i, dst + 2 * i);
}

__attribute__((target("avx,f16c"))) static void fp16_decode_f16c(
    const unsigned char *src, uint64_t n, float *out) {
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(
                         (const __m128i *)(const void *)(src + 2 * i))));
  fp16_decode_c(src + 2 * i, n - i, out + i);
}

/* 1: F16C usable, 0: not, -1: not looked yet. */
static int f16c_state = -1;

static int f16c_usable(void) {
  int st = __atomic_load_n(&f16c_state, __ATOMIC_RELAXED);
  if (st >= 0) return st;
  unsigned a, b, c, d;
  st = 0;
  /* F16C and AVX in CPUID 1, and the OS saving the YMM state (AVX). */
  if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) &&
      __builtin_cpu_supports("avx"))
    st = 1;
  __atomic_store_n(&f16c_state, st, __ATOMIC_RELAXED);
  return st;
}
#endif

void ps__codec_use_simd(int on) {
#ifdef PS_CODEC_HAVE_F16C
  __atomic_store_n(&f16c_state, -1, __ATOMIC_RELAXED);
  if (!on) __atomic_store_n(&f16c_state, 0, __ATOMIC_RELAXED);
#else
  (void)on;
#endif
}

static void fp16_encode(const float *x, uint64_t n, unsigned char *dst) {
#ifdef PS_CODEC_HAVE_F16C
  if (f16c_usable()) {
    fp16_encode_f16c(x, n, dst);
    return;
  }
#endif
  fp16_encode_c(x, n, dst);
}

static void fp16_decode(const unsigned char *src, uint64_t n, float *out) {
#ifdef PS_CODEC_HAVE_F16C
  if (f16c_usable()) {
    fp16_decode_f16c(src, n, out);
    return;
  }
#endif
  fp16_decode_c(src, n, out);
}

/* ---- int8, a float32 scale per block --------------------------------------
 */

static void int8_encode(const float *x, uint64_t n, unsigned char *dst) {
  uint64_t nb = int8_blocks(n);
  signed char *q = (signed char *)(dst + nb * sizeof(float));
  for (uint64_t b = 0; b < nb; b++) {
    uint64_t lo = b * PS_CODEC_INT8_BLOCK;
    uint64_t hi = lo + PS_CODEC_INT8_BLOCK < n ? lo + PS_CODEC_INT8_BLOCK : n;
    float amax = 0;
    int finite = 1;
    for (uint64_t i = lo; i < hi; i++) {
      if (!isfinite(x[i])) finite = 0;
      float a = fabsf(x[i]);
      if (a > amax) amax = a;
    }
    float scale = amax / 127.0f;
    if (!finite) {
      /* The server must see that the gradient was not finite. */
      scale = NAN;
      memset(q + lo, 0, (size_t)(hi - lo));
    } else if (amax == 0 || scale == 0) {
      scale = 0;
      memset(q + lo, 0, (size_t)(hi - lo));
    } else {
      /* Round half away from zero by truncation, which vectorizes;
       * |x inv| <= 127 (1 ulp over at most, clamped). */
      float inv = 127.0f / amax;
      for (uint64_t i = lo; i < hi; i++) {
        float v = x[i] * inv;
        v += v >= 0 ? 0.5f : -0.5f;
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[i] = (signed char)(int)v;
      }
    }
    memcpy(dst + b * sizeof(float), &scale, sizeof(float));
  }
}

static void int8_decode(const unsigned char *src, uint64_t n, float *out) {
  uint64_t nb = int8_blocks(n);
  const signed char *q = (const signed char *)(src + nb * sizeof(float));
  for (uint64_t b = 0; b < nb; b++) {
    float scale;
    memcpy(&scale, src + b * sizeof(float), sizeof(float));
    uint64_t lo = b * PS_CODEC_INT8_BLOCK;
    uint64_t hi = lo + PS_CODEC_INT8_BLOCK < n ? lo + PS_CODEC_INT8_BLOCK : n;
    for (uint64_t i = lo; i < hi; i++) out[i] = (float)q[i] * scale;
  }
}

/* ---- top-k ----------------------------------------------------------------
 */

static float magnitude(float v) {
  return isnan(v) ? INFINITY : fabsf(v);
}

/* The value of rank r (0-based, ascending) of a[0..n), reordering a
 * (Hoare's selection). */
static float select_rank(float *a, int64_t n, int64_t r) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    float p = a[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < p) i++;
      while (a[j] > p) j--;
      if (i <= j) {
        float t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (r <= j)
      hi = j;
    else if (r >= i)
      lo = i;
    else
      return a[r];
  }
  return a[r];
}

/* The k-th largest magnitude of x[0..n), 1 <= k <= n. For a small k it
 * first guesses a lower bound from a sample, and selects among the values
 * above it only (the same answer, when at least k are above). */
static float topk_threshold(const float *x, uint64_t n, uint64_t k,
                            float *scratch) {
  const uint64_t m = 4096;
  if (n >= 4 * m && k <= n / 16) {
    for (uint64_t j = 0; j < m; j++) scratch[j] = magnitude(x[j * (n / m)]);
    /* About 2k of n above the bound, with room for the sample's error. */
    uint64_t above = (2 * k * m + n - 1) / n + 8;
    if (above < m) {
      float lo = select_rank(scratch, (int64_t)m, (int64_t)(m - above));
      uint64_t cnt = 0;
      for (uint64_t i = 0; i < n; i++) {
        float v = magnitude(x[i]);
        if (v > lo) scratch[cnt++] = v;
      }
      if (cnt >= k)
        return select_rank(scratch, (int64_t)cnt, (int64_t)(cnt - k));
    }
  }
  for (uint64_t i = 0; i < n; i++) scratch[i] = magnitude(x[i]);
  return select_rank(scratch, (int64_t)n, (int64_t)(n - k));
}

static size_t topk_encode(const float *x, uint64_t n, uint64_t k,
                          unsigned char *dst, float *scratch) {
  if (k > n) k = n;
  if (k == 0) return 0;
  float t = topk_threshold(x, n, k, scratch);
  uint64_t above = 0;
  for (uint64_t i = 0; i < n; i++)
    if (magnitude(x[i]) > t) above++;
  uint64_t ties = k - above; /* at t, taken from the lowest index */
  unsigned char *idx = dst, *val = dst + k * sizeof(uint32_t);
  uint64_t j = 0;
  for (uint64_t i = 0; i < n && j < k; i++) {
    float m = magnitude(x[i]);
    int take = m > t;
    if (!take && m == t && ties > 0) {
      take = 1;
      ties--;
    }
    if (take) {
      uint32_t i32 = (uint32_t)i;
      memcpy(idx + j * sizeof(uint32_t), &i32, sizeof(i32));
      memcpy(val + j * sizeof(float), &x[i], sizeof(float));
      j++;
    }
  }
  return (size_t)k * (sizeof(uint32_t) + sizeof(float));
}

static int topk_decode(const unsigned char *src, size_t bytes, uint64_t n,
                       float *out, char *err, size_t errlen) {
  uint64_t k = bytes / (sizeof(uint32_t) + sizeof(float));
  const unsigned char *idx = src, *val = src + k * sizeof(uint32_t);
  memset(out, 0, (size_t)n * sizeof(float));
  int64_t prev = -1;
  for (uint64_t j = 0; j < k; j++) {
    uint32_t i;
    memcpy(&i, idx + j * sizeof(uint32_t), sizeof(i));
    if ((int64_t)i <= prev || i >= n)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "topk pair %llu has index %u: not ascending or not "
                     "below %llu",
                     (unsigned long long)j, i, (unsigned long long)n);
    memcpy(&out[i], val + j * sizeof(float), sizeof(float));
    prev = i;
  }
  return PS_OK;
}

/* ---- entry points ---------------------------------------------------------
 */

size_t ps_codec_encode(int codec, const float *x, uint64_t n, uint64_t k,
                       void *dst, float *scratch) {
  switch (codec) {
    case PS_CODEC_FP16:
      fp16_encode(x, n, dst);
      break;
    case PS_CODEC_INT8:
      int8_encode(x, n, dst);
      break;
    case PS_CODEC_TOPK:
      return topk_encode(x, n, k, dst, scratch);
    default:
      memcpy(dst, x, (size_t)n * sizeof(float));
      break;
  }
  return ps_codec_encoded_bytes(codec, n, k);
}

int ps_codec_decode(int codec, const void *src, size_t bytes, uint64_t n,
                    float *out, char *err, size_t errlen) {
  int rc = ps_codec_check_size(codec, n, bytes, err, errlen);
  if (rc != PS_OK) return rc;
  switch (codec) {
    case PS_CODEC_FP16:
      fp16_decode(src, n, out);
      return PS_OK;
    case PS_CODEC_INT8:
      int8_decode(src, n, out);
      return PS_OK;
    case PS_CODEC_TOPK:
      return topk_decode(src, bytes, n, out, err, errlen);
    default:
      memcpy(out, src, (size_t)n * sizeof(float));
      return PS_OK;
  }
}

size_t ps_codec_topk_feedback(const float *g, float *residual, uint64_t n,
                              uint64_t k, void *dst, float *dq,
                              float *scratch) {
  for (uint64_t i = 0; i < n; i++) residual[i] += g[i];
  size_t bytes = topk_encode(residual, n, k, dst, scratch);
  char err[8];
  /* Our own encoding: it decodes. */
  (void)topk_decode(dst, bytes, n, dq, err, sizeof(err));
  for (uint64_t i = 0; i < n; i++) residual[i] -= dq[i];
  return bytes;
}

void ps_codec_zero(int codec, void *buf, size_t bytes) {
  if (codec == PS_CODEC_TOPK) {
    size_t k = bytes / (sizeof(uint32_t) + sizeof(float));
    memset((unsigned char *)buf + k * sizeof(uint32_t), 0, k * sizeof(float));
    return;
  }
  memset(buf, 0, bytes);
}
