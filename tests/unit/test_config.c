#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/err.h"
#include "tests/check_run.h"

static int64_t threads, heartbeat_ms;
static double ratio;
static char *name, *bind_addr;
static int mode, verbose, standalone;

static const ps_opt_t opts[] = {
    {"threads", PS_OPT_INT, &threads, "4", 1, 64, NULL, "Worker threads."},
    {"heartbeat-ms", PS_OPT_INT, &heartbeat_ms, "500", 1, 60000, NULL,
     "How often a node tells the scheduler it is alive, in milliseconds."},
    {"ratio", PS_OPT_DOUBLE, &ratio, "0.5", 0, 1, NULL, "A fraction."},
    {"name", PS_OPT_STRING, &name, "ps", 0, 0, NULL, "A name."},
    {"bind", PS_OPT_STRING, &bind_addr, NULL, 0, 0, NULL,
     "The endpoint to bind; a long help text that has to be wrapped because "
     "it does not fit on one line of eighty columns, not even close."},
    {"mode", PS_OPT_ENUM, &mode, "bsp", 0, 0, "bsp|asp", "Consistency."},
    {"verbose", PS_OPT_BOOL, &verbose, "0", 0, 0, NULL, "Say more."},
    {"standalone", PS_OPT_BOOL, &standalone, NULL, 0, 0, NULL, "Alone."},
};
static const ps_config_t cfg = {"ps-test", "A test program.", "[options]", opts,
                                sizeof(opts) / sizeof(opts[0])};

static const char *const env_vars[] = {
    "PS_THREADS", "PS_HEARTBEAT_MS", "PS_RATIO",      "PS_NAME",  "PS_BIND",
    "PS_MODE",    "PS_VERBOSE",      "PS_STANDALONE", "PS_CONFIG"};

static char err[512];

static void setup(void) {
  for (size_t i = 0; i < sizeof(env_vars) / sizeof(env_vars[0]); i++)
    unsetenv(env_vars[i]);
  err[0] = '\0';
}

static void teardown(void) {
  ps_config_free(&cfg);
}

/* Loads with argv = {"ps-test", args..., NULL}. A load overwrites STRING
 * targets without freeing them, so the previous load's strings go first. */
static int load_args(const char *first, ...) {
  char *argv[32] = {"ps-test"};
  int argc = 1;
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a != NULL; a = va_arg(ap, const char *))
    argv[argc++] = (char *)a;
  va_end(ap);
  ps_config_free(&cfg);
  return ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
}

#define LOAD(...) load_args(__VA_ARGS__, (const char *)NULL)

static void expect_refused(const char *want, int rc) {
  ck_assert_int_eq(rc, PS_ERR_CONFIG);
  ck_assert_msg(strstr(err, want) != NULL, "message \"%s\" lacks \"%s\"", err,
                want);
  ck_assert_msg(strchr(err, '\n') == NULL, "message is not one line: %s", err);
}

/* Writes text to a new file under /tmp, named in path (64 bytes); the
 * caller unlinks it. */
static void write_ini(char *path, const char *text) {
  snprintf(path, 64, "/tmp/ps_test_config_XXXXXX");
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  size_t len = strlen(text);
  ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
  close(fd);
}

START_TEST(test_defaults) {
  ck_assert_int_eq(ps_config_load(&cfg, 1, (char *[]){"ps-test", NULL}, NULL, 0,
                                  NULL, err, sizeof(err)),
                   PS_OK);
  ck_assert_int_eq(threads, 4);
  ck_assert_int_eq(heartbeat_ms, 500);
  ck_assert_double_eq(ratio, 0.5);
  ck_assert_str_eq(name, "ps");
  ck_assert_ptr_null(bind_addr);
  ck_assert_int_eq(mode, 0);
  ck_assert_int_eq(verbose, 0);
  ck_assert_int_eq(standalone, 0);
}
END_TEST

START_TEST(test_precedence) {
  char path[64];
  write_ini(path,
            "; comment\n"
            "[server]\n"
            "threads = 8\n"
            "heartbeat_ms = 100\n"
            "[other]\n"
            "mode = asp\n"
            "name = fromfile\n"
            "bind = tcp://*:7001\n");
  setenv("PS_THREADS", "16", 1);
  setenv("PS_NAME", "fromenv", 1);
  ck_assert_int_eq(LOAD("--config", path, "--threads", "32"), PS_OK);
  ck_assert_int_eq(threads, 32);       /* flag over env over file */
  ck_assert_int_eq(heartbeat_ms, 100); /* file, key with underscores */
  ck_assert_int_eq(mode, 1);           /* file, any section */
  ck_assert_str_eq(name, "fromenv");   /* env over file */
  ck_assert_str_eq(bind_addr, "tcp://*:7001");
  ck_assert_double_eq(ratio, 0.5); /* default */

  /* --name=value, and a string overridden at every level frees the old. */
  ck_assert_int_eq(LOAD("--config="
                        "/dev/null",
                        "--name=fromflag"),
                   PS_OK);
  ck_assert_str_eq(name, "fromflag");
  ck_assert_int_eq(threads, 16);
  unlink(path);
}
END_TEST

