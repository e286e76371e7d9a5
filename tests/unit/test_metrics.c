/* common/metrics.h: the Prometheus text format, the registry's checks and
 * histograms. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"
#include "tests/check_run.h"

START_TEST(test_counter_and_gauge_text) {
  ps_metrics_t *m = ps_metrics_new();
  ck_assert_ptr_nonnull(m);
  ck_assert_int_eq(ps_metrics_family(m, "ps_test_pushes_total",
                                     PS_METRIC_COUNTER, "Pushes served."),
                   0);
  ck_assert_int_eq(ps_metrics_sample(m, 3, "op", "push", NULL), 0);
  ck_assert_int_eq(ps_metrics_sample(m, 12345678901.0, "op", "pull", NULL), 0);
  ck_assert_int_eq(
      ps_metrics_put(m, "ps_test_epoch", PS_METRIC_GAUGE, "View epoch.", 0.25),
      0);
  ck_assert_str_eq(ps_metrics_error(m), "");
  ck_assert_str_eq(ps_metrics_text(m, NULL),
                   "# HELP ps_test_pushes_total Pushes served.\n"
                   "# TYPE ps_test_pushes_total counter\n"
                   "ps_test_pushes_total{op=\"push\"} 3\n"
                   "ps_test_pushes_total{op=\"pull\"} 12345678901\n"
                   "# HELP ps_test_epoch View epoch.\n"
                   "# TYPE ps_test_epoch gauge\n"
                   "ps_test_epoch 0.25\n");
  ps_metrics_reset(m);
  ck_assert_str_eq(ps_metrics_text(m, NULL), "");
  /* After a reset the same family may be declared again. */
  ck_assert_int_eq(ps_metrics_put(m, "ps_test_epoch", PS_METRIC_GAUGE, "x", 1),
                   0);
  ps_metrics_destroy(&m);
  ck_assert_ptr_null(m);
}
END_TEST

START_TEST(test_escaping_and_special_values) {
  ps_metrics_t *m = ps_metrics_new();
  ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "a \\ and a\nnewline");
  ps_metrics_sample(m, NAN, "path", "a\"b\\c\nd", NULL);
  ps_metrics_sample(m, INFINITY, "path", "x", NULL);
  ps_metrics_sample(m, -INFINITY, "path", "y", NULL);
  ps_metrics_sample(m, 1e-7, "path", "z", NULL);
  ck_assert_str_eq(ps_metrics_error(m), "");
  ck_assert_str_eq(ps_metrics_text(m, NULL),
                   "# HELP ps_test_g a \\\\ and a\\nnewline\n"
                   "# TYPE ps_test_g gauge\n"
                   "ps_test_g{path=\"a\\\"b\\\\c\\nd\"} NaN\n"
                   "ps_test_g{path=\"x\"} +Inf\n"
                   "ps_test_g{path=\"y\"} -Inf\n"
                   "ps_test_g{path=\"z\"} 1e-07\n");
  ps_metrics_destroy(&m);
}
END_TEST

/* Each mistake is refused, named, and stops the render. */
static const char *mistake(int which) {
  static char err[256];
  ps_metrics_t *m = ps_metrics_new();
  switch (which) {
    case 0:
      ps_metrics_family(m, "ps_test_pushes", PS_METRIC_COUNTER, "");
      break;
    case 1:
      ps_metrics_family(m, "ps_test_g_total", PS_METRIC_GAUGE, "");
      break;
    case 2:
      ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "");
      ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "");
      break;
    case 3:
      ps_metrics_family(m, "ps-test", PS_METRIC_GAUGE, "");
      break;
    case 4:
      ps_metrics_sample(m, 1, NULL);
      break;
    case 5:
      ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "");
      ps_metrics_sample(m, 1, "le", "1", NULL);
      break;
    case 6:
      ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "");
      ps_metrics_sample(m, 1, "a", "1", "a", "2", NULL);
      break;
    case 7:
      ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "");
      ps_metrics_sample(m, 1, "9x", "1", NULL);
      break;
    case 8:
      ps_metrics_family(m, "ps_test_h", PS_METRIC_HISTOGRAM, "");
      ps_metrics_sample(m, 1, NULL);
      break;
    case 9:
      ps_metrics_family(m, "ps_test_h_count", PS_METRIC_HISTOGRAM, "");
      break;
  }
  snprintf(err, sizeof(err), "%s", ps_metrics_error(m));
  /* Nothing is written after a mistake. */
  size_t len;
  ps_metrics_text(m, &len);
  ck_assert_int_eq(ps_metrics_put(m, "ps_test_after", PS_METRIC_GAUGE, "", 1),
                   -1);
  size_t len2;
  ps_metrics_text(m, &len2);
  ck_assert_uint_eq(len, len2);
  ps_metrics_destroy(&m);
  return err;
}

