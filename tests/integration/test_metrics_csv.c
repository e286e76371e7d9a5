/* ps-worker --metrics-csv and deploy/plot.sh (issue #12). A worker of a
 * real cluster trains 400 steps: its CSV has the documented header, then
 * progress rows whose step grows, each with a finite loss, a learning rate
 * and samples/s, and last a final row at step 400 with the test accuracy
 * of a model that learned (> 0.5 on 10 classes). plot.sh draws it into a
 * PNG (the format's signature, and more than a blank image's bytes). A CSV
 * path that cannot be written is refused at start (exit 2).
 *
 * Without gnuplot the plot part cannot run: the test then reports itself
 * skipped (77), saying why, once the CSV part passed. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "scrape.h"
#include "tests/check_run.h"

#define CSV_HEADER                                                   \
  "time_s,kind,epoch,step,steps,loss,lr,samples_per_sec,test_loss," \
  "test_accuracy"

/* Trains 400 steps in a cluster of one server and one worker that writes
 * the CSV to the test's dir; returns its path. */
static const char *train(h_cluster_t *c) {
  static char csv[700];
  snprintf(csv, sizeof(csv), "%s", h_path(c, "run.csv"));
  h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep, "--servers",
          "1", "--workers", "1", "--heartbeat-timeout-ms", "2000", NULL);
  h_spawn(c, "server", "ps-server", "--scheduler", c->sched_ep, NULL);
  h_proc_t *w = h_spawn(c, "worker", "ps-worker", "--scheduler", c->sched_ep,
                        "--epochs", "1", "--max-steps", "400",
                        "--progress-ms", "100", "--metrics-csv", csv, NULL);
  char why[512];
  ck_assert_msg(h_wait_exit0(c, w, 120000, why, sizeof(why)), "%s", why);
  return csv;
}

/* Field i (0-based) of a CSV line, into out. */
static void field(const char *line, int i, char *out, size_t len) {
  const char *p = line;
  for (int k = 0; k < i && p; k++) {
    p = strchr(p, ',');
    if (p) p++;
  }
  size_t n = p ? strcspn(p, ",\n") : 0;
  if (n >= len) n = len - 1;
  memcpy(out, p ? p : "", n);
  out[n] = '\0';
}

static double num(const char *line, int i) {
  char f[64], *end;
  field(line, i, f, sizeof(f));
  double v = strtod(f, &end);
  return f[0] && *end == '\0' ? v : NAN;
}

START_TEST(test_csv_rows) {
  h_cluster_t c;
  h_init(&c, "metrics_csv");
  const char *csv = train(&c);
  char *text = h_read_file(csv, NULL);
  ck_assert_msg(text != NULL, "no CSV at %s", csv);
  ck_assert_msg(strncmp(text, CSV_HEADER "\n", strlen(CSV_HEADER) + 1) == 0,
                "header: %.200s", text);
  int progress = 0, finals = 0, rows = 0;
  double last_step = 0, last_progress_step = -1, last_time = 0;
  char last_kind[16] = "";
  for (char *line = strchr(text, '\n') + 1; *line;) {
    char *nl = strchr(line, '\n');
    ck_assert_msg(nl != NULL, "a row without its end: %s", line);
    *nl = '\0';
    char kind[16];
    field(line, 1, kind, sizeof(kind));
    double t = num(line, 0), step = num(line, 3), steps = num(line, 4);
    double loss = num(line, 5), lr = num(line, 6), sps = num(line, 7);
    ck_assert_msg(t >= last_time && step >= last_step && steps == 400 &&
                      step <= 400 && isfinite(loss) && loss > 0 &&
                      isfinite(lr) && lr >= 0,
                  "row %d: %s", rows, line);
    if (strcmp(kind, "progress") == 0) {
      ck_assert_msg(step > last_progress_step && sps > 0,
                    "progress row %d: %s", progress, line);
      ck_assert_msg(isnan(num(line, 9)), "a test accuracy mid-epoch: %s",
                    line);
      last_progress_step = step;
      progress++;
    } else if (strcmp(kind, "final") == 0) {
      double acc = num(line, 9);
      ck_assert_msg(step == 400 && acc > 0.5 && acc <= 1 &&
                        isfinite(num(line, 8)),
                    "final row: %s", line);
      finals++;
    } else {
      ck_abort_msg("row of kind \"%s\": %s", kind, line);
    }
    snprintf(last_kind, sizeof(last_kind), "%s", kind);
    last_time = t;
    last_step = step;
    rows++;
    line = nl + 1;
  }
  ck_assert_msg(progress >= 2, "%d progress rows in: %s", progress, text);
  ck_assert_int_eq(finals, 1);
  ck_assert_str_eq(last_kind, "final");
  free(text);

  int st;
  char *out = h_run(&c, 20000, &st, "ps-worker", "--standalone",
                    "--metrics-csv", "/nonexistent-dir/run.csv", NULL);
  ck_assert_ptr_nonnull(out);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 2 &&
                    strstr(out, "--metrics-csv"),
                "a CSV path that cannot be written: status %d: %s", st, out);
  free(out);
  h_kill_all(&c);
}
END_TEST

START_TEST(test_plot) {
  h_cluster_t c;
  h_init(&c, "metrics_csv_plot");
  const char *csv = train(&c);
  const char *png = h_path(&c, "run.png");
  const char *argv[] = {PS_SOURCE_DIR "/deploy/plot.sh", csv, png, NULL};
  h_proc_t *p = h_spawnv(&c, "plot", argv);
  ck_assert_msg(h_wait_exit(p, 60000), "plot.sh did not finish in 60 s");
  char *log = h_read_file(p->log, NULL);
  ck_assert_msg(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
                "plot.sh: status %d: %s", p->status, log ? log : "");
  ck_assert_msg(log && strstr(log, png), "plot.sh did not name %s: %s", png,
                log ? log : "");
  free(log);
  size_t len = 0;
  char *img = h_read_file(png, &len);
  ck_assert_msg(img != NULL, "no PNG at %s", png);
  ck_assert_msg(len >= 8 && memcmp(img, "\x89PNG\r\n\x1a\n", 8) == 0,
                "%s is not a PNG", png);
  /* Three panels of lines and text: a blank 900x1000 PNG is ~3 KB. */
  ck_assert_msg(len > 10000, "a PNG of %zu bytes", len);
  free(img);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  int have_gnuplot = h_which("gnuplot") != NULL;
  Suite *s = suite_create("metrics_csv");
  TCase *tc = tcase_create("worker");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, test_csv_rows);
  if (have_gnuplot) tcase_add_test(tc, test_plot);
  suite_add_tcase(s, tc);
  int rc = ps_check_run(s);
  if (rc == 0 && !have_gnuplot) {
    fprintf(stderr,
            "SKIPPED: the plot part: gnuplot not found on PATH (Debian "
            "package gnuplot-nox; deploy/install-deps.sh --tests installs "
            "it); the CSV part passed\n");
    return 77;
  }
  return rc;
}