START_TEST(test_config_from_env_and_flag_wins) {
  char env_path[64], flag_path[64];
  write_ini(env_path, "threads = 3\nratio = 0.25\n");
  write_ini(flag_path, "threads = 5\n");
  setenv("PS_CONFIG", env_path, 1);
  ck_assert_int_eq(LOAD("--verbose"), PS_OK);
  ck_assert_int_eq(threads, 3);
  ck_assert_double_eq(ratio, 0.25);
  /* Only one file is read: the flag's. */
  ck_assert_int_eq(LOAD("--config", flag_path), PS_OK);
  ck_assert_int_eq(threads, 5);
  ck_assert_double_eq(ratio, 0.5);
  unlink(env_path);
  unlink(flag_path);
}
END_TEST

START_TEST(test_file_errors) {
  char path[64], want[256];
  write_ini(path, "threads = 2\n\nthreads = abc\nbogus = 1\n");
  snprintf(want, sizeof(want),
           "option --threads (file %s:3): value \"abc\" is not an integer",
           path);
  expect_refused(want, LOAD("--config", path));
  unlink(path);

  write_ini(path, "[s]\nbogus_key = 1\n");
  snprintf(want, sizeof(want), "unknown option \"bogus_key\" (file %s:2)",
           path);
  expect_refused(want, LOAD("--config", path));
  unlink(path);

  write_ini(path, "threads = 2\nthis line has no equals sign\nthreads = x\n");
  snprintf(want, sizeof(want), "%s:2: syntax error", path);
  expect_refused(want, LOAD("--config", path));

  unlink(path);

  /* inih reads at most 200 bytes a line; a longer one must not be cut into
   * a short value and a stray line. */
  char text[400];
  snprintf(text, sizeof(text), "threads = 2\nname = %0300d\n", 0);
  write_ini(path, text);
  snprintf(want, sizeof(want), "config file %s:2: line longer than", path);
  expect_refused(want, LOAD("--config", path));

  unlink(path);
  expect_refused("cannot open", LOAD("--config", path));
  setenv("PS_CONFIG", path, 1);
  expect_refused("(env PS_CONFIG): cannot open", LOAD("--verbose"));
  expect_refused("option --config (flag): missing value", LOAD("--config"));
}
END_TEST

START_TEST(test_int_bounds_and_syntax) {
  expect_refused("option --threads (flag): value 0 is below the minimum 1",
                 LOAD("--threads", "0"));
  expect_refused("option --threads (flag): value 65 is above the maximum 64",
                 LOAD("--threads=65"));
  expect_refused("option --threads (flag): value -1 is below the minimum 1",
                 LOAD("--threads", "-1"));
  expect_refused("value \"12x\" is not an integer", LOAD("--threads=12x"));
  expect_refused("value \" 5\" is not an integer", LOAD("--threads= 5"));
  expect_refused("value \"\" is not an integer", LOAD("--threads="));
  expect_refused("value \"0x10\" is not an integer", LOAD("--threads=0x10"));
  expect_refused("does not fit in 64 bits",
                 LOAD("--threads=99999999999999999999"));
  setenv("PS_HEARTBEAT_MS", "abc", 1);
  expect_refused(
      "option --heartbeat-ms (env PS_HEARTBEAT_MS): value \"abc\" is not an "
      "integer",
      LOAD("--verbose"));
  setenv("PS_HEARTBEAT_MS", "60001", 1);
  expect_refused("value 60001 is above the maximum 60000", LOAD("--verbose"));
  /* The bounds themselves are allowed: nothing is clamped or off by one. */
  setenv("PS_HEARTBEAT_MS", "60000", 1);
  ck_assert_int_eq(LOAD("--threads", "1"), PS_OK);
  ck_assert_int_eq(heartbeat_ms, 60000);
  ck_assert_int_eq(threads, 1);
  ck_assert_int_eq(LOAD("--threads=+64"), PS_OK);
  ck_assert_int_eq(threads, 64);
}
END_TEST

