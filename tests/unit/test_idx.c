#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/err.h"
#include "worker/data/idx.h"
#include "tests/check_run.h"

#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

static char dir[64];

static void setup(void) {
  snprintf(dir, sizeof(dir), "/tmp/ps_test_idx.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static const char *tmp_path(const char *name) {
  static char paths[8][128];
  static int next;
  char *p = paths[next++ % 8];
  snprintf(p, 128, "%s/%s", dir, name);
  return p;
}

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* Writes an IDX file: header (magic, dims) then body, gzip-compressed when
 * gzip is set. */
static void write_idx(const char *path, uint32_t magic, const uint32_t *dims,
                      int ndims, const void *body, size_t len, int gzip) {
  unsigned char hdr[16];
  put_be32(hdr, magic);
  for (int i = 0; i < ndims; i++) put_be32(hdr + 4 * (i + 1), dims[i]);
  size_t hlen = 4 * (size_t)(1 + ndims);
  if (gzip) {
    gzFile gz = gzopen(path, "wb");
    ck_assert_ptr_nonnull(gz);
    ck_assert_int_eq(gzwrite(gz, hdr, (unsigned)hlen), (int)hlen);
    if (len) ck_assert_int_eq(gzwrite(gz, body, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(gz), Z_OK);
  } else {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(hdr, 1, hlen, f), hlen);
    if (len) ck_assert_uint_eq(fwrite(body, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
  }
}

/* Three 2x3 images whose pixels are i * 40 + j, and their labels. */
static const unsigned char pixels[3 * 6] = {
    0, 1, 2, 3, 4, 5, 40, 41, 42, 43, 44, 45, 80, 81, 82, 83, 84, 255};
static const unsigned char labels[3] = {7, 0, 9};
static const uint32_t img_dims[3] = {3, 2, 3};
static const uint32_t lbl_dims[1] = {3};

static void write_good(const char *images, const char *lbls, int gzip) {
  write_idx(images, PS_IDX_MAGIC_IMAGES, img_dims, 3, pixels, sizeof(pixels),
            gzip);
  write_idx(lbls, PS_IDX_MAGIC_LABELS, lbl_dims, 1, labels, sizeof(labels),
            gzip);
}

static void check_good(const ps_dataset_t *ds) {
  ck_assert_uint_eq(ds->n, 3);
  ck_assert_uint_eq(ds->dim, 6);
  ck_assert_uint_eq(ds->rows, 2);
  ck_assert_uint_eq(ds->cols, 3);
  for (int i = 0; i < 18; i++)
    ck_assert_float_eq(ds->x[i], (float)pixels[i] / 255.0f);
  ck_assert_float_eq(ds->x[17], 1.0f);
  ck_assert_float_eq(ds->x[0], 0.0f);
  for (int i = 0; i < 3; i++) ck_assert_uint_eq(ds->y[i], labels[i]);
}

START_TEST(test_good_gzip) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[256] = "";
  ck_assert_int_eq(ps_idx_load_dataset(im, lb, &ds, err, sizeof(err)), PS_OK);
  check_good(&ds);
  ps_dataset_clear(&ds);
  ck_assert_ptr_null(ds.x);
  ck_assert_uint_eq(ds.n, 0);
}
END_TEST

START_TEST(test_good_plain_and_labels_first) {
  const char *im = tmp_path("im"), *lb = tmp_path("lb");
  write_good(im, lb, 0);
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[256] = "";
  ck_assert_int_eq(ps_idx_load_labels(lb, &ds, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(ds.n, 3);
  ck_assert_int_eq(ps_idx_load_images(im, &ds, err, sizeof(err)), PS_OK);
  check_good(&ds);
  ps_dataset_clear(&ds);
}
END_TEST

START_TEST(test_fashion_test_set) {
  const char *im = FASHION_DIR "/t10k-images-idx3-ubyte.gz";
  const char *lb = FASHION_DIR "/t10k-labels-idx1-ubyte.gz";
  if (access(im, R_OK) != 0 || access(lb, R_OK) != 0) {
    fprintf(stderr, "skipped: %s not installed\n", im);
    return;
  }
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[256] = "";
  int rc = ps_idx_load_dataset(im, lb, &ds, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  ck_assert_uint_eq(ds.n, 10000);
  ck_assert_uint_eq(ds.rows, 28);
  ck_assert_uint_eq(ds.cols, 28);
  ck_assert_uint_eq(ds.dim, 784);
  float lo = 1.0f, hi = 0.0f;
  for (size_t i = 0; i < ds.n * ds.dim; i++) {
    if (ds.x[i] < lo) lo = ds.x[i];
    if (ds.x[i] > hi) hi = ds.x[i];
  }
  ck_assert_float_eq(lo, 0.0f);
  ck_assert_float_eq(hi, 1.0f);
  /* The Fashion-MNIST test set has exactly 1000 examples of each class. */
  int counts[PS_IDX_NUM_CLASSES] = {0};
  for (size_t i = 0; i < ds.n; i++) counts[ds.y[i]]++;
  for (int c = 0; c < PS_IDX_NUM_CLASSES; c++)
    ck_assert_int_eq(counts[c], 1000);
  ps_dataset_clear(&ds);
}
END_TEST

/* A failed load names the file and leaves the dataset empty. */
static void expect_refused(const char *im, const char *lb, int code,
                           const char *reason) {
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[512] = "";
  int rc = ps_idx_load_dataset(im, lb, &ds, err, sizeof(err));
  ck_assert_int_eq(rc, code);
  ck_assert_msg(strstr(err, reason) != NULL, "error \"%s\" lacks \"%s\"", err,
                reason);
  ck_assert_msg(strstr(err, dir) != NULL, "error \"%s\" names no file", err);
  ck_assert_ptr_null(ds.x);
  ck_assert_ptr_null(ds.y);
  ck_assert_uint_eq(ds.n, 0);
}

START_TEST(test_truncated_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  /* A well-formed gzip stream whose content is one pixel short. */
  write_idx(im, PS_IDX_MAGIC_IMAGES, img_dims, 3, pixels, sizeof(pixels) - 1,
            1);
  expect_refused(im, lb, PS_ERR_FORMAT, "truncated");
  /* Labels one short, uncompressed. */
  write_good(im, lb, 0);
  write_idx(lb, PS_IDX_MAGIC_LABELS, lbl_dims, 1, labels, 2, 0);
  expect_refused(im, lb, PS_ERR_FORMAT, "truncated");
  /* A header cut in the middle. */
  write_idx(im, PS_IDX_MAGIC_IMAGES, img_dims, 1, NULL, 0, 0);
  expect_refused(im, lb, PS_ERR_FORMAT, "truncated header");
}
END_TEST

START_TEST(test_cut_gzip_stream_refused) {
  /* Big enough that the cut lands inside the deflate data. */
  enum { N = 200, ROWS = 28, COLS = 28 };
  unsigned char *px = malloc(N * ROWS * COLS);
  ck_assert_ptr_nonnull(px);
  for (size_t i = 0; i < N * ROWS * COLS; i++)
    px[i] = (unsigned char)((i * 2654435761u) >> 13);
  const uint32_t dims[3] = {N, ROWS, COLS};
  const char *im = tmp_path("big.gz");
  write_idx(im, PS_IDX_MAGIC_IMAGES, dims, 3, px, N * ROWS * COLS, 1);
  free(px);
  FILE *f = fopen(im, "r+b");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
  long size = ftell(f);
  ck_assert_int_gt(size, 1000);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(truncate(im, size / 2), 0);
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[512] = "";
  int rc = ps_idx_load_images(im, &ds, err, sizeof(err));
  ck_assert_int_eq(rc, PS_ERR_FORMAT);
  ck_assert_msg(strstr(err, im) != NULL, "%s", err);
  ck_assert_ptr_null(ds.x);
}
END_TEST

START_TEST(test_wrong_magic_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  /* Labels where images belong, and the reverse. */
  expect_refused(lb, im, PS_ERR_FORMAT, "bad magic 0x00000801");
  /* A file that is not IDX at all. */
  FILE *f = fopen(im, "wb");
  ck_assert_ptr_nonnull(f);
  fputs("hello, world, this is not an IDX file", f);
  ck_assert_int_eq(fclose(f), 0);
  expect_refused(im, lb, PS_ERR_FORMAT, "bad magic");
}
END_TEST

START_TEST(test_count_mismatch_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  const uint32_t two[1] = {2};
  write_idx(lb, PS_IDX_MAGIC_LABELS, two, 1, labels, 2, 1);
  expect_refused(im, lb, PS_ERR_FORMAT, "holds 2 labels but");
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[512] = "";
  ck_assert_int_eq(ps_idx_load_labels(lb, &ds, err, sizeof(err)), PS_OK);
  ck_assert_int_eq(ps_idx_load_images(im, &ds, err, sizeof(err)),
                   PS_ERR_FORMAT);
  ck_assert_ptr_nonnull(strstr(err, "holds 3 images but"));
  ck_assert_ptr_null(ds.x);
  ps_dataset_clear(&ds);
}
END_TEST

START_TEST(test_trailing_bytes_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  unsigned char more[sizeof(pixels) + 5];
  memcpy(more, pixels, sizeof(pixels));
  memset(more + sizeof(pixels), 7, 5);
  write_idx(im, PS_IDX_MAGIC_IMAGES, img_dims, 3, more, sizeof(more), 1);
  expect_refused(im, lb, PS_ERR_FORMAT, "5 trailing bytes");
}
END_TEST

START_TEST(test_bad_label_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  const unsigned char bad[3] = {1, 10, 2};
  write_idx(lb, PS_IDX_MAGIC_LABELS, lbl_dims, 1, bad, 3, 1);
  expect_refused(im, lb, PS_ERR_FORMAT, "label 10 of example 1");
}
END_TEST

START_TEST(test_empty_and_missing_refused) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  const uint32_t zero[3] = {0, 28, 28};
  write_idx(im, PS_IDX_MAGIC_IMAGES, zero, 3, NULL, 0, 1);
  expect_refused(im, lb, PS_ERR_FORMAT, "empty dimension");
  expect_refused(tmp_path("missing.gz"), lb, PS_ERR_IO, "cannot open");
}
END_TEST

START_TEST(test_standardize) {
  const char *im = tmp_path("im.gz"), *lb = tmp_path("lb.gz");
  write_good(im, lb, 1);
  ps_dataset_t ds = PS_DATASET_INIT;
  char err[256] = "";
  ck_assert_int_eq(ps_idx_load_dataset(im, lb, &ds, err, sizeof(err)), PS_OK);
  double mean, std;
  ps_dataset_stats(&ds, &mean, &std);
  double sum = 0, sum2 = 0;
  for (int i = 0; i < 18; i++) sum += pixels[i] / 255.0;
  for (int i = 0; i < 18; i++)
    sum2 += (pixels[i] / 255.0 - sum / 18) * (pixels[i] / 255.0 - sum / 18);
  ck_assert_double_eq_tol(mean, sum / 18, 1e-7);
  ck_assert_double_eq_tol(std, sqrt(sum2 / 18), 1e-6);
  ps_dataset_standardize(&ds, mean, std);
  ps_dataset_stats(&ds, &mean, &std);
  ck_assert_double_eq_tol(mean, 0.0, 1e-6);
  ck_assert_double_eq_tol(std, 1.0, 1e-5);
  ps_dataset_clear(&ds);
}
END_TEST

int main(void) {
  Suite *s = suite_create("idx");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_good_gzip);
  tcase_add_test(tc, test_good_plain_and_labels_first);
  tcase_add_test(tc, test_fashion_test_set);
  tcase_add_test(tc, test_truncated_refused);
  tcase_add_test(tc, test_cut_gzip_stream_refused);
  tcase_add_test(tc, test_wrong_magic_refused);
  tcase_add_test(tc, test_count_mismatch_refused);
  tcase_add_test(tc, test_trailing_bytes_refused);
  tcase_add_test(tc, test_bad_label_refused);
  tcase_add_test(tc, test_empty_and_missing_refused);
  tcase_add_test(tc, test_standardize);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
