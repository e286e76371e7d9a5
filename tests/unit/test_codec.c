/* Codecs (common/codec.h): fp16 rounding and its SIMD path against the C
 * one, int8's per-block scale and error bound, top-k's choice against a
 * brute force, error feedback's bookkeeping, and every decoder's refusal of
 * a malformed frame. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/err.h"
#include "tests/check_run.h"

/* A deterministic generator, so a failure reproduces. */
static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 32);
}
static float next_float(float scale) {
  return ((float)next_u32() / 4294967296.0f - 0.5f) * 2 * scale;
}
static float bits_float(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof(f));
  return f;
}

START_TEST(test_fp16_known_values) {
  ck_assert_uint_eq(ps_fp16_from_float(1.0f), 0x3c00);
  ck_assert_uint_eq(ps_fp16_from_float(-2.0f), 0xc000);
  ck_assert_uint_eq(ps_fp16_from_float(65504.0f), 0x7bff);
  ck_assert_uint_eq(ps_fp16_from_float(65519.0f), 0x7bff);
  ck_assert_uint_eq(ps_fp16_from_float(65520.0f), 0x7c00); /* ties up: Inf */
  ck_assert_uint_eq(ps_fp16_from_float(1e10f), 0x7c00);
  ck_assert_uint_eq(ps_fp16_from_float(-INFINITY), 0xfc00);
  ck_assert_uint_eq(ps_fp16_from_float(-0.0f), 0x8000);
  ck_assert_uint_eq(ps_fp16_from_float(0x1p-24f), 0x0001); /* least subnormal */
  ck_assert_uint_eq(ps_fp16_from_float(0x1p-25f), 0x0000); /* tie to even 0 */
  ck_assert_uint_eq(ps_fp16_from_float(0x1.8p-25f), 0x0001);
  ck_assert_uint_eq(ps_fp16_from_float(0x1p-14f), 0x0400); /* least normal */
  /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: to even (1). */
  ck_assert_uint_eq(ps_fp16_from_float(1.0f + 0x1p-11f), 0x3c00);
  ck_assert_uint_eq(ps_fp16_from_float(1.0f + 3 * 0x1p-11f), 0x3c02);
  uint16_t nan = ps_fp16_from_float(NAN);
  ck_assert_uint_eq(nan & 0x7c00, 0x7c00);
  ck_assert_uint_ne(nan & 0x3ff, 0);
  ck_assert(isnan(ps_fp16_to_float(nan)));
  ck_assert_float_eq(ps_fp16_to_float(0x0001), 0x1p-24f);
  ck_assert_float_eq(ps_fp16_to_float(0x7bff), 65504.0f);
}
END_TEST

/* Every half that is not a NaN survives half -> float -> half. */
START_TEST(test_fp16_every_half_round_trips) {
  for (uint32_t h = 0; h < 65536; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    ck_assert_uint_eq(ps_fp16_from_float(ps_fp16_to_float((uint16_t)h)), h);
  }
}
END_TEST

/* Relative error of a normal value at most 2^-11 (half an ulp). */
START_TEST(test_fp16_round_trip_error) {
  enum { N = 10000 };
  float x[N], y[N];
  unsigned char enc[2 * N];
  char err[200];
  for (int i = 0; i < N; i++) x[i] = next_float(1000.0f);
  x[0] = 1e-3f;
  ck_assert_uint_eq(ps_codec_encode(PS_CODEC_FP16, x, N, 0, enc, NULL), 2 * N);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, enc, 2 * N, N, y, err, 200),
                   PS_OK);
  for (int i = 0; i < N; i++) {
    if (fabsf(x[i]) < 0x1p-14f) continue;
    ck_assert_float_le(fabsf(y[i] - x[i]), fabsf(x[i]) * 0x1p-11f);
  }
}
END_TEST