START_TEST(test_double_bounds_and_syntax) {
  expect_refused("option --ratio (flag): value 1.5 is above the maximum 1",
                 LOAD("--ratio", "1.5"));
  expect_refused("value -0.1 is below the minimum 0", LOAD("--ratio=-0.1"));
  expect_refused("value nan is not a finite number", LOAD("--ratio=nan"));
  expect_refused("value inf is not a finite number", LOAD("--ratio=inf"));
  expect_refused("value \"abc\" is not a number", LOAD("--ratio=abc"));
  expect_refused("value \"0.5.1\" is not a number", LOAD("--ratio=0.5.1"));
  ck_assert_int_eq(LOAD("--ratio=1"), PS_OK);
  ck_assert_double_eq(ratio, 1.0);
  ck_assert_int_eq(LOAD("--ratio", "2.5e-1"), PS_OK);
  ck_assert_double_eq(ratio, 0.25);
}
END_TEST

START_TEST(test_enum) {
  ck_assert_int_eq(LOAD("--mode", "asp"), PS_OK);
  ck_assert_int_eq(mode, 1);
  ck_assert_int_eq(LOAD("--mode=bsp"), PS_OK);
  ck_assert_int_eq(mode, 0);
  expect_refused("option --mode (flag): value \"ssp\" is not one of bsp|asp",
                 LOAD("--mode", "ssp"));
  /* Exact match only: no case folding, no prefixes, no empty choice. */
  expect_refused("is not one of", LOAD("--mode=BSP"));
  expect_refused("is not one of", LOAD("--mode=bs"));
  expect_refused("is not one of", LOAD("--mode=bsp|asp"));
  expect_refused("is not one of", LOAD("--mode="));
  setenv("PS_MODE", "async", 1);
  expect_refused("option --mode (env PS_MODE)", LOAD("--verbose"));
}
END_TEST

START_TEST(test_unknown_and_stray_arguments) {
  expect_refused("unknown option --bogus", LOAD("--bogus"));
  expect_refused("unknown option --bogus", LOAD("--bogus=1"));
  expect_refused("unknown option --thread", LOAD("--thread=2"));
  expect_refused("unexpected argument \"stray\"", LOAD("stray"));
  expect_refused("unexpected argument \"-v\"", LOAD("-v"));
  expect_refused("option --threads (flag): missing value", LOAD("--threads"));
  expect_refused("option --threads (flag): missing value",
                 LOAD("--threads", "--verbose"));
}
END_TEST

START_TEST(test_positional) {
  const char *pos[2];
  int npos = -1;
  char *argv[] = {"psctl", "status", "--verbose", "--", "--not-a-flag", NULL};
  ck_assert_int_eq(
      ps_config_load(&cfg, 5, argv, pos, 2, &npos, err, sizeof(err)), PS_OK);
  ck_assert_int_eq(npos, 2);
  ck_assert_str_eq(pos[0], "status");
  ck_assert_str_eq(pos[1], "--not-a-flag");
  ck_assert_int_eq(verbose, 1);
  char *argv2[] = {"psctl", "a", "b", "c", NULL};
  ps_config_free(&cfg);
  ck_assert_int_eq(
      ps_config_load(&cfg, 4, argv2, pos, 2, &npos, err, sizeof(err)),
      PS_ERR_CONFIG);
  ck_assert_ptr_nonnull(strstr(err, "too many arguments: \"c\""));
}
END_TEST

START_TEST(test_bool) {
  ck_assert_int_eq(LOAD("--verbose", "--standalone"), PS_OK);
  ck_assert_int_eq(verbose, 1);
  ck_assert_int_eq(standalone, 1);
  ck_assert_int_eq(LOAD("--verbose=false", "--standalone=no"), PS_OK);
  ck_assert_int_eq(verbose, 0);
  ck_assert_int_eq(standalone, 0);
  setenv("PS_VERBOSE", "yes", 1);
  ck_assert_int_eq(LOAD("--standalone=true"), PS_OK);
  ck_assert_int_eq(verbose, 1);
  ck_assert_int_eq(standalone, 1);
  ck_assert_int_eq(LOAD("--verbose=0"), PS_OK);
  ck_assert_int_eq(verbose, 0);
  expect_refused("option --verbose (flag): value \"maybe\" is not a boolean",
                 LOAD("--verbose=maybe"));
  setenv("PS_VERBOSE", "2", 1);
  expect_refused("option --verbose (env PS_VERBOSE)", LOAD("--standalone"));
  unsetenv("PS_VERBOSE");
  /* A bare bool flag does not swallow the next argument. */
  expect_refused("unexpected argument \"false\"", LOAD("--verbose", "false"));
}
END_TEST

