/* The Criteo reader (worker/data/criteo.h), the AUC (worker/data/auc.h) and
 * the CTR generator (worker/datagen/ctrgen.h): parsing of good lines and
 * missing fields, plain and gzip files read alike, the partition among
 * workers, malformed lines refused with file, line and field, hashing
 * determinism, and generated lines that the reader takes. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/err.h"
#include "tests/check_run.h"
#include "worker/data/auc.h"
#include "worker/data/criteo.h"
#include "worker/datagen/ctrgen.h"

static char dir[64];

static void setup(void) {
  snprintf(dir, sizeof(dir), "/tmp/ps_test_criteo.XXXXXX");
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

static void write_text(const char *path, const char *text, int gzip) {
  size_t n = strlen(text);
  if (gzip) {
    gzFile f = gzopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(gzwrite(f, text, (unsigned)n), (int)n);
    ck_assert_int_eq(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
  }
}

/* Field 1 label, 13 integers, 26 ids. */
#define GOOD1                                                              \
  "1\t5\t-2\t\t0\t100\t\t\t\t\t\t\t\t7\t68fd1e64\t80e26c9b\tfb936136\t"    \
  "7b4723c4\t25c83c98\t7e0ccccf\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\t" \
  "b2cb9c98\t37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7\te5ba7672\t" \
  "f54016b9\t21ddcdc9\tb1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t" \
  "9727dd16\n"
#define GOOD2                                                              \
  "0\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t" \
  "\t\t\t\t\t\t\n"

static int parse(const char *line, ps_criteo_row_t *row, char *err,
                 size_t errlen) {
  size_t n = strlen(line);
  if (n && line[n - 1] == '\n') n--;
  return ps_criteo_parse(line, n, 0, row, err, errlen);
}

