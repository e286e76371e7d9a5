/* psctl top (issue #12): in a training cluster whose daemons serve
 * /metrics, every node tells the scheduler where (psctl status --json shows
 * each one's metrics_address, the port it was started with); `psctl top -n
 * 2 --json` prints exactly two JSON objects, each listing every node of
 * the status with the same role, the servers pushed to (pushes/s > 0, bytes
 * in > 0) and the workers stepping with a finite loss. Without a terminal
 * the table is printed as plain snapshots (no escape sequences). A
 * scheduler that does not answer is exit 1, bad usage exit 2. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "scrape.h"
#include "tests/check_run.h"

static int exit_code(int status) {
  return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The JSON object of node id in one line of top's output, copied into out
 * (node objects hold no nested object); 0 if it has none. */
static int node_object(const char *line, unsigned id, char *out, size_t len) {
  char pat[32];
  snprintf(pat, sizeof(pat), "{\"id\":%u,", id);
  const char *p = strstr(line, pat);
  if (p == NULL) return 0;
  const char *end = strchr(p, '}');
  if (end == NULL || (size_t)(end - p + 1) >= len) return 0;
  memcpy(out, p, (size_t)(end - p + 1));
  out[end - p + 1] = '\0';
  return 1;
}

/* The value of "key":"..." in obj, into out; 0 if absent. */
static int json_str(const char *obj, const char *key, char *out, size_t len) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":\"", key);
  const char *p = strstr(obj, pat);
  if (p == NULL) return 0;
  p += strlen(pat);
  const char *q = strchr(p, '"');
  if (q == NULL || (size_t)(q - p) >= len) return 0;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = '\0';
  return 1;
}

