/* chaos.no_hang: with every server that holds a range dead, a client gets a
 * clear error within its deadline instead of blocking (ARCHITECTURE
 * "Failure semantics"; worker/client/include/ps/client.h: "A client never
 * hangs").
 *
 * 3 servers, replication 2: range 0 lives on its primary and one backup.
 * The test kills both (SIGKILL) and waits until the scheduler has declared
 * them dead; the scheduler has no replica to promote and leaves the range
 * on its dead primary. A client with a 2 s deadline then pushes to and
 * pulls from range 0: each call must fail with PS_ERR_UNAVAILABLE (naming
 * the keys and the dead server) or PS_ERR_TIMEOUT, no earlier than 100 ms
 * before and no later than 500 ms after its deadline. A push to a range
 * the third server still holds succeeds: the rest of the cluster serves on. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/err.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"
#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define SERVERS 3
#define KEYS (SERVERS * 64)
#define DEADLINE_MS 2000
#define EARLY_MS 100
#define SLACK_MS 500

static char g_result[700];

/* One call on the lost range: 1 if it failed in time with a clear error. */
static int lost_call(ps_client_t *c, int push, float *buf) {
  uint64_t t0 = h_now_ms();
  int rc = push ? ps_client_push(c, 0, 16, buf, 1)
                : ps_client_pull(c, 0, 16, buf, 0);
  uint64_t took = h_now_ms() - t0;
  const char *msg = ps_client_errmsg(c);
  int in_time =
      took + EARLY_MS >= DEADLINE_MS && took <= DEADLINE_MS + SLACK_MS;
  int clear = rc == PS_ERR_UNAVAILABLE
                  ? strstr(msg, "[0, ") != NULL && strstr(msg, "dead") != NULL
                  : rc == PS_ERR_TIMEOUT;
  chaos_append(g_result,
               "%s of the lost range: %s after %" PRIu64
               " ms (deadline %d ms): %s\n",
               push ? "push" : "pull", ps_err_name(rc), took, DEADLINE_MS, msg);
  return in_time && clear;
}

static int client(const char *sched_ep, int rank) {
  char msg[256];
  ps_client_t *c =
      chaos_counter_client(sched_ep, rank, KEYS, DEADLINE_MS, msg, sizeof(msg));
  if (c == NULL) {
    chaos_append(g_result, "client: %s\n", msg);
    h_worker_sync(rank);
    h_worker_sync(rank);
    h_worker_sync(rank);
    return 1;
  }
  float buf[16];
  for (int i = 0; i < 16; i++) buf[i] = 1.0f;
  int ok = h_worker_sync(rank) &&
           ps_client_push(c, 0, KEYS, (float[KEYS]){0}, 0) == PS_OK;
  /* Every range served once; then the test kills both holders of range 0
   * between these two. */
  ok = h_worker_sync(rank) && ok;
  ok = h_worker_sync(rank) && ok;
  ok = lost_call(c, 1, buf) && ok;
  ok = lost_call(c, 0, buf) && ok;
  /* A range whose primary is alive: served as before. */
  const ps_view_t *v = ps_client_view(c);
  int served = -1;
  for (size_t r = 0; r < v->nranges && served < 0; r++) {
    const ps_node_t *n = ps_view_node(v, v->ranges[r].server_id);
    if (n && n->state == PS__NODE_STATE__NODE_STATE_ALIVE) served = (int)r;
  }
  if (served < 0) {
    chaos_append(g_result,
                 "no range has an alive primary in view epoch %" PRIu64 "\n",
                 v->epoch);
    ok = 0;
  } else {
    uint64_t begin = v->ranges[served].begin;
    uint64_t t0 = h_now_ms();
    int rc = ps_client_push(c, begin, 16, buf, 2);
    chaos_append(g_result,
                 "push to range %d [%" PRIu64
                 ", ...) on alive server %u: %s "
                 "after %" PRIu64 " ms %s\n",
                 served, begin, v->ranges[served].server_id, ps_err_name(rc),
                 h_now_ms() - t0, rc == PS_OK ? "" : ps_client_errmsg(c));
    ok = rc == PS_OK && ok;
  }
  ps_client_destroy(&c);
  return ok ? 0 : 1;
}

START_TEST(lost_range_fails_within_deadline) {
  h_cluster_t c;
  h_init(&c, "chaos_no_hang");
  snprintf(g_result, sizeof(g_result), "%s", h_path(&c, "result.txt"));
  chaos_server_t srv[SERVERS];
  ck_assert_msg(chaos_job_start(&c, srv, SERVERS, 1, client),
                "the client did not connect");
  char why[256] = "";
  if (!h_wait_replicated(&c, 2, 20000, why, sizeof(why))) {
    h_dump_logs(&c);
    ck_abort_msg("not replicated within 20 s: %s", why);
  }
  /* The client's first push is answered before anything is killed. */
  ck_assert(h_workers_sync_timeout(10000));
  unsigned primary, backup;
  ck_assert(chaos_range_holders(&c, 0, &primary, &backup));
  ck_assert_msg(backup != UINT32_MAX, "range 0 has no backup");
  char *js = h_status_json(&c, 2000);
  ck_assert_ptr_nonnull(js);
  int sp = chaos_server_slot(srv, SERVERS, js, primary);
  int sb = chaos_server_slot(srv, SERVERS, js, backup);
  free(js);
  ck_assert(sp >= 0 && sb >= 0);
  kill(srv[sp].proc->pid, SIGKILL);
  kill(srv[sb].proc->pid, SIGKILL);
  h_wait_exit(srv[sp].proc, 5000);
  h_wait_exit(srv[sb].proc, 5000);
  int dead = h_wait_node_state(&c, srv[sp].address, "dead", 10000) &&
             h_wait_node_state(&c, srv[sb].address, "dead", 10000);
  if (!dead) h_dump_logs(&c);
  ck_assert_msg(dead, "servers %u and %u were not declared dead in 10 s",
                primary, backup);
  printf(
      "no_hang: killed server %u (primary of range 0) and %u (its "
      "backup)\n",
      primary, backup);
  ck_assert(h_workers_sync_timeout(10000));
  int ok = h_workers_reap(3 * DEADLINE_MS + 10000);
  char *res = h_read_file(g_result, NULL);
  printf("%s", res ? res : "(no result)\n");
  fflush(stdout);
  if (!ok) h_dump_logs(&c);
  h_wait_all(&c, 10000);
  h_kill_all(&c);
  ck_assert_msg(ok, "the client did not fail clearly within its deadline: %s",
                res ? res : "");
  free(res);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_no_hang");
  TCase *tc = tcase_create("no_hang");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, lost_range_fails_within_deadline);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
