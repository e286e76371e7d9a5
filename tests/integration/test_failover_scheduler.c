/* Failover as the scheduler runs it, with real daemons (ARCHITECTURE
 * "Failure semantics" 2): 3 servers with replication 2 and one idle worker.
 * A server killed with SIGKILL is declared dead within the heartbeat
 * timeout, its range fails over to its backup (logged with the silence),
 * and psctl status shows it dead and owning nothing. A server started
 * afterwards registers as a spare. A server paused with SIGSTOP past the
 * timeout is replaced the same way, and when it is resumed it is fenced:
 * it exits non-zero saying so. The job then ends normally.
 *
 * The data plane is not exercised here (the chaos tests do that): the
 * worker only holds its membership, so the test checks the scheduler's
 * side alone. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/err.h"
#include "harness.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"
#include "tests/check_run.h"

#define SERVERS 3

static int worker(const char *sched_ep, int rank) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, 3000, PS__OPTIMIZER__OPT_SGD, 0.1f);
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 60000;
  o.heartbeat_ms = 100;
  int err = 0;
  char msg[512];
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "worker %d: %s\n", rank, msg);
    h_worker_sync(rank);
    return 1;
  }
  h_worker_sync(rank); /* holds its membership until the test is done */
  ps_client_destroy(&c);
  return 0;
}

/* Runs psctl status --json; returns its output (caller frees). */
static char *status_json(h_cluster_t *c, const char *name) {
  h_proc_t *p = h_spawn(c, name, "psctl", "--scheduler", c->sched_ep,
                        "--timeout-ms", "3000", "status", "--json", NULL);
  ck_assert_msg(h_wait_exit(p, 10000), "psctl did not exit");
  char *out = h_read_file(p->log, NULL);
  ck_assert_msg(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
                "psctl failed: %s", out ? out : "");
  return out;
}

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
    n++;
  return n;
}

/* The node id a server's log says it registered as. */
static unsigned node_id_of(h_proc_t *p) {
  ck_assert_msg(h_wait_log(p->log, "event=registered id=", 10000),
                "%s did not register", p->name);
  char *log = h_read_file(p->log, NULL);
  unsigned id = 0;
  const char *at = strstr(log, "event=registered id=");
  ck_assert(sscanf(at, "event=registered id=%u", &id) == 1);
  free(log);
  return id;
}

static void expect_log(h_cluster_t *c, const char *path, const char *needle,
                       int ms) {
  if (!h_wait_log(path, needle, ms)) {
    h_dump_logs(c);
    ck_abort_msg("no \"%s\" in %s within %d ms", needle, path, ms);
  }
}

