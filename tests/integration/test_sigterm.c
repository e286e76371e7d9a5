/* SIGTERM to the scheduler, a server or a worker during training (the way
 * systemd, Compose and Slurm stop a process): every daemon exits within 5 s,
 * and with status 0, the victim included: a stop by SIGTERM is clean
 * (ARCHITECTURE "Failure semantics" 6). */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "tests/check_run.h"

static void run(const char *victim_name) {
  h_cluster_t c;
  char test[64];
  snprintf(test, sizeof(test), "sigterm_%s", victim_name);
  h_init(&c, test);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2",
              /* Workers loading their data on 2 shared cores can miss a
               * 400 ms timeout at start; this test is about the stop. */
              "--heartbeat-timeout-ms", "3000", NULL);
  h_proc_t *s0 = h_spawn(&c, "server0", "ps-server", "--scheduler",
                         c.sched_ep, NULL);
  h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler",
                         c.sched_ep, "--rank", "0", "--epochs", "50", NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "1", "--epochs", "50", NULL);

  /* Training is under way once a worker reports progress. */
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");

  h_proc_t *victim = sched;
  if (victim_name[0] == 's' && victim_name[1] == 'e') victim = s0;
  if (victim_name[0] == 'w') victim = w0;
  uint64_t t0 = h_now_ms();
  kill(victim->pid, SIGTERM);
  char why[512];
  int all = h_wait_all_exit0(&c, 0, 5000, why, sizeof(why));
  uint64_t took = h_now_ms() - t0;
  h_kill_all(&c);
  fprintf(stderr, "sigterm %s: cluster down in %llu ms\n", victim_name,
          (unsigned long long)took);
  ck_assert_msg(all, "SIGTERM to %s: %s", victim_name, why);
}

/* A worker stopped while the scheduler does not answer (paused here) gets
 * no ack for its Leave: it still exits 0 within ps-worker's stop grace
 * (5 s). The scheduler, let go again, hears the Leave and ends the job. */
START_TEST(sigterm_worker_scheduler_paused) {
  h_cluster_t c;
  h_init(&c, "sigterm_worker_scheduler_paused");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "1", "--workers", "1", "--mode", "asp",
              "--heartbeat-timeout-ms", "20000", NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--epochs", "50", NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");
  kill(sched->pid, SIGSTOP);
  uint64_t t0 = h_now_ms();
  kill(w0->pid, SIGTERM);
  char why[512];
  int ok = h_wait_exit0(&c, w0, 5000, why, sizeof(why));
  uint64_t took = h_now_ms() - t0;
  kill(sched->pid, SIGCONT);
  fprintf(stderr, "sigterm worker, scheduler paused: exited in %llu ms\n",
          (unsigned long long)took);
  if (!ok) h_kill_all(&c);
  ck_assert_msg(ok, "worker: %s", why);
  ok = h_wait_all_exit0(&c, 0, 10000, why, sizeof(why));
  h_kill_all(&c);
  ck_assert_msg(ok, "after the scheduler came back: %s", why);
}
END_TEST

START_TEST(sigterm_scheduler) { run("scheduler"); }
END_TEST

START_TEST(sigterm_server) { run("server"); }
END_TEST

START_TEST(sigterm_worker) { run("worker"); }
END_TEST

int main(void) {
  Suite *s = suite_create("sigterm");
  TCase *tc = tcase_create("sigterm");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, sigterm_scheduler);
  tcase_add_test(tc, sigterm_server);
  tcase_add_test(tc, sigterm_worker);
  tcase_add_test(tc, sigterm_worker_scheduler_paused);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
