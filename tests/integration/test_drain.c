/* psctl drain: planned maintenance without a failover (scheduler/handover.c).
 *
 * BSP, 3 servers (replication 2), 2 workers of batch 32 training the MLP.
 * Once training runs, psctl drain moves every range one server leads to a
 * backup in step and tells the server to go: the server exits 0, psctl
 * says so, no worker's push fails (both exit 0), no failover happened, the
 * drained server's chains are topped up from the other two, and the final
 * weights are those of one --standalone process of batch 64 on the same
 * data (the undisturbed run, bsp_equivalence's bound: relative 1e-5).
 *
 * And the refusals: a node that is not a server, a range with no backup
 * (--replication 1): psctl exits 1 with the reason and nothing moves. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

#define STEPS "600"

static int exited0(const h_proc_t *p) {
  return p->exited && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
}

/* The ranges server id leads in a status JSON, or -1. */
static int leads(const char *json, unsigned id) {
  h_range_t r[16];
  int n = h_status_ranges(json, r, 16);
  if (n < 0) return -1;
  int k = 0;
  for (int i = 0; i < n; i++) k += r[i].server_id == id;
  return k;
}

START_TEST(drain_keeps_training_exact) {
  h_cluster_t c;
  h_init(&c, "drain");
  const char *sa_out = h_path(&c, "standalone.bin");
  const char *ps_out = h_path(&c, "cluster.bin");
  h_spawn(&c, "standalone", "ps-worker", "--standalone", "--batch-size", "64",
          "--max-steps", STEPS, "--dump-weights", sa_out, NULL);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "3", "--workers", "2", "--mode", "bsp",
              "--replication", "2", NULL);
  h_proc_t *srv[3];
  char addr[3][64];
  for (int i = 0; i < 3; i++) {
    char name[16];
    snprintf(name, sizeof(name), "server%d", i);
    snprintf(addr[i], sizeof(addr[i]), "tcp://127.0.0.1:%d", h_free_port());
    srv[i] = h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep,
                     "--bind", addr[i], NULL);
  }
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--batch-size", "32", "--max-steps",
                         STEPS, "--progress-ms", "100", "--dump-weights",
                         ps_out, NULL);
  h_proc_t *w1 =
      h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "1", "--batch-size", "32", "--max-steps", STEPS, NULL);

  /* Training runs: some steps done, far from the end. */
  uint64_t end = h_deadline_ms(120000);
  unsigned long step = 0;
  while (h_now_ms() < end && !w0->exited &&
         (step = h_progress_step(w0->log, NULL)) < 20)
    h_sleep_ms(20);
  ck_assert_msg(step >= 20 && !w0->exited, "training did not start (step %lu)",
                step);

  /* Drain the server at addr[1], by address. */
  char *before = h_status_json(&c, 5000);
  ck_assert_ptr_nonnull(before);
  h_node_t nodes[16];
  int nn = h_status_nodes(before, nodes, 16);
  unsigned id = 0;
  for (int i = 0; i < nn; i++)
    if (strcmp(nodes[i].address, addr[1]) == 0) id = nodes[i].id;
  ck_assert_msg(id != 0, "server1 is not in the status");
  int led = leads(before, id);
  free(before);
  ck_assert_int_ge(led, 1);

  int st = 0;
  char *out = h_run(&c, 60000, &st, "psctl", "--scheduler", c.sched_ep,
                    "--json", "drain", addr[1], NULL);
  ck_assert_ptr_nonnull(out);
  fprintf(stderr, "drain: psctl said: %s", out);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) h_dump_logs(&c);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psctl drain failed (status %d): %s", st, out);
  ck_assert_msg(h_json_number(out, "server") == id, "psctl drained %s", out);
  ck_assert_msg(h_json_number(out, "ranges_moved") == led,
                "psctl says %s, the server led %d", out, led);
  free(out);

  char why[256];
  ck_assert_msg(h_wait_exit0(&c, srv[1], 10000, why, sizeof(why)),
                "the drained server: %s", why);
  /* Its chains are topped up from the two others; it leads nothing. */
  ck_assert_msg(h_wait_replicated(&c, 2, 30000, why, sizeof(why)),
                "not replicated after the drain: %s", why);
  char *after = h_status_json(&c, 5000);
  ck_assert_ptr_nonnull(after);
  ck_assert_int_eq(leads(after, id), 0);
  nn = h_status_nodes(after, nodes, 16);
  const h_node_t *gone = h_find_node(nodes, nn, id);
  ck_assert_msg(gone && strcmp(gone->state, "left") == 0,
                "the drained server is %s, not left",
                gone ? gone->state : "missing");
  free(after);

  ck_assert_msg(h_wait_all(&c, 240000), "the job did not finish in 240 s");
  h_kill_all(&c);
  for (int i = 0; i < c.nprocs; i++)
    if (!exited0(&c.procs[i])) {
      h_dump_logs(&c);
      ck_abort_msg("%s did not exit 0 (status %d)", c.procs[i].name,
                   c.procs[i].status);
    }
  (void)w1;
  (void)srv;
  /* Planned: handovers, no failover, no push refused for good. */
  ck_assert(h_wait_log(sched->log, "event=handover ", 1));
  ck_assert(h_wait_log(sched->log, "event=drained ", 1));
  ck_assert_msg(!h_wait_log(sched->log, "event=failover ", 1),
                "the drain caused a failover");
  ck_assert_msg(!h_wait_log(sched->log, "event=handover_abandoned", 1),
                "a handover was abandoned");

  size_t na, nb;
  float *a = (float *)h_read_file(sa_out, &na);
  float *b = (float *)h_read_file(ps_out, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(na, nb);
  ck_assert_uint_gt(na, 0);
  size_t n = na / sizeof(float);
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert(isfinite(a[i]) && isfinite(b[i]));
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > max_diff) max_diff = d;
    if (fabs(a[i]) > max_abs) max_abs = fabs(a[i]);
  }
  double rel = max_diff / max_abs;
  fprintf(stderr,
          "drain: %zu weights, max |diff| vs the undisturbed run %.3g, "
          "relative %.3g\n",
          n, max_diff, rel);
  ck_assert_msg(rel <= 1e-5, "max relative difference %.3g > 1e-5", rel);
  free(a);
  free(b);
}
END_TEST