START_TEST(test_mistakes_refused) {
  ck_assert_ptr_nonnull(strstr(mistake(0), "must end in _total"));
  ck_assert_ptr_nonnull(strstr(mistake(1), "must not end in _total"));
  ck_assert_ptr_nonnull(strstr(mistake(2), "declared twice"));
  ck_assert_ptr_nonnull(strstr(mistake(3), "is not"));
  ck_assert_ptr_nonnull(strstr(mistake(4), "before any family"));
  ck_assert_ptr_nonnull(strstr(mistake(5), "bad label le"));
  ck_assert_ptr_nonnull(strstr(mistake(6), "given twice"));
  ck_assert_ptr_nonnull(strstr(mistake(7), "bad label 9x"));
  ck_assert_ptr_nonnull(strstr(mistake(8), "ps_metrics_histogram"));
  ck_assert_ptr_nonnull(strstr(mistake(9), "_count"));
}
END_TEST

START_TEST(test_histogram) {
  ps_hist_t h;
  const double bounds[] = {0.001, 0.01, 0.1};
  ck_assert_int_eq(ps_hist_init(&h, bounds, 3, 1e-9), 0);
  ps_hist_observe(&h, 500000);     /* 0.5 ms */
  ps_hist_observe(&h, 1000000);    /* 1 ms: le is inclusive */
  ps_hist_observe(&h, 20000000);   /* 20 ms */
  ps_hist_observe(&h, 3000000000); /* 3 s */
  ck_assert_uint_eq(ps_hist_count(&h), 4);
  ps_metrics_t *m = ps_metrics_new();
  ps_metrics_family(m, "ps_test_seconds", PS_METRIC_HISTOGRAM, "Latency.");
  ck_assert_int_eq(ps_metrics_histogram(m, &h, "op", "push", NULL), 0);
  ck_assert_str_eq(ps_metrics_error(m), "");
  ck_assert_str_eq(ps_metrics_text(m, NULL),
                   "# HELP ps_test_seconds Latency.\n"
                   "# TYPE ps_test_seconds histogram\n"
                   "ps_test_seconds_bucket{op=\"push\",le=\"0.001\"} 2\n"
                   "ps_test_seconds_bucket{op=\"push\",le=\"0.01\"} 2\n"
                   "ps_test_seconds_bucket{op=\"push\",le=\"0.1\"} 3\n"
                   "ps_test_seconds_bucket{op=\"push\",le=\"+Inf\"} 4\n"
                   "ps_test_seconds_sum{op=\"push\"} 3.0215\n"
                   "ps_test_seconds_count{op=\"push\"} 4\n");
  ps_metrics_destroy(&m);
  /* Bounds must increase and fit. */
  const double bad[] = {0.1, 0.1};
  ck_assert_int_eq(ps_hist_init(&h, bad, 2, 1e-9), -1);
  ck_assert_int_eq(
      ps_hist_init(&h, ps_hist_seconds_bounds, ps_hist_seconds_nbounds, 1e-9),
      0);
  ck_assert_int_eq(ps_hist_init(&h, bounds, PS_HIST_MAX_BUCKETS + 1, 1e-9), -1);
}
END_TEST

START_TEST(test_shared_values) {
  ps_counter_t c = 0;
  ps_gauge_t g = 0;
  ps_counter_add(&c, 5);
  ps_counter_add(&c, 2);
  ck_assert_uint_eq(ps_counter_get(&c), 7);
  ps_gauge_set(&g, -2.5);
  ck_assert(ps_gauge_get(&g) == -2.5);
}
END_TEST

START_TEST(test_large_render_grows) {
  ps_metrics_t *m = ps_metrics_new();
  ps_metrics_family(m, "ps_test_g", PS_METRIC_GAUGE, "many");
  char v[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(v, sizeof(v), "%d", i);
    ps_metrics_sample(m, i, "i", v, NULL);
  }
  size_t len;
  const char *t = ps_metrics_text(m, &len);
  ck_assert_str_eq(ps_metrics_error(m), "");
  ck_assert_uint_gt(len, 5000 * 10);
  ck_assert_ptr_nonnull(strstr(t, "ps_test_g{i=\"4999\"} 4999\n"));
  ps_metrics_destroy(&m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_counter_and_gauge_text);
  tcase_add_test(tc, test_escaping_and_special_values);
  tcase_add_test(tc, test_mistakes_refused);
  tcase_add_test(tc, test_histogram);
  tcase_add_test(tc, test_shared_values);
  tcase_add_test(tc, test_large_render_grows);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
