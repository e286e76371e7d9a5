/* ps-bench internals: what the controller (tests/bench/main.c), the client
 * processes and the raw ZeroMQ servers (tests/bench/runner.c), the process
 * table (tests/bench/procs.c) and the latency histogram (tests/bench/hist.c)
 * share. Not a library: one program, each process single-threaded apart from
 * what libps-client and ZeroMQ start.
 */
#ifndef PS_BENCH_H
#define PS_BENCH_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- latency histogram (tests/bench/hist.c) ----
 * Log-linear buckets, 64 per power of two (1.1% wide), from 1 ns to 2^40 ns:
 * per-op latencies of many clients merge exactly, and any percentile is
 * read back within a bucket's width. */
#define PS_BENCH_HIST_SUB 64
#define PS_BENCH_HIST_BUCKETS (41 * PS_BENCH_HIST_SUB)

typedef struct {
  uint64_t n;
  uint64_t bucket[PS_BENCH_HIST_BUCKETS];
} ps_bench_hist_t;

void ps_bench_hist_add(ps_bench_hist_t *h, uint64_t ns);
void ps_bench_hist_merge(ps_bench_hist_t *dst, const ps_bench_hist_t *src);
/* The q-quantile (0 < q <= 1) in microseconds; 0 for an empty histogram. */
double ps_bench_hist_quantile_us(const ps_bench_hist_t *h, double q);
/* "idx:count,idx:count" of the non-empty buckets ("-" when none) into buf;
 * returns the length, or -1 when buf is too small. */
int ps_bench_hist_format(const ps_bench_hist_t *h, char *buf, size_t len);
/* Adds what ps_bench_hist_format wrote to h; -1 on a malformed string. */
int ps_bench_hist_parse(ps_bench_hist_t *h, const char *s);

/* ---- measured operations ---- */
typedef enum {
  PS_BENCH_PUSH,
  PS_BENCH_PULL,
  PS_BENCH_PUSHPULL,
  PS_BENCH_SPARSE,
  PS_BENCH_APPLY,
  /* pushpull in one request per server (ps_client_pushpull, issue #15) */
  PS_BENCH_FUSED,
  PS_BENCH_NOPS
} ps_bench_op_t;

const char *ps_bench_op_name(ps_bench_op_t op);

/* ---- child processes (tests/bench/procs.c) ----
 * Every process ps-bench starts is in this table; ps_bench_procs_stop ends
 * them all (SIGTERM, then SIGKILL after a grace) and reaps them, and each
 * child dies with ps-bench (PR_SET_PDEATHSIG) even if ps-bench is killed
 * with SIGKILL, so nothing is left behind. */
#define PS_BENCH_MAX_PROCS 256

typedef struct {
  pid_t pid;
  char name[48];
  char log[512]; /* "" for forked children that log to our stderr */
  int exited;
  int status;
} ps_bench_proc_t;

/* Set by SIGINT/SIGTERM; every wait of the controller checks it. */
extern volatile sig_atomic_t ps_bench_interrupted;

void ps_bench_signals_install(void);

/* Starts path with NULL-terminated argv (argv[0] included), stdout and
 * stderr to log. Returns the slot or NULL (errno set). */
ps_bench_proc_t *ps_bench_spawn(const char *name, const char *log,
                                char *const argv[]);

/* Forks a child that runs fn(arg) and _exits with its result; the child
 * closes the fds in close_fds (the parent's ends of other children's
 * pipes) first. Returns the slot or NULL. */
ps_bench_proc_t *ps_bench_fork(const char *name, int (*fn)(void *arg),
                               void *arg, const int *close_fds, int nclose);

/* Reaps whatever exited; returns the first child that died abnormally
 * (non-zero exit or a signal) since the last call, or NULL. */
ps_bench_proc_t *ps_bench_procs_poll(void);

/* Waits up to timeout_ms for every child to exit by itself, then sends
 * SIGTERM, waits up to 3 s more, then SIGKILLs the rest; reaps all. */
void ps_bench_procs_stop(int timeout_ms);

/* Prints the last lines of every child's log to stderr. */
void ps_bench_procs_dump_logs(void);

/* ---- client and raw-server processes (tests/bench/runner.c) ---- */
typedef struct {
  const char *scheduler;
  uint64_t model_floats; /* the synthetic model: one tensor of this length */
  uint64_t max_floats;   /* largest per-server request, in floats */
  int window_max;        /* largest window of the run */
  uint64_t chunk_bytes;  /* ps_client_opts_t.chunk_bytes */
  int timeout_ms;
  int log_level;
  int pull_copy; /* pull into an array instead of zero-copy spans */
  int ctl_fd;    /* commands in, results out (one line each) */
  int nraw;
  char (*raw_eps)[128]; /* raw ZeroMQ servers, one per ps server */
  /* The sparse op: a table of this dim (0: the model has none), requests
   * of up to sparse_keys keys drawn from [0, sparse_space). */
  uint32_t sparse_dim;
  uint64_t sparse_keys, sparse_space;
  /* > 0: ids of a call are the first sparse_keys distinct ones of draws
   * from a Zipf law of this exponent over the space (rank r -> a hashed
   * id), as a batch's distinct ids are; 0: uniform. */
  double sparse_zipf;
  /* Fresh ids (--sparse-fresh): this client's n-th id is n * nclients +
   * client_index, so no id repeats across calls or clients. */
  int sparse_fresh;
  int client_index, nclients;
  /* The table's optimizer (PS_OPTIMIZER_*), -1: the model's (SGD). */
  int sparse_optimizer;
  const char *keys_dir; /* CURVE: the cluster's keys; NULL: plaintext */
  /* The dense tensor's codecs (issue #15, PS_CODEC_*): pushes (and the
   * push of a push-pull) in codec, pulls (and push-pull replies) in
   * pull_codec; top-k sends topk_fraction of each request. */
  int codec, pull_codec;
  float topk_fraction;
} ps_bench_client_args_t;

/* The sparse table the bench declares. */
#define PS_BENCH_SPARSE_TABLE "bench_sparse"

int ps_bench_client_main(void *args); /* ps_bench_client_args_t */

typedef struct {
  uint64_t max_floats;
  int ctl_fd; /* the endpoint goes out here; EOF or "quit" stops it */
} ps_bench_raw_args_t;

int ps_bench_raw_server_main(void *args); /* ps_bench_raw_args_t */

/* Reads one '\n'-terminated line from fd into buf (without the newline)
 * within timeout_ms (-1: no limit). Returns its length, 0 at EOF, -1 on an
 * error, -2 on timeout or interruption (ps_bench_interrupted). */
int ps_bench_read_line(int fd, char *buf, size_t len, int timeout_ms);
/* Writes all of buf. Returns 0 or -1. */
int ps_bench_write_all(int fd, const char *buf, size_t len);

/* A port on 127.0.0.1 that was free a moment ago, or -1 (freeport.c;
 * ps-schedsim links it too). */
int ps_bench_free_port(void);

#endif
