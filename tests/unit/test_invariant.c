/* Invariants: a broken one says what broke and where, then aborts; one that
 * holds costs nothing visible. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/invariant.h"
#include "tests/check_run.h"

/* Runs fn in a child with stderr into a pipe; returns what it wrote and its
 * wait status. */
static void run_child(void (*fn)(int), int arg, char *out, size_t len,
                      int *status) {
  int fds[2];
  ck_assert_int_eq(pipe(fds), 0);
  fflush(stderr);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  size_t got = 0;
  ssize_t n;
  while (got < len - 1 && (n = read(fds[0], out + got, len - 1 - got)) > 0)
    got += (size_t)n;
  out[got] = '\0';
  close(fds[0]);
  ck_assert_int_eq(waitpid(pid, status, 0), pid);
}

static void check_batch(int n) {
  PS_ASSERT(n > 0 && n <= 32);
}

static void never_here(int kind) {
  PS_NEVER("unknown kind %d", kind);
}

START_TEST(assert_that_holds_returns) {
  char out[1024];
  int st;
  run_child(check_batch, 8, out, sizeof(out), &st);
  ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(broken_assert_names_condition_and_place) {
  char out[1024];
  int st;
  run_child(check_batch, 40, out, sizeof(out), &st);
  ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  ck_assert_msg(strstr(out, "event=invariant_broken") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "check=\"PS_ASSERT(n > 0 && n <= 32)\"") != NULL,
                "%s", out);
  /* The path is the one the code uses, relative to the source root. */
  ck_assert_msg(strstr(out, " at=tests/unit/test_invariant.c:") != NULL, "%s",
                out);
  ck_assert_msg(strstr(out, " func=check_batch") != NULL, "%s", out);
}
END_TEST

START_TEST(never_formats_its_message) {
  char out[1024];
  int st;
  run_child(never_here, 7, out, sizeof(out), &st);
  ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
  ck_assert_msg(strstr(out, "check=\"PS_NEVER: unknown kind 7\"") != NULL, "%s",
                out);
  ck_assert_msg(strstr(out, " func=never_here") != NULL, "%s", out);
}
END_TEST

int main(void) {
  Suite *s = suite_create("invariant");
  TCase *tc = tcase_create("invariant");
  tcase_add_test(tc, assert_that_holds_returns);
  tcase_add_test(tc, broken_assert_names_condition_and_place);
  tcase_add_test(tc, never_formats_its_message);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
