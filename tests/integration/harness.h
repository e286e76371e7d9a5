/* Test harness for integration tests: starts the real daemons as child
 * processes on loopback, waits on conditions with deadlines, and kills every
 * process it started when the test ends, whatever happened.
 *
 * Binaries are found in $PS_BIN_DIR (set by ctest); logs go to
 * $PS_TEST_TMP/<test>/ (a fresh directory per test case).
 */
#ifndef PS_TEST_HARNESS_H
#define PS_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/view.h"

#define H_MAX_PROCS 32

typedef struct {
  pid_t pid;
  char name[64];
  char log[600];
  int exited;
  int status; /* waitpid status once exited */
} h_proc_t;

typedef struct {
  char dir[512];     /* per-test scratch directory */
  char sched_ep[64]; /* tcp://127.0.0.1:PORT */
  h_proc_t procs[H_MAX_PROCS];
  int nprocs;
} h_cluster_t;

/* Makes a fresh scratch dir named after test and picks a free port for the
 * scheduler. */
void h_init(h_cluster_t *c, const char *test);

/* Picks a fresh port for the scheduler: for the next job the test starts in
 * the same scratch dir, while the last one's port may still be taken. */
void h_new_sched_ep(h_cluster_t *c);

/* Starts bin (a name in $PS_BIN_DIR) with NULL-terminated args; stdout and
 * stderr go to dir/name.log. Returns the process slot. */
h_proc_t *h_spawn(h_cluster_t *c, const char *name, const char *bin, ...)
    __attribute__((sentinel));

/* Starts argv[0] (a path with a slash, or a name in $PS_BIN_DIR) with the
 * NULL-terminated argv, like h_spawn: to run a daemon under a wrapper
 * (ip netns exec ...). */
h_proc_t *h_spawnv(h_cluster_t *c, const char *name, const char *const *argv);

/* The absolute path of bin in $PS_BIN_DIR (static buffer per call slot). */
const char *h_bin(const char *bin);

/* Runs bin (a name in $PS_BIN_DIR) with NULL-terminated args to the end,
 * without taking a process slot, and returns what it printed (stdout and
 * stderr; caller frees), or NULL if it could not start. *status gets its
 * waitpid status, or -1 if it ran past timeout_ms (it is then killed). */
char *h_run(h_cluster_t *c, int timeout_ms, int *status, const char *bin, ...)
    __attribute__((sentinel));

/* psctl --scheduler c->sched_ep --json status: the JSON (caller frees), or
 * NULL if psctl failed or took longer than timeout_ms. */
char *h_status_json(h_cluster_t *c, int timeout_ms);

/* What psctl status --json says of one node and one key range. */
typedef struct {
  unsigned id;
  char role[16];  /* "server", "worker", ... */
  char state[16]; /* "alive", "dead", ... */
  char address[128];
} h_node_t;

#define H_MAX_REPLICAS 4
typedef struct {
  unsigned long long begin, end;
  unsigned server_id; /* the primary */
  int nbackups;       /* -1: the status has no "backups" (no replication) */
  unsigned backups[H_MAX_REPLICAS];
  int nsyncing;
  unsigned syncing[H_MAX_REPLICAS];
} h_range_t;

/* Parses the "nodes" / "ranges" arrays of a status JSON into out (at most
 * max entries). Returns how many, or -1 if the JSON has no such array. */
int h_status_nodes(const char *json, h_node_t *out, int max);
int h_status_ranges(const char *json, h_range_t *out, int max);
/* The node with this id among n, or NULL. */
const h_node_t *h_find_node(const h_node_t *nodes, int n, unsigned id);

/* 1 when the status shows every range with an alive primary and at least
 * copies - 1 backups, all alive and none syncing: the cluster can lose any
 * one server without losing a key. Fills why (if not NULL) otherwise. */
int h_status_replicated(const char *json, int copies, char *why, size_t len);

/* Polls psctl status until h_status_replicated holds or timeout_ms passes;
 * returns 1 if it held. why says what was still missing. */
int h_wait_replicated(h_cluster_t *c, int copies, int timeout_ms, char *why,
                      size_t len);

/* Polls psctl status until the node with this address is in state (e.g.
 * "dead"); returns 1 if it got there within timeout_ms. */
int h_wait_node_state(h_cluster_t *c, const char *address, const char *state,
                      int timeout_ms);

/* Waits until p exits or timeout_ms passes. Returns 1 if it exited. */
int h_wait_exit(h_proc_t *p, int timeout_ms);

