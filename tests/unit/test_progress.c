/* worker/progress.h: ps-worker's progress line, and worker/metrics_csv.h:
 * its CSV rows. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check_run.h"
#include "worker/metrics_csv.h"
#include "worker/progress.h"

START_TEST(test_line) {
  ps_progress_t p = {.epoch = 2, .epochs = 10, .step = 1200, .steps = 4800,
                     .loss = 0.42134, .test_accuracy = 0.84123,
                     .samples_per_sec = 5123.4, .eta_s = 92};
  char buf[256];
  size_t n = ps_progress_format(&p, 100, buf, sizeof(buf));
  ck_assert_uint_eq(n, strlen(buf));
  ck_assert_uint_le(n, 100);
  /* A quarter done: a quarter of the bar, then its head. */
  const char *open = strchr(buf, '['), *close = strchr(buf, ']');
  ck_assert_ptr_nonnull(open);
  ck_assert_ptr_nonnull(close);
  size_t bar = (size_t)(close - open - 1);
  ck_assert_uint_ge(bar, 10);
  ck_assert_uint_le(bar, 30);
  size_t filled = strspn(open + 1, "=");
  ck_assert_uint_eq(filled, bar / 4);
  ck_assert_int_eq(open[1 + filled], '>');
  ck_assert_msg(strncmp(buf, "epoch 2/10 [", 12) == 0, "%s", buf);
  ck_assert_str_eq(close, "] step 1200/4800 25% loss 0.4213 acc 0.8412 "
                          "5123 samples/s ETA 1m32s");
}
END_TEST

START_TEST(test_line_unknowns_and_end) {
  ps_progress_t p = {.epoch = 1, .epochs = 1, .step = 400, .steps = 400,
                     .loss = NAN, .test_accuracy = NAN,
                     .samples_per_sec = NAN, .eta_s = NAN};
  char buf[256];
  /* Narrower than the text: the bar keeps its least width. */
  ps_progress_format(&p, 20, buf, sizeof(buf));
  ck_assert_str_eq(buf, "epoch 1/1 [==========] step 400/400 100% ETA ?");
  /* A buffer too small is cut, never overrun. */
  char small[16];
  size_t n = ps_progress_format(&p, 80, small, sizeof(small));
  ck_assert_uint_eq(n, 15);
  ck_assert_uint_eq(strlen(small), 15);
}
END_TEST

START_TEST(test_duration) {
  char b[32];
  ps_progress_duration(42.4, b, sizeof(b));
  ck_assert_str_eq(b, "42s");
  ps_progress_duration(185, b, sizeof(b));
  ck_assert_str_eq(b, "3m05s");
  ps_progress_duration(3720, b, sizeof(b));
  ck_assert_str_eq(b, "1h02m");
  ps_progress_duration(-1, b, sizeof(b));
  ck_assert_str_eq(b, "?");
}
END_TEST

START_TEST(test_csv_rows) {
  char path[] = "/tmp/ps-test-csv-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  char err[256];
  ps_metrics_csv_t *c = ps_metrics_csv_open(path, err, sizeof(err));
  ck_assert_msg(c != NULL, "%s", err);
  ps_metrics_csv_row_t r = {.time_s = 1.5, .kind = "progress", .epoch = 1,
                            .step = 10, .steps = 100, .loss = 0.5,
                            .lr = 0.02, .samples_per_sec = 640,
                            .test_loss = NAN, .test_accuracy = NAN};
  ps_metrics_csv_row(c, &r);
  r.kind = "final";
  r.test_loss = 0.25;
  r.test_accuracy = 0.875;
  ps_metrics_csv_row(c, &r);
  ps_metrics_csv_close(&c);
  ck_assert_ptr_null(c);
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  char text[1024];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  text[n] = '\0';
  fclose(f);
  unlink(path);
  ck_assert_str_eq(
      text,
      "time_s,kind,epoch,step,steps,loss,lr,samples_per_sec,test_loss,"
      "test_accuracy\n"
      "1.500,progress,1,10,100,0.500000,0.020000,640.0,,\n"
      "1.500,final,1,10,100,0.500000,0.020000,640.0,0.250000,0.875000\n");
  /* A file that cannot be made is refused with the reason. */
  c = ps_metrics_csv_open("/nonexistent-dir/x.csv", err, sizeof(err));
  ck_assert_ptr_null(c);
  ck_assert_msg(strstr(err, "/nonexistent-dir/x.csv") != NULL, "%s", err);
}
END_TEST

int main(void) {
  Suite *s = suite_create("progress");
  TCase *tc = tcase_create("format");
  tcase_add_test(tc, test_line);
  tcase_add_test(tc, test_line_unknowns_and_end);
  tcase_add_test(tc, test_duration);
  tcase_add_test(tc, test_csv_rows);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
