/* chaos.reshard: servers join and leave a running job (issue #16, elastic
 * re-sharding; scheduler/placement.h ps_place_next_step).
 *
 * The key space is cut into 12 ranges (--ranges 12), two copies each, on
 * 2 servers. While the job runs, a third and a fourth server start with
 * --join: copies move to them one at a time (each synced from its primary
 * before the old one is dropped, a primary handed over in step first when
 * its copy is the one to go) until each of the 4 holds 6 copies and leads
 * 3 ranges. Then `psctl remove-server` takes one away the same way: the
 * other 3 hold 8 and lead 4 each, and the removed server exits 0.
 *
 *  - ledger: 2 counter-ledger workers (tests/chaos/chaos.h) push to dense
 *    keys and sparse rows in ASP throughout: at the end every counter
 *    equals its worker's acked pushes exactly (none lost, none doubled)
 *    and no call failed;
 *  - train: the MLP on Fashion-MNIST in BSP, 2 workers, a fixed number of
 *    steps, once undisturbed and once through the same changes: the final
 *    weights (--dump-weights) are bitwise equal.
 * Both runs assert that nothing failed over: every move was planned. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define RANGES 12
#define WORKERS 2
#define KEYS (RANGES * 64)
#define SPARSE_ROWS 32
#define MOVE_MS 90000
/* Longer than the default (400 ms): these tests assert that nothing failed
 * over, and a loaded machine may stall a daemon that long. */
#define HB_TIMEOUT_MS "2000"

/* Starts a server in slot i that joins the running job (ps-server
 * --join). */
static void start_joining(h_cluster_t *c, chaos_server_t *s, int i) {
  char name[32];
  snprintf(name, sizeof(name), "server%d", i);
  snprintf(s->address, sizeof(s->address), "tcp://127.0.0.1:%d", h_free_port());
  s->proc = h_spawn(c, name, "ps-server", "--scheduler", c->sched_ep, "--bind",
                    s->address, "--join", NULL);
  s->starts++;
}

/* Whether psctl status shows nranges ranges of per_range copies each, none
 * syncing, and n servers each holding copies copies and leading leads
 * ranges (-1: any number). why says what is still off. */
static int shared_out_of(h_cluster_t *c, int nranges, int per_range, int n,
                         int copies, int leads, char *why, size_t len) {
  char *js = h_status_json(c, 3000);
  if (js == NULL) {
    snprintf(why, len, "psctl status failed");
    return 0;
  }
  h_range_t r[RANGES + 1];
  int nr = h_status_ranges(js, r, RANGES + 1);
  free(js);
  if (nr != nranges) {
    snprintf(why, len, "%d ranges in the status", nr);
    return 0;
  }
  unsigned ids[16];
  int held[16], led[16], nids = 0;
  for (int i = 0; i < nr; i++) {
    if (r[i].nbackups + 1 != per_range || r[i].nsyncing != 0) {
      snprintf(why, len, "range [%llu,%llu) has %d backups, %d syncing",
               r[i].begin, r[i].end, r[i].nbackups, r[i].nsyncing);
      return 0;
    }
    unsigned chain[2] = {r[i].server_id, r[i].backups[0]};
    for (int k = 0; k < per_range; k++) {
      int j = 0;
      while (j < nids && ids[j] != chain[k]) j++;
      if (j == nids) {
        if (nids == 16) return 0;
        ids[nids] = chain[k];
        held[nids] = led[nids] = 0;
        nids++;
      }
      held[j]++;
      led[j] += k == 0;
    }
  }
  if (nids != n) {
    snprintf(why, len, "%d servers hold copies, not %d", nids, n);
    return 0;
  }
  for (int j = 0; j < nids; j++)
    if (held[j] != copies || (leads >= 0 && led[j] != leads)) {
      snprintf(why, len, "server %u holds %d copies and leads %d", ids[j],
               held[j], led[j]);
      return 0;
    }
  return 1;
}

