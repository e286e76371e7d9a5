/* A real Prometheus (Debian's package) scraping a local cluster that
 * trains, every second (issue #12). The test writes its config, starts it
 * on a free loopback port with a scratch storage directory, and asks its
 * HTTP API, as a dashboard or an alert would:
 *   - every target is up and the push rate is > 0 while training;
 *   - after a server is SIGKILLed, the scheduler's dead-server count and
 *     its failover counter rise, the dead target is down, and pushes go
 *     on at the survivor;
 *   - deploy/prometheus/alerts.yml loads (its rules evaluate without
 *     error against the live series), and every query of the Grafana
 *     dashboard (deploy/grafana/ps-cluster.json) evaluates.
 * Then a SIGTERM ends the job and every survivor exits 0. Without
 * prometheus on PATH the test is skipped (exit 77), saying so. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "scrape.h"
#include "tests/check_run.h"

static void write_config(h_cluster_t *c, const h_mcluster_t *m,
                         const char *path) {
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f,
          "global:\n"
          "  scrape_interval: 1s\n"
          "  scrape_timeout: 1s\n"
          "  evaluation_interval: 1s\n"
          "rule_files:\n"
          "  - %s/deploy/prometheus/alerts.yml\n"
          "scrape_configs:\n"
          "  - job_name: ps-scheduler\n"
          "    static_configs:\n"
          "      - targets: ['127.0.0.1:%d']\n"
          "  - job_name: ps-server\n"
          "    static_configs:\n"
          "      - targets: ['127.0.0.1:%d', '127.0.0.1:%d']\n"
          "  - job_name: ps-worker\n"
          "    static_configs:\n"
          "      - targets: ['127.0.0.1:%d', '127.0.0.1:%d']\n",
          PS_SOURCE_DIR, m->port[0], m->port[1], m->port[2], m->port[3],
          m->port[4]);
  fclose(f);
}

/* Every "expr" of the Grafana dashboard, JSON-unescaped, into exprs
 * (at most max); returns how many. */
static int dashboard_exprs(const char *json, char exprs[][1024], int max) {
  int n = 0;
  for (const char *p = json; n < max && (p = strstr(p, "\"expr\": \"")); n++) {
    p += strlen("\"expr\": \"");
    size_t k = 0;
    for (; *p && *p != '"' && k + 1 < 1024; p++) {
      if (*p == '\\' && p[1]) p++;
      exprs[n][k++] = *p;
    }
    exprs[n][k] = '\0';
  }
  return n;
}

