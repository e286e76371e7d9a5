/* The server's sparse table (issue #3) and the hash partitioning behind it:
 * rows made on first touch hold the same bits whatever table object, order
 * or partitioning creates them; SGD with and without momentum by hand
 * (small integers and powers of two, so every value is exact); unsorted and
 * duplicate keys refused without a change; the model spec's checks; every
 * id owned by exactly one server, about evenly; frame validation of sparse
 * bodies (keys frame against nkeys, values a whole number of floats). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/init.h"
#include "common/optimizer.h"
#include "common/view.h"
#include "proto/ps.pb-c.h"
#include "ps-server/sparse.h"
#include "tests/check_run.h"

static ps_sparse_spec_t spec_of(const char *name, uint32_t dim, int init,
                                float scale) {
  ps_sparse_spec_t s;
  memset(&s, 0, sizeof(s));
  snprintf(s.name, sizeof(s.name), "%s", name);
  s.dim = dim;
  s.init = init;
  s.init_scale = scale;
  s.salt = ps_sparse_salt(name);
  return s;
}

static ps_model_t model_of(float lr, float momentum, uint64_t seed) {
  ps_model_t m;
  memset(&m, 0, sizeof(m));
  m.optimizer = PS__OPTIMIZER__OPT_SGD;
  m.learning_rate = lr;
  m.momentum = momentum;
  m.seed = seed;
  return m;
}

START_TEST(init_on_touch_is_deterministic) {
  ps_sparse_spec_t sp = spec_of("emb", 8, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 7);
  ps_sparse_table_t *a = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *b = ps_sparse_table_new(&sp, &m);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  /* a touches 3000 ids in one order (and grows its map several times), b
   * only some of them, in other calls: the shared ids hold the same bits. */
  enum { N = 3000 };
  uint64_t *keys = malloc(N * sizeof(*keys));
  float *ra = malloc(N * 8 * sizeof(float)), rb[3 * 8], want[8];
  for (uint64_t i = 0; i < N; i++) keys[i] = i * 1000003ULL + 5;
  /* A pull creates nothing; a push (of zeros: the rows keep their
   * initializer) creates every row. */
  ck_assert_int_eq(ps_sparse_table_pull(a, keys, N, ra, NULL, 0), PS_OK);
  ck_assert_uint_eq(ps_sparse_table_rows(a), 0);
  float *zeros = calloc(N * 8, sizeof(float));
  ck_assert_int_eq(ps_sparse_table_push(a, keys, N, zeros, 1.0f, 0, NULL, 0),
                   PS_OK);
  free(zeros);
  ck_assert_uint_eq(ps_sparse_table_rows(a), N);
  float *again = malloc(N * 8 * sizeof(float));
  ck_assert_int_eq(ps_sparse_table_pull(a, keys, N, again, NULL, 0), PS_OK);
  ck_assert(memcmp(again, ra, N * 8 * sizeof(float)) == 0);
  free(again);
  uint64_t some[3] = {keys[2], keys[1500], keys[2999]};
  ck_assert_int_eq(ps_sparse_table_pull(b, some, 3, rb, NULL, 0), PS_OK);
  ck_assert(memcmp(rb, ra + 2 * 8, 8 * sizeof(float)) == 0);
  ck_assert(memcmp(rb + 8, ra + 1500 * 8, 8 * sizeof(float)) == 0);
  ck_assert(memcmp(rb + 16, ra + 2999 * 8, 8 * sizeof(float)) == 0);
  ps_sparse_init_row(&sp, 7, keys[1500], want);
  ck_assert(memcmp(want, ra + 1500 * 8, sizeof(want)) == 0);
  /* Values are in (-scale, scale), not all equal, and differ across rows,
   * seeds and tables. */
  int distinct = 0;
  for (int j = 0; j < 8; j++) {
    ck_assert(ra[j] > -0.5f && ra[j] < 0.5f);
    distinct += ra[j] != ra[8 + j];
  }
  ck_assert_int_gt(distinct, 4);
  float other[8];
  ps_sparse_init_row(&sp, 8, keys[1500], other);
  ck_assert(memcmp(other, want, sizeof(want)) != 0);
  ps_sparse_spec_t sp2 = spec_of("emb2", 8, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_sparse_init_row(&sp2, 7, keys[1500], other);
  ck_assert(memcmp(other, want, sizeof(want)) != 0);
  /* A second pull returns the stored rows, not new ones. */
  ck_assert_int_eq(ps_sparse_table_pull(a, some, 3, rb, NULL, 0), PS_OK);
  ck_assert(memcmp(rb + 8, ra + 1500 * 8, 8 * sizeof(float)) == 0);
  ck_assert_uint_eq(ps_sparse_table_rows(a), N);
  free(keys);
  free(ra);
  ps_sparse_table_destroy(&a);
  ps_sparse_table_destroy(&b);
  ck_assert_ptr_null(a);
}
END_TEST

