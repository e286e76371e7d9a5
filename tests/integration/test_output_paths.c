/* Output paths are checked at start (issue 10, item 5): a --state-file,
 * --report or --dump-weights that cannot be written (its directory does
 * not exist, or it is a directory) is refused before any work, with exit 2
 * (bad configuration), the option, the path and the reason; the check
 * leaves nothing behind. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

/* Runs bin with up to 8 args; it must exit 2 within 10 s and its output
 * name option and path. */
static void refused(h_cluster_t *c, const char *option, const char *path,
                    const char *bin, const char *a1, const char *a2,
                    const char *a3, const char *a4, const char *a5,
                    const char *a6) {
  int status = 0;
  uint64_t t0 = h_now_ms();
  char *out = h_run(c, 10000, &status, bin, a1, a2, a3, a4, a5, a6, NULL);
  uint64_t took = h_now_ms() - t0;
  fprintf(stderr, "%s %s %s: status %d in %llu ms: %s", bin, option, path,
          status, (unsigned long long)took, out ? out : "(none)\n");
  ck_assert_msg(out != NULL, "%s did not start", bin);
  ck_assert_msg(status != -1, "%s %s %s: still running after 10 s", bin, option,
                path);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 2,
                "%s %s %s: status %d, want exit 2: %s", bin, option, path,
                status, out);
  ck_assert_msg(strstr(out, option) != NULL && strstr(out, path) != NULL,
                "%s: the refusal names neither %s nor %s: %s", bin, option,
                path, out);
  free(out);
}

static int entries(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  closedir(d);
  return n;
}

START_TEST(bad_output_paths_refused_at_start) {
  h_cluster_t c;
  h_init(&c, "output_paths");
  char missing[600], dir[600], dead_ep[64];
  snprintf(missing, sizeof(missing), "%s/no/such/dir/out", c.dir);
  snprintf(dir, sizeof(dir), "%s/a_dir", c.dir);
  ck_assert(mkdir(dir, 0755) == 0);
  snprintf(dead_ep, sizeof(dead_ep), "tcp://127.0.0.1:%d", h_free_port());

  refused(&c, "--state-file", missing, "ps-scheduler", "--bind", c.sched_ep,
          "--state-file", missing, NULL, NULL);
  refused(&c, "--state-file", dir, "ps-scheduler", "--bind", c.sched_ep,
          "--state-file", dir, NULL, NULL);
  /* The worker would otherwise load its data, wait for the cluster and
   * train before it found out. */
  refused(&c, "--report", missing, "ps-worker", "--scheduler", dead_ep,
          "--connect-timeout-ms", "5000", "--report", missing);
  refused(&c, "--dump-weights", missing, "ps-worker", "--scheduler", dead_ep,
          "--connect-timeout-ms", "5000", "--dump-weights", missing);
  refused(&c, "--report", dir, "ps-worker", "--scheduler", dead_ep,
          "--connect-timeout-ms", "5000", "--report", dir);
  /* Nothing left behind by the checks. */
  ck_assert_int_eq(entries(dir), 0);
}
END_TEST

/* A writable path passes the check and the check leaves no file there: the
 * state file is then written by the scheduler itself. */
START_TEST(good_output_path_accepted) {
  h_cluster_t c;
  h_init(&c, "output_paths_good");
  char dir[600];
  snprintf(dir, sizeof(dir), "%s/state", c.dir);
  ck_assert(mkdir(dir, 0755) == 0);
  char state[700];
  snprintf(state, sizeof(state), "%s/sched.state", dir);
  h_proc_t *sched = h_spawn(&c, "scheduler", "ps-scheduler", "--bind",
                            c.sched_ep, "--state-file", state, NULL);
  int up = h_wait_log(sched->log, "event=listening", 10000);
  if (!up) h_dump_logs(&c);
  ck_assert_msg(up, "the scheduler did not start");
  ck_assert_msg(!h_wait_exit(sched, 500), "the scheduler exited");
  struct dirent *e;
  DIR *d = opendir(dir);
  ck_assert(d != NULL);
  while ((e = readdir(d)) != NULL)
    ck_assert_msg(strstr(e->d_name, "probe") == NULL, "left behind: %s",
                  e->d_name);
  closedir(d);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("output_paths");
  TCase *tc = tcase_create("output_paths");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, bad_output_paths_refused_at_start);
  tcase_add_test(tc, good_output_path_accepted);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
