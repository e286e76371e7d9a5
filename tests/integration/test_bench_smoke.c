/* ps-bench works end to end: a tiny local run (--local 1,1 --quick --json)
 * exits 0, leaves no process behind, and prints one valid JSON object per
 * line with the keys the sweep relies on: numbers for every measured case,
 * and the sparse op measured against real sparse tables (no raw baseline). Not
 * a timed test: only that the numbers exist and are positive. */
#include <check.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "tests/check_run.h"

/* ---- a small JSON syntax check (objects, arrays, strings, numbers,
 * literals), enough to know a line is one well-formed object ---- */

static const char *ws(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
  return p;
}

static const char *value(const char *p, int depth);

static const char *string(const char *p) {
  if (*p++ != '"') return NULL;
  while (*p && *p != '"') {
    if ((unsigned char)*p < 0x20) return NULL;
    if (*p == '\\') {
      p++;
      if (*p == 'u') {
        for (int i = 1; i <= 4; i++)
          if (!isxdigit((unsigned char)p[i])) return NULL;
        p += 4;
      } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
        return NULL;
      }
    }
    p++;
  }
  return *p == '"' ? p + 1 : NULL;
}

static const char *number(const char *p) {
  const char *s = p;
  if (*p == '-') p++;
  if (*p == '0')
    p++;
  else if (isdigit((unsigned char)*p))
    while (isdigit((unsigned char)*p)) p++;
  else
    return NULL;
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p)) return NULL;
    while (isdigit((unsigned char)*p)) p++;
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!isdigit((unsigned char)*p)) return NULL;
    while (isdigit((unsigned char)*p)) p++;
  }
  return p > s ? p : NULL;
}

static const char *container(const char *p, int depth, char open, char close,
                             int keyed) {
  if (*p++ != open) return NULL;
  p = ws(p);
  if (*p == close) return p + 1;
  for (;;) {
    if (keyed) {
      if (!(p = string(p))) return NULL;
      p = ws(p);
      if (*p++ != ':') return NULL;
    }
    if (!(p = value(ws(p), depth + 1))) return NULL;
    p = ws(p);
    if (*p == close) return p + 1;
    if (*p++ != ',') return NULL;
    p = ws(p);
  }
}

static const char *value(const char *p, int depth) {
  if (depth > 16) return NULL;
  switch (*p) {
    case '{':
      return container(p, depth, '{', '}', 1);
    case '[':
      return container(p, depth, '[', ']', 0);
    case '"':
      return string(p);
    case 't':
      return strncmp(p, "true", 4) ? NULL : p + 4;
    case 'f':
      return strncmp(p, "false", 5) ? NULL : p + 5;
    case 'n':
      return strncmp(p, "null", 4) ? NULL : p + 4;
    default:
      return number(p);
  }
}

static int valid_object(const char *line) {
  const char *p = ws(line);
  if (*p != '{') return 0;
  p = value(p, 0);
  return p && *ws(p) == '\0';
}

static int has_key(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  return strstr(line, pat) != NULL;
}