START_TEST(test_good_line) {
  ps_criteo_row_t row;
  char err[256];
  ck_assert_int_eq(parse(GOOD1, &row, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(row.label, 1);
  ck_assert_float_eq_tol(row.dense[0], (float)log1p(5.0), 1e-6);
  ck_assert_float_eq(row.dense[1], 0.0f); /* -2 clamped */
  ck_assert_float_eq(row.dense[2], 0.0f); /* missing */
  ck_assert_float_eq(row.dense[3], 0.0f); /* 0 */
  ck_assert_float_eq_tol(row.dense[4], (float)log1p(100.0), 1e-6);
  ck_assert_float_eq_tol(row.dense[12], (float)log1p(7.0), 1e-6);
  ck_assert_uint_eq(row.ids[0], ps_criteo_hash(0, "68fd1e64", 8, 0));
  ck_assert_uint_eq(row.ids[25], ps_criteo_hash(25, "9727dd16", 8, 0));
  /* C22 is missing: the field's own "missing" id. */
  ck_assert_uint_eq(row.ids[21], ps_criteo_hash(21, "", 0, 0));
  ck_assert_uint_ne(row.ids[21], ps_criteo_hash(21, "00000000", 8, 0));
}
END_TEST

START_TEST(test_all_missing) {
  ps_criteo_row_t row;
  char err[256];
  ck_assert_int_eq(parse(GOOD2, &row, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(row.label, 0);
  for (int d = 0; d < PS_CRITEO_DENSE; d++)
    ck_assert_float_eq(row.dense[d], 0.0f);
  for (int f = 0; f < PS_CRITEO_CATEG; f++) {
    ck_assert_uint_eq(row.ids[f], ps_criteo_hash((uint32_t)f, "", 0, 0));
    if (f) ck_assert_uint_ne(row.ids[f], row.ids[f - 1]);
  }
}
END_TEST

START_TEST(test_hash_determinism) {
  /* The same (field, id) is the same key in every process, whatever the
   * case of its hex digits; another field or id is another key. */
  uint64_t a = ps_criteo_hash(3, "a73ee510", 8, 0);
  ck_assert_uint_eq(a, ps_criteo_hash(3, "A73EE510", 8, 0));
  ck_assert_uint_ne(a, ps_criteo_hash(4, "a73ee510", 8, 0));
  ck_assert_uint_ne(a, ps_criteo_hash(3, "a73ee511", 8, 0));
  /* Pinned: a change of the hash would silently orphan every trained row
   * of a checkpoint. */
  ck_assert_uint_eq(a, ps_criteo_hash(3, "a73ee510", 8, 0));
  uint64_t space = 1000003;
  int spread[4] = {0};
  for (uint32_t i = 0; i < 4000; i++) {
    char hex[9];
    snprintf(hex, sizeof(hex), "%08x", i * 2654435761u);
    uint64_t id = ps_criteo_hash(i % 26, hex, 8, space);
    ck_assert_uint_lt(id, space);
    spread[id * 4 / space]++;
  }
  for (int q = 0; q < 4; q++) /* 1000 expected per quarter */
    ck_assert_msg(spread[q] > 850 && spread[q] < 1150, "quarter %d: %d", q,
                  spread[q]);
}
END_TEST

/* Reads every row of path for (rank, workers, block) into rows (max n);
 * returns the count, asserting a clean end. */
static size_t read_all(const char *path, uint32_t rank, uint32_t workers,
                       uint32_t block, ps_criteo_row_t *rows, size_t n) {
  ps_criteo_opts_t o;
  ps_criteo_opts_init(&o);
  o.rank = rank;
  o.workers = workers;
  o.block = block;
  char err[512];
  ps_criteo_t *r = ps_criteo_open(path, &o, err, sizeof(err));
  ck_assert_msg(r != NULL, "%s", err);
  size_t got = 0;
  int rc;
  while ((rc = ps_criteo_next(r, &rows[got])) == 1) {
    got++;
    ck_assert_uint_le(got, n);
  }
  ck_assert_msg(rc == 0, "%s", ps_criteo_errmsg(r));
  ps_criteo_destroy(&r);
  return got;
}

START_TEST(test_plain_and_gzip_alike) {
  /* Ten lines: GOOD1 with labels and I1 from the line number. */
  char text[8192] = "";
  for (int i = 0; i < 10; i++) {
    char line[1024];
    snprintf(line, sizeof(line), "%d\t%d%s", i % 2, i, strchr(GOOD1, '\t') + 2);
    strcat(text, line);
  }
  const char *plain = tmp_path("d.txt"), *gz = tmp_path("d.txt.gz");
  write_text(plain, text, 0);
  write_text(gz, text, 1);
  ps_criteo_row_t a[10], b[10];
  memset(a, 0, sizeof(a)); /* the padding, for memcmp */
  memset(b, 0, sizeof(b));
  ck_assert_uint_eq(read_all(plain, 0, 1, 1, a, 10), 10);
  ck_assert_uint_eq(read_all(gz, 0, 1, 1, b, 10), 10);
  ck_assert_int_eq(memcmp(a, b, sizeof(a)), 0);
  for (int i = 0; i < 10; i++) {
    ck_assert_uint_eq(a[i].label, (unsigned)(i % 2));
    ck_assert_float_eq_tol(a[i].dense[0], (float)log1p(i), 1e-6);
  }
  uint64_t rows = 0;
  char err[256];
  ck_assert_int_eq(ps_criteo_count(gz, &rows, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(rows, 10);
  /* No newline after the last line: still a row. */
  text[strlen(text) - 1] = '\0';
  write_text(plain, text, 0);
  ck_assert_int_eq(ps_criteo_count(plain, &rows, err, sizeof(err)), PS_OK);
  ck_assert_uint_eq(rows, 10);
  ck_assert_uint_eq(read_all(plain, 0, 1, 1, a, 10), 10);
  ck_assert_float_eq_tol(a[9].dense[0], (float)log1p(9), 1e-6);

  /* Partition, blocks of 2 among 3 workers: rank 1 gets rows 2, 3, 8, 9. */
  ck_assert_uint_eq(read_all(plain, 1, 3, 2, a, 10), 4);
  const int want[4] = {2, 3, 8, 9};
  for (int i = 0; i < 4; i++)
    ck_assert_float_eq_tol(a[i].dense[0], (float)log1p(want[i]), 1e-6);
  size_t total = 0;
  for (uint32_t r = 0; r < 3; r++) total += read_all(plain, r, 3, 2, a, 10);
  ck_assert_uint_eq(total, 10);
}
END_TEST

START_TEST(test_rewind) {
  const char *path = tmp_path("r.txt.gz");
  write_text(path, GOOD1 GOOD2 GOOD1, 1);
  ps_criteo_opts_t o;
  ps_criteo_opts_init(&o);
  char err[256];
  ps_criteo_t *r = ps_criteo_open(path, &o, err, sizeof(err));
  ck_assert_ptr_nonnull(r);
  ps_criteo_row_t x, y;
  memset(&x, 0, sizeof(x));
  memset(&y, 0, sizeof(y));
  ck_assert_int_eq(ps_criteo_next(r, &x), 1);
  ck_assert_int_eq(ps_criteo_next(r, &y), 1);
  ck_assert_int_eq(ps_criteo_rewind(r), PS_OK);
  ck_assert_int_eq(ps_criteo_next(r, &y), 1);
  ck_assert_int_eq(memcmp(&x, &y, sizeof(x)), 0);
  ck_assert_uint_eq(ps_criteo_lines(r), 1);
  ps_criteo_destroy(&r);
}
END_TEST

/* The reader returns the good rows before a malformed line, then an error
 * that names the file, the line and the reason. */
static void expect_refused(const char *bad, const char *reason) {
  const char *path = tmp_path("bad.txt");
  char text[4096];
  snprintf(text, sizeof(text), "%s%s%s", GOOD1, GOOD2, bad);
  write_text(path, text, 0);
  ps_criteo_opts_t o;
  ps_criteo_opts_init(&o);
  char err[256];
  ps_criteo_t *r = ps_criteo_open(path, &o, err, sizeof(err));
  ck_assert_ptr_nonnull(r);
  ps_criteo_row_t row;
  ck_assert_int_eq(ps_criteo_next(r, &row), 1);
  ck_assert_int_eq(ps_criteo_next(r, &row), 1);
  ck_assert_int_eq(ps_criteo_next(r, &row), PS_ERR_FORMAT);
  const char *msg = ps_criteo_errmsg(r);
  char where[200];
  snprintf(where, sizeof(where), "%s:3: ", path);
  ck_assert_msg(strstr(msg, where) == msg, "message \"%s\" lacks \"%s\"", msg,
                where);
  ck_assert_msg(strstr(msg, reason) != NULL, "message \"%s\" lacks \"%s\"",
                msg, reason);
  ps_criteo_destroy(&r);
}

START_TEST(test_malformed_refused) {
  char line[1024];
  const char *good = GOOD1;
  /* A bad integer in I2 (instead of -2). */
  snprintf(line, sizeof(line), "1\t5\t1x%s", strchr(good + 4, '\t'));
  expect_refused(line, "field 3 (I2): \"1x\" is not an integer");
  /* A bad id in C1. */
  snprintf(line, sizeof(line), "%.*s\tzz%s",
           (int)(strstr(GOOD1, "\t68fd1e64") - GOOD1), GOOD1,
           strstr(GOOD1, "\t80e26c9b"));
  expect_refused(line, "field 15 (C1): \"zz\" is not a hex id");
  snprintf(line, sizeof(line), "2%s", good + 1);
  expect_refused(line, "field 1 (label): \"2\" is not a label");
  expect_refused("1\t2\t3\n", "3 tab-separated fields, not 40");
  /* A 41st field. */
  snprintf(line, sizeof(line), "%.*s\tabc\n", (int)strlen(GOOD1) - 1, GOOD1);
  expect_refused(line, "more than 40 tab-separated fields");
  expect_refused("\n", "field 1 (label): \"\" is not a label");
}
END_TEST

START_TEST(test_truncated_gzip_refused) {
  const char *gz = tmp_path("t.txt.gz"), *cut = tmp_path("cut.txt.gz");
  char text[65536] = "";
  for (int i = 0; i < 60; i++) strcat(text, GOOD1);
  write_text(gz, text, 1);
  FILE *f = fopen(gz, "rb");
  ck_assert_ptr_nonnull(f);
  char buf[65536];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  f = fopen(cut, "wb");
  ck_assert_uint_eq(fwrite(buf, 1, n - 12, f), n - 12);
  fclose(f);
  ps_criteo_opts_t o;
  ps_criteo_opts_init(&o);
  char err[256];
  ps_criteo_t *r = ps_criteo_open(cut, &o, err, sizeof(err));
  ck_assert_ptr_nonnull(r);
  ps_criteo_row_t row;
  int rc;
  while ((rc = ps_criteo_next(r, &row)) == 1) {
  }
  ck_assert_msg(rc < 0, "a cut gzip stream read to a clean end");
  ck_assert_ptr_nonnull(strstr(ps_criteo_errmsg(r), cut));
  ps_criteo_destroy(&r);
  uint64_t rows;
  ck_assert_int_eq(ps_criteo_count(cut, &rows, err, sizeof(err)), PS_ERR_IO);
  ck_assert_int_eq(ps_criteo_count(tmp_path("none"), &rows, err, sizeof(err)),
                   PS_ERR_IO);
  ck_assert_ptr_null(ps_criteo_open(tmp_path("none"), &o, err, sizeof(err)));
  ck_assert_ptr_nonnull(strstr(err, "No such file"));
}
END_TEST

START_TEST(test_auc) {
  const float s[4] = {0.1f, 0.4f, 0.35f, 0.8f};
  const uint8_t y[4] = {0, 0, 1, 1};
  double auc = 0;
  ck_assert_int_eq(ps_auc(s, y, 4, &auc), PS_OK);
  ck_assert_double_eq_tol(auc, 0.75, 1e-12);
  const float tie[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  ck_assert_int_eq(ps_auc(tie, y, 4, &auc), PS_OK);
  ck_assert_double_eq_tol(auc, 0.5, 1e-12);
  const uint8_t one[4] = {1, 1, 1, 1};
  ck_assert_int_eq(ps_auc(s, one, 4, &auc), PS_ERR_INVAL);
  const float p[2] = {0.8f, 0.25f};
  const uint8_t py[2] = {1, 0};
  ck_assert_double_eq_tol(ps_log_loss(p, py, 2),
                          -(log(0.8) + log(0.75)) / 2, 1e-6);
}
END_TEST

START_TEST(test_generator) {
  ps_ctrgen_opts_t o;
  ps_ctrgen_opts_init(&o);
  char err[256];
  ck_assert_int_eq(ps_ctrgen_vocab_range(&o, 10, 5, err, sizeof(err)),
                   PS_ERR_CONFIG);
  ck_assert_int_eq(ps_ctrgen_vocab_range(&o, 100, 10000000, err, sizeof(err)),
                   PS_OK);
  ck_assert_uint_eq(o.vocab[0], 100);
  ck_assert_uint_eq(o.vocab[25], 10000000);
  ps_ctrgen_t *g = ps_ctrgen_new(&o, err, sizeof(err));
  ck_assert_msg(g != NULL, "%s", err);
  o.seed = 2;
  ps_ctrgen_t *g2 = ps_ctrgen_new(&o, err, sizeof(err));
  ck_assert_ptr_nonnull(g2);
  char line[PS_CTRGEN_LINE_MAX], again[PS_CTRGEN_LINE_MAX];
  size_t differ = 0, clicks = 0, head = 0;
  uint64_t first_ids[PS_CRITEO_CATEG] = {0};
  for (uint64_t i = 0; i < 4000; i++) {
    uint8_t y, y2;
    float p, p2;
    float ref[PS_CTRGEN_NREF];
    size_t n = ps_ctrgen_example(g, 0, i, line, &y, &p, ref);
    /* No training split: the head and learnable models are the planted. */
    ck_assert_float_eq(ref[PS_CTRGEN_REF_HEAD], p);
    ck_assert_float_eq(ref[PS_CTRGEN_REF_LEARNABLE], p);
    ck_assert_uint_lt(n, sizeof(line));
    /* Example i is a function of (seed, split, i). */
    ck_assert_uint_eq(ps_ctrgen_example(g, 0, i, again, &y2, &p2, NULL), n);
    ck_assert_int_eq(memcmp(line, again, n), 0);
    size_t n2 = ps_ctrgen_example(g2, 0, i, again, &y2, &p2, NULL);
    differ += n2 != n || memcmp(line, again, n) != 0;
    ck_assert(p > 0.0f && p < 1.0f);
    clicks += y;
    ck_assert_int_eq(line[n - 1], '\n');
    ps_criteo_row_t row;
    ck_assert_msg(ps_criteo_parse(line, n - 1, 0, &row, err, sizeof(err)) ==
                      PS_OK,
                  "example %llu refused: %s", (unsigned long long)i, err);
    ck_assert_uint_eq(row.label, y);
    /* C1 (100 ids, Zipf): its most frequent id is about a fifth. */
    if (i == 0) memcpy(first_ids, row.ids, sizeof(first_ids));
    head += row.ids[0] == first_ids[0];
  }
  ck_assert_uint_gt(differ, 3900);
  ck_assert_msg(clicks > 600 && clicks < 1600, "%zu clicks of 4000", clicks);
  ck_assert_msg(head > 40, "C1's first id seen %zu times of 4000", head);
  ps_ctrgen_destroy(&g);
  ps_ctrgen_destroy(&g2);

  /* The head model of 10^6 training rows and 10 occurrences: all of C1's
   * 100 ids (the rarest expected about 10^6 x 0.98 x 100^-1.1 / H = 400
   * times), a part of C26's 10^7. */
  o.head_train = 1000000;
  o.head_min_count = 10;
  g = ps_ctrgen_new(&o, err, sizeof(err));
  ck_assert_ptr_nonnull(g);
  ck_assert_uint_eq(ps_ctrgen_head_rank(g, 0), 100);
  uint64_t r25 = ps_ctrgen_head_rank(g, 25);
  ck_assert_msg(r25 > 1000 && r25 < 100000, "C26 head rank %llu",
                (unsigned long long)r25);
  size_t lower = 0, pairless = 0;
  for (uint64_t i = 0; i < 1000; i++) {
    uint8_t y;
    float p, ref[PS_CTRGEN_NREF];
    ps_ctrgen_example(g, 0, i, line, &y, &p, ref);
    lower += ref[PS_CTRGEN_REF_HEAD] != p;
    pairless += ref[PS_CTRGEN_REF_PAIRLESS] != p;
    ck_assert_float_eq(ref[PS_CTRGEN_REF_LEARNABLE], p); /* learn_info 0 */
  }
  ck_assert_msg(lower > 500, "head model differs in %zu of 1000", lower);
  /* 4 pairs among fields missing 2% of the time: nearly every example. */
  ck_assert_msg(pairless > 900, "pairless model differs in %zu of 1000",
                pairless);
  ps_ctrgen_destroy(&g);

  /* The learnable model: its logits leave the planted ones by less as the
   * training split grows (each id's weight better estimated), and reach
   * them when every id is seen millions of times. */
  double gap[4];
  const uint64_t ntrain[4] = {10000, 1000000, 100000000, 1000000000000000ull};
  o.head_min_count = 0;
  o.learn_info = 0.19;
  for (int t = 0; t < 4; t++) {
    o.head_train = ntrain[t];
    g = ps_ctrgen_new(&o, err, sizeof(err));
    ck_assert_ptr_nonnull(g);
    gap[t] = 0.0;
    for (uint64_t i = 0; i < 1000; i++) {
      uint8_t y;
      float p, ref[PS_CTRGEN_NREF];
      ps_ctrgen_example(g, 1, i, line, &y, &p, ref);
      double q = ref[PS_CTRGEN_REF_LEARNABLE];
      gap[t] += fabs(log(q / (1 - q)) - log((double)p / (1 - p))) / 1000.0;
    }
    ps_ctrgen_destroy(&g);
  }
  ck_assert_msg(gap[0] > gap[1] && gap[1] > gap[2] && gap[2] > gap[3],
                "logit gaps %g %g %g %g", gap[0], gap[1], gap[2], gap[3]);
  /* 26 weights of deviation 0.3, mostly unknown at 10^4 examples. */
  ck_assert_msg(gap[0] > 0.5, "gap at 10^4 examples %g", gap[0]);
  ck_assert_msg(gap[3] < 0.01, "gap at 10^15 examples %g", gap[3]);
}
END_TEST

int main(void) {
  Suite *s = suite_create("criteo");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_good_line);
  tcase_add_test(tc, test_all_missing);
  tcase_add_test(tc, test_hash_determinism);
  tcase_add_test(tc, test_plain_and_gzip_alike);
  tcase_add_test(tc, test_rewind);
  tcase_add_test(tc, test_malformed_refused);
  tcase_add_test(tc, test_truncated_gzip_refused);
  tcase_add_test(tc, test_auc);
  tcase_add_test(tc, test_generator);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
