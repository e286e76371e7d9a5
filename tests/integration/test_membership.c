/* Membership as an operator sees it: psctl status lists every node and the
 * range map; a worker killed mid-run is reported dead (in the log and in
 * psctl status), leaves the live set, and BSP training goes on with the
 * other worker to the end, after which every daemon exits 0. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "scrape.h"
#include "tests/check_run.h"

/* Runs psctl with args and returns its stdout (caller frees). */
static char *psctl(h_cluster_t *c, const char *out_name, const char *a1,
                   const char *a2) {
  h_proc_t *p = h_spawn(c, out_name, "psctl", "--scheduler", c->sched_ep,
                        "--timeout-ms", "3000", a1, a2, NULL);
  ck_assert_msg(h_wait_exit(p, 10000), "psctl did not exit within 10 s");
  ck_assert_msg(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
                "psctl %s failed", a1);
  return h_read_file(p->log, NULL);
}

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
    n++;
  return n;
}

START_TEST(dead_worker_reported_and_training_goes_on) {
  h_cluster_t c;
  h_init(&c, "membership");
  /* Heartbeats on the links (the UDP path has its own test below). */
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--heartbeat-timeout-ms",
              "1000", "--heartbeat-udp=false", NULL);
  h_proc_t *s0 =
      h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *s1 =
      h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--epochs", "2", NULL);
  h_proc_t *w1 = h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "1", "--epochs", "2", "--report",
                         h_path(&c, "report.json"), NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");

  char *js = psctl(&c, "psctl_json", "status", "--json");
  ck_assert_msg(count(js, "\"state\":\"alive\"") == 4,
                "expected 4 alive nodes: %s", js);
  ck_assert_int_eq(count(js, "\"role\":\"server\""), 2);
  ck_assert_int_eq(count(js, "\"role\":\"worker\""), 2);
  ck_assert_int_eq(count(js, "\"server_id\""), 2);
  ck_assert_msg(strstr(js, "\"epoch\":1,") != NULL, "not epoch 1: %s", js);
  /* Replication 2 (the default) on 2 servers: each backs the other. */
  ck_assert_msg(strstr(js, "\"replication\":2,") != NULL, "%s", js);
  ck_assert_int_eq(count(js, "\"state\":\"ok\""), 2);
  ck_assert_int_eq(count(js, "\"primary_of\":1,\"backup_of\":1"), 2);
  free(js);
  char *txt = psctl(&c, "psctl_text", "status", NULL);
  ck_assert_msg(count(txt, "alive") >= 4, "human status: %s", txt);
  ck_assert_msg(strstr(txt, "primary of 1, backup of 1") != NULL, "%s", txt);
  free(txt);

  kill(w0->pid, SIGKILL);
  ck_assert(h_wait_exit(w0, 5000));
  int dead = h_wait_log(sched->log, "event=node_dead", 10000);
  if (!dead) h_dump_logs(&c);
  ck_assert_msg(dead, "scheduler did not report the killed worker dead");

  js = psctl(&c, "psctl_json_after", "status", "--json");
  ck_assert_msg(count(js, "\"state\":\"dead\"") == 1,
                "expected 1 dead node: %s", js);
  ck_assert_msg(strstr(js, "\"live_workers\":1") != NULL, "%s", js);
  ck_assert_msg(strstr(js, "\"epoch\":2,") != NULL, "not epoch 2: %s", js);
  free(js);

  /* The other worker finishes its job alone; the cluster then ends. */
  h_proc_t *rest[] = {sched, s0, s1, w1};
  char why[256];
  for (int i = 0; i < 4; i++)
    ck_assert_msg(h_wait_exit0(&c, rest[i], 120000, why, sizeof(why)), "%s",
                  why);
  h_kill_all(&c);
  char *rep = h_read_file(h_path(&c, "report.json"), NULL);
  ck_assert_ptr_nonnull(rep);
  ck_assert_msg(h_json_number(rep, "epochs") == 2, "%s", rep);
  free(rep);
}
END_TEST

/* ps-scheduler --heartbeat-udp: every member heartbeats by datagram once
 * answered (its log says so), the scheduler counts them on the udp path
 * far above the link path, and a killed worker is still declared dead
 * within the timeout while the rest train to the end. */
START_TEST(heartbeats_over_udp) {
  h_cluster_t c;
  h_init(&c, "membership_udp");
  int mport = h_free_port();
  char mbind[32];
  snprintf(mbind, sizeof(mbind), "127.0.0.1:%d", mport);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "1", "--workers", "2", "--heartbeat-timeout-ms",
              "1000", "--heartbeat-udp", "--metrics-bind", mbind, NULL);
  h_proc_t *s0 =
      h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--epochs", "2", NULL);
  h_proc_t *w1 = h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "1", "--epochs", "2", NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");
  h_proc_t *members[] = {s0, w0, w1};
  for (int i = 0; i < 3; i++)
    ck_assert_msg(h_wait_log(members[i]->log, "event=beats_answered", 10000),
                  "member %d never had a heartbeat datagram answered", i);
  ck_assert_msg(h_wait_log(sched->log, "event=beats_listening", 1000),
                "the scheduler did not listen for datagrams");

  /* A second of heartbeats from 3 members at 10 Hz, on the udp path. */
  double udp = 0, link = 0;
  uint64_t deadline = h_now_ms() + 10000;
  while (h_now_ms() < deadline) {
    int status = 0;
    char *page = h_http_get(mport, "/metrics", &status, 2000);
    if (page != NULL) {
      udp = h_metric(page, "ps_scheduler_heartbeats_total{path=\"udp\"}");
      link = h_metric(page, "ps_scheduler_heartbeats_total{path=\"link\"}");
      free(page);
    }
    if (udp >= 30) break;
    h_sleep_ms(100);
  }
  ck_assert_msg(udp >= 30 && link < udp / 3,
                "heartbeats: %.0f by datagram, %.0f on the links", udp, link);

  kill(w0->pid, SIGKILL);
  ck_assert(h_wait_exit(w0, 5000));
  int dead = h_wait_log(sched->log, "event=node_dead", 10000);
  if (!dead) h_dump_logs(&c);
  ck_assert_msg(dead, "scheduler did not report the killed worker dead");
  h_proc_t *rest[] = {sched, s0, w1};
  char why[256];
  for (int i = 0; i < 3; i++)
    ck_assert_msg(h_wait_exit0(&c, rest[i], 120000, why, sizeof(why)), "%s",
                  why);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("membership");
  TCase *tc = tcase_create("membership");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, dead_worker_reported_and_training_goes_on);
  tcase_add_test(tc, heartbeats_over_udp);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
