/* /metrics and /healthz of every daemon in a cluster that trains (issue
 * #12): each page passes `promtool check metrics` (Prometheus's own
 * parser and linter), /healthz answers 200, the values are the cluster's
 * (pushes served, nodes alive, steps done), and a server killed with
 * SIGKILL shows in the scheduler's metrics: declared dead for silence, its
 * range failed over, both ranges short of a copy, none without one. The
 * endpoints never hold a daemon up: the job ends and every survivor exits
 * 0. Without promtool the test is skipped (exit 77), saying so. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "scrape.h"
#include "tests/check_run.h"

static const char *const names[5] = {"scheduler", "server0", "server1",
                                     "worker0", "worker1"};

/* promtool check metrics < page: 1 if it passed; its output in *out. */
static int promtool_ok(h_cluster_t *c, const char *page_path, char **out) {
  char cmd[1400], name[64];
  static int n;
  snprintf(cmd, sizeof(cmd), "exec promtool check metrics < '%s'", page_path);
  snprintf(name, sizeof(name), "promtool%d", n++);
  const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
  h_proc_t *p = h_spawnv(c, name, argv);
  ck_assert_msg(h_wait_exit(p, 30000), "promtool did not finish in 30 s");
  *out = h_read_file(p->log, NULL);
  return WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
}

START_TEST(test_every_daemon_exports) {
  h_cluster_t c;
  h_init(&c, "metrics");
  h_mcluster_t m;
  h_mcluster_start(&c, &m, "1", "900");
  double v;
  ck_assert_msg(
      h_scrape_wait_ge(m.port[3], "ps_worker_steps_total", 20, 90000, &v),
      "worker0 did not reach 20 steps (ps_worker_steps_total %g)", v);
  for (int i = 0; i < 5; i++) {
    int status;
    char *body = h_http_get(m.port[i], "/healthz", &status, 5000);
    ck_assert_msg(body && status == 200 && strcmp(body, "ok\n") == 0,
                  "%s /healthz: %d %s", names[i], status, body ? body : "");
    free(body);
    body = h_http_get(m.port[i], "/nope", &status, 5000);
    ck_assert_int_eq(status, 404);
    free(body);
    body = h_http_get(m.port[i], "/metrics", &status, 5000);
    ck_assert_msg(body && status == 200, "%s /metrics: %d", names[i], status);
    char file[80];
    snprintf(file, sizeof(file), "%s.metrics", names[i]);
    FILE *f = fopen(h_path(&c, file), "w");
    ck_assert_ptr_nonnull(f);
    fputs(body, f);
    fclose(f);
    char *out = NULL;
    ck_assert_msg(promtool_ok(&c, h_path(&c, file), &out),
                  "promtool check metrics on %s's page: %s", names[i],
                  out ? out : "");
    free(out);
    ck_assert_msg(strstr(body, "ps_build_info{daemon=") != NULL,
                  "%s: no ps_build_info", names[i]);
    if (i == 0) {
      ck_assert(h_metric(body,
                         "ps_scheduler_nodes{role=\"server\",state="
                         "\"alive\"}") == 2);
      ck_assert(h_metric(body,
                         "ps_scheduler_nodes{role=\"worker\",state="
                         "\"alive\"}") == 2);
      ck_assert(h_metric(body, "ps_scheduler_view_epoch") >= 1);
      ck_assert(h_metric(body, "ps_scheduler_ranges{state=\"ok\"}") == 2);
      ck_assert(h_metric(body, "ps_scheduler_job_running") == 1);
      /* The first view went whole to the four nodes. */
      ck_assert(
          h_metric(body, "ps_scheduler_views_sent_total{kind=\"whole\"}") >= 4);
      ck_assert(h_metric(body, "ps_scheduler_view_bytes_total") > 0);
    } else if (i <= 2) {
      /* ps-worker pushes in push-pulls by default (--push-pull fused). */
      ck_assert_msg(
          h_metric(body, "ps_server_requests_total{type=\"push\"}") +
                  h_metric(body,
                           "ps_server_requests_total{type=\"push_pull\"}") >
              0,
          "%s served no push", names[i]);
      ck_assert(h_metric(body, "ps_server_ranges{role=\"primary\"}") == 1);
      ck_assert(h_metric(body, "ps_server_ranges{role=\"backup\"}") == 1);
      ck_assert(h_metric(body, "ps_server_replicated_changes_total") > 0);
      ck_assert(h_metric(body, "ps_server_apply_seconds_count") > 0);
    } else {
      ck_assert(h_metric(body, "ps_worker_steps_total") >= 20);
      ck_assert(h_metric(body, "ps_worker_training") == 1);
      ck_assert(
          h_metric(body, "ps_worker_step_phase_seconds_total{phase=\"pull\"}") >
          0);
      ck_assert(h_metric(body, "ps_worker_workers") == 2);
    }
    free(body);
  }

  /* A server dies: the scheduler's metrics say so. */
  kill(m.server[1]->pid, SIGKILL);
  const char *dead = "ps_scheduler_nodes{role=\"server\",state=\"dead\"}";
  ck_assert_msg(h_scrape_wait_ge(m.port[0], dead, 1, 20000, &v),
                "scheduler shows %g dead servers", v);
  int status;
  char *body = h_http_get(m.port[0], "/metrics", &status, 5000);
  ck_assert_ptr_nonnull(body);
  ck_assert(h_metric(body,
                     "ps_scheduler_heartbeat_timeouts_total{role="
                     "\"server\"}") == 1);
  ck_assert(h_metric(body, "ps_scheduler_failovers_total") >= 1);
  ck_assert(h_metric(body, "ps_scheduler_view_epoch") >= 2);
  ck_assert(h_metric(body, "ps_scheduler_ranges_without_live_copy") == 0);
  ck_assert(h_metric(body, "ps_scheduler_ranges_short_of_copies") == 2);
  free(body);
  /* The survivor is now the primary of both ranges and keeps serving. */
  ck_assert(h_scrape_wait_ge(m.port[1], "ps_server_ranges{role=\"primary\"}", 2,
                             10000, &v));

  char why[512];
  ck_assert_msg(h_wait_exit0(&c, m.worker[0], 240000, why, sizeof(why)), "%s",
                why);
  ck_assert_msg(h_wait_exit0(&c, m.worker[1], 30000, why, sizeof(why)), "%s",
                why);
  ck_assert_msg(h_wait_exit0(&c, m.server[0], 30000, why, sizeof(why)), "%s",
                why);
  ck_assert_msg(h_wait_exit0(&c, m.sched, 30000, why, sizeof(why)), "%s", why);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  if (h_which("promtool") == NULL) {
    fprintf(stderr,
            "SKIPPED: promtool not found on PATH (Debian package "
            "prometheus; deploy/install-deps.sh installs it)\n");
    return 77;
  }
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("cluster");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_every_daemon_exports);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