START_TEST(sgd_by_hand) {
  ps_sparse_spec_t sp = spec_of("e", 2, PS__INIT__INIT_ZERO, 0.0f);
  ps_model_t m = model_of(0.5f, 0.0f, 1);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  uint64_t keys[2] = {3, 9};
  float g[4] = {2, 4, -6, 8}, out[4];
  /* w = 0 - lr * scale * g = -0.5 * 0.5 * g */
  ck_assert_int_eq(ps_sparse_table_push(t, keys, 2, g, 0.5f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, keys, 2, out, NULL, 0), PS_OK);
  ck_assert(out[0] == -0.5f && out[1] == -1.0f && out[2] == 1.5f &&
            out[3] == -2.0f);
  /* Only pushed rows move: key 9 again, alone. */
  ck_assert_int_eq(ps_sparse_table_push(t, &keys[1], 1, g, 1.0f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, keys, 2, out, NULL, 0), PS_OK);
  ck_assert(out[0] == -0.5f && out[1] == -1.0f && out[2] == 0.5f &&
            out[3] == -4.0f);
  ps_sparse_table_destroy(&t);

  /* Momentum 0.5: v = 0.5 v + g; w -= lr v, twice. */
  m = model_of(1.0f, 0.5f, 1);
  t = ps_sparse_table_new(&sp, &m);
  float g1[2] = {4, 8};
  ck_assert_int_eq(ps_sparse_table_push(t, keys, 1, g1, 1.0f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_push(t, keys, 1, g1, 1.0f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, keys, 1, out, NULL, 0), PS_OK);
  /* v1 = 4, w1 = -4; v2 = 2 + 4 = 6, w2 = -10 (and 2x for column 1). */
  ck_assert(out[0] == -10.0f && out[1] == -20.0f);
  ps_sparse_table_destroy(&t);
}
END_TEST

START_TEST(bad_keys_refused_without_change) {
  ps_sparse_spec_t sp = spec_of("e", 1, PS__INIT__INIT_ZERO, 0.0f);
  ps_model_t m = model_of(1.0f, 0.0f, 1);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  float g[3] = {1, 1, 1}, out[3];
  char err[256] = "";
  uint64_t unsorted[3] = {1, 5, 4};
  ck_assert_int_eq(
      ps_sparse_table_push(t, unsorted, 3, g, 1.0f, 0, err, sizeof(err)),
      PS_ERR_INVAL);
  ck_assert(strstr(err, "ascending") != NULL);
  uint64_t dup[3] = {1, 4, 4};
  ck_assert_int_eq(
      ps_sparse_table_push(t, dup, 3, g, 1.0f, 0, err, sizeof(err)),
      PS_ERR_INVAL);
  ck_assert(strstr(err, "duplicate") != NULL);
  ck_assert_int_eq(ps_sparse_table_pull(t, dup, 3, out, NULL, 0), PS_ERR_INVAL);
  /* Nothing was created or applied. */
  ck_assert_uint_eq(ps_sparse_table_rows(t), 0);
  uint64_t ok[3] = {1, 4, 5};
  ck_assert_int_eq(ps_sparse_table_pull(t, ok, 3, out, NULL, 0), PS_OK);
  ck_assert(out[0] == 0.0f && out[1] == 0.0f && out[2] == 0.0f);
  ps_sparse_table_destroy(&t);
}
END_TEST

START_TEST(model_spec_checks) {
  Ps__SparseTableSpec a = PS__SPARSE_TABLE_SPEC__INIT,
                      b = PS__SPARSE_TABLE_SPEC__INIT;
  Ps__SparseTableSpec *ptrs[2] = {&a, &b};
  a.name = "u";
  a.dim = 16;
  b.name = "v";
  b.dim = 4;
  b.init = PS__INIT__INIT_UNIFORM;
  b.init_scale = 0.1f;
  Ps__ModelSpec pb = PS__MODEL_SPEC__INIT;
  pb.n_sparse_tables = 2;
  pb.sparse_tables = ptrs;
  ps_model_t m;
  char err[256];
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(m.nsparse, 2);
  ck_assert_ptr_nonnull(ps_model_sparse(&m, "v"));
  ck_assert_uint_eq(ps_model_sparse(&m, "v")->dim, 4);
  ck_assert_ptr_null(ps_model_sparse(&m, "w"));
  ck_assert(m.sparse[0].salt != m.sparse[1].salt);
  /* Round trip through the wire form, and equality sees every field. */
  Ps__ModelSpec out;
  Ps__TensorSpec t[1], *tp[1];
  Ps__SparseTableSpec s[2], *sptr[2];
  Ps__OptimizerSpec opts[3];
  ps_model_to_pb(&m, &out, t, tp, opts);
  ps_model_sparse_to_pb(&m, &out, s, sptr, opts + 1);
  ps_model_t back;
  ck_assert_int_eq(ps_model_from_pb(&out, &back, err, sizeof(err)), PS_OK);
  ck_assert(ps_model_equal(&m, &back));
  back.sparse[1].dim = 5;
  ck_assert(!ps_model_equal(&m, &back));
  ps_model_clear(&back);
  ps_model_t copy;
  ck_assert_int_eq(ps_model_copy(&copy, &m), PS_OK);
  ck_assert(ps_model_equal(&m, &copy));
  ps_model_clear(&copy);
  ps_model_clear(&m);

  b.name = "u";
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
  ck_assert(strstr(err, "used by") != NULL);
  b.name = "";
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
  b.name = "v";
  b.dim = 0;
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
  b.dim = PS_SPARSE_DIM_MAX + 1;
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
  b.dim = 4;
  b.init_scale = -1;
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
  b.init_scale = 0.1f;
  b.init = (Ps__Init)9;
  ck_assert_int_eq(ps_model_from_pb(&pb, &m, err, sizeof(err)), PS_ERR_INVAL);
}
END_TEST

START_TEST(owner_partition) {
  /* Rows spread over the non-empty ranges only; the owner is the range's
   * primary. */
  ps_view_t v;
  memset(&v, 0, sizeof(v));
  ps_range_t ranges[4] = {{.begin = 0, .end = 16, .server_id = 11},
                          {.begin = 16, .end = 16, .server_id = 14},
                          {.begin = 16, .end = 32, .server_id = 12},
                          {.begin = 32, .end = 48, .server_id = 13}};
  uint32_t parts[3] = {0, 2, 3};
  v.ranges = ranges;
  v.nranges = 4;
  v.sparse_parts = parts;
  v.nsparse_parts = 3;
  uint64_t salt = ps_sparse_salt("emb");
  int count[3] = {0, 0, 0};
  for (uint64_t id = 0; id < 30000; id++) {
    int64_t o = ps_view_sparse_owner(&v, salt, id);
    ck_assert(o >= 11 && o <= 13);
    /* The documented formula, spelled out. */
    uint64_t h = ps_mix64(id ^ salt);
    uint32_t part = (uint32_t)(((h >> 32) * 3) >> 32);
    ck_assert_int_eq(ps_sparse_part_of(salt, id, 3), part);
    ck_assert_int_eq(ps_view_sparse_range(&v, salt, id), parts[part]);
    ck_assert_int_eq(o, ranges[parts[part]].server_id);
    count[o - 11]++;
  }
  for (int i = 0; i < 3; i++) ck_assert(count[i] > 9000 && count[i] < 11000);
  v.nsparse_parts = 0;
  ck_assert_int_eq(ps_view_sparse_owner(&v, salt, 1), -1);
  ck_assert_int_eq(ps_view_sparse_range(&v, salt, 1), -1);
}
END_TEST

static void make_msg(ps_msg_t *m, Ps__Envelope *env, size_t f0, size_t f1,
                     int nframes) {
  memset(m, 0, sizeof(*m));
  env->version = PS_PROTOCOL_VERSION;
  m->env = env;
  m->npayload = nframes;
  zmq_msg_init_size(&m->payload[0], f0);
  if (nframes > 1) zmq_msg_init_size(&m->payload[1], f1);
}

static void close_msg(ps_msg_t *m) {
  for (int i = 0; i < m->npayload; i++) zmq_msg_close(&m->payload[i]);
}

START_TEST(frames_validated) {
  Ps__SparsePush push = PS__SPARSE_PUSH__INIT;
  push.table = "e";
  push.nkeys = 4;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PUSH;
  env.sparse_push = &push;
  const ps_frame_limits_t *lim = &ps_frame_default_limits;
  char err[256];
  ps_msg_t m;
  make_msg(&m, &env, 32, 4 * 16 * 4, 2);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_OK);
  close_msg(&m);
  make_msg(&m, &env, 24, 4 * 16 * 4, 2); /* keys frame short */
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_PROTO);
  close_msg(&m);
  make_msg(&m, &env, 32, 4 * 16 * 4 + 2, 2); /* values not whole floats */
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_PROTO);
  close_msg(&m);
  make_msg(&m, &env, 32, 0, 1); /* no values frame */
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_PROTO);
  close_msg(&m);
  push.nkeys = 0;
  make_msg(&m, &env, 0, 0, 2);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_PROTO);
  close_msg(&m);

  Ps__SparsePull pull = PS__SPARSE_PULL__INIT;
  pull.table = "e";
  pull.nkeys = 3;
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL;
  env.sparse_pull = &pull;
  make_msg(&m, &env, 24, 0, 1);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_OK);
  close_msg(&m);
  pull.nkeys = (uint64_t)1 << 62; /* over the limit */
  make_msg(&m, &env, 24, 0, 1);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_TOO_BIG);
  close_msg(&m);

  Ps__SparsePullReply r = PS__SPARSE_PULL_REPLY__INIT;
  r.nkeys = 3;
  r.dim = 2;
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL_REPLY;
  env.sparse_pull_reply = &r;
  make_msg(&m, &env, 24, 0, 1);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_OK);
  close_msg(&m);
  make_msg(&m, &env, 28, 0, 1);
  ck_assert_int_eq(ps_msg_validate(&m, lim, err, sizeof(err)), PS_ERR_PROTO);
  close_msg(&m);
}
END_TEST

