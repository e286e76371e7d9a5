/* The CTR model (worker/model/ctr.h): its distinct-id bookkeeping, and its
 * gradients (dense, embedding, wide) against central finite differences of
 * its own loss, with and without the embeddings' dot products. Rows share
 * ids, so a gradient summed over rows is checked too, and the dense
 * features are not zero, so their path is. Its spec carries the schedule,
 * and --standalone's rows update as a server's do. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/init.h"
#include "tests/check_run.h"
#include "common/optimizer.h"
#include "ps-server/sparse.h"
#include "worker/model/ctr.h"
#include "worker/model/local_table.h"

#define ROWS 6
#define DIM 4

static void make_rows(ps_criteo_row_t *rows) {
  memset(rows, 0, ROWS * sizeof(*rows));
  for (int b = 0; b < ROWS; b++) {
    rows[b].label = (uint8_t)(b % 3 == 0);
    for (int d = 0; d < PS_CRITEO_DENSE; d++)
      rows[b].dense[d] = (float)((b * 7 + d * 3) % 5) * 0.4f;
    for (int f = 0; f < PS_CRITEO_CATEG; f++)
      /* Field 0: two ids for six rows; the rest mostly distinct. */
      rows[b].ids[f] = f == 0 ? 5000u + (uint64_t)(b % 2)
                              : (uint64_t)f * 100u + (uint64_t)(b % 4);
  }
}

static double uniform(uint64_t *s) {
  *s += 0x9e3779b97f4a7c15ull;
  return (double)(ps_mix64(*s) >> 11) * 0x1p-53 * 2.0 - 1.0;
}

