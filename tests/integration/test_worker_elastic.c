/* Workers join and leave a running job (issue #16, README "Workers join and
 * leave"): a BSP job of 2 servers (replication 2) and 2 ps-worker
 * processes, started with ps-scheduler --workers 2 --max-workers 3, trains
 * the MLP on Fashion-MNIST. A fifth of the way in, a third worker starts
 * with --join: it takes the new rank 2 and joins at a step the scheduler
 * announces (join_clock). Some steps later, psctl remove-worker takes rank
 * 1 out: the scheduler announces its leave step (leave_clock), and the
 * worker stops before it and exits 0 while the job goes on.
 *
 * Checked: every process exits 0 in time (nobody waits forever for the
 * leaver, and its leave is not a failure to replace); the leaver's report
 * says it ran steps [0, leave_clock) and left; the joiner's that it ran
 * [join_clock, end); every BSP step of every range, as the servers log it
 * (step_applied at debug level), was applied once per copy with the mean
 * of exactly the workers of that step: 2 before join_clock, 3 until
 * leave_clock, 2 after; the final model's test accuracy is sane, and the
 * joiner evaluates the same as rank 0. Along the way, the refusals: psctl
 * remove-worker of a server, and a fourth --join beyond --max-workers.
 * The same in SSP (staleness 2), where workers run ahead of the slowest,
 * and in ASP, where the steps are each worker's own and the servers apply
 * pushes as they come: the same joins, leaves and reports, the servers'
 * steps aside. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

#define EPOCHS "2"
#define RUN_MS 90000
#define HEARTBEAT_TIMEOUT_MS "1000"
/* The 3-worker stretch must hold steps: rank 0 gets this far past the
 * join step before rank 1 is removed. */
#define JOINED_STEPS 20

typedef struct {
  unsigned id;
  unsigned long long clock, join_clock, leave_clock;
  int alive, joining;
  char state[16];
} worker_t;

/* The worker of this rank in a status JSON, the alive one if there is
 * one. Returns 1 if found. */
static int status_worker(const char *json, unsigned rank, worker_t *out) {
  const char *p = json ? strstr(json, "\"nodes\":[") : NULL;
  const char *end = p ? strstr(p, "],\"ranges\"") : NULL;
  int found = 0;
  while (p && end && (p = strchr(p + 1, '{')) != NULL && p < end) {
    const char *q = strchr(p, '}');
    if (q == NULL || q > end) break;
    char obj[1024];
    size_t len = (size_t)(q - p + 1);
    if (len >= sizeof(obj)) len = sizeof(obj) - 1;
    memcpy(obj, p, len);
    obj[len] = '\0';
    if (strstr(obj, "\"role\":\"worker\"") == NULL ||
        h_json_number(obj, "rank") != (double)rank)
      continue;
    int alive = strstr(obj, "\"state\":\"alive\"") != NULL;
    if (found && !alive) continue;
    out->id = (unsigned)h_json_number(obj, "id");
    out->clock = (unsigned long long)h_json_number(obj, "clock");
    out->join_clock = (unsigned long long)h_json_number(obj, "join_clock");
    out->leave_clock = (unsigned long long)h_json_number(obj, "leave_clock");
    out->joining = strstr(obj, "\"joining\":true") != NULL;
    out->alive = alive;
    const char *st = strstr(obj, "\"state\":\"");
    snprintf(out->state, sizeof(out->state), "%.*s",
             st ? (int)strcspn(st + 9, "\"") : 0, st ? st + 9 : "");
    found = 1;
  }
  return found;
}

static int wait_worker(h_cluster_t *c, unsigned rank,
                       int (*ok)(const worker_t *, unsigned long long),
                       unsigned long long arg, int timeout_ms, worker_t *w) {
  uint64_t end = h_deadline_ms(timeout_ms);
  do {
    char *js = h_status_json(c, 2000);
    int got = status_worker(js, rank, w) && ok(w, arg);
    free(js);
    if (got) return 1;
    h_sleep_ms(50);
  } while (h_now_ms() < end);
  return 0;
}

static int clock_at_least(const worker_t *w, unsigned long long clock) {
  return w->alive && w->clock >= clock;
}

static int joined(const worker_t *w, unsigned long long unused) {
  (void)unused;
  return w->alive && !w->joining && w->join_clock > 0;
}

static int has_left(const worker_t *w, unsigned long long unused) {
  (void)unused;
  return strcmp(w->state, "left") == 0;
}

/* The run's epochs: EPOCHS, more in ASP, whose workers run faster than
 * the scheduler's estimate of a second of steps can safely say. */
static const char *epochs = EPOCHS;

