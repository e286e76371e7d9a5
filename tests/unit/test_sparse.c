/* The server's sparse table (issue #3) and the hash partitioning behind it:
 * rows made on first touch hold the same bits whatever table object, order
 * or partitioning creates them; SGD with and without momentum by hand
 * (small integers and powers of two, so every value is exact); unsorted and
 * duplicate keys refused without a change; the model spec's checks; every
 * id owned by exactly one server, about evenly; frame validation of sparse
 * bodies (keys frame against nkeys, values a whole number of floats). */
#include <check.h>
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
  ck_assert_int_eq(ps_sparse_table_pull(a, keys, N, ra, NULL, 0), PS_OK);
  ck_assert_uint_eq(ps_sparse_table_rows(a), N);
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
  ps_view_t v;
  memset(&v, 0, sizeof(v));
  uint32_t servers[3] = {11, 12, 13};
  v.sparse_servers = servers;
  v.nsparse_servers = 3;
  uint64_t salt = ps_sparse_salt("emb");
  int count[3] = {0, 0, 0};
  for (uint64_t id = 0; id < 30000; id++) {
    int64_t o = ps_view_sparse_owner(&v, salt, id);
    ck_assert(o >= 11 && o <= 13);
    /* The documented formula, spelled out. */
    uint64_t h = ps_mix64(id ^ salt);
    ck_assert_int_eq(o, servers[((h >> 32) * 3) >> 32]);
    count[o - 11]++;
  }
  for (int i = 0; i < 3; i++) ck_assert(count[i] > 9000 && count[i] < 11000);
  v.nsparse_servers = 0;
  ck_assert_int_eq(ps_view_sparse_owner(&v, salt, 1), -1);
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

int main(void) {
  Suite *suite = suite_create("sparse");
  TCase *tc = tcase_create("sparse");
  tcase_add_test(tc, init_on_touch_is_deterministic);
  tcase_add_test(tc, sgd_by_hand);
  tcase_add_test(tc, table_optimizer_and_schedule);
  tcase_add_test(tc, bad_keys_refused_without_change);
  tcase_add_test(tc, model_spec_checks);
  tcase_add_test(tc, owner_partition);
  tcase_add_test(tc, frames_validated);
  suite_add_tcase(suite, tc);
  return ps_check_run(suite);
}