START_TEST(quick_local_run_prints_json) {
  h_cluster_t c;
  h_init(&c, "bench_smoke");
  const char *bin = getenv("PS_BIN_DIR");
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "'%s/ps-bench' --local 1,1 --quick --json --log-level info "
           "--log-dir '%s/logs' "
           "2>'%s/stderr.txt'",
           bin ? bin : ".", c.dir, c.dir);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  static const char *keys[] = {"op",      "size",     "window",     "servers",
                               "clients", "mbps",     "req_per_s",  "p50_us",
                               "p99_us",  "raw_mbps", "raw_p50_us", "ratio"};
  char line[8192];
  int lines = 0, dense = 0, sparse = 0, apply = 0;
  while (fgets(line, sizeof(line), f)) {
    line[strcspn(line, "\n")] = '\0';
    lines++;
    ck_assert_msg(valid_object(line), "not one JSON object: %s", line);
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
      ck_assert_msg(has_key(line, keys[k]), "no \"%s\" in %s", keys[k], line);
    if (strstr(line, "\"op\":\"sparse\"")) {
      sparse++;
      ck_assert_msg(strstr(line, "\"supported\":true"), "%s", line);
      ck_assert_msg(
          h_json_number(line, "keys_per_s") > 0 &&
              h_json_number(line, "mbps") > 0 &&
              h_json_number(line, "p50_us") > 0 &&
              h_json_number(line, "p99_us") >= h_json_number(line, "p50_us"),
          "%s", line);
      continue;
    }
    double mbps = h_json_number(line, "mbps");
    double raw = h_json_number(line, "raw_mbps");
    double ratio = h_json_number(line, "ratio");
    ck_assert_msg(mbps > 0 && raw > 0 && ratio > 0, "%s", line);
    if (strstr(line, "\"op\":\"apply\"")) {
      apply++;
      continue;
    }
    dense++;
    ck_assert_msg(
        h_json_number(line, "p50_us") > 0 &&
            h_json_number(line, "p99_us") >= h_json_number(line, "p50_us") &&
            h_json_number(line, "raw_p50_us") > 0 &&
            h_json_number(line, "req_per_s") > 0,
        "%s", line);
    ck_assert(h_json_number(line, "servers") == 1);
    ck_assert(h_json_number(line, "clients") == 1);
  }
  int st = pclose(f);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    char *err = h_read_file(h_path(&c, "stderr.txt"), NULL);
    fprintf(stderr, "ps-bench stderr:\n%s\n", err ? err : "");
    free(err);
  }
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "ps-bench exited with status %d", st);
  /* 3 dense ops x 2 quick sizes x 2 windows, sparse, apply. */
  ck_assert_int_eq(dense, 12);
  ck_assert_int_eq(sparse, 1);
  ck_assert_int_eq(apply, 1);
  ck_assert_int_eq(lines, 14);
  /* The cluster it started ended cleanly: the job finished when its client
   * was done, and each daemon logged its way out. */
  ck_assert_msg(
      h_wait_log(h_path(&c, "logs/scheduler.log"), "event=exit status=0", 1),
      "the scheduler did not exit cleanly");
  ck_assert_msg(
      h_wait_log(h_path(&c, "logs/server0.log"), "event=server_stats", 1),
      "the server did not stop cleanly");
}
END_TEST

/* --codec (issue #15): every dense op of 4 KiB (1024 values, one server)
 * reports the payload bytes it moved, as the codec sizes them: int8 a
 * scale per 256 values and a byte each (1040 bytes), top-k 1% 11 pairs
 * (88 bytes) with int8 replies; a fused op both ways. */
START_TEST(codec_run_reports_wire_bytes) {
  static const struct {
    const char *codec;
    double push, pull;
  } want[] = {{"int8", 1040, 1040}, {"topk", 88, 1040}};
  h_cluster_t c;
  h_init(&c, _i == 0 ? "bench_smoke_int8" : "bench_smoke_topk");
  const char *bin = getenv("PS_BIN_DIR");
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "'%s/ps-bench' --local 1,1 --quick --json --codec %s "
           "--ops push,pull,pushpull,fused --sizes 4K --windows 1 "
           "2>'%s/stderr.txt'",
           bin ? bin : ".", want[_i].codec, c.dir);
  FILE *f = popen(cmd, "r");
  ck_assert_ptr_nonnull(f);
  char line[8192];
  int lines = 0;
  while (fgets(line, sizeof(line), f)) {
    line[strcspn(line, "\n")] = '\0';
    ck_assert_msg(valid_object(line), "not one JSON object: %s", line);
    char codec[64];
    snprintf(codec, sizeof(codec), "\"codec\":\"%s\"", want[_i].codec);
    ck_assert_msg(strstr(line, codec) != NULL, "no %s in %s", codec, line);
    double expect = strstr(line, "\"op\":\"push\"") ? want[_i].push
                    : strstr(line, "\"op\":\"pull\"")
                        ? want[_i].pull
                        : want[_i].push + want[_i].pull;
    double wire = h_json_number(line, "wire_bytes_per_op");
    /* A resend (a loaded machine) adds a request now and then. */
    ck_assert_msg(wire >= expect && wire <= expect * 1.05,
                  "%s: wire_bytes_per_op %.1f, expected %.0f: %s",
                  want[_i].codec, wire, expect, line);
    ck_assert_msg(h_json_number(line, "mbps") > 0, "%s", line);
    lines++;
  }
  int st = pclose(f);
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    char *err = h_read_file(h_path(&c, "stderr.txt"), NULL);
    fprintf(stderr, "ps-bench stderr:\n%s\n", err ? err : "");
    free(err);
  }
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "ps-bench --codec %s exited with status %d", want[_i].codec,
                st);
  ck_assert_int_eq(lines, 4);
}
END_TEST

int main(void) {
  Suite *s = suite_create("bench_smoke");
  TCase *tc = tcase_create("bench_smoke");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, quick_local_run_prints_json);
  tcase_add_loop_test(tc, codec_run_reports_wire_bytes, 0, 2);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
