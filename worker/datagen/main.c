/* ps-datagen: writes synthetic training data. `ps-datagen ctr` writes a
 * click-through-rate data set in the Criteo format, train and test splits,
 * and the planted model's figures on the test split (worker/datagen/
 * ctrgen.h). Exit status: 0 done, 1 failed (I/O), 2 bad usage. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "worker/data/auc.h"
#include "worker/datagen/ctrgen.h"

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Writes count examples of split to path (gzip by its .gz suffix at
 * level), keeping labels and probabilities when keep_y/keep_p are given.
 * Returns 0, or -1 with the reason in err. */
static int write_split(const ps_ctrgen_t *g, uint64_t split, uint64_t count,
                       const char *path, int level, double progress_s,
                       uint8_t *keep_y, float *keep_p,
                       float *keep_ref[PS_CTRGEN_NREF], uint64_t *positives,
                       double *info, char *err, size_t errlen) {
  int gz = ends_with(path, ".gz");
  char mode[8];
  snprintf(mode, sizeof(mode), gz ? "wb%d" : "wbT", level);
  gzFile f = gzopen(path, mode);
  if (f == NULL) {
    snprintf(err, errlen, "cannot create %s: %s", path,
             errno ? strerror(errno) : "out of memory");
    return -1;
  }
  gzbuffer(f, 1 << 20);
  const char *name = split == 0 ? "train" : "test";
  char line[PS_CTRGEN_LINE_MAX];
  uint64_t t0 = ps_now_ns(), last = t0, pos = 0;
  double info_sum = 0.0;
  for (uint64_t i = 0; i < count; i++) {
    uint8_t y;
    float p, ref[PS_CTRGEN_NREF];
    size_t n = ps_ctrgen_example(g, split, i, line, &y, &p, ref);
    if (gzwrite(f, line, (unsigned)n) != (int)n) {
      int e;
      const char *why = gzerror(f, &e);
      snprintf(err, errlen, "cannot write %s: %s", path,
               e == Z_ERRNO ? strerror(errno) : why);
      gzclose(f);
      return -1;
    }
    pos += y;
    if (keep_y) keep_y[i] = y;
    if (keep_p) keep_p[i] = p;
    if (keep_ref)
      for (int r = 0; r < PS_CTRGEN_NREF; r++) keep_ref[r][i] = ref[r];
    info_sum += (double)p * (1.0 - (double)p);
    if ((i & 0xffff) == 0xffff) {
      uint64_t now = ps_now_ns();
      if ((double)(now - last) * 1e-9 >= progress_s) {
        last = now;
        PS_INFO("progress",
                "split=%s examples=%" PRIu64 " of=%" PRIu64
                " examples_per_sec=%.0f",
                name, i + 1, count, (double)(i + 1) / ((now - t0) * 1e-9));
      }
    }
  }
  int rc = gzclose(f);
  if (rc != Z_OK) {
    snprintf(err, errlen, "cannot finish %s: %s", path,
             rc == Z_ERRNO ? strerror(errno) : "zlib error");
    return -1;
  }
  *positives = pos;
  if (info) *info = count ? info_sum / (double)count : 0.0;
  double s = (double)(ps_now_ns() - t0) * 1e-9;
  PS_INFO("split_done",
          "split=%s path=%s examples=%" PRIu64 " positives=%" PRIu64
          " seconds=%.1f examples_per_sec=%.0f",
          name, path, count, pos, s, s > 0 ? (double)count / s : 0.0);
  return 0;
}

