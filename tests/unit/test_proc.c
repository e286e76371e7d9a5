/* Child processes: how a child ended, its output in the log, deadlines, and
 * ECHILD (a pid that is no child of ours) read as "ended, status lost". */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/proc.h"
#include "common/time.h"
#include "tests/check_run.h"

static char log_path[64];

static void setup(void) {
  snprintf(log_path, sizeof(log_path), "/tmp/ps-test-proc-%d.log",
           (int)getpid());
}

static void teardown(void) {
  unlink(log_path);
}

static pid_t sh(const char *script) {
  char *const argv[] = {"/bin/sh", "-c", (char *)script, NULL};
  pid_t pid = ps_proc_spawn("/bin/sh", argv, log_path);
  ck_assert_int_gt(pid, 0);
  return pid;
}

START_TEST(exit_status_and_log) {
  pid_t pid = sh("echo out; echo err >&2; exit 3");
  int st;
  ck_assert_int_eq(ps_proc_reap(pid, 0, &st), 1);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 3);
  FILE *f = fopen(log_path, "r");
  ck_assert_ptr_nonnull(f);
  char buf[64] = "";
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  ck_assert_str_eq(buf, "out\nerr\n");
}
END_TEST

START_TEST(running_child_and_deadline) {
  pid_t pid = sh("exec sleep 30");
  int st = 12345;
  ck_assert_int_eq(ps_proc_reap(pid, WNOHANG, &st), 0);
  uint64_t t0 = ps_now_ms();
  ck_assert_int_eq(ps_proc_wait(pid, 50, &st), 0);
  uint64_t took = ps_now_ms() - t0;
  ck_assert_uint_ge(took, 50);
  ck_assert_uint_lt(took, 2000);
  ck_assert_int_eq(st, 12345); /* untouched while it runs */
  kill(pid, SIGKILL);
  ck_assert_int_eq(ps_proc_wait(pid, 5000, &st), 1);
  ck_assert(WIFSIGNALED(st));
  ck_assert_int_eq(WTERMSIG(st), SIGKILL);
}
END_TEST

/* A child reaped elsewhere (or a pid never ours) has ended, but how is
 * unknown: it must neither hang the caller nor pass for a clean exit. */
START_TEST(echild_is_ended_with_status_lost) {
  pid_t pid = sh("exit 0");
  int st;
  ck_assert_int_eq(waitpid(pid, &st, 0), pid); /* someone else reaps it */
  st = 0;
  ck_assert_int_eq(ps_proc_reap(pid, WNOHANG, &st), 1);
  ck_assert_int_eq(st, PS_PROC_STATUS_LOST);
  ck_assert(!WIFEXITED(st));
  ck_assert(!WIFSIGNALED(st));
  ck_assert_int_eq(ps_proc_reap(1, 0, &st), 1); /* init: never our child */
  ck_assert_int_eq(st, PS_PROC_STATUS_LOST);
}
END_TEST

START_TEST(exec_failure_is_exit_127) {
  char *const argv[] = {"/nonexistent/prog", NULL};
  pid_t pid = ps_proc_spawn("/nonexistent/prog", argv, log_path);
  ck_assert_int_gt(pid, 0);
  int st;
  ck_assert_int_eq(ps_proc_wait(pid, 5000, &st), 1);
  ck_assert(WIFEXITED(st));
  ck_assert_int_eq(WEXITSTATUS(st), 127);
}
END_TEST

int main(void) {
  Suite *s = suite_create("proc");
  TCase *tc = tcase_create("proc");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, exit_status_and_log);
  tcase_add_test(tc, running_child_and_deadline);
  tcase_add_test(tc, echild_is_ended_with_status_lost);
  tcase_add_test(tc, exec_failure_is_exit_127);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