START_TEST(test_batch_keys) {
  ps_ctr_opts_t o;
  ps_ctr_opts_init(&o);
  o.max_batch = ROWS;
  char err[256];
  ps_ctr_t *m = ps_ctr_new(&o, err, sizeof(err));
  ck_assert_msg(m != NULL, "%s", err);
  ps_criteo_row_t rows[ROWS];
  make_rows(rows);
  const uint64_t *keys;
  size_t n = ps_ctr_batch_keys(m, rows, ROWS, &keys);
  /* Field 0: 2 ids; fields 1-25: 4 each. */
  ck_assert_uint_eq(n, 2 + 25 * 4);
  for (size_t i = 1; i < n; i++) ck_assert_uint_lt(keys[i - 1], keys[i]);
  ck_assert_uint_eq(ps_ctr_field_keys(m), n);
  uint64_t before[2 + 25 * 4];
  memcpy(before, keys, sizeof(before));
  const ps_model_t *spec = ps_ctr_model(m);
  ck_assert_uint_eq(spec->nsparse, 2);
  ck_assert_uint_eq(spec->sparse[0].dim, 16);
  ck_assert_uint_eq(spec->sparse[1].dim, 1);
  /* 26 x 16 embeddings + 13 dense = 429, -256-128-1. */
  ck_assert_uint_eq(ps_ctr_num_params(m),
                    429 * 256 + 256 + 256 * 128 + 128 + 128 + 1);
  ps_ctr_destroy(&m);
  o.dot_interactions = 1; /* + 325 dot products */
  m = ps_ctr_new(&o, err, sizeof(err));
  ck_assert_ptr_nonnull(m);
  ck_assert_uint_eq(ps_ctr_num_params(m),
                    754 * 256 + 256 + 256 * 128 + 128 + 128 + 1);
  ps_ctr_destroy(&m);
  ck_assert_ptr_null(m);
  ck_assert_int_eq(ps_ctr_parse_hidden(&o, "64,0", err, sizeof(err)),
                   PS_ERR_CONFIG);
  ck_assert_int_eq(ps_ctr_parse_hidden(&o, "64,x", err, sizeof(err)),
                   PS_ERR_CONFIG);
  ck_assert_int_eq(ps_ctr_parse_hidden(&o, "64,32,16", err, sizeof(err)),
                   PS_OK);
  const char *bad_cross[] = {"1x1",  "0x2", "1x27", "1-2",
                             "1x2,", "x2",  "1x",   "1x2x3"};
  for (size_t i = 0; i < sizeof(bad_cross) / sizeof(*bad_cross); i++)
    ck_assert_msg(
        ps_ctr_parse_cross(&o, bad_cross[i], err, sizeof(err)) == PS_ERR_CONFIG,
        "cross list \"%s\" accepted", bad_cross[i]);
  char many[256] = "";
  for (int i = 0; i <= PS_CTR_MAX_CROSSES; i++)
    snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s%dx%d",
             i ? "," : "", 1 + i % 26, 1 + (i + 1) % 26);
  ck_assert_int_eq(ps_ctr_parse_cross(&o, many, err, sizeof(err)),
                   PS_ERR_CONFIG);
  ck_assert_int_eq(ps_ctr_parse_cross(&o, "26x1,3x4", err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(o.ncross, 2);
  ck_assert_uint_eq(o.cross_a[0], 25);
  ck_assert_uint_eq(o.cross_b[0], 0);
  ck_assert_uint_eq(o.cross_b[1], 3);
  /* Crossed ids follow the fields' ids, which stay the same. */
  o.max_batch = ROWS;
  m = ps_ctr_new(&o, err, sizeof(err));
  ck_assert_ptr_nonnull(m);
  ck_assert_uint_eq(ps_ctr_batch_keys(m, rows, ROWS, &keys),
                    2 + 25 * 4 + 4 + 4);
  ck_assert_uint_eq(ps_ctr_field_keys(m), 2 + 25 * 4);
  ck_assert_int_eq(memcmp(before, keys, sizeof(before)), 0);
  ps_ctr_destroy(&m);
  ck_assert_uint_eq(o.nhidden, 3);
  ck_assert_uint_eq(o.hidden[2], 16);
}
END_TEST

static int close_enough(double got, double want) {
  return fabs(got - want) <= 2e-3 + 2e-2 * fabs(want);
}

/* _i: the MLP alone (0), with the dot-product interactions (1), with two
 * crossed fields in the wide part (2). */
START_TEST(test_gradient_finite_differences) {
  ps_ctr_opts_t o;
  ps_ctr_opts_init(&o);
  o.dot_interactions = _i == 1;
  o.embed_dim = DIM;
  o.max_batch = ROWS;
  char err[256];
  ck_assert_int_eq(ps_ctr_parse_hidden(&o, "8,5", err, sizeof(err)), PS_OK);
  ck_assert_int_eq(
      ps_ctr_parse_cross(&o, _i == 2 ? "1x2,2x5" : "", err, sizeof(err)),
      PS_OK);
  ps_ctr_t *m = ps_ctr_new(&o, err, sizeof(err));
  ck_assert_msg(m != NULL, "%s", err);
  ps_criteo_row_t rows[ROWS];
  make_rows(rows);
  const uint64_t *keys;
  size_t nk = ps_ctr_batch_keys(m, rows, ROWS, &keys);
  size_t nf = ps_ctr_field_keys(m);
  /* 1x2: (5000 + b % 2, 100 + b % 4), 2x5: (100 + b % 4, 400 + b % 4) over
   * rows 0-5: four distinct pairs each. */
  ck_assert_uint_eq(nk - nf, _i == 2 ? 8 : 0);
  size_t np = ps_ctr_num_params(m);
  float *w = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
  float *emb = malloc(nk * DIM * sizeof(float));
  float *gemb = malloc(nk * DIM * sizeof(float));
  float *wide = malloc(nk * sizeof(float)), *gwide = malloc(nk * sizeof(float));
  float *sg = malloc(np * sizeof(float)), *sgemb = malloc(nk * DIM * 4);
  float *sgwide = malloc(nk * sizeof(float));
  ck_assert(w && g && emb && gemb && wide && gwide && sg && sgemb && sgwide);
  ps_ctr_init_params(m, w);
  uint64_t s = 7;
  /* Biases away from 0, so units are not all on one side of their ReLU. */
  for (size_t i = 0; i < np; i++)
    if (w[i] == 0.0f) w[i] = (float)(0.3 * uniform(&s));
  for (size_t i = 0; i < nk * DIM; i++) emb[i] = (float)(0.5 * uniform(&s));
  for (size_t i = 0; i < nk; i++) wide[i] = (float)(0.2 * uniform(&s));

  double loss = ps_ctr_gradient(m, w, emb, wide, rows, ROWS, g, gemb, gwide);
  ck_assert(isfinite(loss) && loss > 0);
  const float eps = 1e-3f;
  size_t bad = 0, checked = 0, nonzero = 0;
  /* Every parameter, dense and sparse: the model is small. */
  struct {
    float *v, *grad;
    size_t n;
    const char *what;
  } sets[3] = {{w, g, np, "dense"},
               {emb, gemb, nf * DIM, "embedding"},
               {wide, gwide, nk, "wide"}};
  for (int k = 0; k < 3; k++) {
    for (size_t i = 0; i < sets[k].n; i++) {
      float keep = sets[k].v[i];
      sets[k].v[i] = keep + eps;
      double up = ps_ctr_gradient(m, w, emb, wide, rows, ROWS, sg, sgemb,
                                  sgwide);
      sets[k].v[i] = keep - eps;
      double down = ps_ctr_gradient(m, w, emb, wide, rows, ROWS, sg, sgemb,
                                    sgwide);
      sets[k].v[i] = keep;
      double fd = (up - down) / (2.0 * eps);
      checked++;
      nonzero += fabs(fd) > 1e-4;
      if (!close_enough(sets[k].grad[i], fd)) {
        /* A ReLU kink inside [-eps, eps] breaks a finite difference, not
         * the gradient: allowed for a few dense weights only. */
        if (bad++ < 5 || k > 0)
          fprintf(stderr, "%s %zu: gradient %.6f, finite difference %.6f\n",
                  sets[k].what, i, sets[k].grad[i], fd);
        ck_assert_msg(k == 0, "%s gradient %zu wrong", sets[k].what, i);
      }
    }
  }
  ck_assert_msg(bad <= checked / 200, "%zu of %zu gradients off", bad, checked);
  ck_assert_msg(nonzero > checked / 2, "only %zu of %zu gradients non-zero",
                nonzero, checked);
  /* The wide gradient of field 0's first id: its rows' dz summed. */
  float p[ROWS];
  ps_ctr_predict(m, w, emb, wide, rows, ROWS, p);
  double want = 0;
  for (int b = 0; b < ROWS; b += 2) want += (p[b] - rows[b].label) / ROWS;
  size_t k0 = 0;
  while (keys[k0] != 5000) k0++;
  ck_assert_double_eq_tol(gwide[k0], want, 1e-5);
  /* Every row adds its dz to one wide key per field and one per cross. */
  double dzsum = 0, fsum = 0, csum = 0;
  for (int b = 0; b < ROWS; b++) dzsum += (p[b] - rows[b].label) / ROWS;
  for (size_t k = 0; k < nk; k++) *(k < nf ? &fsum : &csum) += gwide[k];
  ck_assert_double_eq_tol(fsum, PS_CRITEO_CATEG * dzsum, 1e-5);
  ck_assert_double_eq_tol(csum, (_i == 2 ? 2 : 0) * dzsum, 1e-5);
  free(w);
  free(g);
  free(emb);
  free(gemb);
  free(wide);
  free(gwide);
  free(sg);
  free(sgemb);
  free(sgwide);
  ps_ctr_destroy(&m);
}
END_TEST

/* Issue #14: the CTR model's spec carries the learning-rate schedule, so
 * the servers apply it; and --standalone's tables (worker/model/local_table.h)
 * apply a push at the schedule's factor with the very bits a server's SGD
 * table gives the same push at that step (ps-server/sparse.h), momentum
 * included, so that standalone and cluster runs train the same rule. */
START_TEST(test_schedule_in_spec_and_local_rows) {
  ps_ctr_opts_t o;
  ps_ctr_opts_init(&o);
  o.embed_dim = DIM;
  o.learning_rate = 0.3f;
  o.momentum = 0.9f;
  o.lr_schedule = (ps_lr_schedule_spec_t){.kind = PS_LR_SCHEDULE_COSINE,
                                          .warmup_steps = 3,
                                          .epochs = 2,
                                          .examples_per_epoch = 1000,
                                          .worker_batch = 50};
  char err[256];
  ps_ctr_t *m = ps_ctr_new(&o, err, sizeof(err));
  ck_assert_msg(m != NULL, "%s", err);
  const ps_model_t *spec = ps_ctr_model(m);
  ck_assert(ps_lr_schedule_equal(&spec->lr_schedule, &o.lr_schedule));
  /* As the scheduler resolves it for 2 workers: 2 x 1000 / (2 x 50). */
  ps_lr_schedule_spec_t sched = spec->lr_schedule;
  ck_assert_int_eq(ps_lr_schedule_resolve(&sched, 2, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(sched.total_steps, 20);
  ps_model_t resolved = *spec;
  resolved.lr_schedule = sched;
  for (size_t k = 0; k < spec->nsparse; k++) {
    const ps_sparse_spec_t *sp = &spec->sparse[k];
    ps_local_table_t *local = ps_local_table_new(sp, spec);
    ps_sparse_table_t *server = ps_sparse_table_new(sp, &resolved);
    ck_assert(local != NULL && server != NULL);
    uint64_t keys[3] = {11, 4000, 90001};
    size_t n = 3 * sp->dim;
    float g[3 * DIM], a[3 * DIM], b[3 * DIM];
    for (uint64_t step = 0; step < 24; step++) {
      for (size_t i = 0; i < n; i++)
        g[i] = 0.01f * (float)((i * 7 + step * 3) % 11) - 0.05f;
      ck_assert_int_eq(
          ps_local_table_push(local, keys, 3, g, ps_lr_factor(&sched, step)),
          PS_OK);
      ck_assert_int_eq(
          ps_sparse_table_push(server, keys, 3, g, 1.0f, step, NULL, 0), PS_OK);
      ck_assert_int_eq(ps_local_table_pull(local, keys, 3, a), PS_OK);
      ck_assert_int_eq(ps_sparse_table_pull(server, keys, 3, b, NULL, 0),
                       PS_OK);
      ck_assert_msg(memcmp(a, b, n * sizeof(float)) == 0,
                    "table %s, step %llu: the local rows differ from the "
                    "server's",
                    sp->name, (unsigned long long)step);
    }
    /* The rows moved: the comparison is not of two initial states. */
    ps_local_table_t *fresh = ps_local_table_new(sp, spec);
    float init[3 * DIM];
    ck_assert_int_eq(ps_local_table_pull(fresh, keys, 3, init), PS_OK);
    ck_assert(memcmp(a, init, n * sizeof(float)) != 0);
    ps_local_table_destroy(&fresh);
    ps_local_table_destroy(&local);
    ps_sparse_table_destroy(&server);
  }
  ps_ctr_destroy(&m);

  /* A cosine no longer than its warm-up is refused, with the reason. */
  o.lr_schedule = (ps_lr_schedule_spec_t){
      .kind = PS_LR_SCHEDULE_COSINE, .total_steps = 5, .warmup_steps = 5};
  ck_assert_ptr_null(ps_ctr_new(&o, err, sizeof(err)));
  ck_assert_msg(strstr(err, "warm-up") != NULL, "%s", err);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ctr");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_batch_keys);
  tcase_add_loop_test(tc, test_gradient_finite_differences, 0, 3);
  tcase_add_test(tc, test_schedule_in_spec_and_local_rows);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
