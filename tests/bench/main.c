/* ps-bench: push/pull throughput and latency of a parameter-server cluster,
 * next to raw ZeroMQ between the same processes, and the update kernel next
 * to memcpy.
 *
 * The controller (this file) starts the cluster (--local S,W: a scheduler,
 * S servers) or uses a running one (--scheduler EP), forks W client
 * processes that register as the job's workers with a synthetic one-tensor
 * model, and S raw ZeroMQ servers; then for every case (op, size, window)
 * it runs repetitions in lockstep on every client, alternating ours and raw
 * so both see the same machine, and reports median, min and max. Every
 * process it started is stopped when it ends, fails or is interrupted.
 * See tests/bench/runner.c for what one op is. Exit status: PS_EXIT_*
 * (common/config.h), and 130 when interrupted.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "common/codec.h"
#include "common/config.h"
#include "common/err.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/optimizer.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "worker/client/client_defaults.h"

#define MAX_LIST 16
#define MAX_CLIENTS 128
#define MAX_SERVERS 32

typedef struct {
  /* options */
  char *local, *scheduler, *ops_s, *sizes_s, *windows_s, *bin_dir, *log_dir;
  int64_t servers_opt, clients_opt, reps, rep_ms, warmup_ms, apply_mb,
      chunk_bytes, timeout_ms, sparse_dim, sparse_keys, sparse_space,
      replication, sparse_ids;
  double sparse_zipf;
  int sparse_fresh, sparse_hold, sparse_optimizer;
  int codec;            /* --codec: index into none|fp16|int8|topk */
  double topk_fraction; /* --topk-fraction */
  int baseline, json, quick, log_level, pull_copy, curve;
  char *keys_dir_opt; /* --keys-dir: an outside cluster's keys */
  /* parsed */
  int ops[PS_BENCH_NOPS], nops;
  uint64_t sizes[MAX_LIST];
  int nsizes;
  int windows[MAX_LIST], nwindows, window_max;
  int nservers, nclients;
  uint64_t max_floats, model_floats;
  /* the run */
  char sched_ep[128];
  char run_dir[256];
  int ctl[MAX_CLIENTS];     /* our end of each client's socketpair */
  int raw_ctl[MAX_SERVERS]; /* our end of each raw server's */
  char raw_eps[MAX_SERVERS][128];
  int nraw;
  int failed;
  /* --curve: the pass on a CURVE cluster, whose keys are made here. */
  int pass_curve;
  char keys_dir[300];
} bench_t;

static bench_t B;

static void fail_msg(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void fail_msg(const char *fmt, ...) {
  /* What fails while we are being stopped is the stop, not a finding. */
  if (ps_bench_interrupted) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "ps-bench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  B.failed = 1;
}

/* ---- option lists ---- */

static int parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || errno) return -1;
  uint64_t mult = 1;
  if (*end == 'K' || *end == 'k')
    mult = 1024, end++;
  else if (*end == 'M' || *end == 'm')
    mult = 1024 * 1024, end++;
  else if (*end == 'G' || *end == 'g')
    mult = 1024ull * 1024 * 1024, end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end != '\0' || v == 0) return -1;
  *out = v * mult;
  return 0;
}

static const char *size_name(uint64_t b, char *buf, size_t len) {
  if (b % (1024 * 1024) == 0)
    snprintf(buf, len, "%lluM", (unsigned long long)(b >> 20));
  else if (b % 1024 == 0)
    snprintf(buf, len, "%lluK", (unsigned long long)(b >> 10));
  else
    snprintf(buf, len, "%llu", (unsigned long long)b);
  return buf;
}

/* Splits a comma list; each item goes to item(). PS_OK, or PS_ERR_CONFIG
 * with the option and the reason in err. */
static int parse_list(const char *opt, const char *s,
                      int (*item)(const char *tok, char *why, size_t len),
                      char *err, size_t errlen) {
  char buf[512], why[160];
  snprintf(buf, sizeof(buf), "%s", s);
  char *save = NULL;
  int n = 0;
  for (char *tok = strtok_r(buf, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save), n++) {
    if (item(tok, why, sizeof(why)) != 0)
      return ps_errf(err, errlen, PS_ERR_CONFIG, "option --%s: %s", opt, why);
  }
  if (n == 0)
    return ps_errf(err, errlen, PS_ERR_CONFIG, "option --%s: empty list", opt);
  return PS_OK;
}

static int op_item(const char *tok, char *why, size_t len) {
  for (int i = 0; i < PS_BENCH_NOPS; i++) {
    if (strcmp(tok, ps_bench_op_name((ps_bench_op_t)i)) != 0) continue;
    for (int j = 0; j < B.nops; j++)
      if (B.ops[j] == i) return 0;
    B.ops[B.nops++] = i;
    return 0;
  }
  snprintf(why, len,
           "\"%s\" is not one of push, pull, pushpull, fused, sparse, apply",
           tok);
  return -1;
}

static int size_item(const char *tok, char *why, size_t len) {
  uint64_t v;
  if (parse_size(tok, &v) != 0 || v % sizeof(float) != 0 || v > (1ull << 30)) {
    snprintf(why, len,
             "\"%s\" is not a size in bytes (4K, 1M, ...), a multiple of 4, "
             "at most 1G",
             tok);
    return -1;
  }
  if (B.nsizes == MAX_LIST) {
    snprintf(why, len, "more than %d sizes", MAX_LIST);
    return -1;
  }
  B.sizes[B.nsizes++] = v;
  return 0;
}

static int window_item(const char *tok, char *why, size_t len) {
  char *end;
  long v = strtol(tok, &end, 10);
  if (end == tok || *end != '\0' || v < 1 || v > 1024) {
    snprintf(why, len, "\"%s\" is not a window in [1, 1024]", tok);
    return -1;
  }
  if (B.nwindows == MAX_LIST) {
    snprintf(why, len, "more than %d windows", MAX_LIST);
    return -1;
  }
  B.windows[B.nwindows++] = (int)v;
  if (v > B.window_max) B.window_max = (int)v;
  return 0;
}

static int has_op(int op) {
  for (int i = 0; i < B.nops; i++)
    if (B.ops[i] == op) return 1;
  return 0;
}

/* ---- output ---- */

typedef struct {
  double mbps, mbps_min, mbps_max, rps, p50, p99;
  double wire_per_op; /* payload bytes on the sockets per op, both ways */
  int valid;
} summary_t;

/* --codec's choices are the codecs in their PS_CODEC_* order; pulls go in
 * fp16 with fp16, int8 with int8 and topk (ps-worker's --pull-codec auto). */
