/* scheduler/top.h: reading a daemon's /metrics page for psctl top. */
#include <check.h>
#include <math.h>

#include "scheduler/top.h"
#include "tests/check_run.h"

static const char page[] =
    "# HELP ps_server_requests_total Messages received.\n"
    "# TYPE ps_server_requests_total counter\n"
    "ps_server_requests_total{type=\"push\"} 120\n"
    "ps_server_requests_total{type=\"pull\"} 7\n"
    "ps_server_requests_total{type=\"sparse_push\"} 5\n"
    "ps_server_received_bytes_total{type=\"push\"} 1e6\n"
    "ps_server_received_bytes_total{type=\"pull\"} 2500\n"
    "ps_worker_step 41\n"
    "ps_worker_steps_total 40\n"
    "ps_worker_step_seconds_bucket{le=\"0.1\"} 3\n"
    "ps_worker_test_accuracy NaN";

START_TEST(test_metric_sum) {
  ck_assert(ps_top_metric_sum(page, "ps_server_requests_total",
                              "type=\"push\"") == 120);
  /* The label matches whole values only: "push" is not "sparse_push". */
  ck_assert(ps_top_metric_sum(page, "ps_server_requests_total",
                              "type=\"pull\"") == 7);
  ck_assert(ps_top_metric_sum(page, "ps_server_received_bytes_total", NULL) ==
            1002500);
  /* A name is whole too: ps_worker_step is not ps_worker_steps_total nor
   * ps_worker_step_seconds_bucket. */
  ck_assert(ps_top_metric_sum(page, "ps_worker_step", NULL) == 41);
  ck_assert(isnan(ps_top_metric_sum(page, "ps_worker_loss", NULL)));
  ck_assert(isnan(ps_top_metric_sum(page, "ps_server_requests_total",
                                    "type=\"replicate\"")));
  /* The last line has no newline; NaN is a value. */
  ck_assert(isnan(ps_top_metric_sum(page, "ps_worker_test_accuracy", NULL)));
}
END_TEST

int main(void) {
  Suite *s = suite_create("top");
  TCase *tc = tcase_create("page");
  tcase_add_test(tc, test_metric_sum);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