/* Waits until every process started exits; returns 1 if all did in time. */
int h_wait_all(h_cluster_t *c, int timeout_ms);
/* The same, up to a deadline of h_deadline_ms. */
int h_wait_all_until(h_cluster_t *c, uint64_t end);

/* Waits until p exits; returns 1 if it did in time and with status 0. Else
 * prints every log (h_dump_logs) and says in why what p did instead. */
int h_wait_exit0(h_cluster_t *c, h_proc_t *p, int timeout_ms, char *why,
                 size_t len);

/* Waits until every process started exits, like h_wait_all; returns 1 if
 * all did in time and those in slots from and later with status 0 (the
 * earlier ones may have been killed). Else as h_wait_exit0. */
int h_wait_all_exit0(h_cluster_t *c, int from, int timeout_ms, char *why,
                     size_t len);

/* 1 once the file contains needle, 0 if the deadline passed. */
int h_wait_log(const char *path, const char *needle, int timeout_ms);

/* The step of the last event=progress line of a ps-worker log, or 0; sets
 * *total (if not NULL) to that line's steps= when it has one. */
unsigned long h_progress_step(const char *log, unsigned long *total);

/* SIGKILLs every process still running and reaps it. */
void h_kill_all(h_cluster_t *c);

/* Prints the tail of every process log to stderr (on failure). */
void h_dump_logs(h_cluster_t *c);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int h_free_port(void);

/* The number of established TCP connections process pid holds to port on
 * 127.0.0.1 (its sockets in /proc/PID/fd matched against /proc/net/tcp),
 * or -1 if they cannot be read. */
int h_tcp_established(pid_t pid, int port);

/* Reads a whole file; caller frees. NULL if unreadable. */
char *h_read_file(const char *path, size_t *len);

/* The number after "key": in a flat JSON object, or NAN. */
double h_json_number(const char *json, const char *key);

/* Path of a file in the test's scratch dir (static buffer per call slot). */
const char *h_path(h_cluster_t *c, const char *file);

/* 1 if the weights ps-worker --dump-weights wrote to dump are bitwise those
 * of the checkpoint in ckpt_dir, read through the strict reader
 * (common/checkpoint.h). Else 0 with why: the reader's error, a size that
 * differs, or the first key that does. */
int h_dump_matches_checkpoint(const char *dump, const char *ckpt_dir, char *why,
                              size_t len);

/* Fills t and model with a model of one dense tensor "w" of keys weights
 * that start at zero, updated by optimizer (PS__OPTIMIZER__*) at
 * learning_rate, seed 1: the model of a test whose workers care about keys
 * and sums, not about what the model is. model->tensors points at t. */
void h_dense_model(ps_model_t *model, ps_tensor_spec_t *t, uint64_t keys,
                   int optimizer, float learning_rate);

/* Workers run in forked children of the test (so they can be plain
 * libps-client programs), synchronised with it through pipes: each calls
 * h_worker_sync(rank) at the same points, and the test releases them all at
 * once with h_workers_sync() only when every one has arrived. */
#define H_MAX_WORKERS 16
typedef int (*h_worker_fn)(const char *sched_ep, int rank);

/* Forks n workers running fn(c->sched_ep, rank); each exits with fn's
 * return value and dies with the test. */
void h_workers_start(h_cluster_t *c, int n, h_worker_fn fn);
/* Worker side: 1 once the test released this sync point. */
int h_worker_sync(int rank);
/* Test side: waits for every worker at the next sync point, then releases
 * them. A worker that died counts as arrived, so nothing waits forever. */
void h_workers_sync(void);
/* The same with a deadline: returns 0 (releasing nobody) if some live
 * worker has not arrived within timeout_ms. */
int h_workers_sync_timeout(int timeout_ms);
/* The pid of worker rank; SIGKILLs it and reaps it (it then counts as
 * arrived at every sync point and is left out of h_workers_reap's
 * verdict). */
pid_t h_worker_pid(int rank);
void h_worker_kill(int rank);
/* Waits until timeout_ms for every worker; SIGKILLs the late ones. Returns
 * 1 if all exited 0. */
int h_workers_reap(int timeout_ms);

/* Milliseconds on the monotonic clock. */
uint64_t h_now_ms(void);

/* The monotonic time timeout_ms from now, stretched by PS_TEST_TIME_SCALE
 * (>= 1; the sanitizer build sets 3, since its daemons run several times
 * slower). Every wait of the harness ends there: a deadline bounds a wait,
 * it never says how fast something must be. */
uint64_t h_deadline_ms(int timeout_ms);

/* Sleeps ms milliseconds: the pause between two polls of a condition that
 * has a deadline (or a deliberate gap in a fault schedule). */
void h_sleep_ms(int ms);

#endif