/* Runs a load with stdout sent to a file; returns the load's result and
 * what it printed (caller frees). */
static int load_capturing(char **out, const char *arg, const char *arg2) {
  char path[64];
  write_ini(path, "");
  fflush(stdout);
  int saved = dup(STDOUT_FILENO);
  FILE *f = freopen(path, "w", stdout);
  ck_assert_ptr_nonnull(f);
  int rc = LOAD(arg, arg2);
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  FILE *in = fopen(path, "r");
  ck_assert_ptr_nonnull(in);
  *out = calloc(1, 65536);
  size_t n = fread(*out, 1, 65535, in);
  (*out)[n] = '\0';
  fclose(in);
  unlink(path);
  return rc;
}

START_TEST(test_help_and_version) {
  char *out;
  ck_assert_int_eq(load_capturing(&out, "--help", NULL), 1);
  ck_assert_ptr_nonnull(strstr(out, "Usage: ps-test [options]"));
  ck_assert_ptr_nonnull(strstr(out, "--heartbeat-ms"));
  free(out);
  ck_assert_int_eq(load_capturing(&out, "--version", NULL), 1);
  ck_assert_str_eq(out, "ps-test 0.1.0\n");
  free(out);
  /* --help wins over a bad flag next to it. */
  ck_assert_int_eq(load_capturing(&out, "--bogus", "--help"), 1);
  ck_assert_ptr_nonnull(strstr(out, "Usage:"));
  free(out);
}
END_TEST

START_TEST(test_usage_lists_everything) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ck_assert_ptr_nonnull(f);
  ps_config_usage(&cfg, f);
  fclose(f);
  const char *want[] = {
      "--threads=INT",   "[integer in [1, 64]; default 4; env PS_THREADS]",
      "PS_HEARTBEAT_MS", "--ratio=NUM",
      "--bind=STR",      "default none",
      "one of bsp|asp",  "--verbose",
      "PS_STANDALONE",   "--config=FILE",
      "PS_CONFIG",       "--help",
      "--version",       "A test program.",
      "not even close."};
  for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
    ck_assert_msg(strstr(buf, want[i]) != NULL, "usage lacks \"%s\"", want[i]);
  for (const char *line = buf; *line != '\0';) {
    size_t n = strcspn(line, "\n");
    ck_assert_msg(n <= 80, "line of %zu columns: %.*s", n, (int)n, line);
    line += n + (line[n] == '\n');
  }
  free(buf);
}
END_TEST

START_TEST(test_strings_freed) {
  ck_assert_int_eq(LOAD("--name", "x", "--bind=tcp://*:1"), PS_OK);
  ck_assert_str_eq(name, "x");
  ps_config_free(&cfg);
  ck_assert_ptr_null(name);
  ck_assert_ptr_null(bind_addr);
  ps_config_free(&cfg); /* twice is harmless */
  /* A refused load leaves no strings behind. */
  expect_refused("unknown option", LOAD("--name=y", "--bogus"));
  ck_assert_ptr_null(name);
}
END_TEST

START_TEST(test_bad_default_refused) {
  static int64_t v;
  const ps_opt_t bad[] = {
      {"workers", PS_OPT_INT, &v, "0", 1, 8, NULL, "Workers."}};
  const ps_config_t c = {"ps-test", NULL, NULL, bad, 1};
  ck_assert_int_eq(ps_config_load(&c, 1, (char *[]){"ps-test", NULL}, NULL, 0,
                                  NULL, err, sizeof(err)),
                   PS_ERR_CONFIG);
  ck_assert_str_eq(
      err, "option --workers (default): value 0 is below the minimum 1");
}
END_TEST

int main(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_precedence);
  tcase_add_test(tc, test_config_from_env_and_flag_wins);
  tcase_add_test(tc, test_file_errors);
  tcase_add_test(tc, test_int_bounds_and_syntax);
  tcase_add_test(tc, test_double_bounds_and_syntax);
  tcase_add_test(tc, test_enum);
  tcase_add_test(tc, test_unknown_and_stray_arguments);
  tcase_add_test(tc, test_positional);
  tcase_add_test(tc, test_bool);
  tcase_add_test(tc, test_help_and_version);
  tcase_add_test(tc, test_usage_lists_everything);
  tcase_add_test(tc, test_strings_freed);
  tcase_add_test(tc, test_bad_default_refused);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