static int pull_codec_of(int codec) {
  return codec == PS_CODEC_TOPK ? PS_CODEC_INT8 : codec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void json_num(FILE *f, const char *key, double v, int valid) {
  if (valid && isfinite(v))
    fprintf(f, ",\"%s\":%.6g", key, v);
  else
    fprintf(f, ",\"%s\":null", key);
}

static void print_header(void) {
  FILE *f = B.json ? stderr : stdout;
  if (B.codec != PS_CODEC_NONE)
    fprintf(f,
            "codec: pushes %s, pulls %s%s; MB/s counts float32 values, "
            "wire/op the payload bytes one op moves (all servers, both "
            "ways)\n",
            ps_codec_name(B.codec), ps_codec_name(pull_codec_of(B.codec)),
            B.codec == PS_CODEC_TOPK ? " (top-k fraction below)" : "");
  if (B.codec == PS_CODEC_TOPK)
    fprintf(f, "top-k fraction %g\n", B.topk_fraction);
  fprintf(f,
          "%-9s %5s %3s %3s %3s | %9s %19s %9s %8s %8s %10s | %9s %8s | %5s "
          "%5s\n",
          "op", "size", "win", "S", "C", "MB/s", "(min-max)", "req/s", "p50 us",
          "p99 us", "wire/op", "raw MB/s", "raw p50", "ratio", "p50x");
}

static void print_case(const char *op, uint64_t size, int window,
                       const summary_t *ours, const summary_t *raw) {
  char sz[32], mm[48];
  size_name(size, sz, sizeof(sz));
  double ratio = raw->valid && raw->mbps > 0 ? ours->mbps / raw->mbps : NAN;
  double lat = raw->valid && raw->p50 > 0 ? ours->p50 / raw->p50 : NAN;
  FILE *f = B.json ? stderr : stdout;
  snprintf(mm, sizeof(mm), "(%.1f-%.1f)", ours->mbps_min, ours->mbps_max);
  char rawm[32] = "-", rawp[32] = "-", rs[16] = "-", ls[16] = "-";
  if (raw->valid) {
    snprintf(rawm, sizeof(rawm), "%.1f", raw->mbps);
    snprintf(rawp, sizeof(rawp), "%.1f", raw->p50);
    snprintf(rs, sizeof(rs), "%.2f", ratio);
    snprintf(ls, sizeof(ls), "%.2f", lat);
  }
  fprintf(f,
          "%-9s %5s %3d %3d %3d | %9.1f %19s %9.0f %8.1f %8.1f %10.0f | %9s "
          "%8s | %5s %5s\n",
          op, sz, window, B.nservers, B.nclients, ours->mbps, mm, ours->rps,
          ours->p50, ours->p99, ours->wire_per_op, rawm, rawp, rs, ls);
  fflush(f);
  if (!B.json) return;
  printf(
      "{\"op\":\"%s\",\"size\":%llu,\"window\":%d,\"servers\":%d,"
      "\"clients\":%d,\"reps\":%lld,\"pull\":\"%s\",\"transport\":\"%s\","
      "\"codec\":\"%s\",\"pull_codec\":\"%s\"",
      op, (unsigned long long)size, window, B.nservers, B.nclients,
      (long long)B.reps, B.pull_copy ? "copy" : "zero-copy",
      B.pass_curve || B.keys_dir_opt ? "curve" : "plaintext",
      ps_codec_name(B.codec), ps_codec_name(pull_codec_of(B.codec)));
  if (B.codec == PS_CODEC_TOPK)
    json_num(stdout, "topk_fraction", B.topk_fraction, 1);
  json_num(stdout, "mbps", ours->mbps, 1);
  json_num(stdout, "mbps_min", ours->mbps_min, 1);
  json_num(stdout, "mbps_max", ours->mbps_max, 1);
  json_num(stdout, "req_per_s", ours->rps, 1);
  json_num(stdout, "p50_us", ours->p50, 1);
  json_num(stdout, "p99_us", ours->p99, 1);
  json_num(stdout, "wire_bytes_per_op", ours->wire_per_op, 1);
  json_num(stdout, "raw_mbps", raw->mbps, raw->valid);
  json_num(stdout, "raw_mbps_min", raw->mbps_min, raw->valid);
  json_num(stdout, "raw_mbps_max", raw->mbps_max, raw->valid);
  json_num(stdout, "raw_req_per_s", raw->rps, raw->valid);
  json_num(stdout, "raw_p50_us", raw->p50, raw->valid);
  json_num(stdout, "raw_p99_us", raw->p99, raw->valid);
  json_num(stdout, "ratio", ratio, raw->valid);
  json_num(stdout, "p50_ratio", lat, raw->valid);
  printf("}\n");
  fflush(stdout);
}

/* ---- the cluster ---- */

static void default_bin_dir(char *buf, size_t len) {
  ssize_t n = readlink("/proc/self/exe", buf, len - 1);
  if (n <= 0) {
    snprintf(buf, len, ".");
    return;
  }
  buf[n] = '\0';
  char *slash = strrchr(buf, '/');
  if (slash) *slash = '\0';
}

static int start_daemons(void) {
  char bin[PATH_MAX];
  if (B.bin_dir && B.bin_dir[0])
    snprintf(bin, sizeof(bin), "%s", B.bin_dir);
  else
    default_bin_dir(bin, sizeof(bin));
  int port = ps_bench_free_port();
  if (port < 0) {
    fail_msg("no free port on 127.0.0.1 for the scheduler");
    return -1;
  }
  snprintf(B.sched_ep, sizeof(B.sched_ep), "tcp://127.0.0.1:%d", port);
  char path[PATH_MAX + 32], log[512], servers[16], workers[16], repl[16];
  snprintf(path, sizeof(path), "%s/ps-scheduler", bin);
  snprintf(repl, sizeof(repl), "%lld", (long long)B.replication);
  snprintf(log, sizeof(log), "%s/scheduler.log", B.run_dir);
  snprintf(servers, sizeof(servers), "%d", B.nservers);
  snprintf(workers, sizeof(workers), "%d", B.nclients);
  const char *level = B.log_level <= PS_LOG_INFO ? "info" : "warn";
  /* Loaded clients may miss heartbeats for a while; a worker declared dead
   * mid-run would change the view under the measurement. */
  /* Plaintext on loopback is asked for; the CURVE pass uses its keys. */
  char *sec1 = B.pass_curve ? "--keys-dir" : "--insecure";
  char *sec2 = B.pass_curve ? B.keys_dir : NULL;
  char *sargv[] = {path,          "--bind",
                   B.sched_ep,    "--servers",
                   servers,       "--workers",
                   workers,       "--mode",
                   "asp",         "--heartbeat-timeout-ms",
                   "600000",      "--log-level",
                   (char *)level, "--replication",
                   repl,          sec1,
                   sec2,          NULL};
  if (access(path, X_OK) != 0 || !ps_bench_spawn("scheduler", log, sargv)) {
    fail_msg("cannot start %s: %s", path, strerror(errno));
    return -1;
  }
  snprintf(path, sizeof(path), "%s/ps-server", bin);
  for (int i = 0; i < B.nservers; i++) {
    char name[32];
    snprintf(name, sizeof(name), "server%d", i);
    snprintf(log, sizeof(log), "%s/%s.log", B.run_dir, name);
    char *argv[] = {path,          "--scheduler", B.sched_ep, "--log-level",
                    (char *)level, sec1,          sec2,       NULL};
    if (access(path, X_OK) != 0 || !ps_bench_spawn(name, log, argv)) {
      fail_msg("cannot start %s: %s", path, strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* Our ends of every pipe so far: a new child closes them, so each pipe
 * has exactly one process at each end and EOF means what it says. */
static int parent_fds(int *fds) {
  int n = 0;
  for (int i = 0; i < B.nraw; i++) fds[n++] = B.raw_ctl[i];
  for (int i = 0; i < B.nclients; i++)
    if (B.ctl[i] >= 0) fds[n++] = B.ctl[i];
  return n;
}

static int start_raw_servers(void) {
  static ps_bench_raw_args_t args[MAX_SERVERS];
  for (int i = 0; i < B.nservers; i++) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      fail_msg("socketpair: %s", strerror(errno));
      return -1;
    }
    args[i].max_floats = B.max_floats;
    args[i].ctl_fd = sv[1];
    int fds[MAX_CLIENTS + MAX_SERVERS + 1];
    int n = parent_fds(fds);
    fds[n++] = sv[0];
    char name[32];
    snprintf(name, sizeof(name), "raw-server%d", i);
    if (!ps_bench_fork(name, ps_bench_raw_server_main, &args[i], fds, n)) {
      fail_msg("fork: %s", strerror(errno));
      return -1;
    }
    close(sv[1]);
    B.raw_ctl[B.nraw++] = sv[0];
    char line[256];
    int len = ps_bench_read_line(sv[0], line, sizeof(line), 10000);
    if (len <= 0 || strncmp(line, "endpoint ", 9) != 0) {
      fail_msg("raw server %d did not start: %s", i,
               len > 0 ? line : "no answer");
      return -1;
    }
    if (strlen(line + 9) >= sizeof(B.raw_eps[i])) {
      fail_msg("raw server %d: endpoint too long: %s", i, line + 9);
      return -1;
    }
    memcpy(B.raw_eps[i], line + 9, strlen(line + 9) + 1);
  }
  return 0;
}

static int start_clients(void) {
  static ps_bench_client_args_t args[MAX_CLIENTS];
  for (int i = 0; i < B.nclients; i++) B.ctl[i] = -1;
  for (int i = 0; i < B.nclients; i++) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      fail_msg("socketpair: %s", strerror(errno));
      return -1;
    }
    ps_bench_client_args_t *a = &args[i];
    a->scheduler = B.sched_ep;
    a->model_floats = B.model_floats;
    a->max_floats = B.max_floats;
    a->window_max = B.window_max;
    a->chunk_bytes = (uint64_t)B.chunk_bytes;
    a->timeout_ms = (int)B.timeout_ms;
    a->log_level = B.log_level;
    a->pull_copy = B.pull_copy;
    a->ctl_fd = sv[1];
    a->nraw = B.nraw;
    a->raw_eps = B.raw_eps;
    a->sparse_dim = has_op(PS_BENCH_SPARSE) ? (uint32_t)B.sparse_dim : 0;
    a->sparse_keys = (uint64_t)B.sparse_keys;
    a->sparse_space = (uint64_t)B.sparse_space;
    a->sparse_zipf = B.sparse_zipf;
    a->sparse_fresh = B.sparse_fresh || B.sparse_ids > 0;
    a->client_index = i;
    a->nclients = B.nclients;
    /* The enum's choices are "model|sgd|adagrad|adam|ftrl". */
    static const int kinds[] = {-1, PS_OPTIMIZER_SGD, PS_OPTIMIZER_ADAGRAD,
                                PS_OPTIMIZER_ADAM, PS_OPTIMIZER_FTRL};
    a->sparse_optimizer = kinds[B.sparse_optimizer];
    a->keys_dir = B.pass_curve ? B.keys_dir : B.keys_dir_opt;
    a->codec = B.codec;
    a->pull_codec = pull_codec_of(B.codec);
    a->topk_fraction = (float)B.topk_fraction;
    int fds[MAX_CLIENTS + MAX_SERVERS + 1];
    int n = parent_fds(fds);
    fds[n++] = sv[0];
    char name[32];
    snprintf(name, sizeof(name), "client%d", i);
    if (!ps_bench_fork(name, ps_bench_client_main, a, fds, n)) {
      fail_msg("fork: %s", strerror(errno));
      close(sv[0]);
      close(sv[1]);
      return -1;
    }
    close(sv[1]);
    B.ctl[i] = sv[0];
  }
  /* Registration waits for every worker, so the readies come together. */
  for (int i = 0; i < B.nclients; i++) {
    char line[1024];
    int len = ps_bench_read_line(B.ctl[i], line, sizeof(line),
                                 (int)B.timeout_ms + 60000);
    if (len <= 0 || strncmp(line, "ready ", 6) != 0) {
      fail_msg("client %d did not join: %s", i,
               len > 0     ? line
               : len == -2 ? "interrupted or timed out"
                           : "it exited");
      return -1;
    }
    int ns = atoi(line + 6);
    if (ns != B.nservers) {
      fail_msg("the cluster has %d servers; --servers says %d", ns, B.nservers);
      return -1;
    }
  }
  return 0;
}

/* One repetition on every client at once. */
static int run_rep(const char *mode, int op, uint64_t size, int window,
                   int64_t ms, double *mbps, double *rps, ps_bench_hist_t *hist,
                   uint64_t *wire, uint64_t *ops) {
  char cmd[256];
  int n = snprintf(cmd, sizeof(cmd), "run %s %s %llu %d %lld\n", mode,
                   ps_bench_op_name((ps_bench_op_t)op),
                   (unsigned long long)size, window, (long long)ms);
  for (int i = 0; i < B.nclients; i++)
    if (ps_bench_write_all(B.ctl[i], cmd, (size_t)n) != 0) {
      fail_msg("client %d is gone", i);
      return -1;
    }
  static char line[65536 + 128];
  uint64_t bytes = 0, reqs = 0, elapsed = 0;
  int rc = 0;
  for (int i = 0; i < B.nclients; i++) {
    int len = ps_bench_read_line(B.ctl[i], line, sizeof(line),
                                 (int)(ms + B.timeout_ms + 30000));
    unsigned long long b, r, o, e, w;
    int off = 0;
    if (len > 0 &&
        sscanf(line, "res %llu %llu %llu %llu %llu %n", &b, &r, &o, &e, &w,
               &off) == 5 &&
        off > 0 && ps_bench_hist_parse(hist, line + off) == 0) {
      bytes += b;
      reqs += r;
      if (wire) *wire += w;
      if (ops) *ops += o;
      if (e > elapsed) elapsed = e;
      continue;
    }
    if (rc == 0)
      fail_msg("client %d, %s %s %llu window %d: %s", i, mode,
               ps_bench_op_name((ps_bench_op_t)op), (unsigned long long)size,
               window,
               len > 0     ? line
               : len == -2 ? "interrupted or timed out"
                           : "the client exited");
    rc = -1;
  }
  if (rc == 0 && elapsed == 0) rc = -1;
  if (rc == 0) {
    *mbps = (double)bytes / ((double)elapsed * 1e-9) / 1e6;
    *rps = (double)reqs / ((double)elapsed * 1e-9);
  }
  return rc;
}

static int run_case(int op, uint64_t size, int window) {
  int raw = B.baseline == 0 && B.nraw > 0;
  double m[2][64], r[2][64];
  static ps_bench_hist_t h[2], scratch;
  memset(h, 0, sizeof(h));
  int reps = (int)B.reps;
  const char *modes[2] = {"ps", "raw"};
  /* Warm-up: connections, pools, page faults, the CPU's clock. */
  for (int k = 0; k < 1 + raw; k++) {
    double a, b;
    memset(&scratch, 0, sizeof(scratch));
    if (run_rep(modes[k], op, size, window, B.warmup_ms, &a, &b, &scratch, NULL,
                NULL))
      return -1;
  }
  uint64_t wire[2] = {0, 0}, nops[2] = {0, 0};
  for (int i = 0; i < reps; i++) {
    /* Alternate who goes first, so a drift in the machine's load (other
     * jobs, the CPU's clock) does not favour one side. */
    for (int j = 0; j < 1 + raw; j++) {
      int k = raw ? (i + j) % 2 : 0;
      if (run_rep(modes[k], op, size, window, B.rep_ms, &m[k][i], &r[k][i],
                  &h[k], &wire[k], &nops[k]))
        return -1;
    }
  }
  summary_t s[2];
  memset(s, 0, sizeof(s));
  for (int k = 0; k < 1 + raw; k++) {
    double tmp[64];
    memcpy(tmp, m[k], sizeof(double) * (size_t)reps);
    s[k].mbps = median(tmp, reps);
    s[k].mbps_min = tmp[0];
    s[k].mbps_max = tmp[reps - 1];
    memcpy(tmp, r[k], sizeof(double) * (size_t)reps);
    s[k].rps = median(tmp, reps);
    s[k].p50 = ps_bench_hist_quantile_us(&h[k], 0.5);
    s[k].p99 = ps_bench_hist_quantile_us(&h[k], 0.99);
    s[k].wire_per_op = nops[k] ? (double)wire[k] / (double)nops[k] : 0;
    s[k].valid = 1;
  }
  print_case(ps_bench_op_name((ps_bench_op_t)op), size, window, &s[0], &s[1]);
  return 0;
}

static void stop_cluster(void) {
  for (int i = 0; i < B.nclients; i++) {
    if (B.ctl[i] < 0) continue;
    ps_bench_write_all(B.ctl[i], "quit\n", 5);
    close(B.ctl[i]);
    B.ctl[i] = -1;
  }
  for (int i = 0; i < B.nraw; i++) {
    ps_bench_write_all(B.raw_ctl[i], "quit\n", 5);
    close(B.raw_ctl[i]);
  }
  B.nraw = 0;
  /* Every worker sent Done: the scheduler ends the job and every daemon
   * exits by itself; stragglers are stopped. */
  ps_bench_procs_stop(B.failed || ps_bench_interrupted ? 0 : 10000);
}

/* ---- sparse and apply ---- */

/* Sparse tables: every client pushes then pulls --sparse-keys random rows
 * per call, one call at a time. There is no raw ZeroMQ baseline: it would
 * measure the same frames as a dense request of the same bytes. */
static int run_sparse_case(void) {
  uint64_t nkeys = (uint64_t)B.sparse_keys;
  int reps = (int)B.reps;
  double m[64], r[64], tmp[64];
  static ps_bench_hist_t h, scratch;
  memset(&h, 0, sizeof(h));
  memset(&scratch, 0, sizeof(scratch));
  double a, b;
  if (run_rep("ps", PS_BENCH_SPARSE, nkeys, 1, B.warmup_ms, &a, &b, &scratch,
              NULL, NULL))
    return -1;
  for (int i = 0; i < reps; i++)
    if (run_rep("ps", PS_BENCH_SPARSE, nkeys, 1, B.rep_ms, &m[i], &r[i], &h,
                NULL, NULL))
      return -1;
  memcpy(tmp, m, sizeof(double) * (size_t)reps);
  double mbps = median(tmp, reps), mmin = tmp[0], mmax = tmp[reps - 1];
  memcpy(tmp, r, sizeof(double) * (size_t)reps);
  double calls = median(tmp, reps), keys = calls * (double)nkeys;
  double p50 = ps_bench_hist_quantile_us(&h, 0.5);
  double p99 = ps_bench_hist_quantile_us(&h, 0.99);
  FILE *f = B.json ? stderr : stdout;
  fprintf(f,
          "%-9s keys/call %llu dim %lld space %lld zipf %.2f S %d C %d | "
          "%.0f keys/s %.1f MB/s (%.1f-%.1f) %.0f calls/s p50 %.1f us p99 "
          "%.1f us | raw n/a\n",
          "sparse", (unsigned long long)nkeys, (long long)B.sparse_dim,
          (long long)B.sparse_space, B.sparse_zipf, B.nservers, B.nclients,
          keys, mbps, mmin, mmax, calls, p50, p99);
  fflush(f);
  if (B.json) {
    printf(
        "{\"op\":\"sparse\",\"supported\":true,\"keys\":%llu,"
        "\"dim\":%lld,\"space\":%lld,\"zipf\":%g,\"servers\":%d,"
        "\"clients\":%d,\"reps\":%d,\"size\":%llu,\"window\":1",
        (unsigned long long)nkeys, (long long)B.sparse_dim,
        (long long)B.sparse_space, B.sparse_zipf, B.nservers, B.nclients, reps,
        (unsigned long long)(nkeys * (8 + 4 * (uint64_t)B.sparse_dim)));
    json_num(stdout, "keys_per_s", keys, 1);
    json_num(stdout, "mbps", mbps, 1);
    json_num(stdout, "mbps_min", mmin, 1);
    json_num(stdout, "mbps_max", mmax, 1);
    json_num(stdout, "req_per_s", calls, 1);
    json_num(stdout, "p50_us", p50, 1);
    json_num(stdout, "p99_us", p99, 1);
    printf(",\"raw_mbps\":null,\"raw_p50_us\":null,\"ratio\":null}\n");
    fflush(stdout);
  }
  return 0;
}

/* A fill (--sparse-ids N): the clients push N distinct ids between them,
 * --sparse-keys per call, and the run reports how fast; with --sparse-hold
 * it then says "held" on stdout and keeps the clients (so the job, so the
 * servers and their rows) until a line or EOF on stdin, at most
 * --timeout-ms, for a script to read the servers (tests/bench/sparse_*.sh). */
static int run_fill_case(void) {
  uint64_t total = (uint64_t)B.sparse_ids, n = (uint64_t)B.nclients;
  char cmd[64];
  uint64_t t0 = ps_now_ns(), next_note = t0 + 10000000000ull;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t share = total / n + (i < total % n);
    int len = snprintf(cmd, sizeof(cmd), "fill %llu\n",
                       (unsigned long long)share);
    if (ps_bench_write_all(B.ctl[i], cmd, (size_t)len) != 0) {
      fail_msg("client %d is gone", (int)i);
      return -1;
    }
  }
  static char line[65536 + 128];
  static ps_bench_hist_t h;
  memset(&h, 0, sizeof(h));
  uint64_t bytes = 0, calls = 0, elapsed = 0;
  for (uint64_t i = 0; i < n; i++) {
    for (;;) {
      /* A client reports progress every second: silence for a deadline's
       * worth is a hang. */
      int len = ps_bench_read_line(B.ctl[i], line, sizeof(line),
                                   (int)B.timeout_ms + 30000);
      unsigned long long b, r, o, e, w, done;
      int off = 0;
      if (len > 0 && sscanf(line, "prog %llu", &done) == 1) {
        uint64_t now = ps_now_ns();
        if (i == 0 && now >= next_note) {
          next_note = now + 10000000000ull;
          fprintf(stderr, "ps-bench: fill: client 0 pushed %llu of %llu ids "
                  "(%.0f s)\n", done,
                  (unsigned long long)(total / n + (total % n > 0)),
                  (double)(now - t0) * 1e-9);
        }
        continue;
      }
      if (len > 0 &&
          sscanf(line, "res %llu %llu %llu %llu %llu %n", &b, &r, &o, &e, &w,
                 &off) == 5 &&
          off > 0 && ps_bench_hist_parse(&h, line + off) == 0) {
        bytes += b, calls += r;
        if (e > elapsed) elapsed = e;
        break;
      }
      fail_msg("client %d, sparse fill: %s", (int)i,
               len > 0     ? line
               : len == -2 ? "interrupted or timed out"
                           : "the client exited");
      return -1;
    }
  }
  double secs = (double)elapsed * 1e-9;
  if (secs <= 0) secs = 1e-9;
  FILE *f = B.json ? stderr : stdout;
  fprintf(f,
          "%-9s ids %llu keys/call %lld dim %lld S %d C %d | %.1f s %.0f "
          "ids/s %.1f MB/s %.0f calls/s p50 %.1f us p99 %.1f us\n",
          "fill", (unsigned long long)total, (long long)B.sparse_keys,
          (long long)B.sparse_dim, B.nservers, B.nclients, secs,
          (double)total / secs, (double)bytes / secs / 1e6,
          (double)calls / secs, ps_bench_hist_quantile_us(&h, 0.5),
          ps_bench_hist_quantile_us(&h, 0.99));
  fflush(f);
  if (B.json) {
    printf("{\"op\":\"fill\",\"ids\":%llu,\"keys\":%lld,\"dim\":%lld,"
           "\"servers\":%d,\"clients\":%d",
           (unsigned long long)total, (long long)B.sparse_keys,
           (long long)B.sparse_dim, B.nservers, B.nclients);
    json_num(stdout, "seconds", secs, 1);
    json_num(stdout, "ids_per_s", (double)total / secs, 1);
    json_num(stdout, "p50_us", ps_bench_hist_quantile_us(&h, 0.5), 1);
    json_num(stdout, "p99_us", ps_bench_hist_quantile_us(&h, 0.99), 1);
    printf("}\n");
    fflush(stdout);
  }
  if (B.sparse_hold) {
    printf("held\n");
    fflush(stdout);
    char buf[256];
    int len = ps_bench_read_line(STDIN_FILENO, buf, sizeof(buf),
                                 (int)B.timeout_ms);
    if (len == -2 && !ps_bench_interrupted)
      fprintf(stderr, "ps-bench: --sparse-hold: nothing on stdin within "
              "--timeout-ms %lld; letting go\n", (long long)B.timeout_ms);
  }
  return 0;
}

