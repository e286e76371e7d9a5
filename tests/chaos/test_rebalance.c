/* chaos.rebalance: after a failover, primaries go back to the server that
 * returned (issue #10, item 9; scheduler/handover.c).
 *
 * 2 servers (replication 2), 1 worker training the MLP (ASP). The primary
 * of range 0 is SIGKILLed: its range fails over and the survivor leads
 * both ranges. The killed server is restarted (a spare), gets a snapshot
 * of both ranges and is in step. Then:
 *  - with --rebalance (the default), the scheduler hands one range back in
 *    a planned move: each server leads one range again, no second
 *    failover, the worker's pushes never fail;
 *  - with --rebalance=false, the survivor keeps leading both.
 * Samples/s are measured from the worker's progress lines in a window
 * before the kill and in one after the rejoin, in both runs, and printed
 * with their ratios: the figures in the note. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define WINDOW_MS 3000

static long file_size(const char *path) {
  size_t n = 0;
  char *d = h_read_file(path, &n);
  free(d);
  return d ? (long)n : 0;
}

/* The mean samples_per_sec of the progress lines in bytes [from, to) of
 * log, or 0 if there is none; *lines gets their number. */
static double mean_rate(const char *log, long from, long to, int *lines) {
  size_t n = 0;
  char *d = h_read_file(log, &n);
  *lines = 0;
  if (d == NULL) return 0;
  if (to > (long)n) to = (long)n;
  double sum = 0;
  for (long i = from; i < to;) {
    char *nl = memchr(d + i, '\n', (size_t)(to - i));
    if (nl == NULL) break;
    *nl = '\0';
    const char *line = d + i;
    const char *r = strstr(line, " samples_per_sec=");
    if (strstr(line, "event=progress ") && r) {
      sum += strtod(r + strlen(" samples_per_sec="), NULL);
      (*lines)++;
    }
    i = nl - d + 1;
  }
  free(d);
  return *lines ? sum / *lines : 0;
}

/* Progress lines over the next WINDOW_MS: their mean rate. */
static double measure(h_proc_t *w, const char *what) {
  long from = file_size(w->log);
  uint64_t end = h_now_ms() + WINDOW_MS;
  while (h_now_ms() < end && !w->exited) h_sleep_ms(50);
  int lines = 0;
  double r = mean_rate(w->log, from, file_size(w->log), &lines);
  ck_assert_msg(lines >= 3, "%s: %d progress lines in %d ms", what, lines,
                WINDOW_MS);
  return r;
}

/* How many ranges each of the two live servers' addresses leads; 0 if the
 * status failed. */
static int leads_of(h_cluster_t *c, const chaos_server_t *srv, int *lead) {
  char *js = h_status_json(c, 3000);
  if (js == NULL) return 0;
  h_range_t r[8];
  int nr = h_status_ranges(js, r, 8);
  lead[0] = lead[1] = 0;
  for (int i = 0; i < nr; i++) {
    int slot = chaos_server_slot(srv, 2, js, r[i].server_id);
    if (slot >= 0) lead[slot]++;
  }
  free(js);
  return nr > 0;
}

typedef struct {
  double before, after;
} rates_t;