static int wait_shared_out_of(h_cluster_t *c, int nranges, int per_range, int n,
                              int copies, int leads, char *why, size_t len) {
  uint64_t end = h_deadline_ms(MOVE_MS);
  for (;;) {
    if (shared_out_of(c, nranges, per_range, n, copies, leads, why, len))
      return 1;
    if (h_now_ms() > end) return 0;
    h_sleep_ms(50);
  }
}

/* The same for the RANGES ranges of two copies of the moves below. */
static int wait_shared_out(h_cluster_t *c, int n, int copies, int leads,
                           char *why, size_t len) {
  return wait_shared_out_of(c, RANGES, 2, n, copies, leads, why, len);
}

/* Grows the job on c from 2 to 4 servers and shrinks it to 3 (srv[1]
 * removed). Returns 1, or 0 with why. */
static int grow_and_shrink(h_cluster_t *c, chaos_server_t *srv, char *why,
                           size_t len) {
  char off[256] = "";
  start_joining(c, &srv[2], 2);
  if (!wait_shared_out(c, 3, 8, 4, off, sizeof(off))) {
    snprintf(why, len, "3 servers did not share the ranges: %s", off);
    return 0;
  }
  start_joining(c, &srv[3], 3);
  if (!wait_shared_out(c, 4, 6, 3, off, sizeof(off))) {
    snprintf(why, len, "4 servers did not share the ranges: %s", off);
    return 0;
  }
  printf("  4 servers: 6 copies and 3 primaries each\n");
  int status = -1;
  char *out = h_run(c, (int)(MOVE_MS * 1.2), &status, "psctl", "--scheduler",
                    c->sched_ep, "--wait-ms", "90000", "remove-server",
                    srv[1].address, NULL);
  printf("  psctl remove-server %s: %s", srv[1].address, out ? out : "\n");
  free(out);
  if (status != 0) {
    snprintf(why, len, "psctl remove-server exited with status %d", status);
    return 0;
  }
  if (!h_wait_exit(srv[1].proc, 20000) || !WIFEXITED(srv[1].proc->status) ||
      WEXITSTATUS(srv[1].proc->status) != 0) {
    snprintf(why, len, "the removed server did not exit 0 (status %d)",
             srv[1].proc->status);
    return 0;
  }
  if (!wait_shared_out(c, 3, 8, 4, off, sizeof(off))) {
    snprintf(why, len, "after the removal: %s", off);
    return 0;
  }
  printf("  3 servers: 8 copies and 4 primaries each\n");
  return 1;
}

/* Nothing failed over: every move was a planned one. */
static void expect_no_failover(const h_proc_t *sched) {
  ck_assert_msg(!h_wait_log(sched->log, "event=node_dead", 1),
                "a node was declared dead");
  ck_assert_msg(!h_wait_log(sched->log, "event=handover_abandoned", 1),
                "a handover was abandoned");
  ck_assert_msg(h_wait_log(sched->log, "event=copy_added", 1) &&
                    h_wait_log(sched->log, "event=copy_dropped", 1),
                "no copy moved");
}

/* ps-scheduler's --rebalance for the next servers_start. */
static const char *rebalance = "--rebalance=true";

/* The scheduler (mode, nservers servers expected, workers workers, ranges
 * ranges of copies copies each) and nservers servers in srv, on c (which
 * h_init set up). Returns the scheduler. */
static h_proc_t *servers_start(h_cluster_t *c, const char *mode,
                               chaos_server_t *srv, int nservers,
                               const char *workers, const char *ranges,
                               const char *copies) {
  char n[16];
  snprintf(n, sizeof(n), "%d", nservers);
  h_proc_t *sched = h_spawn(
      c, "scheduler", "ps-scheduler", "--heartbeat-timeout-ms", HB_TIMEOUT_MS,
      "--bind", c->sched_ep, "--servers", n, "--workers", workers, "--mode",
      mode, "--ranges", ranges, "--replication", copies, rebalance, NULL);
  memset(srv, 0, (size_t)nservers * sizeof(*srv));
  for (int i = 0; i < nservers; i++)
    chaos_server_start(c, &srv[i], i, "server", "127.0.0.1", NULL);
  return sched;
}