static double pass_seconds(void (*fn)(void *), void *arg) {
  uint64_t t0 = ps_now_ns();
  fn(arg);
  return (double)(ps_now_ns() - t0) * 1e-9;
}

typedef struct {
  float *w, *v, *g, *dst; /* v: 2 planes of n, for Adam's and FTRL's state */
  size_t n;
  float momentum;
  ps_optimizer_spec_t opt; /* do_opt's */
} apply_arg_t;

static void do_apply(void *p) {
  apply_arg_t *a = p;
  ps_apply_sgd(a->w, a->v, a->g, a->n, 0.01f, a->momentum, 1.0f);
}

/* The server's path for the stateful optimizers (issue #14): scale 0.5 and
 * a schedule factor, as a BSP step of two workers would pass. */
static void do_opt(void *p) {
  apply_arg_t *a = p;
  ps_optimizer_apply(&a->opt, a->w, a->w, a->v, a->n, a->g, a->n, 0.5f, 0.75f,
                     7);
}

static void do_memcpy(void *p) {
  apply_arg_t *a = p;
  memcpy(a->dst, a->g, a->n * sizeof(float));
}

static int run_apply(void) {
  size_t bytes = (size_t)B.apply_mb << 20, n = bytes / sizeof(float);
  apply_arg_t a = {aligned_alloc(64, bytes),
                   aligned_alloc(64, 2 * bytes),
                   aligned_alloc(64, bytes),
                   aligned_alloc(64, bytes),
                   n,
                   0,
                   {0}};
  if (!a.w || !a.v || !a.g || !a.dst) {
    fail_msg("no memory for the apply benchmark (5 x %lld MiB)",
             (long long)B.apply_mb);
    free(a.w), free(a.v), free(a.g), free(a.dst);
    return -1;
  }
  /* Touch everything once, so page faults are not measured. */
  for (size_t i = 0; i < n; i++)
    a.w[i] = 1.0f, a.v[i] = a.v[n + i] = 0.0f, a.g[i] = 1e-3f, a.dst[i] = 0.0f;
  int reps = (int)B.reps * 4;
  double ta[256], tm[256], tv[256], to[3][256];
  if (reps > 256) reps = 256;
  ps_optimizer_spec_t opts[3] = {
      {.kind = PS_OPTIMIZER_ADAGRAD, .learning_rate = 0.01f, .epsilon = 1e-8f},
      {.kind = PS_OPTIMIZER_ADAM,
       .learning_rate = 0.001f,
       .beta1 = 0.9f,
       .beta2 = 0.999f,
       .epsilon = 1e-8f},
      {.kind = PS_OPTIMIZER_FTRL,
       .learning_rate = 0.1f,
       .l1 = 1e-4f,
       .l2 = 1e-4f,
       .ftrl_beta = 1.0f},
  };
  do_apply(&a), do_memcpy(&a);
  for (int i = 0; i < reps; i++) {
    /* Interleaved, so all see the same machine. */
    a.momentum = 0.0f;
    ta[i] = pass_seconds(do_apply, &a);
    tm[i] = pass_seconds(do_memcpy, &a);
    a.momentum = 0.9f;
    tv[i] = pass_seconds(do_apply, &a);
    for (int k = 0; k < 3; k++) {
      a.opt = opts[k];
      to[k][i] = pass_seconds(do_opt, &a);
    }
  }
  double sa = median(ta, reps), sm = median(tm, reps), sv = median(tv, reps);
  double so[3];
  for (int k = 0; k < 3; k++) so[k] = median(to[k], reps);
  double apply_mbps = (double)bytes / sa / 1e6,
         copy_mbps = (double)bytes / sm / 1e6;
  double mom_mbps = (double)bytes / sv / 1e6;
  const char *isa = ps_optimizer_isa();
  FILE *f = B.json ? stderr : stdout;
  fprintf(f,
          "%-9s %4lldM  sgd %.0f MB/s (p50 %.0f us)  memcpy %.0f MB/s (p50 "
          "%.0f us)  ratio %.2f  | momentum 0.9: %.0f MB/s, ratio %.2f  | "
          "memory traffic: sgd %.0f MB/s (2 reads + 1 write), memcpy %.0f "
          "MB/s  | kernel %s\n",
          "apply", (long long)B.apply_mb, apply_mbps, sa * 1e6, copy_mbps,
          sm * 1e6, apply_mbps / copy_mbps, mom_mbps, mom_mbps / copy_mbps,
          3 * apply_mbps, 2 * copy_mbps, isa);
  /* GB/s of weights updated; each reads and writes its state too
   * (Adagrad 1 plane, Adam and FTRL 2). */
  fprintf(f,
          "%-9s %4lldM  of weights: sgd %.2f GB/s, momentum %.2f GB/s, "
          "adagrad %.2f GB/s (%.2fx sgd), adam %.2f GB/s (%.2fx), ftrl %.2f "
          "GB/s (%.2fx)\n",
          "apply-opt", (long long)B.apply_mb, (double)bytes / sa / 1e9,
          (double)bytes / sv / 1e9, (double)bytes / so[0] / 1e9, sa / so[0],
          (double)bytes / so[1] / 1e9, sa / so[1], (double)bytes / so[2] / 1e9,
          sa / so[2]);
  if (B.json) {
    printf(
        "{\"op\":\"apply\",\"size\":%zu,\"window\":0,\"servers\":0,"
        "\"clients\":1,\"reps\":%d",
        bytes, reps);
    json_num(stdout, "mbps", apply_mbps, 1);
    json_num(stdout, "mbps_min", (double)bytes / ta[reps - 1] / 1e6, 1);
    json_num(stdout, "mbps_max", (double)bytes / ta[0] / 1e6, 1);
    json_num(stdout, "req_per_s", 1.0 / sa, 1);
    json_num(stdout, "p50_us", sa * 1e6, 1);
    json_num(stdout, "p99_us", ta[reps - 1] * 1e6, 1);
    json_num(stdout, "raw_mbps", copy_mbps, 1);
    json_num(stdout, "raw_p50_us", sm * 1e6, 1);
    json_num(stdout, "ratio", apply_mbps / copy_mbps, 1);
    json_num(stdout, "momentum_mbps", mom_mbps, 1);
    json_num(stdout, "momentum_ratio", mom_mbps / copy_mbps, 1);
    json_num(stdout, "traffic_mbps", 3 * apply_mbps, 1);
    json_num(stdout, "raw_traffic_mbps", 2 * copy_mbps, 1);
    json_num(stdout, "adagrad_mbps", (double)bytes / so[0] / 1e6, 1);
    json_num(stdout, "adam_mbps", (double)bytes / so[1] / 1e6, 1);
    json_num(stdout, "ftrl_mbps", (double)bytes / so[2] / 1e6, 1);
    printf(",\"kernel\":\"%s\"}\n", isa);
    fflush(stdout);
  }
  free(a.w), free(a.v), free(a.g), free(a.dst);
  return 0;
}