/* ---- the memory cap (issue #14) ---- */

#define CAP 100
#define HOT 5 /* an id pushed in every batch: always the most recent */

/* Pushes gradient 1 (lr 1: each push subtracts 1) to HOT and n fresh ids
 * from *next, in ascending order. */
static void push_batch(ps_sparse_table_t *t, uint64_t *next, size_t n) {
  uint64_t keys[64];
  float g[64 * 4];
  keys[0] = HOT;
  for (size_t i = 1; i <= n; i++) keys[i] = (*next)++;
  for (size_t i = 0; i < (n + 1) * 4; i++) g[i] = 1;
  ck_assert_int_eq(ps_sparse_table_push(t, keys, n + 1, g, 1.0f, 0, NULL, 0),
                   PS_OK);
}

/* Every row the table lists pulls as what it lists, in recency order. */
static void rows_consistent(ps_sparse_table_t *t) {
  uint64_t n = 0;
  for (uint64_t i = ps_sparse_table_lru_first(t); i != UINT64_MAX;
       i = ps_sparse_table_lru_next(t, i), n++) {
    uint64_t id;
    const float *row = ps_sparse_table_row_at(t, i, &id);
    float out[4];
    ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, out, NULL, 0), PS_OK);
    ck_assert(memcmp(out, row, sizeof(out)) == 0);
  }
  ck_assert_uint_eq(n, ps_sparse_table_rows(t));
}

START_TEST(cap_holds_and_evicted_rows_come_back_from_init) {
  ps_sparse_spec_t sp = spec_of("emb", 4, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 3);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  ck_assert_int_eq(ps_sparse_table_set_limits(t, CAP, 1), PS_OK);
  uint64_t next = 1000, batches = 400;
  for (uint64_t b = 0; b < batches; b++) {
    push_batch(t, &next, 50);
    ck_assert_uint_le(ps_sparse_table_rows(t), CAP);
  }
  rows_consistent(t);
  ps_sparse_stats_t st;
  ps_sparse_table_stats(t, &st);
  /* 1 + 20000 rows were created; CAP are left. */
  ck_assert_uint_eq(st.rows, CAP);
  ck_assert_uint_eq(st.evictions, 1 + batches * 50 - CAP);
  /* The hot row was never evicted: every push moved it. */
  float out[4], init[4];
  uint64_t hot = HOT;
  ck_assert_int_eq(ps_sparse_table_pull(t, &hot, 1, out, NULL, 0), PS_OK);
  ps_sparse_init_row(&sp, 3, HOT, init);
  for (int j = 0; j < 4; j++) ck_assert(out[j] == init[j] - (float)batches);
  /* An early id was evicted: it reads as its initializer, and a push
   * starts it again from there. */
  uint64_t early = 1000;
  ck_assert_int_eq(ps_sparse_table_pull(t, &early, 1, out, NULL, 0), PS_OK);
  ps_sparse_init_row(&sp, 3, early, init);
  ck_assert(memcmp(out, init, sizeof(out)) == 0);
  float g[4] = {1, 1, 1, 1};
  ck_assert_int_eq(ps_sparse_table_push(t, &early, 1, g, 1.0f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, &early, 1, out, NULL, 0), PS_OK);
  for (int j = 0; j < 4; j++) ck_assert(out[j] == init[j] - 1);
  ck_assert_uint_eq(ps_sparse_table_rows(t), CAP);
  ps_sparse_table_destroy(&t);
}
END_TEST

/* The hash map against a plain model (issue #14, compact slots): random
 * single-id pushes over 5000 ids into a table capped at 1500 rows, so the
 * slots grow and then run three quarters full while rows come and go
 * (backward-shift deletion, the last block moving into a hole). After each
 * push the table holds exactly the rows the model's LRU says, and at the
 * end every id reads as its initializer minus its pushes since it last got
 * a row, or as its initializer when evicted. */