/* The F16C path, where the CPU has it, gives the C code's bits. */
START_TEST(test_fp16_simd_matches_c) {
  enum { N = 1 << 16 };
  float *x = malloc(N * sizeof(float));
  unsigned char *a = malloc(2 * N), *b = malloc(2 * N);
  float *ya = malloc(N * sizeof(float)), *yb = malloc(N * sizeof(float));
  for (int i = 0; i < N; i++) x[i] = bits_float(next_u32());
  /* Around the subnormal and overflow edges, and exact ties. */
  for (int i = 0; i < 4096; i++) {
    x[i] = next_float(0x1p-13f);
    x[4096 + i] = next_float(70000.0f);
    x[8192 + i] = 1.0f + (float)i * 0x1p-11f;
  }
  x[N - 1] = NAN;
  x[N - 2] = -INFINITY;
  x[N - 3] = bits_float(0x7f800001u); /* signalling NaN */
  ps__codec_use_simd(0);
  ps_codec_encode(PS_CODEC_FP16, x, N, 0, a, NULL);
  char err[200];
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, a, 2 * N, N, ya, err, 200),
                   PS_OK);
  ps__codec_use_simd(1);
  ps_codec_encode(PS_CODEC_FP16, x, N, 0, b, NULL);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, b, 2 * N, N, yb, err, 200),
                   PS_OK);
  ck_assert_int_eq(memcmp(a, b, 2 * N), 0);
  ck_assert_int_eq(memcmp(ya, yb, N * sizeof(float)), 0);
  free(x);
  free(a);
  free(b);
  free(ya);
  free(yb);
}
END_TEST

/* int8: one float32 scale per 256 keys = the block's largest |x| / 127;
 * every value within half a step; a last block of fewer keys. */
START_TEST(test_int8_block_scale) {
  enum { N = 3 * PS_CODEC_INT8_BLOCK + 17 };
  float x[N], y[N];
  for (int i = 0; i < N; i++) x[i] = next_float(1.0f) * (float)(1 + i / 256);
  for (int i = 256; i < 512; i++) x[i] = 0; /* an all-zero block */
  size_t bytes = ps_codec_encoded_bytes(PS_CODEC_INT8, N, 0);
  ck_assert_uint_eq(bytes, 4 * sizeof(float) + N);
  unsigned char *enc = malloc(bytes);
  ck_assert_uint_eq(ps_codec_encode(PS_CODEC_INT8, x, N, 0, enc, NULL), bytes);
  char err[200];
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_INT8, enc, bytes, N, y, err, 200),
                   PS_OK);
  for (int b = 0; b < 4; b++) {
    int lo = b * 256, hi = lo + 256 < N ? lo + 256 : N;
    float amax = 0, scale;
    for (int i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
    memcpy(&scale, enc + b * sizeof(float), sizeof(float));
    ck_assert_float_eq(scale, amax / 127.0f);
    for (int i = lo; i < hi; i++)
      ck_assert_float_le(fabsf(y[i] - x[i]), scale * 0.5f * 1.0001f);
    if (b == 1)
      for (int i = lo; i < hi; i++) ck_assert_float_eq(y[i], 0.0f);
  }
  /* A NaN makes its block decode to non-finite values: the server sees it. */
  x[600] = NAN;
  ps_codec_encode(PS_CODEC_INT8, x, N, 0, enc, NULL);
  ps_codec_decode(PS_CODEC_INT8, enc, bytes, N, y, err, 200);
  ck_assert(!isfinite(y[513]));
  ck_assert(isfinite(y[0]));
  free(enc);
}
END_TEST