START_TEST(drain_refusals) {
  h_cluster_t c;
  h_init(&c, "drain_refused");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "1", "--mode", "asp", "--replication", "1", NULL);
  char addr[2][64];
  for (int i = 0; i < 2; i++) {
    char name[16];
    snprintf(name, sizeof(name), "server%d", i);
    snprintf(addr[i], sizeof(addr[i]), "tcp://127.0.0.1:%d", h_free_port());
    h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep, "--bind",
            addr[i], NULL);
  }
  h_proc_t *w = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                        "--rank", "0", "--epochs", "50", "--progress-ms",
                        "100", NULL);
  uint64_t end = h_deadline_ms(120000);
  while (h_now_ms() < end && !w->exited && h_progress_step(w->log, NULL) == 0)
    h_sleep_ms(20);
  ck_assert_msg(!w->exited && h_progress_step(w->log, NULL) > 0,
                "training did not start");

  /* No backup: refused, with the reason. */
  int st = 0;
  char *out = h_run(&c, 30000, &st, "psctl", "--scheduler", c.sched_ep,
                    "drain", addr[0], NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d: %s", st,
                out);
  ck_assert_msg(strstr(out, "alone") && strstr(out, "no backup"),
                "psctl said: %s", out);
  free(out);
  /* Not a server (the worker's id is 3: servers register first). */
  out = h_run(&c, 30000, &st, "psctl", "--scheduler", c.sched_ep, "drain",
              "tcp://127.0.0.1:1", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d: %s", st,
                out);
  ck_assert_msg(strstr(out, "no server"), "psctl said: %s", out);
  free(out);
  /* No SERVER at all: a usage error. */
  out = h_run(&c, 30000, &st, "psctl", "--scheduler", c.sched_ep, "drain",
              NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %d: %s", st,
                out);
  free(out);
  /* Both servers still lead their range: nothing moved. */
  char *js = h_status_json(&c, 5000);
  ck_assert_ptr_nonnull(js);
  h_range_t r[4];
  ck_assert_int_eq(h_status_ranges(js, r, 4), 2);
  ck_assert_uint_ne(r[0].server_id, r[1].server_id);
  free(js);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("drain");
  TCase *tc = tcase_create("drain");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, drain_keeps_training_exact);
  tcase_add_test(tc, drain_refusals);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
