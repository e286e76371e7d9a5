/* The scheduler survives its own death (ARCHITECTURE "Failure semantics"
 * 4): a BSP job with --state-file takes a checkpoint (psctl checkpoint),
 * then its scheduler is killed with SIGKILL mid-training. Training goes on
 * while it is down (pushes and pulls never involve it). A scheduler
 * restarted with the same state file takes the job over: the nodes keep
 * their ids, roles and ranges, psctl status shows them alive at the same
 * epoch with the checkpoint taken before the crash, and the job runs to its
 * end with every daemon exiting 0. The nodes heartbeat by datagram
 * (--heartbeat-udp): the restarted scheduler takes them with the keys its
 * state file kept. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "tests/check_run.h"

/* Long enough to outlast the scheduler's downtime and restart (about 2 s)
 * with a margin, short enough for the test to stay quick. */
#define STEPS "1500"

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
    n++;
  return n;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Runs psctl with up to 3 arguments; returns its output (caller frees), or
 * fails the test if psctl does not exit 0. */
static char *psctl(h_cluster_t *c, const char *name, const char *a1,
                   const char *a2, const char *a3) {
  h_proc_t *p = h_spawn(c, name, "psctl", "--scheduler", c->sched_ep,
                        "--timeout-ms", "3000", a1, a2, a3, NULL);
  ck_assert_msg(h_wait_exit(p, 60000), "psctl %s did not exit", a1);
  char *out = h_read_file(p->log, NULL);
  if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
    h_dump_logs(c);
    ck_abort_msg("psctl %s failed: %s", a1, out ? out : "");
  }
  return out;
}

static h_proc_t *start_scheduler(h_cluster_t *c, const char *name) {
  return h_spawn(c, name, "ps-scheduler", "--bind", c->sched_ep, "--servers",
                 "2", "--workers", "2", "--mode", "bsp", "--state-file",
                 h_path(c, "scheduler.state"), "--heartbeat-timeout-ms", "3000",
                 "--checkpoint-dir", c->dir, "--heartbeat-udp", NULL);
}

START_TEST(scheduler_killed_and_restarted_job_finishes) {
  h_cluster_t c;
  h_init(&c, "scheduler_restart");
  h_proc_t *sched = start_scheduler(&c, "scheduler1");
  h_proc_t *s0 =
      h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *s1 =
      h_spawn(&c, "server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 = h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep,
                         "--rank", "0", "--max-steps", STEPS, "--progress-ms",
                         "100", "--eval-every-epoch=false", "--dump-weights",
                         h_path(&c, "w.bin"), NULL);
  h_proc_t *w1 =
      h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "1", "--max-steps", STEPS, "--eval-every-epoch=false", NULL);
  int training = h_wait_log(w0->log, "event=progress", 30000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 30 s");

  char *out = psctl(&c, "psctl_checkpoint", "checkpoint", "--dir", "ck");
  ck_assert_msg(strstr(out, "written to") != NULL, "%s", out);
  unsigned long long step = 0;
  const char *at = strstr(out, ": step ");
  ck_assert_msg(at && sscanf(at, ": step %llu", &step) == 1 && step > 0,
                "no step in: %s", out);
  free(out);

  kill(sched->pid, SIGKILL);
  ck_assert(h_wait_exit(sched, 5000));
  /* While the scheduler is down the workers go on training. */
  char *before = h_read_file(w0->log, NULL);
  int progress_before = count(before, "event=progress");
  free(before);
  sleep_ms(1000);
  char *during = h_read_file(w0->log, NULL);
  int progress_during = count(during, "event=progress");
  free(during);
  ck_assert_msg(progress_during > progress_before,
                "no training progress while the scheduler was down (%d "
                "progress lines before, %d after)",
                progress_before, progress_during);
  ck_assert_msg(h_wait_exit(w0, 1) == 0,
                "worker 0 ended while the scheduler "
                "was down; use more steps");

  /* Heartbeats go as datagrams (--heartbeat-udp); unanswered, a node
   * says so and heartbeats on its link as well. */
  h_proc_t *members[] = {s0, s1, w0, w1};
  for (int i = 0; i < 4; i++)
    ck_assert_msg(h_wait_log(members[i]->log, "event=beats_unanswered", 5000),
                  "%s did not notice its heartbeats went unanswered",
                  members[i]->name);

  h_proc_t *sched2 = start_scheduler(&c, "scheduler2");
  int restored = h_wait_log(sched2->log, "event=state_restored", 10000);
  if (!restored) h_dump_logs(&c);
  ck_assert_msg(restored, "the restarted scheduler did not load its state");
  /* The new scheduler knows their keys from the state file: it takes and
   * acks their datagrams again (a second beats_answered each). */
  for (int i = 0; i < 4; i++) {
    int answered = 0;
    for (uint64_t end = h_now_ms() + 10000; answered < 2 && h_now_ms() < end;
         sleep_ms(50)) {
      char *log = h_read_file(members[i]->log, NULL);
      answered = log ? count(log, "event=beats_answered") : 0;
      free(log);
    }
    ck_assert_msg(answered == 2,
                  "%s: its datagrams answered %d times, not before and "
                  "after the restart",
                  members[i]->name, answered);
  }
  /* Nodes, ranges and the checkpoint come from the state file; routes come
   * with the nodes' next heartbeats (the job's end below needs them). */
  char *js = psctl(&c, "psctl_status", "status", "--json", NULL);
  ck_assert_msg(
      count(js, "\"state\":\"alive\"") + count(js, "\"state\":\"done\"") == 4,
      "%s", js);
  ck_assert_msg(strstr(js, "\"epoch\":1,") != NULL, "epoch changed: %s", js);
  ck_assert_int_eq(count(js, "\"server_id\""), 2);
  char want[64];
  snprintf(want, sizeof(want), "\"last_checkpoint\":{\"id\":");
  ck_assert_msg(strstr(js, want) != NULL, "checkpoint forgotten: %s", js);
  snprintf(want, sizeof(want), "\"step\":%llu,", step);
  ck_assert_msg(strstr(strstr(js, "\"last_checkpoint\""), want) != NULL,
                "checkpoint step %llu forgotten: %s", step, js);
  free(js);
  char *txt = psctl(&c, "psctl_text", "status", NULL, NULL);
  ck_assert_msg(strstr(txt, "last checkpoint: step") != NULL, "%s", txt);
  free(txt);

  h_proc_t *rest[] = {sched2, s0, s1, w0, w1};
  for (int i = 0; i < 5; i++) {
    int exited = h_wait_exit(rest[i], 60000);
    if (!exited) h_dump_logs(&c);
    ck_assert_msg(exited, "%s did not exit", rest[i]->name);
    if (!(WIFEXITED(rest[i]->status) && WEXITSTATUS(rest[i]->status) == 0)) {
      h_dump_logs(&c);
      ck_abort_msg("%s exited with status %d", rest[i]->name, rest[i]->status);
    }
  }
  ck_assert(h_wait_log(w0->log, "event=train_done steps=" STEPS, 1));
  ck_assert(h_wait_log(sched2->log, "event=job_finished", 1));
  /* The first scheduler's state file told the second nothing new: no node
   * registered again and no view was published. */
  ck_assert(!h_wait_log(sched2->log, "event=node_registered", 1));
  ck_assert(!h_wait_log(sched2->log, "event=node_dead", 1));
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("scheduler_restart");
  TCase *tc = tcase_create("scheduler_restart");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, scheduler_killed_and_restarted_job_finishes);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