START_TEST(ledger_exactly_once_through_reshards) {
  h_cluster_t c;
  h_init(&c, "chaos_reshard_ledger");
  chaos_ledger_setup(c.dir, WORKERS, KEYS, 240);
  chaos_ledger_sparse(SPARSE_ROWS);
  chaos_server_t srv[4];
  memset(srv, 0, sizeof(srv));
  h_proc_t *sched = servers_start(&c, "asp", srv, 2, "2", "12", "2");
  h_workers_start(&c, WORKERS, chaos_ledger_worker);
  char why[512] = "";
  int ok = h_workers_sync_timeout(60000);
  if (!ok) snprintf(why, sizeof(why), "the workers did not connect in 60 s");
  if (ok) {
    h_sleep_ms(300); /* some pushes before the first move */
    ok = grow_and_shrink(&c, srv, why, sizeof(why));
  }
  chaos_ledger_result_t res;
  char lwhy[512] = "";
  if (!chaos_ledger_finish(-1, &res, lwhy, sizeof(lwhy)) && ok) {
    snprintf(why, sizeof(why), "%s", lwhy);
    ok = 0;
  }
  printf("reshard ledger: pushes acked %" PRIu64 " (w0 %" PRIu64 ", w1 %" PRIu64
         "): %s%s%s\n",
         res.total_acked, res.acked[0], res.acked[1], ok ? "HOLDS" : "FAILED",
         ok ? "" : ": ", ok ? "" : why);
  fflush(stdout);
  if (!ok) h_dump_logs(&c);
  ck_assert_msg(ok, "%s", why);
  ck_assert_uint_gt(res.total_acked, 0);
  expect_no_failover(sched);
  h_wait_all(&c, 10000);
  h_kill_all(&c);
}
END_TEST

/* One BSP training run of steps steps; disturb: grow and shrink the
 * servers on the way. The weights go to dump. */
static void train(const char *tag, int disturb, const char *steps, char *dump,
                  size_t dumplen) {
  h_cluster_t c;
  h_init(&c, tag);
  snprintf(dump, dumplen, "%s", h_path(&c, "weights.bin"));
  chaos_server_t srv[4];
  memset(srv, 0, sizeof(srv));
  h_proc_t *sched = servers_start(&c, "bsp", srv, 2, "2", "12", "2");
  /* 3 ms a step keeps the run long enough for every move. */
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--max-steps", steps, "--step-delay-ms",
                         "3", "--progress-ms", "200", "--dump-weights", dump,
                         "--eval-every-epoch=false", NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank", "1",
          "--max-steps", steps, "--step-delay-ms", "3",
          "--eval-every-epoch=false", NULL);
  char why[512] = "";
  if (disturb) {
    uint64_t end = h_deadline_ms(60000);
    while (h_now_ms() < end && !w0->exited &&
           h_progress_step(w0->log, NULL) < 100)
      h_sleep_ms(20);
    ck_assert_msg(h_progress_step(w0->log, NULL) >= 100,
                  "%s: training did not start", tag);
    int ok = grow_and_shrink(&c, srv, why, sizeof(why));
    if (!ok) h_dump_logs(&c);
    ck_assert_msg(ok, "%s: %s", tag, why);
    ck_assert_msg(!w0->exited,
                  "%s: the run ended before the servers were moved: make "
                  "it longer",
                  tag);
    printf("  %s: the moves ended at step %lu\n", tag,
           h_progress_step(w0->log, NULL));
  }
  int all = h_wait_all_exit0(&c, 0, 300000, why, sizeof(why));
  h_kill_all(&c);
  ck_assert_msg(all, "%s: %s", tag, why);
  if (disturb) expect_no_failover(sched);
}