static rates_t run(const char *tag, int rebalance) {
  h_cluster_t c;
  h_init(&c, tag);
  h_proc_t *sched = h_spawn(
      &c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers", "2",
      "--workers", "1", "--mode", "asp", "--replication", "2",
      rebalance ? "--rebalance=true" : "--rebalance=false", NULL);
  chaos_server_t srv[2];
  memset(srv, 0, sizeof(srv));
  for (int i = 0; i < 2; i++)
    chaos_server_start(&c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_proc_t *w =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", "100", "--progress-ms", "200",
              "--eval-every-epoch=false", NULL);
  uint64_t end = h_deadline_ms(60000);
  while (h_now_ms() < end && !w->exited && h_progress_step(w->log, NULL) == 0)
    h_sleep_ms(20);
  ck_assert_msg(!w->exited && h_progress_step(w->log, NULL) > 0,
                "%s: training did not start", tag);
  rates_t rt;
  rt.before = measure(w, "before the kill");

  unsigned primary, backup;
  ck_assert(chaos_range_holders(&c, 0, &primary, &backup));
  char *js = h_status_json(&c, 3000);
  ck_assert_ptr_nonnull(js);
  int slot = chaos_server_slot(srv, 2, js, primary);
  free(js);
  ck_assert_int_ge(slot, 0);
  kill(srv[slot].proc->pid, SIGKILL);
  h_wait_exit(srv[slot].proc, 5000);
  ck_assert_msg(h_wait_node_state(&c, srv[slot].address, "dead", 10000),
                "%s: the killed server was not declared dead", tag);
  int lead[2];
  ck_assert(leads_of(&c, srv, lead));
  ck_assert_msg(lead[1 - slot] == 2, "%s: the survivor leads %d ranges", tag,
                lead[1 - slot]);
  chaos_server_start(&c, &srv[slot], slot, "server", "127.0.0.1", NULL);
  char why[256];
  ck_assert_msg(h_wait_replicated(&c, 2, 30000, why, sizeof(why)),
                "%s: the restarted server did not get in step: %s", tag, why);

  if (rebalance) {
    /* Planned: each leads one, soon after the backups are in step. */
    uint64_t until = h_deadline_ms(10000);
    while (h_now_ms() < until &&
           !(leads_of(&c, srv, lead) && lead[0] == 1 && lead[1] == 1))
      h_sleep_ms(20);
    ck_assert_msg(lead[0] == 1 && lead[1] == 1,
                  "%s: still lopsided: %d and %d ranges", tag, lead[0],
                  lead[1]);
    ck_assert(h_wait_log(sched->log, "event=handover ", 1));
  } else {
    /* The scheduler checks every 50 ms: after many checks, nothing moved. */
    ck_assert(h_wait_replicated(&c, 2, 1000, why, sizeof(why)));
    ck_assert(leads_of(&c, srv, lead));
    ck_assert_msg(lead[1 - slot] == 2 && lead[slot] == 0,
                  "%s: ranges moved with --rebalance=false", tag);
    ck_assert(!h_wait_log(sched->log, "event=handover_started", 1));
  }
  rt.after = measure(w, "after the rejoin");
  ck_assert(leads_of(&c, srv, lead));
  ck_assert_msg(rebalance ? (lead[0] == 1 && lead[1] == 1) : lead[slot] == 0,
                "%s: the primaries moved while measuring", tag);

  /* The worker leaves (SIGTERM) and the job ends: everyone exits 0, so no
   * push failed through the kill and the handover. */
  kill(w->pid, SIGTERM);
  int all = h_wait_all(&c, 60000);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "%s: the job did not end", tag);
  for (int i = 0; i < c.nprocs; i++) {
    h_proc_t *p = &c.procs[i];
    if (strcmp(p->name, slot ? "server1" : "server0") == 0) continue;
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(&c);
      ck_abort_msg("%s: %s did not exit 0 (status %d)", tag, p->name,
                   p->status);
    }
  }
  ck_assert_msg(!h_wait_log(sched->log, "event=handover_abandoned", 1),
                "%s: a handover was abandoned", tag);
  printf("rebalance %s: samples/s before the kill %.0f, after the rejoin "
         "%.0f (%.2fx)\n",
         rebalance ? "on" : "off", rt.before, rt.after, rt.after / rt.before);
  fflush(stdout);
  return rt;
}

START_TEST(primaries_go_back_after_rejoin) {
  rates_t off = run("chaos_rebalance_off", 0);
  rates_t on = run("chaos_rebalance_on", 1);
  printf("rebalance: after the rejoin, balanced %.0f samples/s vs lopsided "
         "%.0f (%.2fx); each against its own run's rate before the kill: "
         "%.2fx vs %.2fx\n",
         on.after, off.after, on.after / off.after, on.after / on.before,
         off.after / off.before);
  fflush(stdout);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_rebalance");
  TCase *tc = tcase_create("rebalance");
  tcase_set_timeout(tc, 280);
  tcase_add_test(tc, primaries_go_back_after_rejoin);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
