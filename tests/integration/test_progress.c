/* ps-worker's progress for people (issue #12): with its stderr on a
 * terminal (a pseudo-terminal here, output processing off so the bytes are
 * the worker's own) and --log-format auto, it draws one progress line
 * redrawn in place ("\r", erase to the end of the line: epoch, a bar, step
 * N/M, loss, samples/s, ETA) whose step only grows to the last, prints no
 * event=progress line, and still prints its other log lines whole, each on
 * a line of its own above the progress line. Without a terminal, and with
 * --log-format logfmt on one, the output is the logfmt lines of before:
 * event=progress lines and not one "\r". */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "common/proc.h"
#include "harness.h"
#include "tests/check_run.h"

#define STEPS "400"

/* A scheduler and a server for one worker. */
static void start_cluster(h_cluster_t *c) {
  h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep, "--servers",
          "1", "--workers", "1", "--heartbeat-timeout-ms", "2000", NULL);
  h_spawn(c, "server", "ps-server", "--scheduler", c->sched_ep, NULL);
}

/* Runs ps-worker with args (NULL-terminated, after the common ones) with
 * stdin, stdout and stderr on a new pseudo-terminal of 100 columns,
 * reads everything it writes there until it exits, and returns it (caller
 * frees; also saved as name.log in the test's dir). The worker takes a
 * slot of c, so it dies with the test. */
