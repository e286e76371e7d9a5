/* psctl status tells the truth (issue 10, item 8): after a server died and
 * a replacement joined, the header counts live servers only (2/2, not
 * 3/2); the replacement, a backup of every range and primary of none,
 * shows its real clock (not 0); and the dead server's "last heartbeat"
 * keeps growing across a scheduler restart instead of starting again from
 * zero. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

/* The value of key in the node object with this id in a status JSON, or
 * -1. */
static double node_number(const char *json, unsigned id, const char *key) {
  char needle[32];
  snprintf(needle, sizeof(needle), "{\"id\":%u,", id);
  const char *p = strstr(json, needle);
  if (p == NULL) return -1;
  const char *end = strchr(p, '}');
  if (end == NULL) return -1;
  char obj[1024];
  size_t n = (size_t)(end - p + 1);
  if (n >= sizeof(obj)) return -1;
  memcpy(obj, p, n);
  obj[n] = '\0';
  return h_json_number(obj, key);
}

static unsigned node_id(const char *json, const char *address) {
  h_node_t nodes[16];
  int n = h_status_nodes(json, nodes, 16);
  for (int i = 0; i < n; i++)
    if (strcmp(nodes[i].address, address) == 0) return nodes[i].id;
  return 0;
}

/* --rebalance=false: the replacement server stays a pure backup, whose
 * clock is what this test reads (chaos.rebalance covers handing back). */
static h_proc_t *start_scheduler(h_cluster_t *c, const char *name) {
  return h_spawn(c, name, "ps-scheduler", "--bind", c->sched_ep, "--servers",
                 "2", "--workers", "1", "--mode", "bsp",
                 "--heartbeat-timeout-ms", "1500", "--rebalance=false",
                 "--state-file", h_path(c, "scheduler.state"), NULL);
}

static h_proc_t *start_server(h_cluster_t *c, const char *name, char *addr,
                              size_t len) {
  snprintf(addr, len, "tcp://127.0.0.1:%d", h_free_port());
  return h_spawn(c, name, "ps-server", "--scheduler", c->sched_ep, "--bind",
                 addr, NULL);
}

START_TEST(status_after_failover_and_restart) {
  h_cluster_t c;
  h_init(&c, "status_truth");
  char a0[64], a1[64], a2[64], why[256];
  h_proc_t *sched = start_scheduler(&c, "scheduler1");
  start_server(&c, "server0", a0, sizeof(a0));
  h_proc_t *s1 = start_server(&c, "server1", a1, sizeof(a1));
  h_proc_t *w0 =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", "50", "--eval-every-epoch=false", NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");

  kill(s1->pid, SIGKILL);
  ck_assert(h_wait_exit(s1, 5000));
  ck_assert_msg(h_wait_node_state(&c, a1, "dead", 10000),
                "server1 not declared dead");
  h_proc_t *s2 = start_server(&c, "server2", a2, sizeof(a2));
  (void)s2;
  int ok = h_wait_replicated(&c, 2, 30000, why, sizeof(why));
  if (!ok) h_dump_logs(&c);
  ck_assert_msg(ok, "not replicated again: %s", why);

  /* The replacement is a pure backup; its clock follows the primary's. */
  char *js = NULL;
  unsigned id0 = 0, id1 = 0, id2 = 0;
  double clock2 = -1, clock0 = -1;
  uint64_t end = h_now_ms() + 10000;
  do {
    free(js);
    h_sleep_ms(200);
    js = h_status_json(&c, 5000);
    if (js == NULL) continue;
    id0 = node_id(js, a0);
    id1 = node_id(js, a1);
    id2 = node_id(js, a2);
    clock0 = node_number(js, id0, "clock");
    clock2 = node_number(js, id2, "clock");
  } while ((js == NULL || clock2 <= 0) && h_now_ms() < end);
  ck_assert_msg(js != NULL && id0 && id1 && id2, "status: %s", js);
  ck_assert_msg(node_number(js, id2, "primary_of") == 0 &&
                    node_number(js, id2, "backup_of") >= 1,
                "server2 is not a pure backup: %s", js);
  ck_assert_msg(clock2 > 0,
                "backup server2 shows clock %.0f (primary %.0f): %s", clock2,
                clock0, js);
  fprintf(stderr, "clocks: primary %.0f, backup %.0f\n", clock0, clock2);
  double heard_before = node_number(js, id1, "last_heartbeat_ms");
  uint64_t t_before = h_now_ms();
  free(js);

  /* The header counts the living: 2 of 2 servers, not 3. */
  int status = 0;
  char *txt = h_run(&c, 10000, &status, "psctl", "--scheduler", c.sched_ep,
                    "status", NULL);
  ck_assert_msg(txt != NULL && status == 0, "psctl status failed");
  fprintf(stderr, "%s", txt);
  ck_assert_msg(
      strstr(txt, "2/2 servers") != NULL && strstr(txt, "3/2") == NULL,
      "header: %s", txt);
  ck_assert_msg(strstr(txt, "1 dead") != NULL, "header: %s", txt);
  free(txt);

  /* A scheduler restart does not make the dead server's silence new. */
  kill(sched->pid, SIGKILL);
  ck_assert(h_wait_exit(sched, 5000));
  h_proc_t *sched2 = start_scheduler(&c, "scheduler2");
  int restored = h_wait_log(sched2->log, "event=state_restored", 10000);
  if (!restored) h_dump_logs(&c);
  ck_assert_msg(restored, "the scheduler did not restore its state");
  js = NULL;
  end = h_now_ms() + 10000;
  while (js == NULL && h_now_ms() < end) js = h_status_json(&c, 2000);
  ck_assert_msg(js != NULL, "no status from the restarted scheduler");
  double heard_after = node_number(js, id1, "last_heartbeat_ms");
  uint64_t gap = h_now_ms() - t_before;
  fprintf(stderr,
          "dead server's last heartbeat: %.0f ms ago, then %.0f ms "
          "ago after a restart %llu ms later\n",
          heard_before, heard_after, (unsigned long long)gap);
  ck_assert_msg(heard_after >= heard_before + (double)gap - 500,
                "last heartbeat of dead server %u: %.0f ms ago before the "
                "restart, %.0f ms ago %llu ms later",
                id1, heard_before, heard_after, (unsigned long long)gap);
  free(js);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("status_truth");
  TCase *tc = tcase_create("status_truth");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, status_after_failover_and_restart);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