#define MODEL_IDS 5000
#define MODEL_CAP 1500
START_TEST(map_matches_a_model_lru) {
  ps_sparse_spec_t sp = spec_of("emb", 4, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 3);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  ck_assert_int_eq(ps_sparse_table_set_limits(t, MODEL_CAP, 1), PS_OK);
  static uint64_t last[MODEL_IDS]; /* 0: no row; else the push's time */
  static int pushes[MODEL_IDS];
  memset(last, 0, sizeof(last));
  memset(pushes, 0, sizeof(pushes));
  uint64_t rng = 99, held = 0, evicted = 0;
  float g[4] = {1, 1, 1, 1};
  for (uint64_t now = 1; now <= 30000; now++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    /* Ids are spread (the map mixes them) and half the draws are hot. */
    uint64_t k = (rng >> 33) % (rng >> 63 ? MODEL_IDS : 200);
    uint64_t id = k * 0x10001ull + 7;
    ck_assert_int_eq(ps_sparse_table_push(t, &id, 1, g, 1.0f, 0, NULL, 0),
                     PS_OK);
    if (last[k] == 0) held++, pushes[k] = 0;
    last[k] = now;
    pushes[k]++;
    if (held > MODEL_CAP) {
      uint64_t old = 0;
      for (uint64_t j = 1; j < MODEL_IDS; j++)
        if (last[j] && (last[old] == 0 || last[j] < last[old])) old = j;
      last[old] = 0, held--, evicted++;
    }
    ck_assert_uint_eq(ps_sparse_table_rows(t), held);
  }
  ps_sparse_stats_t st;
  ps_sparse_table_stats(t, &st);
  ck_assert_uint_eq(st.evictions, evicted);
  ck_assert_uint_gt(evicted, 1000);
  for (uint64_t k = 0; k < MODEL_IDS; k++) {
    uint64_t id = k * 0x10001ull + 7;
    float out[4], init[4];
    ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, out, NULL, 0), PS_OK);
    ps_sparse_init_row(&sp, 3, id, init);
    for (int j = 0; j < 4; j++) {
      /* Step by step, as the table rounds. */
      float want = init[j];
      for (int p = 0; last[k] && p < pushes[k]; p++) want -= 1.0f;
      ck_assert_msg(out[j] == want, "id %llu: %g, want %g",
                    (unsigned long long)id, (double)out[j], (double)want);
    }
  }
  rows_consistent(t);
  /* Recency order is the model's: oldest push first. */
  uint64_t prev_time = 0;
  for (uint64_t i = ps_sparse_table_lru_first(t); i != UINT64_MAX;
       i = ps_sparse_table_lru_next(t, i)) {
    uint64_t id;
    ps_sparse_table_row_at(t, i, &id);
    uint64_t k = (id - 7) / 0x10001ull;
    ck_assert_uint_gt(last[k], prev_time);
    prev_time = last[k];
  }
  ps_sparse_table_destroy(&t);
}
END_TEST

/* The map against a model while its index grows: a capped table for each
 * cap just past a growth's threshold (768 rows of 1024 slots, then 1536 of
 * 2048, ...), so its last growth's old index is still being drained when
 * evictions (removals) start; pushes (inserts, touches) of hot and cold
 * ids with pulls (lookups) between, each pull checked against the model,
 * which evicts its least recently pushed id as the table must. */
#define GROW_IDS 30000
#define GROW_OPS 60000
START_TEST(map_matches_a_model_across_growths) {
  ps_sparse_spec_t sp = spec_of("emb", 4, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 5);
  static float want[GROW_IDS][4]; /* the model's row; held[k]: has one */
  static int held[GROW_IDS];
  static uint64_t last[GROW_IDS];           /* time of the last push */
  static uint64_t qk[GROW_OPS], qt[GROW_OPS]; /* pushes in time order */
  uint64_t caps[] = {800, 1600, 3100, 6200, 12300};
  uint64_t overlap = 0; /* evictions while a growth was being drained */
  uint64_t rng = 17;
  for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
    ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
    ck_assert_int_eq(ps_sparse_table_set_limits(t, caps[c], 1), PS_OK);
    memset(held, 0, sizeof(held));
    uint64_t nheld = 0, qhead = 0, qtail = 0, growths = 0, slots = 0;
    float g[4] = {1, 1, 1, 1};
    for (uint64_t now = 1; now <= GROW_OPS; now++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      uint64_t k = (rng >> 33) % (rng >> 63 ? GROW_IDS : 300);
      uint64_t id = k * 0x10001ull + 3;
      if ((rng >> 20) % 4 == 0) { /* a lookup */
        float out[4];
        ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, out, NULL, 0), PS_OK);
        float init[4];
        ps_sparse_init_row(&sp, 5, id, init);
        for (int j = 0; j < 4; j++)
          ck_assert_msg(out[j] == (held[k] ? want[k][j] : init[j]),
                        "cap %llu, op %llu, id %llu: %g",
                        (unsigned long long)caps[c], (unsigned long long)now,
                        (unsigned long long)id, (double)out[j]);
        continue;
      }
      ps_sparse_stats_t before;
      ps_sparse_table_stats(t, &before);
      ck_assert_int_eq(ps_sparse_table_push(t, &id, 1, g, 1.0f, 0, NULL, 0),
                       PS_OK);
      if (!held[k]) {
        held[k] = 1, nheld++;
        ps_sparse_init_row(&sp, 5, id, want[k]);
      }
      for (int j = 0; j < 4; j++) want[k][j] -= 1.0f;
      last[k] = now;
      qk[qtail] = k, qt[qtail++] = now;
      if (nheld > caps[c]) {
        /* The oldest entry whose id was not pushed again since. */
        while (!held[qk[qhead]] || last[qk[qhead]] != qt[qhead]) qhead++;
        held[qk[qhead++]] = 0, nheld--;
      }
      ps_sparse_stats_t st;
      ps_sparse_table_stats(t, &st);
      ck_assert_uint_eq(st.rows, nheld);
      if (st.evictions > before.evictions && before.rehashing) overlap++;
      if (st.index_slots != slots) growths++, slots = st.index_slots;
      if (now % 25 == 0) ck_assert(ps_sparse_table_consistent(t));
    }
    ck_assert_uint_ge(growths, c + 1);
    rows_consistent(t);
    ck_assert(ps_sparse_table_consistent(t));
    ps_sparse_table_destroy(&t);
  }
  ck_assert_uint_gt(overlap, 100);
}
END_TEST

