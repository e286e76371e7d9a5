/* chaos.repl_batch: pushes that come while a range's backups have yet to
 * answer go to them together (REPL_PUSHES, issue #15), and a backup that
 * replayed them holds exactly what its primary did.
 *
 * 2 servers (ASP, replication 2), one client keeping 8 pushes of 1.0 to
 * every counter in flight (OPT_ADD: w += g exactly) for N pushes. Every
 * counter then reads N. The primary of range 0 is SIGKILLed: its backup
 * takes over with what it replayed, and every counter still reads N. The
 * survivor's statistics say it forwarded its pushes to its backup in
 * fewer messages than pushes. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ps/client.h"
#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define SERVERS 2
#define KEYS 4096
#define PUSHES 400
#define WINDOW 8

static char g_result[700];
#define result(...) chaos_append(g_result, __VA_ARGS__)

/* 1 if every counter reads want. */
static int counters_are(ps_client_t *c, float want, const char *when) {
  static float w[KEYS];
  int rc = ps_client_pull(c, 0, KEYS, w, 0);
  if (rc != PS_OK) {
    result("%s: pull failed: %s\n", when, ps_client_errmsg(c));
    return 0;
  }
  for (int i = 0; i < KEYS; i++)
    if (w[i] != want) {
      result("%s: counter %d reads %g, not %g\n", when, i, (double)w[i],
             (double)want);
      return 0;
    }
  return 1;
}

static int client(const char *sched_ep, int rank) {
  char msg[256];
  ps_client_t *c =
      chaos_counter_client(sched_ep, rank, KEYS, 30000, msg, sizeof(msg));
  if (c == NULL) {
    result("client: %s\n", msg);
    for (int i = 0; i < 3; i++) h_worker_sync(rank);
    return 1;
  }
  static float ones[KEYS] __attribute__((aligned(64)));
  for (int i = 0; i < KEYS; i++) ones[i] = 1.0f;
  int ok = h_worker_sync(rank);
  uint64_t ticket[WINDOW];
  for (int i = 0; ok && i < PUSHES + WINDOW; i++) {
    if (i >= WINDOW && ps_client_wait(c, ticket[i % WINDOW]) != PS_OK) {
      result("push %d failed: %s\n", i - WINDOW, ps_client_errmsg(c));
      ok = 0;
    }
    if (ok && i < PUSHES &&
        ps_client_push_start(c, 0, KEYS, ones, (uint64_t)i,
                             &ticket[i % WINDOW]) != PS_OK) {
      result("push %d did not start: %s\n", i, ps_client_errmsg(c));
      ok = 0;
    }
  }
  ok = ok && counters_are(c, PUSHES, "after the pushes");
  /* The test kills the primary of range 0 between these two. */
  ok = h_worker_sync(rank) && ok;
  ok = h_worker_sync(rank) && ok;
  ok = ok && counters_are(c, PUSHES, "after the failover");
  ps_client_destroy(&c);
  return ok ? 0 : 1;
}

/* The value of key=N in the last line of log holding it, or -1. */
static long long stat_of(const char *log, const char *key) {
  char *d = h_read_file(log, NULL);
  if (d == NULL) return -1;
  long long v = -1;
  for (const char *p = strstr(d, key); p; p = strstr(p + 1, key))
    v = atoll(p + strlen(key));
  free(d);
  return v;
}

START_TEST(coalesced_pushes_replay_exactly) {
  h_cluster_t c;
  h_init(&c, "chaos_repl_batch");
  snprintf(g_result, sizeof(g_result), "%s", h_path(&c, "result.txt"));
  chaos_server_t srv[SERVERS];
  ck_assert_msg(chaos_job_start(&c, srv, SERVERS, 1, client),
                "the client did not connect");
  char why[256] = "";
  if (!h_wait_replicated(&c, 2, 20000, why, sizeof(why))) {
    h_dump_logs(&c);
    ck_abort_msg("not replicated within 20 s: %s", why);
  }
  /* chaos_job_start took the first sync; this one: the pushes are done. */
  ck_assert(h_workers_sync_timeout(120000));
  unsigned primary;
  int sp =
      chaos_kill_primary_slot(&c, srv, SERVERS, &primary, why, sizeof(why));
  ck_assert_msg(sp >= 0, "%s", why);
  ck_assert(h_workers_sync_timeout(30000));
  int all = h_wait_all(&c, 60000);
  char *res = h_read_file(g_result, NULL);
  if (res) fprintf(stderr, "%s", res);
  int failed = res != NULL && res[0] != '\0';
  free(res);
  if (!all || failed) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "the job did not end");
  ck_assert_msg(!failed, "the client failed (above)");
  const h_proc_t *survivor = srv[1 - sp].proc;
  long long pushes = stat_of(survivor->log, "forwarded_pushes=");
  long long msgs = stat_of(survivor->log, "forward_messages=");
  printf("repl_batch: the survivor forwarded %lld pushes in %lld messages\n",
         pushes, msgs);
  ck_assert_msg(pushes >= PUSHES, "forwarded %lld pushes, sent %d", pushes,
                PUSHES);
  ck_assert_msg(msgs > 0 && msgs < pushes,
                "%lld pushes went in %lld messages: none coalesced", pushes,
                msgs);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_repl_batch");
  TCase *tc = tcase_create("repl_batch");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, coalesced_pushes_replay_exactly);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