static int cmp_desc_mag(const void *a, const void *b) {
  float x = fabsf(*(const float *)a), y = fabsf(*(const float *)b);
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Top-k sends exactly the k largest |x| in ascending index order; checked
 * against a sort, for a small n (the full selection) and a big one (the
 * sampled bound). */
static void check_topk(uint64_t n, uint64_t k) {
  float *x = malloc(n * sizeof(float)), *s = malloc(n * sizeof(float));
  float *sorted = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
  unsigned char *enc = malloc(k * 8);
  for (uint64_t i = 0; i < n; i++) x[i] = next_float(1.0f);
  memcpy(sorted, x, n * sizeof(float));
  qsort(sorted, n, sizeof(float), cmp_desc_mag);
  float kth = fabsf(sorted[k - 1]);
  ck_assert_uint_eq(ps_codec_encode(PS_CODEC_TOPK, x, n, k, enc, s), k * 8);
  char err[200];
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, enc, k * 8, n, y, err, 200),
                   PS_OK);
  uint64_t nz = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (fabsf(x[i]) > kth) ck_assert_float_eq(y[i], x[i]);
    if (fabsf(x[i]) < kth) ck_assert_float_eq(y[i], 0.0f);
    if (y[i] != 0) nz++;
  }
  ck_assert_uint_eq(nz, k);
  uint32_t prev = 0;
  for (uint64_t j = 0; j < k; j++) {
    uint32_t idx;
    memcpy(&idx, enc + j * 4, 4);
    if (j) ck_assert_uint_gt(idx, prev);
    prev = idx;
  }
  free(x);
  free(s);
  free(sorted);
  free(y);
  free(enc);
}

START_TEST(test_topk_picks_largest) {
  check_topk(1000, 10);
  check_topk(1000, 1000);
  check_topk(200000, 2000); /* the sampled bound */
  check_topk(200000, 1);
  ck_assert_uint_eq(ps_codec_topk_count(235146, 0.01f), 2352);
  ck_assert_uint_eq(ps_codec_topk_count(10, 0.01f), 1);
  ck_assert_uint_eq(ps_codec_topk_count(10, 1.0f), 10);
}
END_TEST

/* Ties go to the lower index; NaN counts as the largest. */
START_TEST(test_topk_ties_and_nan) {
  float x[8] = {1, -3, 3, 0, 3, 2, 0, 0};
  float s[8], y[8];
  unsigned char enc[16];
  char err[200];
  ps_codec_encode(PS_CODEC_TOPK, x, 8, 2, enc, s);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, enc, 16, 8, y, err, 200),
                   PS_OK);
  ck_assert_float_eq(y[1], -3);
  ck_assert_float_eq(y[2], 3);
  ck_assert_float_eq(y[4], 0);
  x[6] = NAN;
  ps_codec_encode(PS_CODEC_TOPK, x, 8, 1, enc, s);
  ps_codec_decode(PS_CODEC_TOPK, enc, 8, 8, y, err, 200);
  ck_assert(isnan(y[6]));
}
END_TEST

/* Error feedback: after every step, what was sent plus the residual is
 * what was computed (to float rounding), the residual of a sent key is
 * exactly 0, and a key whose gradient keeps adding up is sent eventually. */
START_TEST(test_topk_error_feedback) {
  enum { N = 5000, K = 50, STEPS = 40 };
  float *g = malloc(N * sizeof(float)), *r = calloc(N, sizeof(float));
  float *dq = malloc(N * sizeof(float)), *s = malloc(N * sizeof(float));
  double *computed = calloc(N, sizeof(double)),
         *sent = calloc(N, sizeof(double));
  unsigned char enc[K * 8];
  int small_sent = 0;
  for (int t = 0; t < STEPS; t++) {
    for (int i = 0; i < N; i++) g[i] = next_float(1.0f);
    g[7] = 0.5f; /* never in the top 1% alone, but it piles up */
    for (int i = 0; i < N; i++) computed[i] += g[i];
    ck_assert_uint_eq(ps_codec_topk_feedback(g, r, N, K, enc, dq, s), K * 8);
    int nz = 0;
    for (int i = 0; i < N; i++) {
      sent[i] += dq[i];
      if (dq[i] != 0) {
        nz++;
        ck_assert_float_eq(r[i], 0.0f);
      }
      ck_assert_double_eq_tol(sent[i] + r[i], computed[i], 1e-4);
    }
    ck_assert_int_eq(nz, K);
    if (dq[7] != 0) small_sent = 1;
  }
  ck_assert(small_sent);
  free(g);
  free(r);
  free(dq);
  free(s);
  free(computed);
  free(sent);
}
END_TEST