START_TEST(test_top_json) {
  h_cluster_t c;
  h_init(&c, "top");
  h_mcluster_t m;
  /* Three epochs: the job still trains while top samples (the test
   * stops it once it has looked). */
  h_mcluster_start(&c, &m, "3", "0");
  double v;
  ck_assert_msg(
      h_scrape_wait_ge(m.port[3], "ps_worker_steps_total", 20, 90000, &v),
      "worker0 did not reach 20 steps (ps_worker_steps_total %g)", v);

  /* Every node's metrics address is the one it was started with. */
  char *status_json = h_status_json(&c, 10000);
  ck_assert_ptr_nonnull(status_json);
  h_node_t nodes[16];
  int nn = h_status_nodes(status_json, nodes, 16);
  ck_assert_int_eq(nn, 4);
  int servers = 0, workers = 0;
  for (int i = 0; i < nn; i++) {
    char obj[2048], maddr[128] = "";
    ck_assert(node_object(status_json, nodes[i].id, obj, sizeof(obj)));
    ck_assert(json_str(obj, "metrics_address", maddr, sizeof(maddr)));
    int port = 0;
    ck_assert_msg(sscanf(maddr, "127.0.0.1:%d", &port) == 1,
                  "node %u metrics_address \"%s\"", nodes[i].id, maddr);
    if (strcmp(nodes[i].role, "server") == 0) {
      servers++;
      ck_assert_msg(port == m.port[1] || port == m.port[2],
                    "server %u advertises port %d, started on %d or %d",
                    nodes[i].id, port, m.port[1], m.port[2]);
    } else {
      workers++;
      ck_assert_str_eq(nodes[i].role, "worker");
      ck_assert_msg(port == m.port[3] || port == m.port[4],
                    "worker %u advertises port %d, started on %d or %d",
                    nodes[i].id, port, m.port[3], m.port[4]);
    }
  }
  ck_assert_int_eq(servers, 2);
  ck_assert_int_eq(workers, 2);

  int st;
  char *out = h_run(&c, 30000, &st, "psctl", "--scheduler", c.sched_ep, "top",
                    "-n", "2", "--json", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(exit_code(st) == 0, "psctl top exit %d: %s", exit_code(st),
                out);
  /* Two objects, one per line, nothing else. */
  char *line2 = strchr(out, '\n');
  ck_assert_msg(line2 && out[0] == '{', "not JSON lines: %s", out);
  *line2++ = '\0';
  char *end = strchr(line2, '\n');
  ck_assert_msg(end && end[1] == '\0' && line2[0] == '{',
                "not exactly two JSON lines: %s", line2);
  *end = '\0';
  const char *lines[2] = {out, line2};
  for (int l = 0; l < 2; l++) {
    ck_assert_msg(strstr(lines[l], "\"time_unix_ms\":") == lines[l] + 1,
                  "line %d: %s", l, lines[l]);
    for (int i = 0; i < nn; i++) {
      char obj[2048], role[16] = "", state[16] = "";
      ck_assert_msg(node_object(lines[l], nodes[i].id, obj, sizeof(obj)),
                    "top line %d lacks node %u: %s", l, nodes[i].id, lines[l]);
      ck_assert(json_str(obj, "role", role, sizeof(role)));
      ck_assert(json_str(obj, "state", state, sizeof(state)));
      ck_assert_msg(strcmp(role, nodes[i].role) == 0,
                    "node %u: top says %s, status says %s", nodes[i].id, role,
                    nodes[i].role);
      ck_assert_str_eq(state, "alive");
      ck_assert_msg(strstr(obj, "\"scraped\":true") != NULL, "%s", obj);
      if (strcmp(role, "server") == 0) {
        double pushes = h_json_number(obj, "pushes_per_sec");
        double pulls = h_json_number(obj, "pulls_per_sec");
        double mb = h_json_number(obj, "mb_in_per_sec");
        ck_assert_msg(pushes > 0 && pulls > 0 && mb > 0,
                      "server %u: pushes/s %g pulls/s %g MB/s %g: %s",
                      nodes[i].id, pushes, pulls, mb, obj);
        ck_assert(h_json_number(obj, "primary_of") == 1);
        ck_assert(h_json_number(obj, "backup_of") == 1);
      } else {
        double steps = h_json_number(obj, "steps_per_sec");
        double samples = h_json_number(obj, "samples_per_sec");
        double loss = h_json_number(obj, "loss");
        ck_assert_msg(steps > 0 && samples > 0 && isfinite(loss) && loss > 0,
                      "worker %u: steps/s %g samples/s %g loss %g: %s",
                      nodes[i].id, steps, samples, loss, obj);
        /* Batch 32 per step: the two rates are one figure. */
        ck_assert_msg(fabs(samples - 32 * steps) <= 0.01 * samples + 1,
                      "worker %u: %g samples/s for %g steps/s", nodes[i].id,
                      samples, steps);
      }
    }
  }
  free(out);

  /* Not a terminal: plain snapshots, one after the other. */
  out = h_run(&c, 30000, &st, "psctl", "--scheduler", c.sched_ep, "top",
              "--iterations", "2", "--interval-ms", "300", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(exit_code(st) == 0, "psctl top exit %d: %s", exit_code(st),
                out);
  ck_assert_msg(strchr(out, '\033') == NULL, "escape sequences in: %s", out);
  const char *first = strstr(out, "PUSH/S");
  ck_assert_msg(first && strstr(first + 1, "PUSH/S"), "two tables? %s", out);
  for (int i = 0; i < nn; i++)
    if (strcmp(nodes[i].role, "server") == 0)
      ck_assert_msg(strstr(out, nodes[i].address), "no %s in: %s",
                    nodes[i].address, out);
  free(out);
  free(status_json);

  /* Ends the job (and every daemon) the clean way. */
  kill(m.worker[1]->pid, SIGTERM);
  char why[512];
  ck_assert_msg(h_wait_exit0(&c, m.sched, 60000, why, sizeof(why)), "%s", why);
  h_kill_all(&c);
}
END_TEST

START_TEST(test_top_failures) {
  h_cluster_t c;
  h_init(&c, "top_failures");
  int st;
  /* Nothing listens there. */
  uint64_t t0 = h_now_ms();
  char *out = h_run(&c, 20000, &st, "psctl", "--scheduler", c.sched_ep,
                    "--timeout-ms", "500", "top", "-n", "1", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(exit_code(st) == 1 && strstr(out, "no answer from the "
                                                  "scheduler"),
                "exit %d: %s", exit_code(st), out);
  ck_assert_msg(h_now_ms() - t0 < 10000, "took %llu ms",
                (unsigned long long)(h_now_ms() - t0));
  free(out);
  const char *bad[][2] = {{"-n", "-1"}, {"--interval-ms", "5"},
                          {"--iterations", "two"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    out = h_run(&c, 20000, &st, "psctl", "top", bad[i][0], bad[i][1], NULL);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(exit_code(st) == 2 && strstr(out, "--"),
                  "top %s %s: exit %d: %s", bad[i][0], bad[i][1],
                  exit_code(st), out);
    free(out);
  }
  out = h_run(&c, 20000, &st, "psctl", "--help", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(exit_code(st) == 0 && strstr(out, "top") &&
                    strstr(out, "--iterations") && strstr(out, "--interval-ms"),
                "%s", out);
  free(out);
}
END_TEST

int main(void) {
  Suite *s = suite_create("top");
  TCase *tc = tcase_create("cluster");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, test_top_json);
  tcase_add_test(tc, test_top_failures);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