START_TEST(test_prometheus_scrapes_a_training_cluster) {
  h_cluster_t c;
  h_init(&c, "prometheus");
  h_mcluster_t m;
  /* Long enough to outlast the checks; the test ends it with SIGTERM. */
  h_mcluster_start(&c, &m, "20", "0");

  int port = h_free_port();
  char cfg[600], listen[64], cfg_flag[700], data_flag[700], listen_flag[100];
  snprintf(cfg, sizeof(cfg), "%s", h_path(&c, "prometheus.yml"));
  write_config(&c, &m, cfg);
  mkdir(h_path(&c, "tsdb"), 0755);
  snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
  snprintf(cfg_flag, sizeof(cfg_flag), "--config.file=%s", cfg);
  snprintf(data_flag, sizeof(data_flag), "--storage.tsdb.path=%s",
           h_path(&c, "tsdb"));
  snprintf(listen_flag, sizeof(listen_flag), "--web.listen-address=%s", listen);
  const char *argv[] = {h_which("prometheus"), cfg_flag,           data_flag,
                        listen_flag,           "--log.level=warn", NULL};
  h_proc_t *prom = h_spawnv(&c, "prometheus", argv);

  double v;
  ck_assert_msg(h_prom_wait_ge(port, "count(up == 1)", 5, 90000, &v),
                "Prometheus sees %g of 5 targets up", v);
  ck_assert_msg(h_prom_wait_ge(port,
                               "sum(rate(ps_server_requests_total"
                               "{type=~\"push|push_pull\"}[5s]))",
                               1, 30000, &v),
                "push rate %g/s while training", v);
  ck_assert_msg(h_prom_wait_ge(port, "sum(rate(ps_worker_samples_total[5s]))",
                               1, 30000, &v),
                "samples rate %g/s while training", v);
  /* Before the kill: nothing dead, nothing failed over. */
  v = h_prom_query(
      port, "max(ps_scheduler_nodes{role=\"server\",state=\"dead\"})", 5000);
  ck_assert_msg(v == 0, "dead servers before the kill: %g", v);
  v = h_prom_query(port, "max(ps_scheduler_failovers_total)", 5000);
  ck_assert_msg(v == 0, "failovers before the kill: %g", v);
  /* The alert rules loaded and evaluate. */
  int status;
  char *rules = h_http_get(port, "/api/v1/rules", &status, 5000);
  ck_assert_msg(rules && status == 200 && strstr(rules, "PsServerDown") &&
                    !strstr(rules, "\"health\":\"err\""),
                "rules: %d %s", status, rules ? rules : "");
  free(rules);

  /* Every query of the Grafana dashboard evaluates against the live
   * series. */
  char *dash =
      h_read_file(PS_SOURCE_DIR "/deploy/grafana/ps-cluster.json", NULL);
  ck_assert_ptr_nonnull(dash);
  static char exprs[64][1024];
  int nexprs = dashboard_exprs(dash, exprs, 64);
  free(dash);
  ck_assert_int_ge(nexprs, 20);
  for (int i = 0; i < nexprs; i++) {
    char qwhy[400];
    ck_assert_msg(h_prom_query_ok(port, exprs[i], qwhy, sizeof(qwhy)),
                  "dashboard query %s: %s", exprs[i], qwhy);
  }

  kill(m.server[1]->pid, SIGKILL);
  ck_assert_msg(
      h_prom_wait_ge(port,
                     "max(ps_scheduler_nodes{role=\"server\",state=\"dead\"})",
                     1, 30000, &v),
      "dead servers after the kill: %g", v);
  ck_assert_msg(
      h_prom_wait_ge(port, "max(ps_scheduler_failovers_total)", 1, 30000, &v),
      "failovers after the kill: %g", v);
  ck_assert_msg(
      h_prom_wait_ge(port, "count(up{job=\"ps-server\"} == 0)", 1, 30000, &v),
      "down server targets: %g", v);
  /* Training goes on at the survivor, now the primary of both ranges. */
  ck_assert_msg(h_prom_wait_ge(port,
                               "sum(increase(ps_server_requests_total{type=~"
                               "\"push|push_pull\",job=\"ps-server\"}[3s]) "
                               "and on "
                               "(instance) ps_server_ranges{role=\"primary\"}"
                               " == 2)",
                               1, 30000, &v),
                "pushes at the survivor after the failover: %g", v);

  kill(m.sched->pid, SIGTERM);
  char why[512];
  ck_assert_msg(h_wait_exit0(&c, m.sched, 30000, why, sizeof(why)), "%s", why);
  ck_assert_msg(h_wait_exit0(&c, m.server[0], 30000, why, sizeof(why)), "%s",
                why);
  ck_assert_msg(h_wait_exit0(&c, m.worker[0], 30000, why, sizeof(why)), "%s",
                why);
  ck_assert_msg(h_wait_exit0(&c, m.worker[1], 30000, why, sizeof(why)), "%s",
                why);
  kill(prom->pid, SIGTERM);
  ck_assert_msg(h_wait_exit(prom, 30000), "prometheus did not stop");
  h_kill_all(&c);
}
END_TEST

int main(void) {
  if (h_which("prometheus") == NULL) {
    fprintf(stderr,
            "SKIPPED: prometheus not found on PATH (Debian package "
            "prometheus; deploy/install-deps.sh installs it)\n");
    return 77;
  }
  Suite *s = suite_create("prometheus");
  TCase *tc = tcase_create("cluster");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_prometheus_scrapes_a_training_cluster);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
