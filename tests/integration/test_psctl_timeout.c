/* psctl against a scheduler that does not answer (issue 10, item 3): every
 * command fails within --timeout-ms (plus start-up), whether nothing
 * listens on the endpoint or the scheduler is there but stopped; and
 * `psctl checkpoint` prints progress while it waits for a checkpoint that
 * is being written, and gives up at --wait-ms saying what it waited for. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; p && (p = strstr(p, needle)) != NULL;
       p += strlen(needle))
    n++;
  return n;
}

/* Runs every psctl command against ep with --timeout-ms 1000: each must
 * exit 1 within 3 s and say that the scheduler did not answer. */
static void every_command_fails_fast(h_cluster_t *c, const char *ep) {
  const char *cmds[][2] = {
      {"status", NULL},     {"status", "--json"},     {"health", NULL},
      {"checkpoint", NULL}, {"checkpoint", "--json"},
  };
  for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
    int status = 0;
    uint64_t t0 = h_now_ms();
    char *out = h_run(c, 20000, &status, "psctl", "--scheduler", ep,
                      "--timeout-ms", "1000", cmds[i][0], cmds[i][1], NULL);
    uint64_t took = h_now_ms() - t0;
    fprintf(stderr, "psctl %s %s: %llu ms, status %d\n", cmds[i][0],
            cmds[i][1] ? cmds[i][1] : "", (unsigned long long)took, status);
    ck_assert_msg(out != NULL, "psctl did not start");
    ck_assert_msg(status != -1 && took < 3000,
                  "psctl %s %s took %llu ms with --timeout-ms 1000", cmds[i][0],
                  cmds[i][1] ? cmds[i][1] : "", (unsigned long long)took);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1,
                  "psctl %s: status %d: %s", cmds[i][0], status, out);
    ck_assert_msg(strstr(out, "no answer") != NULL, "psctl %s said: %s",
                  cmds[i][0], out);
    free(out);
  }
}

START_TEST(nothing_listens) {
  h_cluster_t c;
  h_init(&c, "psctl_timeout_nothing");
  char ep[64];
  snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", h_free_port());
  every_command_fails_fast(&c, ep);
}
END_TEST

START_TEST(scheduler_stopped) {
  h_cluster_t c;
  h_init(&c, "psctl_timeout_stopped");
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--checkpoint-dir", h_path(&c, "ck"), NULL);
  /* Answering first, so the endpoint is bound when it stops. */
  int status = 0;
  uint64_t end = h_now_ms() + 10000;
  char *out = NULL;
  do {
    free(out);
    out = h_run(&c, 5000, &status, "psctl", "--scheduler", c.sched_ep, "health",
                NULL);
  } while (status != 0 && h_now_ms() < end);
  ck_assert_msg(status == 0, "scheduler not up: %s", out ? out : "");
  free(out);
  kill(sched->pid, SIGSTOP);
  every_command_fails_fast(&c, c.sched_ep);
  kill(sched->pid, SIGCONT);
  h_kill_all(&c);
}
END_TEST

/* A BSP checkpoint waits for a step boundary; with the only worker paused
 * none comes, so psctl waits, saying so, until --wait-ms. */
START_TEST(checkpoint_waits_with_progress) {
  h_cluster_t c;
  h_init(&c, "psctl_checkpoint_progress");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "1", "--workers", "1", "--mode", "bsp", "--heartbeat-timeout-ms",
          "30000", "--checkpoint-dir", h_path(&c, "ck"), NULL);
  h_spawn(&c, "server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *w0 =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", "50", "--eval-every-epoch=false", NULL);
  int training = h_wait_log(w0->log, "event=progress", 60000);
  if (!training) h_dump_logs(&c);
  ck_assert_msg(training, "training did not start within 60 s");
  kill(w0->pid, SIGSTOP);

  /* A step already pushed before the stop may still complete, and its
   * boundary take the checkpoint (exit 0, fast): then the next one cannot. */
  int status = 0;
  uint64_t t0 = 0, took = 0;
  char *out = NULL;
  for (int attempt = 0; attempt < 2; attempt++) {
    free(out);
    t0 = h_now_ms();
    out = h_run(&c, 30000, &status, "psctl", "--scheduler", c.sched_ep,
                "--timeout-ms", "1000", "--wait-ms", "5000", "checkpoint",
                NULL);
    took = h_now_ms() - t0;
    if (!(out && WIFEXITED(status) && WEXITSTATUS(status) == 0)) break;
  }
  kill(w0->pid, SIGCONT);
  fprintf(stderr, "psctl checkpoint (worker paused): %llu ms:\n%s\n",
          (unsigned long long)took, out ? out : "");
  ck_assert_msg(out != NULL && status != -1, "psctl did not end");
  ck_assert_msg(took >= 4500 && took < 8000,
                "psctl checkpoint --wait-ms 5000 took %llu ms",
                (unsigned long long)took);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d",
                status);
  int lines = count(out, "waiting for checkpoint");
  ck_assert_msg(lines >= 2, "%d progress lines in:\n%s", lines, out);
  ck_assert_msg(strstr(out, "not complete after 5000 ms") != NULL, "%s", out);
  free(out);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("psctl_timeout");
  TCase *tc = tcase_create("psctl_timeout");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, nothing_listens);
  tcase_add_test(tc, scheduler_stopped);
  tcase_add_test(tc, checkpoint_waits_with_progress);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
