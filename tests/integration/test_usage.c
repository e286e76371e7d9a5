/* Every program keeps the one exit-status rule (common/config.h, README
 * "Configuration"): bad usage exits 2 with a message that names the option
 * and says what is wrong, having started nothing; --help exits 0 and lists
 * the options. Checked on the built binaries, one program per test. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

#define RUN_MS 10000

static const struct {
  const char *bin;
  const char *opt;    /* an option that takes an integer */
  const char *listed; /* an option --help must list */
} programs[] = {
    {"ps-scheduler", "servers", "--heartbeat-timeout-ms"},
    {"ps-server", "heartbeat-ms", "--max-message-bytes"},
    {"ps-worker", "epochs", "--batch-size"},
    {"psctl", "timeout-ms", "--wait-ms"},
    {"ps-bench", "reps", "--windows"},
    {"ps-datagen", "train", "--vocab-max"},
    {"ps-schedsim", "window-s", "--heartbeat-timeout-ms"},
    {"ps-netlag", "delay-us", "--listen"},
};
#define NPROGRAMS (sizeof(programs) / sizeof(programs[0]))

/* Runs bin with up to three arguments and checks that it exits with want and
 * that its output holds every needle. */
static void expect(h_cluster_t *c, int want, const char *bin, const char *a1,
                   const char *a2, const char *a3, const char *const *needles,
                   int nneedles) {
  int st;
  char *out = h_run(c, RUN_MS, &st, bin, a1, a2, a3, NULL);
  ck_assert_msg(out != NULL, "%s %s: could not run", bin, a1);
  ck_assert_msg(st != -1, "%s %s: still running after %d ms", bin, a1, RUN_MS);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == want,
                "%s %s %s: status %d, expected exit %d; it said:\n%s", bin, a1,
                a2 ? a2 : "", st, want, out);
  for (int i = 0; i < nneedles; i++)
    ck_assert_msg(strstr(out, needles[i]) != NULL,
                  "%s %s %s: no \"%s\" in:\n%s", bin, a1, a2 ? a2 : "",
                  needles[i], out);
  free(out);
}

START_TEST(bad_usage_exits_2_and_help_0) {
  const char *bin = programs[_i].bin;
  h_cluster_t c;
  char test[64], flag[64], file_line[128];
  snprintf(test, sizeof(test), "usage_%s", bin);
  h_init(&c, test);
  snprintf(flag, sizeof(flag), "--%s", programs[_i].opt);

  /* A bad value: the option, where it came from, why. */
  const char *bad_value[] = {flag, "(flag)", "\"abc\" is not an integer",
                             "--help"};
  expect(&c, 2, bin, flag, "abc", NULL, bad_value, 4);

  /* An unknown flag. */
  const char *unknown[] = {"unknown option --no-such-flag"};
  expect(&c, 2, bin, "--no-such-flag", NULL, NULL, unknown, 1);

  /* A config file that is not there. */
  const char *missing[] = {"config file /nonexistent/ps.ini", "(flag --config)",
                           "cannot open"};
  expect(&c, 2, bin, "--config", "/nonexistent/ps.ini", NULL, missing, 3);

  /* A config file with a bad value: the file, the line, the option. */
  const char *path = h_path(&c, "bad.ini");
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  snprintf(file_line, sizeof(file_line), "# comment\n%s = abc\n",
           programs[_i].opt);
  fputs(file_line, f);
  fclose(f);
  char where[600];
  snprintf(where, sizeof(where), "(file %s:2)", path);
  const char *bad_file[] = {flag, where, "is not an integer"};
  expect(&c, 2, bin, "--config", path, NULL, bad_file, 3);

  /* --help: exit 0, the options listed. */
  const char *help[] = {flag, programs[_i].listed, "--config"};
  expect(&c, 0, bin, "--help", NULL, NULL, help, 3);
}
END_TEST

/* Values each fine alone, refused together or for what they mean (issue
 * #16): exit 2, the option named, nothing started. */
START_TEST(refused_combinations_exit_2) {
  h_cluster_t c;
  h_init(&c, "usage_combinations");
  const char *ranges[] = {"option --ranges", "fewer than --servers"};
  expect(&c, 2, "ps-scheduler", "--servers=3", "--ranges=2", NULL, ranges, 2);
  const char *batch[] = {"option --read-batch-ms", "above the maximum 100"};
  expect(&c, 2, "ps-scheduler", "--read-batch-ms=101", NULL, NULL, batch, 2);
  /* Issue #15: ps-bench's codecs. */
  const char *codec[] = {"option --codec", "not one of none|fp16|int8|topk"};
  expect(&c, 2, "ps-bench", "--local=2,1", "--codec=gzip", NULL, codec, 2);
  const char *frac[] = {"option --topk-fraction", "above the maximum 1"};
  expect(&c, 2, "ps-bench", "--local=2,1", "--topk-fraction=2", NULL, frac, 2);
  const char *timeout[] = {"scheduler-timeout-ms 500", "at least 2000"};
  expect(&c, 2, "ps-server", "--scheduler-timeout-ms", "500", NULL, timeout, 2);
  const char *listen[] = {"--listen", "numeric HOST:PORT"};
  expect(&c, 2, "ps-netlag", "--to", "127.0.0.1:1", NULL, listen, 2);
  expect(&c, 2, "ps-netlag", "--listen", "nowhere", NULL, listen, 2);
}
END_TEST

int main(void) {
  Suite *s = suite_create("usage");
  TCase *tc = tcase_create("usage");
  tcase_add_loop_test(tc, bad_usage_exits_2_and_help_0, 0, (int)NPROGRAMS);
  tcase_add_test(tc, refused_combinations_exit_2);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