static char *run_on_pty(h_cluster_t *c, const char *name, const char *extra) {
  struct termios tio;
  memset(&tio, 0, sizeof(tio));
  cfmakeraw(&tio); /* no "\n" -> "\r\n": the bytes are the worker's */
  struct winsize ws = {.ws_row = 40, .ws_col = 100};
  const char *argv[] = {h_bin("ps-worker"),
                        "--scheduler",
                        c->sched_ep,
                        "--epochs",
                        "1",
                        "--max-steps",
                        STEPS,
                        "--progress-ms",
                        "50",
                        extra,
                        NULL};
  int master = -1;
  pid_t parent = getpid();
  fflush(stdout);
  fflush(stderr);
  pid_t pid = forkpty(&master, NULL, &tio, &ws);
  ck_assert_msg(pid >= 0, "forkpty: %s", strerror(errno));
  if (pid == 0) {
    ps_proc_child_setup(parent);
    /* A terminal that knows "erase to the end of the line". */
    setenv("TERM", "xterm", 1);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  h_proc_t *p = &c->procs[c->nprocs++];
  memset(p, 0, sizeof(*p));
  p->pid = pid;
  snprintf(p->name, sizeof(p->name), "%s", name);
  snprintf(p->log, sizeof(p->log), "%s", h_path(c, "pty.log"));

  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  ck_assert_ptr_nonnull(out);
  uint64_t end = h_deadline_ms(120000);
  for (;;) {
    uint64_t now = h_now_ms();
    ck_assert_msg(now < end, "%s still writing after 120 s", name);
    struct pollfd pfd = {.fd = master, .events = POLLIN};
    int n = poll(&pfd, 1, (int)(end - now));
    if (n < 0 && errno == EINTR) continue;
    ck_assert_int_ge(n, 0);
    if (n == 0) continue;
    if (len + 4096 > cap) {
      cap *= 2;
      out = realloc(out, cap);
      ck_assert_ptr_nonnull(out);
    }
    ssize_t r = read(master, out + len, cap - len - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break; /* EIO: the worker and its terminal are gone */
    len += (size_t)r;
  }
  out[len] = '\0';
  close(master);
  FILE *f = fopen(p->log, "wb");
  if (f) {
    fwrite(out, 1, len, f);
    fclose(f);
  }
  char why[512];
  ck_assert_msg(h_wait_exit0(c, p, 30000, why, sizeof(why)), "%s", why);
  return out;
}

START_TEST(test_progress_line_on_a_terminal) {
  h_cluster_t c;
  h_init(&c, "progress_pty");
  start_cluster(&c);
  char *out = run_on_pty(&c, "worker", "--log-format=auto");
  ck_assert_msg(strstr(out, "event=progress") == NULL,
                "a logfmt progress line on the terminal: %s", out);
  /* Every redraw: "\r\033[K" then the line. */
  int updates = 0, with_bar = 0;
  unsigned long last_step = 0, steps = 0;
  for (const char *p = strstr(out, "\r\033[K"); p;
       p = strstr(p + 1, "\r\033[K")) {
    const char *text = p + 4;
    size_t n = strcspn(text, "\r\n");
    if (n == 0) continue; /* erased for a log line */
    if (strncmp(text, "ts=", 3) == 0) {
      /* A log line written in the progress line's place, whole, on a
       * line of its own; the progress line follows it. */
      ck_assert_msg(text[n] == '\n', "a log line cut short: %.*s", (int)n,
                    text);
      continue;
    }
    char line[512];
    ck_assert_msg(n < sizeof(line), "a line of %zu bytes", n);
    memcpy(line, text, n);
    line[n] = '\0';
    unsigned long step, total;
    const char *s = strstr(line, " step ");
    ck_assert_msg(strncmp(line, "epoch 1/1 [", 11) == 0 && s &&
                      sscanf(s, " step %lu/%lu", &step, &total) == 2 &&
                      strstr(line, " loss ") && strstr(line, " ETA "),
                  "not a progress line: \"%s\"", line);
    ck_assert_msg(step >= last_step && total == 400,
                  "step %lu/%lu after step %lu", step, total, last_step);
    last_step = step;
    steps = total;
    const char *open = strchr(line, '['), *close = strchr(line, ']');
    ck_assert(open && close && close > open);
    if (memchr(open, '=', (size_t)(close - open))) with_bar++;
    updates++;
  }
  ck_assert_msg(updates >= 2, "%d progress updates in: %s", updates, out);
  ck_assert_msg(with_bar >= 1, "the bar never filled: %s", out);
  ck_assert_msg(last_step == 400 && steps == 400, "last step %lu/%lu",
                last_step, steps);
  /* The other lines stay whole, each on its own line. */
  const char *done = strstr(out, "event=train_done");
  ck_assert_msg(done != NULL, "no train_done line: %s", out);
  const char *ts = done;
  while (ts > out && ts[-1] != '\n' && ts[-1] != 'K') ts--;
  ck_assert_msg(strncmp(ts, "ts=", 3) == 0 && strchr(done, '\n') != NULL,
                "train_done not a line of its own: %s", out);
  free(out);
  h_kill_all(&c);
}
END_TEST

START_TEST(test_logfmt_forced_on_a_terminal) {
  h_cluster_t c;
  h_init(&c, "progress_logfmt_pty");
  start_cluster(&c);
  char *out = run_on_pty(&c, "worker", "--log-format=logfmt");
  ck_assert_msg(strchr(out, '\r') == NULL, "a \\r in logfmt: %s", out);
  ck_assert_msg(strstr(out, "\033[") == NULL, "an escape in logfmt: %s", out);
  ck_assert_msg(strstr(out, "event=progress epoch=1 step="),
                "no logfmt progress line: %s", out);
  free(out);
  h_kill_all(&c);
}
END_TEST

START_TEST(test_logfmt_without_a_terminal) {
  h_cluster_t c;
  h_init(&c, "progress_file");
  start_cluster(&c);
  h_proc_t *w =
      h_spawn(&c, "worker", "ps-worker", "--scheduler", c.sched_ep, "--epochs",
              "1", "--max-steps", STEPS, "--progress-ms", "50", NULL);
  char why[512];
  ck_assert_msg(h_wait_exit0(&c, w, 120000, why, sizeof(why)), "%s", why);
  char *out = h_read_file(w->log, NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(strchr(out, '\r') == NULL, "a \\r without a terminal");
  ck_assert_msg(strstr(out, "\033[") == NULL, "an escape without a terminal");
  unsigned long total = 0;
  ck_assert_msg(h_progress_step(w->log, &total) > 0 && total == 400,
                "no event=progress lines (steps=%lu): %s", total, out);
  free(out);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("progress");
  TCase *tc = tcase_create("worker");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, test_progress_line_on_a_terminal);
  tcase_add_test(tc, test_logfmt_forced_on_a_terminal);
  tcase_add_test(tc, test_logfmt_without_a_terminal);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