/* Growth costs each operation a bounded share: no push zeroes more than
 * PS_SPARSE_ZERO_STEP slots of the new index nor moves more than
 * PS_SPARSE_REHASH_STEP old slots, each growth is drained over many pushes
 * and moves exactly its old index's slots, every row stays readable while
 * two indices hold them, and rows never move once past the first chunk
 * (growth adds storage, it does not copy). Also pulls alone drain one. */
START_TEST(growth_is_spread_over_operations) {
  ps_sparse_spec_t sp = spec_of("emb", 1, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 9);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  const uint64_t n = 200000;
  float g = 1.0f;
  ps_sparse_stats_t prev;
  ps_sparse_table_stats(t, &prev);
  uint64_t growths = 0, drained = 0, since = 0, start_slots = 0;
  const float *pinned = NULL, *row0 = NULL;
  for (uint64_t id = 0; id < n; id++) {
    ck_assert_int_eq(ps_sparse_table_push(t, &id, 1, &g, 1.0f, 0, NULL, 0),
                     PS_OK);
    ps_sparse_stats_t st;
    ps_sparse_table_stats(t, &st);
    ck_assert_uint_le(st.rehash_slots - prev.rehash_slots,
                      PS_SPARSE_REHASH_STEP);
    ck_assert_uint_le(st.zero_slots - prev.zero_slots, PS_SPARSE_ZERO_STEP);
    /* A push either zeroes or moves, never both. */
    ck_assert(st.zero_slots == prev.zero_slots ||
              st.rehash_slots == prev.rehash_slots);
    uint64_t moved = st.rehash_slots;
    if (st.rehashing && !prev.rehashing) {
      growths++, since = 0, start_slots = prev.rehash_slots;
      ck_assert_uint_eq(st.index_slots, 2 * prev.index_slots);
      /* Every grown index (2048, 4096, ... slots) was zeroed ahead. */
      ck_assert_uint_eq(st.zero_slots, 2 * st.index_slots - 2048);
    }
    if (st.rehashing) {
      since++;
      /* Rows in both indices read back: the newest, and one from far back
       * (likely still in the old one). */
      uint64_t probe[2] = {id / 3, id};
      float out[2], init;
      ck_assert_int_eq(ps_sparse_table_pull(t, probe, 2, out, NULL, 0), PS_OK);
      for (int j = 0; j < 2; j++) {
        ps_sparse_init_row(&sp, 9, probe[j], &init);
        ck_assert(out[j] == init - 1.0f);
      }
      ps_sparse_table_stats(t, &st);
      ck_assert_uint_le(st.rehash_slots - moved, 2 * PS_SPARSE_REHASH_STEP);
    }
    if (!st.rehashing && prev.rehashing) {
      drained++;
      ck_assert_uint_eq(st.rehash_slots - start_slots, st.index_slots / 2);
      /* Pushes and pulls (3 operations a push) share the work. */
      ck_assert_uint_ge(since * 3 * PS_SPARSE_REHASH_STEP, st.index_slots / 2);
      ck_assert_uint_gt(since, st.index_slots / 2 / PS_SPARSE_REHASH_STEP / 3);
    }
    uint64_t rid;
    if (id == 65536) pinned = ps_sparse_table_row_at(t, id, &rid);
    if (id == 70000) row0 = ps_sparse_table_row_at(t, 0, &rid);
    prev = st;
  }
  ck_assert_uint_ge(growths, 7); /* 1024 slots ... 131072 slots */
  ck_assert_uint_ge(drained, growths - 1);
  uint64_t rid;
  ck_assert_ptr_eq(ps_sparse_table_row_at(t, 65536, &rid), pinned);
  ck_assert_ptr_eq(ps_sparse_table_row_at(t, 0, &rid), row0);
  for (uint64_t id = 0; id < n; id += 7) {
    float out, init;
    ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, &out, NULL, 0), PS_OK);
    ps_sparse_init_row(&sp, 9, id, &init);
    ck_assert(out == init - 1.0f);
  }
  ps_sparse_table_destroy(&t);
  /* Pulls alone drain a growth that pushes started. */
  t = ps_sparse_table_new(&sp, &m);
  ps_sparse_stats_t st;
  ps_sparse_table_stats(t, &st);
  for (uint64_t id = 0; !st.rehashing || st.index_slots < 65536; id++) {
    ck_assert_int_eq(ps_sparse_table_push(t, &id, 1, &g, 1.0f, 0, NULL, 0),
                     PS_OK);
    ps_sparse_table_stats(t, &st);
  }
  uint64_t pulls = 0;
  for (uint64_t id = 0; st.rehashing; id++, pulls++) {
    float out;
    ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, &out, NULL, 0), PS_OK);
    ps_sparse_table_stats(t, &st);
  }
  ck_assert_uint_ge(pulls * PS_SPARSE_REHASH_STEP, st.index_slots / 2);
  ck_assert_uint_le(pulls, st.index_slots / 2 / PS_SPARSE_REHASH_STEP + 1);
  ps_sparse_table_destroy(&t);
}
END_TEST