START_TEST(bsp_weights_equal_undisturbed) {
  const char *steps = "2500";
  char calm[512], moved[512];
  train("chaos_reshard_calm", 0, steps, calm, sizeof(calm));
  train("chaos_reshard_moved", 1, steps, moved, sizeof(moved));
  size_t na = 0, nb = 0;
  char *a = h_read_file(calm, &na);
  char *b = h_read_file(moved, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_gt(na, 0);
  ck_assert_uint_eq(na, nb);
  size_t first = na;
  for (size_t i = 0; i < na && first == na; i++)
    if (a[i] != b[i]) first = i;
  printf("reshard train: %zu weights, %s\n", na / sizeof(float),
         first == na ? "bitwise equal to the undisturbed run"
                     : "DIFFERENT from the undisturbed run");
  fflush(stdout);
  ck_assert_msg(first == na,
                "the weights differ from the undisturbed run's from key %zu",
                first / sizeof(float));
  free(a);
  free(b);
}
END_TEST

/* psctl SERVER-command against c's scheduler: the waitpid status, what it
 * printed into out (caller frees). */
static int psctl(h_cluster_t *c, const char *cmd, const char *server,
                 char **out) {
  int status = -1;
  *out = h_run(c, (int)(MOVE_MS * 1.2), &status, "psctl", "--scheduler",
               c->sched_ep, "--wait-ms", "90000", cmd, server, NULL);
  printf("  psctl %s %s: %s", cmd, server, *out ? *out : "(no output)\n");
  fflush(stdout);
  return status;
}

static int exited_with(const h_proc_t *p, int code) {
  return WIFEXITED(p->status) && WEXITSTATUS(p->status) == code;
}

/* An ASP job on c: nservers servers in srv on ranges ranges of copies
 * copies, and one ps-worker training the MLP for long. Returns the
 * worker. */
static h_proc_t *asp_job_start(h_cluster_t *c, const char *tag,
                               chaos_server_t *srv, int nservers,
                               const char *ranges, const char *copies) {
  h_init(c, tag);
  servers_start(c, "asp", srv, nservers, "1", ranges, copies);
  return h_spawn(c, "worker0", "ps-worker", "--scheduler", c->sched_ep,
                 "--rank", "0", "--epochs", "100", "--progress-ms", "200",
                 "--eval-every-epoch=false", NULL);
}

/* Ends it: the worker leaves (SIGTERM), every process exits, the worker
 * with 0 (no call of its failed). */
static void asp_job_end(h_cluster_t *c, h_proc_t *w) {
  kill(w->pid, SIGTERM);
  int all = h_wait_all(c, 60000);
  if (!all) h_dump_logs(c);
  h_kill_all(c);
  ck_assert(all);
  ck_assert(exited_with(w, 0));
}

/* 3 servers on 6 ranges of two copies as the first view shares them out;
 * then srv[2] is SIGKILLed, declared dead and started again in its place. */
static void third_killed_and_restarted(h_cluster_t *c, chaos_server_t *srv) {
  char why[512] = "";
  ck_assert_msg(wait_shared_out_of(c, 6, 2, 3, 4, 2, why, sizeof(why)),
                "the first view: %s", why);
  kill(srv[2].proc->pid, SIGKILL);
  h_wait_exit(srv[2].proc, 5000);
  ck_assert(h_wait_node_state(c, srv[2].address, "dead", 10000));
  chaos_server_start(c, &srv[2], 2, "server", "127.0.0.1", NULL);
}

/* psctl add-server s is refused: it takes its share already. */
static void add_refused(h_cluster_t *c, const chaos_server_t *s) {
  char *out = NULL;
  int st = psctl(c, "add-server", s->address, &out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1 && out &&
                    strstr(out, "takes its share already"),
                "add-server was not refused (status %d)", st);
  free(out);
}

/* With --rebalance=false a server in a dead one's place is a spare: it
 * takes its share only when psctl add-server names it; a server that takes
 * its share already is refused. 3 servers on 6 ranges of two copies: one
 * is SIGKILLed and a fresh server takes its place as a spare, which gets
 * nothing (every chain has its two copies on the survivors) until
 * add-server: then each of the 3 holds 4 copies (primaries move only with
 * --rebalance). */
START_TEST(add_server_gives_a_spare_its_share) {
  h_cluster_t c;
  chaos_server_t srv[3];
  rebalance = "--rebalance=false";
  h_proc_t *w = asp_job_start(&c, "chaos_reshard_add", srv, 3, "6", "2");
  rebalance = "--rebalance=true";
  third_killed_and_restarted(&c, srv);
  ck_assert(h_wait_node_state(&c, srv[2].address, "alive", 10000));
  char why[512] = "";
  /* The survivors hold both copies of every range; the spare none. */
  ck_assert_msg(wait_shared_out_of(&c, 6, 2, 2, 6, -1, why, sizeof(why)),
                "after the kill: %s", why);
  char *js = h_status_json(&c, 3000);
  ck_assert_ptr_nonnull(js);
  ck_assert_msg(strstr(js, "\"active\":false") != NULL,
                "the spare is not shown as one: %s", js);
  free(js);
  char *out = NULL;
  int st = psctl(&c, "add-server", srv[2].address, &out);
  ck_assert_msg(st == 0 && out && strstr(out, "added server"),
                "psctl add-server failed (status %d)", st);
  free(out);
  ck_assert_msg(shared_out_of(&c, 6, 2, 3, 4, -1, why, sizeof(why)),
                "after add-server answered: %s", why);
  add_refused(&c, &srv[2]); /* once more */
  asp_job_end(&c, w);
  ck_assert(exited_with(srv[2].proc, 0));
}
END_TEST

/* With --rebalance (the default) the server that takes a dead one's place
 * takes its share by itself: the same kill and restart as above end with
 * each of the 3 holding 4 copies and leading 2, with no psctl, and
 * add-server is refused (it takes its share already). */
START_TEST(restarted_server_takes_its_share) {
  h_cluster_t c;
  chaos_server_t srv[3];
  h_proc_t *w = asp_job_start(&c, "chaos_reshard_back", srv, 3, "6", "2");
  third_killed_and_restarted(&c, srv);
  char why[512] = "";
  ck_assert_msg(wait_shared_out_of(&c, 6, 2, 3, 4, 2, why, sizeof(why)),
                "after the restart: %s", why);
  add_refused(&c, &srv[2]);
  asp_job_end(&c, w);
  ck_assert(exited_with(srv[2].proc, 0));
}
END_TEST

/* With one copy per range, psctl drain is refused (it would lose the
 * ranges the server leads) but remove-server copies them first. */
START_TEST(remove_server_with_one_copy) {
  h_cluster_t c;
  chaos_server_t srv[2];
  h_proc_t *w = asp_job_start(&c, "chaos_reshard_r1", srv, 2, "4", "1");
  char why[512] = "";
  ck_assert_msg(wait_shared_out_of(&c, 4, 1, 2, 2, 2, why, sizeof(why)),
                "the first view: %s", why);
  char *out = NULL;
  int st = psctl(&c, "drain", srv[1].address, &out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1 && out &&
                    strstr(out, "remove-server copies it first"),
                "drain with one copy was not refused (status %d)", st);
  free(out);
  st = psctl(&c, "remove-server", srv[1].address, &out);
  ck_assert_msg(st == 0 && out && strstr(out, "removed server"),
                "psctl remove-server failed (status %d)", st);
  free(out);
  ck_assert(h_wait_exit(srv[1].proc, 20000));
  ck_assert_msg(exited_with(srv[1].proc, 0), "the removed server: status %d",
                srv[1].proc->status);
  ck_assert_msg(wait_shared_out_of(&c, 4, 1, 1, 4, 4, why, sizeof(why)),
                "after remove-server: %s", why);
  /* The worker went on: more progress after the removal. */
  unsigned long step = h_progress_step(w->log, NULL);
  uint64_t end = h_deadline_ms(20000);
  while (h_now_ms() < end && h_progress_step(w->log, NULL) <= step + 10)
    h_sleep_ms(50);
  ck_assert_uint_gt(h_progress_step(w->log, NULL), step + 10);
  asp_job_end(&c, w);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_reshard");
  TCase *tc = tcase_create("reshard");
  tcase_set_timeout(tc, 400);
  tcase_add_test(tc, ledger_exactly_once_through_reshards);
  tcase_add_test(tc, bsp_weights_equal_undisturbed);
  tcase_add_test(tc, add_server_gives_a_spare_its_share);
  tcase_add_test(tc, restarted_server_takes_its_share);
  tcase_add_test(tc, remove_server_with_one_copy);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
