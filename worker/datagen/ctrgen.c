#include "worker/datagen/ctrgen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"

/* Interaction vectors' length, and their elements' deviation: a pair adds
 * a term of deviation about sqrt(PAIR_DIM) * PAIR_SCALE^2 = 0.5. */
#define PAIR_DIM 4
#define PAIR_SCALE 0.5

/* Deviation of a dense feature's weight. */
#define DENSE_SCALE 0.25

/* Zipf on [1, n] by rejection-inversion (Hormann & Derflinger, "Rejection-
 * inversion to generate variates from monotone discrete distributions",
 * 1996), as Apache Commons RNG's RejectionInversionZipfSampler. */
typedef struct {
  double s, n;
  double h_x1, h_n; /* H(1.5) - 1, H(n + 0.5) */
  double squeeze;
} zipf_t;

/* log1p(x) / x and expm1(x) / x, exact near 0. */
static double helper1(double x) {
  return fabs(x) > 1e-8 ? log1p(x) / x
                        : 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

static double helper2(double x) {
  return fabs(x) > 1e-8 ? expm1(x) / x
                        : 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x));
}

static double zipf_h(const zipf_t *z, double x) {
  return exp(-z->s * log(x));
}

static double zipf_hint(const zipf_t *z, double x) {
  double lx = log(x);
  return helper2((1.0 - z->s) * lx) * lx;
}

static double zipf_hinv(const zipf_t *z, double x) {
  double t = x * (1.0 - z->s);
  if (t < -1.0) t = -1.0; /* rounding only */
  return exp(helper1(t) * x);
}

static void zipf_init(zipf_t *z, double s, uint64_t n) {
  z->s = s;
  z->n = (double)n;
  z->h_x1 = zipf_hint(z, 1.5) - 1.0;
  z->h_n = zipf_hint(z, z->n + 0.5);
  z->squeeze = 2.0 - zipf_hinv(z, zipf_hint(z, 2.5) - zipf_h(z, 2.0));
}

/* splitmix64 as a generator over one example's stream. */
static uint64_t rng_next(uint64_t *st) {
  *st += 0x9e3779b97f4a7c15ull;
  return ps_mix64(*st);
}

/* Uniform in (0, 1). */
static double unit(uint64_t h) {
  return ((double)(h >> 11) + 0.5) * 0x1p-53;
}

static uint64_t zipf_sample(const zipf_t *z, uint64_t *st) {
  for (;;) {
    double u = z->h_n + unit(rng_next(st)) * (z->h_x1 - z->h_n);
    double x = zipf_hinv(z, u);
    double kd = floor(x + 0.5);
    if (kd < 1.0) kd = 1.0;
    if (kd > z->n) kd = z->n;
    if (kd - x <= z->squeeze || u >= zipf_hint(z, kd + 0.5) - zipf_h(z, kd))
      return (uint64_t)kd;
  }
}

