/* A scheduler that stops running for a while (SIGSTOP, no CPU for it) must
 * not blame the nodes: when it runs again, its check timer fires before it
 * has read the heartbeats that came meanwhile, and every node looks silent
 * for longer than the timeout. The job (BSP, default heartbeats: 100 ms,
 * 400 ms timeout) must go on, nobody declared dead or fenced, and every
 * daemon exit 0; the scheduler logs that it was stalled. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "tests/check_run.h"

#define STEPS "1500"
#define PAUSE_MS 1200

START_TEST(paused_scheduler_blames_no_one) {
  h_cluster_t c;
  h_init(&c, "scheduler_pause");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--mode", "bsp", NULL);
  h_proc_t *s0 =
      h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *s1 =
      h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--max-steps", STEPS, "--progress-ms",
                         "100", "--eval-every-epoch=false", NULL);
  h_proc_t *w1 =
      h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "1", "--max-steps", STEPS, "--eval-every-epoch=false", NULL);
  int training = h_wait_log(w0->log, "event=progress", 30000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 30 s");

  /* The fault: the scheduler gets no CPU for three timeouts. */
  kill(sched->pid, SIGSTOP);
  struct timespec ts = {PAUSE_MS / 1000, (long)(PAUSE_MS % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  kill(sched->pid, SIGCONT);
  ck_assert_msg(h_wait_exit(w0, 1) == 0,
                "worker 0 ended during the pause; use more steps");

  h_proc_t *all[] = {sched, s0, s1, w0, w1};
  for (int i = 0; i < 5; i++) {
    int exited = h_wait_exit(all[i], 60000);
    int ok =
        exited && WIFEXITED(all[i]->status) && WEXITSTATUS(all[i]->status) == 0;
    if (!ok) h_dump_logs(&c);
    ck_assert_msg(ok, "%s did not exit 0 (status %d)", all[i]->name,
                  all[i]->status);
  }
  ck_assert(h_wait_log(w0->log, "event=train_done steps=" STEPS, 1));
  ck_assert(h_wait_log(sched->log, "event=scheduler_stalled", 1));
  ck_assert_msg(!h_wait_log(sched->log, "event=node_dead", 1),
                "a node was declared dead for the scheduler's own stall");
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("scheduler_pause");
  TCase *tc = tcase_create("scheduler_pause");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, paused_scheduler_blames_no_one);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