START_TEST(admission_after_k_pushes) {
  ps_sparse_spec_t sp = spec_of("emb", 4, PS__INIT__INIT_ZERO, 0);
  ps_model_t m = model_of(1.0f, 0.0f, 3);
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  ck_assert_int_eq(ps_sparse_table_set_limits(t, 0, 3), PS_OK);
  uint64_t id = 7;
  float g[4] = {1, 1, 1, 1}, out[4];
  for (int k = 1; k <= 4; k++) {
    ck_assert_int_eq(ps_sparse_table_push(t, &id, 1, g, 1.0f, 0, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_pull(t, &id, 1, out, NULL, 0), PS_OK);
    /* Pushes 1 and 2 are dropped; 3 creates the row and applies. */
    float want = k < 3 ? 0.0f : -(float)(k - 2);
    for (int j = 0; j < 4; j++) ck_assert(out[j] == want);
    ck_assert_uint_eq(ps_sparse_table_rows(t), k < 3 ? 0 : 1);
  }
  ps_sparse_stats_t st;
  ps_sparse_table_stats(t, &st);
  ck_assert_uint_eq(st.not_admitted, 2);
  /* BSP: the sums of ids not yet admitted are dropped at the step. */
  uint64_t other = 9;
  ck_assert_int_eq(ps_sparse_table_accumulate(t, &other, 1, g, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_apply_pending(t, 1.0f, 0), PS_OK);
  ck_assert_uint_eq(ps_sparse_table_rows(t), 1);
  ck_assert_int_eq(ps_sparse_table_set_limits(t, 0, 1), PS_ERR_INVAL);
  ps_sparse_table_destroy(&t);
}
END_TEST

/* Two copies fed the same pushes evict the same rows; a third filled as a
 * snapshot fills a backup (rows in recency order, then the sketch) and
 * fed the rest of the stream ends the same too. */
START_TEST(copies_evict_the_same_rows) {
  ps_sparse_spec_t sp = spec_of("emb", 4, PS__INIT__INIT_UNIFORM, 0.5f);
  ps_model_t m = model_of(1.0f, 0.0f, 3);
  ps_sparse_table_t *a = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *b = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *c = ps_sparse_table_new(&sp, &m);
  ck_assert_int_eq(ps_sparse_table_set_limits(a, CAP, 2), PS_OK);
  ck_assert_int_eq(ps_sparse_table_set_limits(b, CAP, 2), PS_OK);
  ck_assert_int_eq(ps_sparse_table_set_limits(c, CAP, 2), PS_OK);
  /* Ids recur (mod 300) so that some pass admission and recency matters. */
  uint64_t rng = 12345;
  for (int round = 0; round < 2; round++) {
    for (int b_ = 0; b_ < 300; b_++) {
      uint64_t keys[16];
      float g[16 * 4];
      uint64_t k = 0;
      for (int i = 0; i < 16; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        k += 1 + (rng >> 33) % 40;
        keys[i] = k % 100000;
      }
      size_t n = 1;
      for (int i = 1; i < 16; i++)
        if (keys[i] > keys[n - 1]) keys[n++] = keys[i];
      for (size_t i = 0; i < n * 4; i++) g[i] = (float)(i % 3);
      ps_sparse_table_push(a, keys, n, g, 1.0f, 0, NULL, 0);
      if (round == 0) ps_sparse_table_push(b, keys, n, g, 1.0f, 0, NULL, 0);
      else ps_sparse_table_push(c, keys, n, g, 1.0f, 0, NULL, 0);
    }
    if (round == 0) {
      /* c := b, as a snapshot would carry it. */
      for (uint64_t i = ps_sparse_table_lru_first(b); i != UINT64_MAX;
           i = ps_sparse_table_lru_next(b, i)) {
        uint64_t id;
        const float *row = ps_sparse_table_row_at(b, i, &id);
        ck_assert_int_eq(ps_sparse_table_put(c, &id, 1, row), PS_OK);
      }
      ck_assert_int_eq(ps_sparse_table_put_sketch(
                           c, ps_sparse_table_sketch(b),
                           ps_sparse_table_sketch_cells(b)),
                       PS_OK);
    }
  }
  ck_assert_uint_eq(ps_sparse_table_rows(a), ps_sparse_table_rows(c));
  ck_assert_uint_eq(ps_sparse_table_rows(a), CAP);
  uint64_t ia = ps_sparse_table_lru_first(a), ic = ps_sparse_table_lru_first(c);
  while (ia != UINT64_MAX) {
    uint64_t ida, idc;
    const float *ra = ps_sparse_table_row_at(a, ia, &ida);
    const float *rc = ps_sparse_table_row_at(c, ic, &idc);
    ck_assert_uint_eq(ida, idc);
    ck_assert(memcmp(ra, rc, 4 * sizeof(float)) == 0);
    ia = ps_sparse_table_lru_next(a, ia);
    ic = ps_sparse_table_lru_next(c, ic);
  }
  ck_assert_uint_eq(ic, UINT64_MAX);
  ps_sparse_stats_t st;
  ps_sparse_table_stats(a, &st);
  ck_assert_uint_gt(st.evictions, 0);
  ck_assert_uint_gt(st.not_admitted, 0);
  rows_consistent(a);
  ps_sparse_table_destroy(&a);
  ps_sparse_table_destroy(&b);
  ps_sparse_table_destroy(&c);
}
END_TEST

START_TEST(table_optimizer_and_schedule) {
  /* Issue #14: a table's own optimizer (FTRL here) beats the model's
   * default (SGD), its rows carry its state, and the schedule runs on the
   * push's step. */
  ps_sparse_spec_t sp = spec_of("wide", 2, PS__INIT__INIT_ZERO, 0.0f);
  sp.has_optimizer = 1;
  sp.optimizer = (ps_optimizer_spec_t){.kind = PS_OPTIMIZER_FTRL,
                                       .learning_rate = 0.5f,
                                       .l1 = 1.0f,
                                       .ftrl_beta = 1.0f};
  ps_model_t m = model_of(0.5f, 0.9f, 1);
  m.lr_schedule = (ps_lr_schedule_spec_t){.kind = PS_LR_SCHEDULE_CONSTANT,
                                          .warmup_steps = 2};
  ps_sparse_table_t *t = ps_sparse_table_new(&sp, &m);
  ck_assert_ptr_nonnull(t);
  uint64_t key = 5;
  float g[2] = {0.3f, 3.0f}, out[2];
  /* z = g, n = g^2: 0.3 stays inside the L1 ball (exactly 0); 3.0 gives
   * -(3 - 1) / ((1 + 3) / 0.5) = -0.25 at step 1 (warm-up over: f = 1). */
  ck_assert_int_eq(ps_sparse_table_push(t, &key, 1, g, 1.0f, 1, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, &key, 1, out, NULL, 0), PS_OK);
  const float zero = 0.0f;
  ck_assert(memcmp(&out[0], &zero, sizeof(float)) == 0);
  ck_assert_float_eq_tol(out[1], -0.25f, 1e-6);
  /* At step 0 the warm-up halves alpha: -(3 - 1) / ((1 + 3) / 0.25). */
  uint64_t key2 = 6;
  ck_assert_int_eq(ps_sparse_table_push(t, &key2, 1, g, 1.0f, 0, NULL, 0),
                   PS_OK);
  ck_assert_int_eq(ps_sparse_table_pull(t, &key2, 1, out, NULL, 0), PS_OK);
  ck_assert_float_eq_tol(out[1], -0.125f, 1e-6);
  ps_sparse_table_destroy(&t);
}
END_TEST

/* Merging issue #14's halves: a table's own optimizer state travels in
 * the row, whole. Adam's row is dim weights, 2 x dim moments and the row's
 * update count; a copy filled with whole rows (as a snapshot or a restored
 * checkpoint fills one) goes on bit for bit, count included; and a BSP
 * step (sum, then apply at the step) gives the bits an ASP push at that
 * step of the schedule gives, for Adam and for SGD with momentum (whose
 * sums carry the schedule's factor). */
static void push_steps(ps_sparse_table_t *t, int bsp, uint64_t from,
                       uint64_t to) {
  uint64_t keys[2] = {3, 8};
  for (uint64_t step = from; step < to; step++) {
    float g[6];
    for (int i = 0; i < 6; i++)
      g[i] = 0.25f * (float)(i + 1) - 0.1f * (float)step;
    if (bsp) {
      ck_assert_int_eq(ps_sparse_table_accumulate(t, keys, 2, g, step, NULL, 0),
                       PS_OK);
      ck_assert_int_eq(ps_sparse_table_apply_pending(t, 0.5f, step), PS_OK);
    } else {
      ck_assert_int_eq(ps_sparse_table_push(t, keys, 2, g, 0.5f, step, NULL, 0),
                       PS_OK);
    }
  }
}

static void same_rows(ps_sparse_table_t *a, ps_sparse_table_t *b) {
  size_t rf = ps_sparse_table_row_floats(a);
  ck_assert_uint_eq(rf, ps_sparse_table_row_floats(b));
  ck_assert_uint_eq(ps_sparse_table_rows(a), ps_sparse_table_rows(b));
  for (uint64_t i = 0; i < ps_sparse_table_rows(a); i++) {
    uint64_t id, idb = UINT64_MAX;
    const float *ra = ps_sparse_table_row_at(a, i, &id);
    const float *rb = NULL;
    for (uint64_t j = 0; j < ps_sparse_table_rows(b) && idb != id; j++)
      rb = ps_sparse_table_row_at(b, j, &idb);
    ck_assert_uint_eq(idb, id);
    ck_assert(memcmp(ra, rb, rf * sizeof(float)) == 0);
  }
}

START_TEST(optimizer_state_moves_with_rows) {
  ps_sparse_spec_t sp = spec_of("emb", 3, PS__INIT__INIT_UNIFORM, 0.5f);
  sp.has_optimizer = 1;
  sp.optimizer = (ps_optimizer_spec_t){.kind = PS_OPTIMIZER_ADAM,
                                       .learning_rate = 0.01f,
                                       .beta1 = 0.9f,
                                       .beta2 = 0.999f,
                                       .epsilon = 1e-8f};
  ps_model_t m = model_of(0.5f, 0.9f, 4);
  m.lr_schedule = (ps_lr_schedule_spec_t){.kind = PS_LR_SCHEDULE_CONSTANT,
                                          .warmup_steps = 4};
  ck_assert_uint_eq(ps_sparse_row_floats(&sp, &m), 3 + 2 * 3 + 2);
  ps_sparse_table_t *a = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *b = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *c = ps_sparse_table_new(&sp, &m);
  ck_assert_uint_eq(ps_sparse_table_row_floats(a), 11);
  push_steps(a, 0, 0, 3);
  /* c := a, whole rows. */
  for (uint64_t i = 0; i < ps_sparse_table_rows(a); i++) {
    uint64_t id;
    const float *row = ps_sparse_table_row_at(a, i, &id);
    ck_assert_int_eq(ps_sparse_table_put(c, &id, 1, row), PS_OK);
  }
  push_steps(a, 0, 3, 6);
  push_steps(c, 0, 3, 6);
  same_rows(a, c);
  /* Six updates counted in each row (Adam's t, after the moments). */
  uint64_t id, t;
  const float *row = ps_sparse_table_row_at(a, 0, &id);
  memcpy(&t, row + 9, sizeof(t));
  ck_assert_uint_eq(t, 6);
  /* BSP through the step's sums: the same bits. */
  push_steps(b, 1, 0, 6);
  same_rows(a, b);
  ps_sparse_table_destroy(&a);
  ps_sparse_table_destroy(&b);
  ps_sparse_table_destroy(&c);

  /* The model's default, SGD with momentum under the warm-up: 2 x dim. */
  ps_sparse_spec_t sgd = spec_of("emb", 3, PS__INIT__INIT_UNIFORM, 0.5f);
  ck_assert_uint_eq(ps_sparse_row_floats(&sgd, &m), 6);
  a = ps_sparse_table_new(&sgd, &m);
  b = ps_sparse_table_new(&sgd, &m);
  push_steps(a, 0, 0, 6);
  push_steps(b, 1, 0, 6);
  same_rows(a, b);
  ps_sparse_table_destroy(&a);
  ps_sparse_table_destroy(&b);
}
END_TEST

/* The schedule's factor by its own formula (ps/model.h), in double: linear
 * warm-up (t + 1) / W, then a cosine from 1 to 0 over T - W steps. */
static double factor_formula(uint64_t t, uint64_t warmup, uint64_t total) {
  if (t < warmup) return (double)(t + 1) / (double)warmup;
  double x = (double)(t - warmup) / (double)(total - warmup);
  return 0.5 * (1.0 + cos(M_PI * (x < 1.0 ? x : 1.0)));
}

/* Issue #14: the servers apply the learning-rate schedule (the CTR workers
 * no longer scale their gradients). An SGD row pushed at step t moves by
 * lr f(t) g, on arrival (ASP) and through a BSP step's sums of two
 * contributions alike, for steps in the warm-up, at the cosine's start,
 * middle and end and past its horizon; with momentum the row follows
 * v = m v + f(t) g, w -= lr v over consecutive steps. */
START_TEST(sgd_rows_follow_cosine_warmup) {
  const uint64_t W = 4, T = 10;
  ps_sparse_spec_t sp = spec_of("emb", 2, PS__INIT__INIT_ZERO, 0.0f);
  ps_model_t m = model_of(0.5f, 0.0f, 1);
  m.lr_schedule = (ps_lr_schedule_spec_t){
      .kind = PS_LR_SCHEDULE_COSINE, .total_steps = T, .warmup_steps = W};
  ps_sparse_table_t *asp = ps_sparse_table_new(&sp, &m);
  ps_sparse_table_t *bsp = ps_sparse_table_new(&sp, &m);
  ck_assert(asp != NULL && bsp != NULL);
  const uint64_t steps[] = {0, 1, 3, 4, 7, 9, 10, 15};
  const float g[2] = {0.75f, -2.0f};
  /* Two workers' halves of 2 g: their mean is g. */
  const float g1[2] = {0.5f, -3.0f}, g2[2] = {1.0f, -1.0f};
  for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
    uint64_t t = steps[i], key = 100 + t; /* a fresh row per step */
    float a[2], b[2];
    ck_assert_int_eq(ps_sparse_table_push(asp, &key, 1, g, 1.0f, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_accumulate(bsp, &key, 1, g1, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_accumulate(bsp, &key, 1, g2, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_apply_pending(bsp, 0.5f, t), PS_OK);
    ck_assert_int_eq(ps_sparse_table_pull(asp, &key, 1, a, NULL, 0), PS_OK);
    ck_assert_int_eq(ps_sparse_table_pull(bsp, &key, 1, b, NULL, 0), PS_OK);
    double f = factor_formula(t, W, T);
    for (int j = 0; j < 2; j++) {
      double want = -0.5 * f * (double)g[j];
      ck_assert_msg(fabs((double)a[j] - want) <= 1e-6 * (1.0 + fabs(want)),
                    "step %llu col %d: ASP row %.9g, lr f(t) g = %.9g",
                    (unsigned long long)t, j, (double)a[j], want);
      ck_assert_msg(fabs((double)b[j] - want) <= 1e-6 * (1.0 + fabs(want)),
                    "step %llu col %d: BSP row %.9g, lr f(t) g = %.9g",
                    (unsigned long long)t, j, (double)b[j], want);
    }
  }
  /* Where the formula gives exact values: warm-up 1/4, the cosine's start
   * 1 and its middle 1/2 (steps 0, 4, 7), and nothing at its end. */
  float out[2];
  uint64_t k0 = 100, k4 = 104, k7 = 107, k10 = 110, k15 = 115;
  ck_assert_int_eq(ps_sparse_table_pull(asp, &k0, 1, out, NULL, 0), PS_OK);
  ck_assert(out[0] == -0.5f * 0.25f * 0.75f && out[1] == 0.25f);
  ck_assert_int_eq(ps_sparse_table_pull(asp, &k4, 1, out, NULL, 0), PS_OK);
  ck_assert(out[0] == -0.375f && out[1] == 1.0f);
  ck_assert_int_eq(ps_sparse_table_pull(asp, &k7, 1, out, NULL, 0), PS_OK);
  ck_assert_float_eq_tol(out[1], 0.5f, 1e-6f);
  ck_assert_int_eq(ps_sparse_table_pull(asp, &k10, 1, out, NULL, 0), PS_OK);
  ck_assert_float_eq_tol(out[1], 0.0f, 1e-7f);
  ck_assert_int_eq(ps_sparse_table_pull(asp, &k15, 1, out, NULL, 0), PS_OK);
  ck_assert_float_eq_tol(out[1], 0.0f, 1e-7f);
  ps_sparse_table_destroy(&asp);
  ps_sparse_table_destroy(&bsp);

  /* Momentum 0.5, one row pushed at steps 2..7 (warm-up into cosine). */
  m.momentum = 0.5f;
  asp = ps_sparse_table_new(&sp, &m);
  bsp = ps_sparse_table_new(&sp, &m);
  double v[2] = {0, 0}, w[2] = {0, 0};
  uint64_t key = 7;
  for (uint64_t t = 2; t < 8; t++) {
    ck_assert_int_eq(ps_sparse_table_push(asp, &key, 1, g, 1.0f, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_accumulate(bsp, &key, 1, g1, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_accumulate(bsp, &key, 1, g2, t, NULL, 0),
                     PS_OK);
    ck_assert_int_eq(ps_sparse_table_apply_pending(bsp, 0.5f, t), PS_OK);
    double f = factor_formula(t, W, T);
    float a[2], b[2];
    ck_assert_int_eq(ps_sparse_table_pull(asp, &key, 1, a, NULL, 0), PS_OK);
    ck_assert_int_eq(ps_sparse_table_pull(bsp, &key, 1, b, NULL, 0), PS_OK);
    for (int j = 0; j < 2; j++) {
      v[j] = 0.5 * v[j] + f * (double)g[j];
      w[j] -= 0.5 * v[j];
      ck_assert_msg(fabs((double)a[j] - w[j]) <= 1e-5 * (1.0 + fabs(w[j])) &&
                        fabs((double)b[j] - w[j]) <= 1e-5 * (1.0 + fabs(w[j])),
                    "step %llu col %d: rows %.9g (ASP) %.9g (BSP), formula "
                    "%.9g",
                    (unsigned long long)t, j, (double)a[j], (double)b[j], w[j]);
    }
  }
  ps_sparse_table_destroy(&asp);
  ps_sparse_table_destroy(&bsp);
}
END_TEST

int main(void) {
  Suite *suite = suite_create("sparse");
  TCase *tc = tcase_create("sparse");
  tcase_add_test(tc, init_on_touch_is_deterministic);
  tcase_add_test(tc, sgd_by_hand);
  tcase_add_test(tc, table_optimizer_and_schedule);
  tcase_add_test(tc, sgd_rows_follow_cosine_warmup);
  tcase_add_test(tc, optimizer_state_moves_with_rows);
  tcase_add_test(tc, bad_keys_refused_without_change);
  tcase_add_test(tc, model_spec_checks);
  tcase_add_test(tc, owner_partition);
  tcase_add_test(tc, frames_validated);
  tcase_add_test(tc, cap_holds_and_evicted_rows_come_back_from_init);
  tcase_add_test(tc, admission_after_k_pushes);
  tcase_add_test(tc, map_matches_a_model_lru);
  tcase_add_test(tc, map_matches_a_model_across_growths);
  tcase_add_test(tc, growth_is_spread_over_operations);
  tcase_add_test(tc, copies_evict_the_same_rows);
  suite_add_tcase(suite, tc);
  return ps_check_run(suite);
}