static h_proc_t *start_worker(h_cluster_t *c, const char *name, int join,
                              const char *report) {
  return h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--epochs",
                 epochs, "--progress-ms", "200", "--eval-every-epoch=false",
                 "--report", report, join ? "--join" : "--join=false", NULL);
}

static double report_number(h_cluster_t *c, const char *file, const char *key) {
  char *json = h_read_file(h_path(c, file), NULL);
  ck_assert_msg(json != NULL, "%s: no report %s", c->dir, file);
  double v = h_json_number(json, key);
  free(json);
  return v;
}

static int report_left(h_cluster_t *c, const char *file) {
  char *json = h_read_file(h_path(c, file), NULL);
  ck_assert_msg(json != NULL, "%s: no report %s", c->dir, file);
  int left = strstr(json, "\"left\": true") != NULL;
  free(json);
  return left;
}

/* Checks every event=step_applied line of a server's log: the step (clock
 * - 1) was applied with the mean of the workers of that step. Counts per
 * range the distinct steps seen (ranges are told apart by their first
 * key, at most 4). Returns the number of lines checked. */
typedef struct {
  unsigned long long begin[4];
  unsigned char *seen[4];
  int n;
} ranges_seen_t;

static unsigned long check_steps(const char *log, unsigned long total,
                                 unsigned long long join,
                                 unsigned long long leave, ranges_seen_t *rs) {
  char *text = h_read_file(log, NULL);
  ck_assert_msg(text != NULL, "cannot read %s", log);
  unsigned long lines = 0;
  for (char *p = text; (p = strstr(p, "event=step_applied")) != NULL; p++) {
    unsigned long long begin, clock;
    double contributors;
    const char *r = strstr(p, "range=[");
    const char *k = strstr(p, "clock=");
    const char *n = strstr(p, "contributors=");
    const char *eol = strchr(p, '\n');
    ck_assert_msg(r && k && n && (!eol || (n < eol && k < eol && r < eol)),
                  "%s: a step_applied line without range, clock and "
                  "contributors",
                  log);
    begin = strtoull(r + 7, NULL, 10);
    clock = strtoull(k + 6, NULL, 10);
    contributors = strtod(n + 13, NULL);
    ck_assert_msg(clock >= 1 && clock <= total, "%s: clock %llu of %lu", log,
                  clock, total);
    unsigned long long step = clock - 1;
    double want = 2 + (step >= join) - (step >= leave);
    ck_assert_msg(contributors == want,
                  "%s: range at %llu applied step %llu with the mean of %.0f "
                  "workers, the step had %.0f (join %llu, leave %llu)",
                  log, begin, step, contributors, want, join, leave);
    int i = 0;
    while (i < rs->n && rs->begin[i] != begin) i++;
    if (i == rs->n) {
      ck_assert_int_lt(rs->n, 4);
      rs->begin[i] = begin;
      rs->seen[i] = calloc(total, 1);
      ck_assert_ptr_nonnull(rs->seen[i]);
      rs->n++;
    }
    rs->seen[i][step] = 1;
    lines++;
  }
  free(text);
  return lines;
}

/* One run in mode ("bsp", or "ssp" with staleness 2: workers up to 2
 * steps ahead of the slowest, every step still the mean of its workers). */
