/* A snapshot stream of ranges bigger than one message: 3 servers,
 * replication 2, a 100 MB model of counters (OPT_ADD), so every range is
 * about 33 MB and its weights go to a new backup in two chunk messages of
 * 32 zero-copy block frames. The client pushes v; the primary of range 0
 * is killed, the survivors fill new backups by snapshot; the client pushes
 * v again; then the range's new primary is killed too, so range 0 is
 * served by a copy that came whole from a snapshot plus one replicated
 * push. Every counter must be exactly 2 v. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chaos.h"
#include "common/err.h"
#include "tests/check_run.h"

#define SERVERS 3
/* 3 ranges of about 8.4 M keys: more than 32 blocks of 256 Ki keys. */
#define KEYS (SERVERS * 8400000ull)

static float *g_v;

static int client(const char *sched_ep, int rank) {
  char msg[256];
  ps_client_t *c =
      chaos_counter_client(sched_ep, rank, KEYS, 60000, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "big_snapshot client: %s\n", msg);
    for (int i = 0; i < 4; i++) h_worker_sync(rank);
    return 1;
  }
  int ok = h_worker_sync(rank);
  ok = ok && ps_client_push(c, 0, KEYS, g_v, 0) == PS_OK;
  ok = h_worker_sync(rank) && ok; /* the test kills a primary here */
  ok = h_worker_sync(rank) && ok;
  ok = ok && ps_client_push(c, 0, KEYS, g_v, 1) == PS_OK;
  ok = h_worker_sync(rank) && ok; /* ... and its successor here */
  ok = h_worker_sync(rank) && ok;
  float *out = ok ? malloc(KEYS * sizeof(float)) : NULL;
  ok = out && ps_client_pull(c, 0, KEYS, out, 0) == PS_OK;
  uint64_t bad = 0, first = 0;
  for (uint64_t k = 0; ok && k < KEYS; k++)
    if (out[k] != 2.0f * g_v[k] && bad++ == 0) first = k;
  if (!ok) fprintf(stderr, "big_snapshot client: %s\n", ps_client_errmsg(c));
  if (bad)
    fprintf(stderr,
            "big_snapshot: %" PRIu64 " counters wrong, first key %" PRIu64
            ": %g, expected %g\n",
            bad, first, (double)out[first], 2.0 * g_v[first]);
  free(out);
  ps_client_destroy(&c);
  return ok && bad == 0 ? 0 : 1;
}

/* Kills the primary of range 0 and waits until every range has its two
 * copies in step again (or, with no spare left, until the range is
 * served). */
static void kill_primary(h_cluster_t *c, chaos_server_t *srv, int replicated) {
  unsigned primary, backup;
  ck_assert(chaos_range_holders(c, 0, &primary, &backup));
  char *js = h_status_json(c, 2000);
  ck_assert_ptr_nonnull(js);
  int slot = chaos_server_slot(srv, SERVERS, js, primary);
  free(js);
  ck_assert(slot >= 0);
  kill(srv[slot].proc->pid, SIGKILL);
  h_wait_exit(srv[slot].proc, 5000);
  ck_assert(h_wait_node_state(c, srv[slot].address, "dead", 10000));
  char why[256] = "";
  if (replicated && !h_wait_replicated(c, 2, 60000, why, sizeof(why))) {
    h_dump_logs(c);
    ck_abort_msg("not re-replicated within 60 s: %s", why);
  }
  printf("big_snapshot: killed server %u, the primary of range 0\n", primary);
  fflush(stdout);
}

START_TEST(big_ranges_stream_in_chunks) {
  g_v = malloc(KEYS * sizeof(float));
  ck_assert_ptr_nonnull(g_v);
  for (uint64_t k = 0; k < KEYS; k++) g_v[k] = (float)(k % 1021) + 0.5f;
  h_cluster_t c;
  h_init(&c, "chaos_big_snapshot");
  chaos_server_t srv[SERVERS];
  /* A server fills its two 33.6 MB ranges on its loop when it adopts the
   * first view, for most of a second on our 2-core machines: it keeps
   * heartbeating from the fill (ps_member_keepalive), so the scheduler's
   * default timeout (400 ms) holds, and no server is declared dead. */
  ck_assert_msg(chaos_job_start(&c, srv, SERVERS, 1, client),
                "the client did not connect");
  ck_assert(h_workers_sync_timeout(60000)); /* first push acked */
  kill_primary(&c, srv, 1);
  ck_assert(h_workers_sync_timeout(60000));
  ck_assert(h_workers_sync_timeout(60000)); /* second push acked */
  kill_primary(&c, srv, 0);
  ck_assert(h_workers_sync_timeout(60000));
  int ok = h_workers_reap(120000);
  /* The snapshots really came in more than one chunk of weights. */
  int chunked = 0;
  for (int i = 0; i < SERVERS; i++) {
    char name[32];
    snprintf(name, sizeof(name), "server%d.log", i);
    char *log = h_read_file(h_path(&c, name), NULL);
    if (log && strstr(log, "event=snapshot_sent") && strstr(log, " chunks=2 "))
      chunked = 1;
    free(log);
  }
  if (!ok || !chunked) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(chunked, "no snapshot was sent in 2 chunks");
  free(g_v);
  ck_assert_msg(ok, "counters after two failovers are not exactly 2 v");
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_big_snapshot");
  TCase *tc = tcase_create("big_snapshot");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, big_ranges_stream_in_chunks);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