START_TEST(server_killed_paused_and_replaced) {
  h_cluster_t c;
  h_init(&c, "failover_scheduler");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "3", "--workers", "1", "--mode", "asp",
              "--replication", "2", "--heartbeat-timeout-ms", "400", NULL);
  h_proc_t *srv[SERVERS];
  for (int i = 0; i < SERVERS; i++) {
    char name[16];
    snprintf(name, sizeof(name), "server%d", i);
    srv[i] = h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep,
                     "--heartbeat-ms", "100", NULL);
  }
  h_workers_start(&c, 1, worker);
  expect_log(&c, sched->log, "event=view_published epoch=1 ", 20000);
  unsigned id0 = node_id_of(srv[0]), id1 = node_id_of(srv[1]);

  char *js = status_json(&c, "psctl_first");
  ck_assert_msg(strstr(js, "\"replication\":2,") != NULL, "%s", js);
  ck_assert_msg(count(js, "\"state\":\"ok\"") == SERVERS, "%s", js);
  ck_assert_int_eq(count(js, "\"primary_of\":1,\"backup_of\":1"), SERVERS);
  free(js);

  /* SIGKILL: failover within the timeout and a check period or two. */
  uint64_t t0 = h_now_ms();
  kill(srv[0]->pid, SIGKILL);
  char want[96];
  snprintf(want, sizeof(want), "event=failover range=");
  expect_log(&c, sched->log, want, 5000);
  uint64_t detect_ms = h_now_ms() - t0;
  fprintf(stderr,
          "failover_scheduler: failover logged %llu ms after the "
          "kill\n",
          (unsigned long long)detect_ms);
  ck_assert_msg(detect_ms < 2000, "failover took %llu ms",
                (unsigned long long)detect_ms);
  snprintf(want, sizeof(want), " old=%u new=", id0);
  expect_log(&c, sched->log, want, 1);
  js = status_json(&c, "psctl_after_kill");
  ck_assert_int_eq(count(js, "\"state\":\"dead\""), 1);
  snprintf(want, sizeof(want), "\"server_id\":%u,", id0);
  ck_assert_msg(strstr(js, want) == NULL, "dead server owns a range: %s", js);
  ck_assert_msg(count(js, "\"state\":\"unavailable\"") == 0, "%s", js);
  /* With replication 2, one syncing backup per syncing range. */
  int syncing = count(js, "\"state\":\"syncing\"");
  free(js);

  /* The primaries fill the new backups from snapshots and report it. */
  int synced = 0;
  for (uint64_t end = h_deadline_ms(10000); !synced && h_now_ms() < end;) {
    char *log = h_read_file(sched->log, NULL);
    synced = log && count(log, "event=re_replicated") >= syncing;
    free(log);
    if (!synced) h_wait_log(sched->log, "no such line", 100);
  }
  if (!synced) h_dump_logs(&c);
  ck_assert_msg(synced, "%d ranges not re-replicated within 10 s", syncing);
  js = status_json(&c, "psctl_resynced");
  ck_assert_msg(count(js, "\"state\":\"ok\"") == SERVERS, "%s", js);
  free(js);

  /* A new server in the dead one's place takes its share (--rebalance). */
  h_proc_t *spare = h_spawn(&c, "spare", "ps-server", "--scheduler", c.sched_ep,
                            "--heartbeat-ms", "100", NULL);
  expect_log(&c, sched->log, "event=server_joined", 10000);
  unsigned spare_id = node_id_of(spare);
  ck_assert_uint_gt(spare_id, SERVERS + 1);

  /* A pause past the timeout: replaced, then fenced once it resumes. */
  kill(srv[1]->pid, SIGSTOP);
  snprintf(want, sizeof(want), "event=node_dead id=%u ", id1);
  expect_log(&c, sched->log, want, 5000);
  kill(srv[1]->pid, SIGCONT);
  int exited = h_wait_exit(srv[1], 10000);
  if (!exited) h_dump_logs(&c);
  ck_assert_msg(exited, "the fenced server did not exit");
  ck_assert_msg(!WIFEXITED(srv[1]->status) || WEXITSTATUS(srv[1]->status) != 0,
                "the fenced server exited 0");
  expect_log(&c, srv[1]->log, "fenced: declared dead at epoch", 1);
  js = status_json(&c, "psctl_after_pause");
  ck_assert_int_eq(count(js, "\"state\":\"dead\""), 2);
  snprintf(want, sizeof(want), "\"server_id\":%u,", id1);
  ck_assert_msg(strstr(js, want) == NULL, "fenced server owns a range: %s", js);
  ck_assert_msg(count(js, "\"state\":\"unavailable\"") == 0, "%s", js);
  free(js);

  /* The worker finishes; everyone still alive exits 0. */
  h_workers_sync();
  ck_assert(h_workers_reap(30000));
  h_proc_t *rest[] = {sched, srv[2], spare};
  char why[256];
  for (int i = 0; i < 3; i++)
    ck_assert_msg(h_wait_exit0(&c, rest[i], 30000, why, sizeof(why)), "%s",
                  why);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("failover_scheduler");
  TCase *tc = tcase_create("failover_scheduler");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, server_killed_paused_and_replaced);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