/* ---- main ---- */

/* Reads the options into B. Returns with *go_on set when the run goes on;
 * else the exit status (--help, or refused options). */
static int setup_options(int argc, char **argv, int *go_on) {
  const ps_opt_t opts[] = {
      {"local", PS_OPT_STRING, &B.local, NULL, 0, 0, NULL,
       "S,W: start a scheduler, S servers and W client processes on "
       "loopback, and stop them at the end."},
      {"scheduler", PS_OPT_STRING, &B.scheduler, NULL, 0, 0, NULL,
       "Endpoint of a running cluster's scheduler (started with --mode asp "
       "and --workers = --clients); ps-bench's clients become its workers "
       "and the job ends with the run."},
      {"replication", PS_OPT_INT, &B.replication, "2", 1, PS_MAX_REPLICAS, NULL,
       "With --local: copies of each range (the scheduler caps it at the "
       "number of servers); 1 measures without replication."},
      {"servers", PS_OPT_INT, &B.servers_opt, "1", 1, MAX_SERVERS, NULL,
       "With --scheduler: the number of servers the cluster has."},
      {"clients", PS_OPT_INT, &B.clients_opt, "1", 1, MAX_CLIENTS, NULL,
       "With --scheduler: the number of client processes to start."},
      {"ops", PS_OPT_STRING, &B.ops_s, "push,pull,pushpull,sparse,apply", 0, 0,
       NULL,
       "Comma list of what to measure: push, pull, pushpull (a push then a "
       "pull), fused (the two in one request: ps_client_pushpull), sparse, "
       "apply."},
      {"sizes", PS_OPT_STRING, &B.sizes_s, NULL, 0, 0, NULL,
       "Comma list of value bytes per request (per server); default "
       "4K,64K,1M,16M (--quick: 4K,64K)."},
      {"windows", PS_OPT_STRING, &B.windows_s, "1,8", 0, 0, NULL,
       "Comma list of ops kept in flight per client."},
      {"codec", PS_OPT_ENUM, &B.codec, "none", 0, 0, "none|fp16|int8|topk",
       "How the bench tensor's values travel (issue #15), for push, pull, "
       "pushpull and fused: pushes in this codec, pulls and push-pull "
       "replies in fp16 with fp16, int8 with int8 and topk, float32 with "
       "none. MB/s still counts float32 values; wire/op gives the bytes "
       "an op moves. Raw ZeroMQ moves frames of the same coded sizes."},
      {"topk-fraction", PS_OPT_DOUBLE, &B.topk_fraction, "0.01", 1e-6, 1, NULL,
       "--codec topk: the fraction of each request's values sent."},
      {"curve", PS_OPT_BOOL, &B.curve, "0", 0, 0, NULL,
       "With --local: measure the dense cases twice in one run, on a "
       "plaintext cluster and then on a CURVE one (keys made for it), to "
       "see what encryption costs."},
      {"keys-dir", PS_OPT_STRING, &B.keys_dir_opt, NULL, 0, 0, NULL,
       "With --scheduler: the cluster's CURVE keys; the clients use its "
       "worker.key."},
      {"reps", PS_OPT_INT, &B.reps, "0", 0, 64, NULL,
       "Repetitions per case after the warm-up; 0: 5 (--quick: 3)."},
      {"rep-ms", PS_OPT_INT, &B.rep_ms, "0", 0, 600000, NULL,
       "Length of one repetition in ms; 0: 300 (--quick: 60)."},
      {"warmup-ms", PS_OPT_INT, &B.warmup_ms, "0", 0, 600000, NULL,
       "Length of the warm-up repetition in ms; 0: 200 (--quick: 40)."},
      {"baseline", PS_OPT_ENUM, &B.baseline, "zmq", 0, 0, "zmq|none",
       "zmq: measure raw ZeroMQ DEALER/ROUTER with zero-copy frames between "
       "the same processes in the same run."},
      {"json", PS_OPT_BOOL, &B.json, "0", 0, 0, NULL,
       "One JSON object per case on stdout (the table goes to stderr)."},
      {"quick", PS_OPT_BOOL, &B.quick, "0", 0, 0, NULL,
       "Short run for CI: fewer sizes, repetitions and milliseconds."},
      {"apply-mb", PS_OPT_INT, &B.apply_mb, "0", 0, 16384, NULL,
       "MiB of weights for the apply benchmark; 0: 64 (--quick: 8)."},
      {"chunk-bytes", PS_OPT_INT, &B.chunk_bytes, "0", 0, 1073741824.0, NULL,
       "libps-client chunk_bytes of the clients; 0: none, so one request "
       "carries exactly --sizes bytes."},
      {"pull-copy", PS_OPT_BOOL, &B.pull_copy, "0", 0, 0, NULL,
       "Pull into the client's array (ps_client_pull) instead of reading "
       "the values where they landed (ps_client_pull_frames_start), which "
       "is what the raw ZeroMQ client does."},
      {"sparse-dim", PS_OPT_INT, &B.sparse_dim, "16", 1, 4096, NULL,
       "Floats per row of the sparse table the sparse op uses."},
      {"sparse-keys", PS_OPT_INT, &B.sparse_keys, "4096", 1, 1048576, NULL,
       "Keys per sparse push or pull call."},
      {"sparse-space", PS_OPT_INT, &B.sparse_space, "1048576", 1,
       1099511627776.0, NULL,
       "Ids of the sparse op are drawn from [0, this); at least "
       "--sparse-keys."},
      {"sparse-zipf", PS_OPT_DOUBLE, &B.sparse_zipf, "0", 0, 10, NULL,
       "Exponent of a Zipf law the sparse op's ids follow over "
       "--sparse-space ranks (each call: the first --sparse-keys distinct "
       "ids drawn, as a batch's distinct ids; hot ids hashed across the "
       "servers); 0: uniform."},
      {"sparse-fresh", PS_OPT_BOOL, &B.sparse_fresh, "0", 0, 0, NULL,
       "Ids of the sparse op never repeat (client c of C takes c, c + C, "
       "c + 2C, ...): every push creates rows, as a stream of new ids "
       "does; --sparse-space and --sparse-zipf are not used."},
      {"sparse-ids", PS_OPT_INT, &B.sparse_ids, "0", 0, 1e15, NULL,
       "With --ops sparse: instead of timed repetitions, one fill: the "
       "clients push this many distinct fresh ids between them (pushes "
       "only, --sparse-keys per call) and the run reports ids/s. 0: off."},
      {"sparse-hold", PS_OPT_BOOL, &B.sparse_hold, "0", 0, 0, NULL,
       "After a --sparse-ids fill, print \"held\" on stdout and keep the "
       "job (so the servers and their rows) until a line or EOF on stdin, "
       "at most --timeout-ms: for a script that reads the servers' memory "
       "and metrics then."},
      {"sparse-optimizer", PS_OPT_ENUM, &B.sparse_optimizer, "model", 0, 0,
       "model|sgd|adagrad|adam|ftrl",
       "Optimizer of the bench's sparse table (lr 0.01; its state is kept "
       "per row); model: the model's, SGD without momentum."},
      {"timeout-ms", PS_OPT_INT, &B.timeout_ms,
       PS_OPT_DEF(PS_CLIENT_DEFAULT_TIMEOUT_MS), 100, 3600000, NULL,
       "Deadline of one client call, and slack for every wait."},
      {"bin-dir", PS_OPT_STRING, &B.bin_dir, NULL, 0, 0, NULL,
       "Where ps-scheduler and ps-server are; default: ps-bench's own "
       "directory."},
      {"log-dir", PS_OPT_STRING, &B.log_dir, NULL, 0, 0, NULL,
       "Directory for the daemons' logs (kept); default: a temporary one, "
       "removed after a successful run."},
      {"log-level", PS_OPT_ENUM, &B.log_level, "warn", 0, 0,
       "debug|info|warn|error", "Least severe level logged."},
  };
  const ps_config_t cfg = {
      .program = "ps-bench",
      .summary =
          "Throughput and latency of push/pull against a cluster, "
          "next to raw ZeroMQ, and of the update kernel next to "
          "memcpy.",
      .usage = "(--local S,W | --scheduler EP) [options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  char err[512];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  if (B.reps == 0) B.reps = B.quick ? 3 : 5;
  if (B.rep_ms == 0) B.rep_ms = B.quick ? 60 : 300;
  if (B.warmup_ms == 0) B.warmup_ms = B.quick ? 40 : 200;
  if (B.apply_mb == 0) B.apply_mb = B.quick ? 8 : 64;
  if (parse_list("ops", B.ops_s, op_item, err, sizeof(err)) != PS_OK ||
      parse_list("sizes",
                 B.sizes_s ? B.sizes_s
                 : B.quick ? "4K,64K"
                           : "4K,64K,1M,16M",
                 size_item, err, sizeof(err)) != PS_OK ||
      parse_list("windows", B.windows_s, window_item, err, sizeof(err)) !=
          PS_OK)
    return ps_config_refuse(&cfg, "%s", err);
  if (B.chunk_bytes % 4 != 0)
    return ps_config_refuse(&cfg,
                            "option --chunk-bytes: %lld is not a multiple of 4",
                            (long long)B.chunk_bytes);
  if (B.sparse_ids > 0 && !has_op(PS_BENCH_SPARSE))
    return ps_config_refuse(&cfg, "option --sparse-ids: needs --ops sparse");
  if (B.sparse_hold && B.sparse_ids == 0)
    return ps_config_refuse(&cfg, "option --sparse-hold: needs --sparse-ids");
  if (B.curve && B.local == NULL)
    return ps_config_refuse(&cfg,
                            "option --curve: needs --local (the bench "
                            "starts both clusters)");
  if ((B.local != NULL) == (B.scheduler != NULL))
    return ps_config_refuse(
        &cfg, "give exactly one of --local S,W and --scheduler EP");
  if (B.scheduler != NULL &&
      ps_config_check_endpoint("scheduler", B.scheduler, 0, err, sizeof(err)) !=
          PS_OK)
    return ps_config_refuse(&cfg, "%s", err);
  if (B.local) {
    int s, w;
    char extra;
    if (sscanf(B.local, "%d,%d%c", &s, &w, &extra) != 2 || s < 1 ||
        s > MAX_SERVERS || w < 1 || w > MAX_CLIENTS)
      return ps_config_refuse(&cfg,
                              "option --local: \"%s\" is not S,W with S in "
                              "[1, %d] and W in [1, %d]",
                              B.local, MAX_SERVERS, MAX_CLIENTS);
    B.nservers = s;
    B.nclients = w;
  } else {
    B.nservers = (int)B.servers_opt;
    B.nclients = (int)B.clients_opt;
    snprintf(B.sched_ep, sizeof(B.sched_ep), "%s", B.scheduler);
  }
  uint64_t max_size = 0;
  for (int i = 0; i < B.nsizes; i++)
    if (B.sizes[i] > max_size) max_size = B.sizes[i];
  B.max_floats = max_size / sizeof(float);
  /* Each server's range holds the largest request: the scheduler splits
   * the key space in equal multiples of PS_RANGE_ALIGN. */
  uint64_t per = (B.max_floats + 15) / 16 * 16;
  B.model_floats = per * (uint64_t)B.nservers;
  *go_on = 1;
  return PS_EXIT_OK;
}

int main(int argc, char **argv) {
  int go_on = 0;
  int status = setup_options(argc, argv, &go_on);
  if (!go_on) return status;
  ps_log_init("bench", (ps_log_level_t)B.log_level);
  ps_transport_tune_malloc();
  ps_bench_signals_install();

  int dense_ops = has_op(PS_BENCH_PUSH) || has_op(PS_BENCH_PULL) ||
                  has_op(PS_BENCH_PUSHPULL) || has_op(PS_BENCH_FUSED);
  /* A cluster is needed for the dense ops and for sparse. */
  int dense = dense_ops || has_op(PS_BENCH_SPARSE);
  int keep_logs = B.log_dir != NULL;
  for (int i = 0; i < MAX_CLIENTS; i++) B.ctl[i] = -1;
  if (dense && B.local) {
    if (B.log_dir) {
      snprintf(B.run_dir, sizeof(B.run_dir), "%s", B.log_dir);
      mkdir(B.run_dir, 0755);
    } else {
      snprintf(B.run_dir, sizeof(B.run_dir), "/tmp/ps-bench.XXXXXX");
      if (mkdtemp(B.run_dir) == NULL) {
        fail_msg("mkdtemp: %s", strerror(errno));
        return PS_EXIT_FAILURE;
      }
    }
  }
  /* --curve: the same cases on a plaintext cluster, then on a CURVE one
   * (keys made in the run directory), so the two compare in one run. */
  for (int pass = 0;
       dense && pass < (B.curve ? 2 : 1) && !B.failed && !ps_bench_interrupted;
       pass++) {
    if (pass == 1) {
      stop_cluster();
      B.pass_curve = 1;
      snprintf(B.keys_dir, sizeof(B.keys_dir), "%s/keys", B.run_dir);
      const char *roles[] = {"scheduler", "server", "worker"};
      for (int r = 0; r < 3; r++) {
        char kerr[512];
        ps_key_role_t role;
        ps_key_role_parse(roles[r], &role);
        if (ps_keys_generate(B.keys_dir, roles[r], role, kerr, sizeof(kerr)) !=
            PS_OK) {
          fail_msg("keygen: %s", kerr);
          goto out;
        }
      }
    }
    if (B.curve) {
      FILE *f = B.json ? stderr : stdout;
      fprintf(f, "%s== %s ==\n", pass ? "\n" : "",
              pass ? "CURVE (encrypted, authenticated)" : "plaintext");
    }
    /* The raw ZeroMQ baseline is plaintext: measured once. */
    if ((B.local && start_daemons() != 0) ||
        (dense_ops && B.baseline == 0 && pass == 0 &&
         start_raw_servers() != 0) ||
        start_clients() != 0)
      goto out;
    if (dense_ops) print_header();
    for (int o = 0; o < B.nops && !B.failed && !ps_bench_interrupted; o++) {
      int op = B.ops[o];
      if (op != PS_BENCH_PUSH && op != PS_BENCH_PULL &&
          op != PS_BENCH_PUSHPULL && op != PS_BENCH_FUSED)
        continue;
      for (int si = 0; si < B.nsizes && !B.failed; si++)
        for (int wi = 0; wi < B.nwindows && !B.failed; wi++) {
          if (ps_bench_interrupted) break;
          ps_bench_proc_t *dead = ps_bench_procs_poll();
          if (dead) {
            fail_msg("%s (pid %d) died", dead->name, (int)dead->pid);
            break;
          }
          run_case(op, B.sizes[si], B.windows[wi]);
        }
    }
    if (!B.failed && !ps_bench_interrupted && has_op(PS_BENCH_SPARSE))
      B.sparse_ids > 0 ? run_fill_case() : run_sparse_case();
  }
out:
  if (dense) stop_cluster();
  if (!B.failed && !ps_bench_interrupted && has_op(PS_BENCH_APPLY)) run_apply();
  if (B.failed && B.run_dir[0]) ps_bench_procs_dump_logs();
  if (B.run_dir[0] && !keep_logs && !B.failed) {
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", B.run_dir);
    if (system(cmd) != 0)
      fprintf(stderr, "ps-bench: cannot remove %s\n", B.run_dir);
  } else if (B.run_dir[0] && B.failed) {
    fprintf(stderr, "ps-bench: daemon logs kept in %s\n", B.run_dir);
  }
  if (ps_bench_interrupted) {
    fprintf(stderr,
            "ps-bench: interrupted; every process it started is stopped\n");
    return 130;
  }
  return B.failed ? PS_EXIT_FAILURE : PS_EXIT_OK;
}