int main(int argc, char **argv) {
  char *out = NULL, *train_file = NULL, *test_file = NULL;
  int gzip = 0, log_level = PS_LOG_INFO;
  int64_t train, test, seed, vocab_min, vocab_max, pairs, level, progress_ms;
  double zipf, bias, cat_scale, head_min_count;
  const ps_opt_t opts[] = {
      {"out", PS_OPT_STRING, &out, ".", 0, 0, NULL,
       "folder for train.txt, test.txt (.gz with --gzip) and planted.json "
       "(made if missing)"},
      {"train", PS_OPT_INT, &train, "1000000", 1, 1e12, NULL,
       "training examples"},
      {"test", PS_OPT_INT, &test, "100000", 2, 1e9, NULL, "test examples"},
      {"gzip", PS_OPT_BOOL, &gzip, "false", 0, 0, NULL,
       "write train.txt.gz and test.txt.gz"},
      {"gzip-level", PS_OPT_INT, &level, "1", 1, 9, NULL,
       "zlib level of gzip output"},
      {"train-file", PS_OPT_STRING, &train_file, NULL, 0, 0, NULL,
       "training split here instead (gzip when it ends in .gz)"},
      {"test-file", PS_OPT_STRING, &test_file, NULL, 0, 0, NULL,
       "test split here instead (gzip when it ends in .gz)"},
      {"seed", PS_OPT_INT, &seed, "1", 0, 9007199254740991.0, NULL,
       "seed of the planted model and of the examples"},
      {"zipf", PS_OPT_DOUBLE, &zipf, "1.1", 0.01, 10, NULL,
       "exponent of the Zipf law of categorical ids"},
      {"vocab-min", PS_OPT_INT, &vocab_min, "100", 1, 4294967295.0, NULL,
       "ids of the smallest field (C1); fields are log-spaced up to "
       "--vocab-max"},
      {"vocab-max", PS_OPT_INT, &vocab_max, "10000000", 1, 4294967295.0, NULL,
       "ids of the largest field (C26)"},
      {"pairs", PS_OPT_INT, &pairs, "4", 0, PS_CTRGEN_MAX_PAIRS, NULL,
       "field pairs with a planted interaction"},
      {"bias", PS_OPT_DOUBLE, &bias, "-3.0", -20, 20, NULL,
       "planted intercept (sets the click rate)"},
      {"cat-scale", PS_OPT_DOUBLE, &cat_scale, "0.3", 0, 10, NULL,
       "deviation of a categorical id's planted weight"},
      {"head-min-count", PS_OPT_DOUBLE, &head_min_count, "10", 0, 1e9, NULL,
       "also score the head model: the planted one without the ids "
       "expected fewer than this many times in the training split (0: "
       "not), an estimate of what a model can learn from that much data "
       "(planted.json also scores the planted model without its "
       "interactions, and with every id's weight as well estimated as its "
       "count in the training split allows: learnable_auc)"},
      {"progress-ms", PS_OPT_INT, &progress_ms, "2000", 1, 86400000, NULL,
       "interval of progress lines"},
      {"log-level", PS_OPT_ENUM, &log_level, "info", 0, 0,
       "debug|info|warn|error", "lowest level logged"},
  };
  const ps_config_t cfg = {
      .program = "ps-datagen",
      .summary =
          "Generate training data. ctr: a click-through-rate data set in "
          "the Criteo text format (label, I1-I13, C1-C26, tab separated) "
          "from a planted logistic model, train and test splits, and the "
          "planted model's test AUC and log loss in planted.json.",
      .usage = "ctr [options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  const char *pos[2];
  int npos = 0;
  char err[1200];
  int rc = ps_config_load(&cfg, argc, argv, pos, 2, &npos, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  if (npos == 0)
    return ps_config_refuse(&cfg, "no data set named (there is one: ctr)");
  if (strcmp(pos[0], "ctr") != 0)
    return ps_config_refuse(&cfg, "unknown data set \"%s\" (there is one: ctr)",
                            pos[0]);
  if (npos > 1)
    return ps_config_refuse(&cfg, "unexpected argument \"%s\"", pos[1]);
  ps_ctrgen_opts_t go;
  ps_ctrgen_opts_init(&go);
  go.seed = (uint64_t)seed;
  go.zipf = zipf;
  go.pairs = (uint32_t)pairs;
  go.bias = bias;
  go.cat_scale = cat_scale;
  go.head_min_count = head_min_count;
  go.head_train = (uint64_t)train;
  if (ps_ctrgen_vocab_range(&go, (uint64_t)vocab_min, (uint64_t)vocab_max,
                            err, sizeof(err)) != PS_OK)
    return ps_config_refuse(&cfg, "options --vocab-min/--vocab-max: %s", err);
  ps_ctrgen_t *g = ps_ctrgen_new(&go, err, sizeof(err)), *gt = NULL;
  if (g == NULL) return ps_config_refuse(&cfg, "%s", err);
  ps_log_init("datagen", (ps_log_level_t)log_level);

  int exit_code = PS_EXIT_FAILURE;
  uint8_t *ty = NULL;
  float *tp = NULL, *tref[PS_CTRGEN_NREF] = {NULL};
  char train_path[1100], test_path[1100], json_path[1100], tmp_path[1200];
  if (mkdir(out, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "ps-datagen: cannot make %s: %s\n", out, strerror(errno));
    goto done;
  }
  snprintf(train_path, sizeof(train_path), "%s/train.txt%s", out,
           gzip ? ".gz" : "");
  snprintf(test_path, sizeof(test_path), "%s/test.txt%s", out,
           gzip ? ".gz" : "");
  if (train_file && train_file[0])
    snprintf(train_path, sizeof(train_path), "%s", train_file);
  if (test_file && test_file[0])
    snprintf(test_path, sizeof(test_path), "%s", test_file);
  snprintf(json_path, sizeof(json_path), "%s/planted.json", out);
  ty = malloc((size_t)test);
  tp = malloc((size_t)test * sizeof(float));
  int have_ref = 1;
  for (int r = 0; r < PS_CTRGEN_NREF; r++)
    have_ref &= (tref[r] = malloc((size_t)test * sizeof(float))) != NULL;
  if (ty == NULL || tp == NULL || !have_ref) {
    fprintf(stderr, "ps-datagen: out of memory for %" PRId64 " test labels\n",
            test);
    goto done;
  }
  uint64_t t0 = ps_now_ns(), train_pos = 0, test_pos = 0;
  double progress_s = (double)progress_ms / 1000.0, info = 0.0;
  if (write_split(g, 0, (uint64_t)train, train_path, (int)level, progress_s,
                  NULL, NULL, NULL, &train_pos, &info, err, sizeof(err)) != 0) {
    PS_ERROR("write_failed", "msg=\"%s\"", err);
    fprintf(stderr, "ps-datagen: %s\n", err);
    goto done;
  }
  /* The test split's learnable model takes the information per example
   * the training split gave: the same examples, one more reference. */
  go.learn_info = info;
  gt = ps_ctrgen_new(&go, err, sizeof(err));
  if (gt == NULL) {
    fprintf(stderr, "ps-datagen: %s\n", err);
    goto done;
  }
  if (write_split(gt, 1, (uint64_t)test, test_path, (int)level, progress_s, ty,
                  tp, tref, &test_pos, NULL, err, sizeof(err)) != 0) {
    PS_ERROR("write_failed", "msg=\"%s\"", err);
    fprintf(stderr, "ps-datagen: %s\n", err);
    goto done;
  }
  double secs = (double)(ps_now_ns() - t0) * 1e-9;
  double auc = 0.5;
  if (ps_auc(tp, ty, (size_t)test, &auc) != PS_OK) {
    fprintf(stderr,
            "ps-datagen: the test split has only one class: AUC undefined\n");
    goto done;
  }
  double ll = ps_log_loss(tp, ty, (size_t)test);
  double ref_auc[PS_CTRGEN_NREF], ref_ll[PS_CTRGEN_NREF];
  for (int r = 0; r < PS_CTRGEN_NREF; r++) {
    ref_auc[r] = auc;
    ps_auc(tref[r], ty, (size_t)test, &ref_auc[r]);
    ref_ll[r] = ps_log_loss(tref[r], ty, (size_t)test);
  }
  double head_auc = ref_auc[PS_CTRGEN_REF_HEAD];
  double rate = (double)test_pos / (double)test;
  /* The log loss of always predicting the click rate: what a model that
   * learnt nothing scores. */
  double base_ll = -(rate * log(rate) + (1 - rate) * log1p(-rate));
  snprintf(tmp_path, sizeof(tmp_path), "%s.tmp.%ld", json_path,
           (long)getpid());
  FILE *jf = fopen(tmp_path, "w");
  if (jf == NULL) {
    fprintf(stderr, "ps-datagen: cannot write %s: %s\n", tmp_path,
            strerror(errno));
    goto done;
  }
  fprintf(jf,
          "{\n  \"format\": \"criteo\",\n  \"train\": \"%s\",\n"
          "  \"test\": \"%s\",\n  \"train_examples\": %" PRId64
          ",\n  \"test_examples\": %" PRId64
          ",\n  \"train_positive_rate\": %.6f,\n"
          "  \"test_positive_rate\": %.6f,\n  \"planted_auc\": %.6f,\n"
          "  \"planted_log_loss\": %.6f,\n  \"base_log_loss\": %.6f,\n"
          "  \"seed\": %" PRId64 ",\n  \"zipf\": %g,\n  \"bias\": %g,\n"
          "  \"cat_scale\": %g,\n  \"vocab\": [",
          train_path, test_path, train, test,
          (double)train_pos / (double)train, rate, auc, ll, base_ll, seed, zipf,
          bias, cat_scale);
  for (int f = 0; f < PS_CTRGEN_CATEG; f++)
    fprintf(jf, "%s%llu", f ? ", " : "", (unsigned long long)go.vocab[f]);
  fprintf(jf, "],\n  \"pairs\": [");
  for (uint32_t p = 0; p < go.pairs; p++) {
    int a, b;
    ps_ctrgen_pair(g, p, &a, &b);
    fprintf(jf, "%s[%d, %d]", p ? ", " : "", a + 1, b + 1);
  }
  fprintf(jf,
          "],\n  \"pairless_auc\": %.6f,\n  \"pairless_log_loss\": %.6f,\n"
          "  \"learnable_auc\": %.6f,\n  \"learnable_log_loss\": %.6f,\n"
          "  \"learn_info\": %.6f,\n"
          "  \"head_min_count\": %g,\n  \"head_auc\": %.6f,\n"
          "  \"head_ranks\": [",
          ref_auc[PS_CTRGEN_REF_PAIRLESS], ref_ll[PS_CTRGEN_REF_PAIRLESS],
          ref_auc[PS_CTRGEN_REF_LEARNABLE], ref_ll[PS_CTRGEN_REF_LEARNABLE],
          info, head_min_count, head_auc);
  for (int f = 0; f < PS_CTRGEN_CATEG; f++)
    fprintf(jf, "%s%llu", f ? ", " : "",
            (unsigned long long)ps_ctrgen_head_rank(g, f));
  fprintf(jf, "],\n  \"seconds\": %.2f,\n  \"examples_per_sec\": %.0f\n}\n",
          secs, (double)(train + test) / secs);
  if (fclose(jf) != 0 || rename(tmp_path, json_path) != 0) {
    fprintf(stderr, "ps-datagen: cannot write %s: %s\n", json_path,
            strerror(errno));
    unlink(tmp_path);
    goto done;
  }
  PS_INFO("done",
          "train=%" PRId64 " test=%" PRId64
          " planted_auc=%.4f planted_log_loss=%.4f base_log_loss=%.4f"
          " head_auc=%.4f pairless_auc=%.4f learnable_auc=%.4f"
          " learnable_log_loss=%.4f seconds=%.1f examples_per_sec=%.0f",
          train, test, auc, ll, base_ll, head_auc,
          ref_auc[PS_CTRGEN_REF_PAIRLESS], ref_auc[PS_CTRGEN_REF_LEARNABLE],
          ref_ll[PS_CTRGEN_REF_LEARNABLE], secs, (double)(train + test) / secs);
  printf("wrote %s, %s, %s: planted test AUC %.4f, log loss %.4f "
         "(click rate %.3f), %.0f examples/s\n",
         train_path, test_path, json_path, auc, ll, rate,
         (double)(train + test) / secs);
  exit_code = PS_EXIT_OK;
done:
  free(ty);
  free(tp);
  for (int r = 0; r < PS_CTRGEN_NREF; r++) free(tref[r]);
  ps_ctrgen_destroy(&g);
  ps_ctrgen_destroy(&gt);
  ps_config_free(&cfg);
  return exit_code;
}