/* Decoders refuse what does not fit: a wrong size, topk indices out of
 * range, repeated or descending, too many pairs, an unknown codec. */
START_TEST(test_decoders_reject_malformed) {
  float out[16];
  char err[200];
  unsigned char buf[256] = {0};
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, buf, 31, 16, out, err, 200),
                   PS_ERR_PROTO);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, buf, 32, 16, out, err, 200),
                   PS_OK);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_INT8, buf, 16, 16, out, err, 200),
                   PS_ERR_PROTO); /* no scale */
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_INT8, buf, 20, 16, out, err, 200),
                   PS_OK);
  ck_assert_int_eq(ps_codec_decode(7, buf, 64, 16, out, err, 200),
                   PS_ERR_PROTO);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_FP16, buf, 0, 0, out, err, 200),
                   PS_ERR_PROTO);
  /* topk: pairs idx[k] then val[k]. */
  uint32_t idx[3];
  float val[3] = {1, 2, 3};
  struct {
    uint32_t a, b, c;
    int ok;
  } cases[] = {
      {0, 5, 15, 1}, {0, 5, 16, 0}, {5, 5, 9, 0}, {6, 5, 9, 0}, {0, 1, 2, 1}};
  for (size_t t = 0; t < sizeof(cases) / sizeof(cases[0]); t++) {
    idx[0] = cases[t].a;
    idx[1] = cases[t].b;
    idx[2] = cases[t].c;
    memcpy(buf, idx, sizeof(idx));
    memcpy(buf + sizeof(idx), val, sizeof(val));
    ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, buf, 24, 16, out, err, 200),
                     cases[t].ok ? PS_OK : PS_ERR_PROTO);
  }
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, buf, 20, 16, out, err, 200),
                   PS_ERR_PROTO);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, buf, 0, 16, out, err, 200),
                   PS_ERR_PROTO);
  ck_assert_int_eq(ps_codec_decode(PS_CODEC_TOPK, buf, 24, 2, out, err, 200),
                   PS_ERR_PROTO); /* 3 pairs for 2 values */
  ck_assert_ptr_nonnull(strstr(err, "topk"));
}
END_TEST

/* ps_codec_zero keeps a topk frame's indices, so it decodes to zeros. */
START_TEST(test_zero_keeps_structure) {
  float x[64], y[64], s[64];
  unsigned char enc[64 * 8];
  char err[200];
  for (int i = 0; i < 64; i++) x[i] = next_float(1.0f);
  for (int c = PS_CODEC_FP16; c <= PS_CODEC_TOPK; c++) {
    size_t bytes = ps_codec_encode(c, x, 64, 8, enc, s);
    ps_codec_zero(c, enc, bytes);
    ck_assert_int_eq(ps_codec_decode(c, enc, bytes, 64, y, err, 200), PS_OK);
    for (int i = 0; i < 64; i++) ck_assert_float_eq(y[i], 0.0f);
  }
  ck_assert_str_eq(ps_codec_name(PS_CODEC_INT8), "int8");
  ck_assert_int_eq(ps_codec_parse("topk"), PS_CODEC_TOPK);
  ck_assert_int_eq(ps_codec_parse("bf16"), -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("codec");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_fp16_known_values);
  tcase_add_test(tc, test_fp16_every_half_round_trips);
  tcase_add_test(tc, test_fp16_round_trip_error);
  tcase_add_test(tc, test_fp16_simd_matches_c);
  tcase_add_test(tc, test_int8_block_scale);
  tcase_add_test(tc, test_topk_picks_largest);
  tcase_add_test(tc, test_topk_ties_and_nan);
  tcase_add_test(tc, test_topk_error_feedback);
  tcase_add_test(tc, test_decoders_reject_malformed);
  tcase_add_test(tc, test_zero_keeps_structure);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