static void run_elastic(const char *mode) {
  h_cluster_t c;
  char name[64];
  snprintf(name, sizeof(name), "worker_elastic_%s", mode);
  h_init(&c, name);
  uint64_t t0 = h_now_ms(), deadline = h_deadline_ms(RUN_MS);
  int ssp = strcmp(mode, "ssp") == 0;
  epochs = strcmp(mode, "asp") == 0 ? "4" : EPOCHS;
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--max-workers", "3", "--mode", mode,
          "--replication", "2", "--heartbeat-timeout-ms", HEARTBEAT_TIMEOUT_MS,
          /* bsp: the arguments end at the NULL */
          ssp ? "--staleness" : NULL, "2", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, "--log-level",
          "debug", NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, "--log-level",
          "debug", NULL);
  h_proc_t *w0 = start_worker(&c, "worker0", 0, h_path(&c, "report0.json"));
  h_proc_t *w1 = start_worker(&c, "worker1", 0, h_path(&c, "report1.json"));

  unsigned long step = 0, total = 0;
  while (h_now_ms() < deadline && !w0->exited &&
         ((step = h_progress_step(w0->log, &total)) == 0 || step < total / 5))
    h_sleep_ms(20);
  if (total == 0 || step < total / 5) h_dump_logs(&c);
  ck_assert_msg(total > 0 && step >= total / 5,
                "training did not get a fifth of the way (step %lu of %lu)",
                step, total);

  /* A server is no worker to remove. */
  int st;
  char *out = h_run(&c, 10000, &st, "psctl", "--scheduler", c.sched_ep,
                    "remove-worker", "1", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1 &&
                    strstr(out, "node 1 is not a worker") != NULL,
                "psctl remove-worker 1 (a server): status %d, said: %s", st,
                out);
  free(out);

  /* The third worker grows the job: rank 2, at an announced step. */
  h_proc_t *w2 = start_worker(&c, "worker2", 1, h_path(&c, "report2.json"));
  worker_t j = {0};
  int ok = wait_worker(&c, 2, joined, 0, 15000, &j);
  if (!ok) h_dump_logs(&c);
  ck_assert_msg(ok, "the --join worker did not join as rank 2 within 15 s");
  ck_assert_msg(j.join_clock < total && !w2->exited,
                "joined at step %llu of %lu, exited %d", j.join_clock, total,
                w2->exited);

  /* A fourth is beyond --max-workers: refused, the job goes on. */
  h_proc_t *w3 = start_worker(&c, "worker3", 1, h_path(&c, "report3.json"));
  ck_assert_msg(h_wait_exit(w3, 15000), "the fourth --join worker hangs");
  ck_assert_msg(WIFEXITED(w3->status) && WEXITSTATUS(w3->status) != 0,
                "the fourth --join worker exited %d", w3->status);
  ck_assert_msg(h_wait_log(w3->log, "--max-workers=3", 1),
                "the fourth worker's log does not name --max-workers=3");

  /* Rank 1 leaves some steps after the join. */
  worker_t r0 = {0}, r1 = {0};
  ok = wait_worker(&c, 0, clock_at_least, j.join_clock + JOINED_STEPS, 20000,
                   &r0);
  if (!ok) h_dump_logs(&c);
  ck_assert_msg(ok, "rank 0 did not get %d steps past the join step %llu",
                JOINED_STEPS, j.join_clock);
  ck_assert(wait_worker(&c, 1, clock_at_least, 0, 2000, &r1));
  char id[16];
  snprintf(id, sizeof(id), "%u", r1.id);
  out = h_run(&c, 10000, &st, "psctl", "--scheduler", c.sched_ep, "--json",
              "remove-worker", id, NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psctl remove-worker %s: status %d, said: %s", id, st, out);
  unsigned long long leave =
      (unsigned long long)h_json_number(out, "leave_clock");
  free(out);
  ck_assert_msg(leave > r0.clock && leave > j.join_clock,
                "leave step %llu is not past rank 0's step %llu and the "
                "join step %llu",
                leave, r0.clock, j.join_clock);
  ck_assert_msg(leave < total,
                "leave step %llu past the end %lu: the machine is too slow "
                "for this test's margin",
                leave, total);
  /* The process of node r1.id: its log lines carry its node id. */
  char tag[32];
  snprintf(tag, sizeof(tag), " node=%u ", r1.id);
  h_proc_t *leaver = h_wait_log(w1->log, tag, 1) ? w1 : w0;
  ck_assert_msg(h_wait_log(leaver->log, tag, 1), "no worker log has '%s'", tag);
  worker_t gone = {0};
  ok = wait_worker(&c, 1, has_left, 0, 30000, &gone);
  if (!ok) h_dump_logs(&c);
  ck_assert_msg(ok, "rank 1 (node %s) is not shown left within 30 s (%s)", id,
                gone.state);
  ck_assert_msg(gone.leave_clock == leave, "status: leave_clock %llu, not %llu",
                gone.leave_clock, leave);
  ck_assert_msg(h_wait_exit(leaver, 10000) && WIFEXITED(leaver->status) &&
                    WEXITSTATUS(leaver->status) == 0,
                "the removed worker did not exit 0 (status %d)",
                leaver->status);
  printf(
      "worker_elastic %s: rank 2 joined at step %llu, rank 1 (node %s) left "
      "at step %llu, of %lu\n",
      mode, j.join_clock, id, leave, total);
  fflush(stdout);

  int all = h_wait_all_until(&c, deadline);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "the job did not finish within %d s", RUN_MS / 1000);
  for (int i = 0; i < c.nprocs; i++) {
    const h_proc_t *p = &c.procs[i];
    if (p == w3) continue;
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(&c);
      ck_abort_msg("%s did not exit 0 (status %d)", p->name, p->status);
    }
  }
  ck_assert_msg(h_wait_log(h_path(&c, "scheduler.log"), "event=worker_left", 1),
                "the scheduler did not log worker_left");
  ck_assert_msg(!h_wait_log(h_path(&c, "scheduler.log"), "event=node_dead", 1),
                "a node was declared dead");

  /* What each worker says it computed (the first two took ranks 0 and 1
   * in the order they registered). */
  const char *rep0 = "report0.json", *rep1 = "report1.json";
  if (report_number(&c, rep0, "rank") == 1) {
    rep0 = "report1.json";
    rep1 = "report0.json";
  }
  ck_assert_msg(report_number(&c, rep0, "rank") == 0 &&
                    report_number(&c, rep1, "rank") == 1,
                "%s", "the first two workers are not ranks 0 and 1");
  ck_assert_msg(report_left(&c, rep1), "%s",
                "rank 1's report does not say it left");
  ck_assert_msg(!report_left(&c, rep0), "%s", "rank 0's report says it left");
  ck_assert_msg(report_number(&c, rep1, "start_step") == 0 &&
                    report_number(&c, rep1, "steps") == (double)leave,
                "rank 1 ran steps [%.0f, %.0f), want [0, %llu)",
                report_number(&c, rep1, "start_step"),
                report_number(&c, rep1, "steps"), leave);
  ck_assert_msg(
      report_number(&c, "report2.json", "start_step") == (double)j.join_clock &&
          report_number(&c, "report2.json", "steps") == (double)total,
      "rank 2 ran steps [%.0f, %.0f), want [%llu, %lu)",
      report_number(&c, "report2.json", "start_step"),
      report_number(&c, "report2.json", "steps"), j.join_clock, total);
  ck_assert_msg(report_number(&c, "report2.json", "rank") == 2, "%s",
                "the joiner's rank is not 2");
  ck_assert_msg(report_number(&c, rep0, "steps") == (double)total,
                "rank 0 ran %.0f steps of %lu",
                report_number(&c, rep0, "steps"), total);

  if (strcmp(mode, "asp") == 0) {
    /* ASP applies each push as it comes: no steps to check on the servers,
     * and each worker evaluates the weights as they were when it ended. */
    double acc = report_number(&c, rep0, "test_accuracy");
    printf("worker_elastic asp: test_accuracy %.4f; run %.1f s\n", acc,
           (double)(h_now_ms() - t0) / 1000.0);
    fflush(stdout);
    ck_assert_msg(acc >= 0.80, "test accuracy %.4f < 0.80", acc);
    return;
  }
  /* What the servers applied: every step of every range, on both copies,
   * with the mean of exactly that step's workers. */
  ranges_seen_t rs = {0};
  unsigned long lines =
      check_steps(h_path(&c, "server0.log"), total, j.join_clock, leave, &rs) +
      check_steps(h_path(&c, "server1.log"), total, j.join_clock, leave, &rs);
  ck_assert_int_eq(rs.n, 2);
  for (int i = 0; i < rs.n; i++) {
    for (unsigned long s = 0; s < total; s++)
      ck_assert_msg(rs.seen[i][s], "range at %llu: step %lu never applied",
                    rs.begin[i], s);
    free(rs.seen[i]);
  }
  ck_assert_msg(lines == 2 * 2 * total,
                "%lu step_applied lines, want %lu (2 ranges x 2 copies x %lu "
                "steps)",
                lines, 2 * 2 * total, total);

  double acc = report_number(&c, rep0, "test_accuracy");
  double acc2 = report_number(&c, "report2.json", "test_accuracy");
  printf(
      "worker_elastic %s: test_accuracy %.4f (the joiner evaluates %.4f); "
      "%lu steps checked on the servers; run %.1f s\n",
      mode, acc, acc2, lines, (double)(h_now_ms() - t0) / 1000.0);
  fflush(stdout);
  ck_assert_msg(acc2 == acc, "rank 0 and the joiner disagree: %.4f vs %.4f",
                acc, acc2);
  ck_assert_msg(acc >= 0.80, "test accuracy %.4f < 0.80", acc);
}

START_TEST(worker_joins_and_another_leaves) {
  run_elastic("bsp");
}
END_TEST

START_TEST(worker_joins_and_another_leaves_ssp) {
  run_elastic("ssp");
}
END_TEST

START_TEST(worker_joins_and_another_leaves_asp) {
  run_elastic("asp");
}
END_TEST

int main(void) {
  Suite *s = suite_create("worker_elastic");
  TCase *tc = tcase_create("worker_elastic");
  tcase_set_timeout(tc, 150);
  tcase_add_test(tc, worker_joins_and_another_leaves);
  tcase_add_test(tc, worker_joins_and_another_leaves_ssp);
  tcase_add_test(tc, worker_joins_and_another_leaves_asp);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