/* A standard normal that is a pure function of h (Box-Muller). */
static double normal_of(uint64_t h) {
  double u1 = unit(ps_mix64(h ^ 0x6a09e667f3bcc908ull));
  double u2 = unit(ps_mix64(h ^ 0xbb67ae8584caa73bull));
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* A bijection of 32-bit words (each step is invertible), so distinct ranks
 * get distinct ids. */
static uint32_t scramble32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

/* Fraction of values missing, per integer feature and per categorical
 * field: fixed shapes, like Criteo's (some features mostly absent). */
static const double dense_missing[PS_CTRGEN_DENSE] = {
    0.45, 0.0, 0.2, 0.2, 0.03, 0.2, 0.05, 0.0, 0.05, 0.45, 0.05, 0.75, 0.2};

struct ps_ctrgen_s {
  ps_ctrgen_opts_t o;
  zipf_t zipf[PS_CTRGEN_CATEG];
  uint32_t id_key[PS_CTRGEN_CATEG];
  double cat_missing[PS_CTRGEN_CATEG];
  double dense_mu[PS_CTRGEN_DENSE];
  double dense_w[PS_CTRGEN_DENSE];
  int pair_a[PS_CTRGEN_MAX_PAIRS], pair_b[PS_CTRGEN_MAX_PAIRS];
  /* Which pairs field f is in (bit p), so its vector is drawn once. */
  uint32_t in_pairs[PS_CTRGEN_CATEG];
  uint64_t head_rank[PS_CTRGEN_CATEG];
  /* Expected count of rank k in the training split: count_scale k^-s. */
  double count_scale[PS_CTRGEN_CATEG];
};

/* sum of k^-s over k in [1, n]: exact up to 10^5, the integral beyond. */
static double zipf_norm(double s, uint64_t n) {
  uint64_t exact = n < 100000 ? n : 100000;
  double h = 0.0;
  for (uint64_t k = exact; k >= 1; k--) h += pow((double)k, -s);
  if (n > exact) {
    double a = (double)exact + 0.5, b = (double)n + 0.5;
    h += fabs(s - 1.0) < 1e-12 ? log(b / a)
                               : (pow(b, 1.0 - s) - pow(a, 1.0 - s)) / (1.0 - s);
  }
  return h;
}

void ps_ctrgen_opts_init(ps_ctrgen_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->seed = 1;
  o->zipf = 1.1;
  o->pairs = 4;
  o->bias = -3.0;
  o->cat_scale = 0.3;
  char err[64];
  ps_ctrgen_vocab_range(o, 100, 10000000, err, sizeof(err));
}

int ps_ctrgen_vocab_range(ps_ctrgen_opts_t *o, uint64_t lo, uint64_t hi,
                          char *err, size_t errlen) {
  if (lo < 1 || hi < lo || hi > UINT32_MAX) {
    snprintf(err, errlen,
             "vocabulary range [%llu, %llu] is not within [1, 2^32 - 1] "
             "with min <= max",
             (unsigned long long)lo, (unsigned long long)hi);
    return PS_ERR_CONFIG;
  }
  double l0 = log((double)lo), l1 = log((double)hi);
  for (int f = 0; f < PS_CTRGEN_CATEG; f++) {
    double v = exp(l0 + (l1 - l0) * f / (PS_CTRGEN_CATEG - 1));
    uint64_t n = (uint64_t)llround(v);
    o->vocab[f] = n < lo ? lo : n > hi ? hi : n;
  }
  return PS_OK;
}

ps_ctrgen_t *ps_ctrgen_new(const ps_ctrgen_opts_t *o, char *err,
                           size_t errlen) {
  if (!(o->zipf > 0.0) || !isfinite(o->zipf)) {
    snprintf(err, errlen, "zipf exponent %g must be > 0", o->zipf);
    return NULL;
  }
  if (o->pairs > PS_CTRGEN_MAX_PAIRS) {
    snprintf(err, errlen, "%u interaction pairs: at most %d", o->pairs,
             PS_CTRGEN_MAX_PAIRS);
    return NULL;
  }
  for (int f = 0; f < PS_CTRGEN_CATEG; f++)
    if (o->vocab[f] < 1 || o->vocab[f] > UINT32_MAX) {
      snprintf(err, errlen, "vocabulary of field %d is %llu: not in [1, 2^32)",
               f + 1, (unsigned long long)o->vocab[f]);
      return NULL;
    }
  ps_ctrgen_t *g = calloc(1, sizeof(*g));
  if (g == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  g->o = *o;
  uint64_t s = ps_mix64(o->seed ^ 0xc7a0c7a0c7a0ull);
  for (int f = 0; f < PS_CTRGEN_CATEG; f++) {
    zipf_init(&g->zipf[f], o->zipf, o->vocab[f]);
    g->id_key[f] = (uint32_t)ps_mix64(s + 101u * (uint64_t)f);
    g->cat_missing[f] = f % 6 == 5 ? 0.3 : 0.02;
    g->head_rank[f] = o->vocab[f];
    /* Expected count of rank k: N (1 - missing) k^-s / H. */
    g->count_scale[f] = (double)o->head_train * (1.0 - g->cat_missing[f]) /
                        zipf_norm(o->zipf, o->vocab[f]);
    if (o->head_train > 0 && o->head_min_count > 0) {
      double k = pow(g->count_scale[f] / o->head_min_count, 1.0 / o->zipf);
      g->head_rank[f] = k < 1.0 ? 0 : k >= (double)o->vocab[f]
                                          ? o->vocab[f]
                                          : (uint64_t)k;
    }
  }
  for (int d = 0; d < PS_CTRGEN_DENSE; d++) {
    g->dense_mu[d] = 0.5 + 0.6 * (d % 5);
    g->dense_w[d] = DENSE_SCALE * normal_of(s ^ (0xd0d0ull + (uint64_t)d));
  }
  /* Pairs among the ten fields of smallest vocabulary, whose ids recur
   * often enough for an interaction to be learnt. */
  int order[PS_CTRGEN_CATEG];
  for (int f = 0; f < PS_CTRGEN_CATEG; f++) order[f] = f;
  for (int i = 1; i < PS_CTRGEN_CATEG; i++)
    for (int j = i; j > 0 && o->vocab[order[j]] < o->vocab[order[j - 1]];
         j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  for (uint32_t p = 0; p < o->pairs; p++) {
    g->pair_a[p] = order[(2 * p) % 10];
    g->pair_b[p] = order[(2 * p + 1 + 2 * (p / 5)) % 10];
    g->in_pairs[g->pair_a[p]] |= 1u << p;
    g->in_pairs[g->pair_b[p]] |= 1u << p;
  }
  return g;
}

void ps_ctrgen_destroy(ps_ctrgen_t **g_p) {
  if (g_p == NULL || *g_p == NULL) return;
  free(*g_p);
  *g_p = NULL;
}

uint64_t ps_ctrgen_head_rank(const ps_ctrgen_t *g, int f) {
  return g->head_rank[f];
}

void ps_ctrgen_pair(const ps_ctrgen_t *g, uint32_t i, int *a, int *b) {
  *a = g->pair_a[i];
  *b = g->pair_b[i];
}

/* Writes v in decimal at p; returns the end. */
static char *put_int(char *p, int64_t v) {
  char tmp[24];
  int n = 0;
  uint64_t u = v < 0 ? (uint64_t)(-v) : (uint64_t)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *p++ = '-';
  while (n) *p++ = tmp[--n];
  return p;
}

static char *put_hex8(char *p, uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 7; i >= 0; i--) p[7 - i] = digits[(v >> (4 * i)) & 15];
  return p + 8;
}

/* Key of (field, rank) for the weight and vector streams. */
static uint64_t id_hash(const ps_ctrgen_t *g, int f, uint64_t k) {
  return ps_mix64(g->o.seed ^ ps_mix64(((uint64_t)f << 40) + k));
}

/* An id's weight as learnt from its expected count (the LEARNABLE
 * reference model). */
static double learnt_weight(const ps_ctrgen_t *g, int f, uint64_t k, uint64_t h,
                            double w) {
  double s2 = g->o.cat_scale * g->o.cat_scale;
  double a =
      g->count_scale[f] * pow((double)k, -g->o.zipf) * g->o.learn_info * s2;
  double lambda = a / (a + 1.0);
  return lambda * w + sqrt(lambda * (1.0 - lambda) * s2) *
                          normal_of(h ^ 0x3c6ef372fe94f82bull);
}

size_t ps_ctrgen_example(const ps_ctrgen_t *g, uint64_t split, uint64_t i,
                         char *line, uint8_t *label, float *p, float *ref) {
  uint64_t st = ps_mix64(g->o.seed ^ ps_mix64((split << 48) ^ i));
  double z = g->o.bias;
  /* What each reference model leaves out of z. */
  double zh = 0.0, zpairs = 0.0, zlearn = 0.0;
  char *w = line + 1; /* line[0], the label, is known last */
  for (int d = 0; d < PS_CTRGEN_DENSE; d++) {
    *w++ = '\t';
    double u = unit(rng_next(&st));
    if (u < dense_missing[d]) {
      z += g->dense_w[d] * (0.0 - g->dense_mu[d]);
      continue;
    }
    int64_t x;
    if (d == 1 && u > 0.9) {
      x = -1 - (int64_t)(rng_next(&st) % 3); /* Criteo's I2 goes negative */
    } else {
      double e = g->dense_mu[d] + 1.2 * normal_of(rng_next(&st));
      x = (int64_t)floor(expm1(e > 0 ? e : 0));
    }
    w = put_int(w, x);
    z += g->dense_w[d] * (log1p((double)(x > 0 ? x : 0)) - g->dense_mu[d]);
  }
  double vec[PS_CTRGEN_CATEG][PAIR_DIM];
  uint32_t present = 0, known = 0;
  for (int f = 0; f < PS_CTRGEN_CATEG; f++) {
    *w++ = '\t';
    if (unit(rng_next(&st)) < g->cat_missing[f]) continue;
    uint64_t k = zipf_sample(&g->zipf[f], &st);
    w = put_hex8(w, scramble32((uint32_t)k ^ g->id_key[f]));
    uint64_t h = id_hash(g, f, k);
    double wk = g->o.cat_scale * normal_of(h);
    z += wk;
    int head = k <= g->head_rank[f];
    if (!head) zh += wk;
    if (g->o.learn_info > 0.0) zlearn += wk - learnt_weight(g, f, k, h, wk);
    if (g->in_pairs[f]) {
      if (head) known |= 1u << f;
      present |= 1u << f;
      for (int j = 0; j < PAIR_DIM; j++)
        vec[f][j] = PAIR_SCALE * normal_of(h + 1 + (uint64_t)j);
    }
  }
  *w++ = '\n';
  for (uint32_t q = 0; q < g->o.pairs; q++) {
    int a = g->pair_a[q], b = g->pair_b[q];
    if (!((present >> a) & 1) || !((present >> b) & 1)) continue;
    double dot = 0.0;
    for (int j = 0; j < PAIR_DIM; j++) dot += vec[a][j] * vec[b][j];
    z += dot;
    zpairs += dot;
    if (!((known >> a) & 1) || !((known >> b) & 1)) zh += dot;
  }
  double prob = 1.0 / (1.0 + exp(-z));
  uint8_t y = unit(rng_next(&st)) < prob;
  line[0] = (char)('0' + y);
  *label = y;
  *p = (float)prob;
  if (ref) {
    ref[PS_CTRGEN_REF_HEAD] = (float)(1.0 / (1.0 + exp(-(z - zh))));
    ref[PS_CTRGEN_REF_PAIRLESS] = (float)(1.0 / (1.0 + exp(-(z - zpairs))));
    ref[PS_CTRGEN_REF_LEARNABLE] = (float)(1.0 / (1.0 + exp(-(z - zlearn))));
  }
  return (size_t)(w - line);
}
