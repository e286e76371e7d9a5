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

#define H_MAX_PROCS 32

typedef struct {
  pid_t pid;
  char name[64];
  char log[600];
  int exited;
  int status; /* waitpid status once exited */
} h_proc_t;

typedef struct {
  char dir[512];       /* per-test scratch directory */
  char sched_ep[64];   /* tcp://127.0.0.1:PORT */
  h_proc_t procs[H_MAX_PROCS];
  int nprocs;
} h_cluster_t;

/* Makes a fresh scratch dir named after test and picks a free port for the
 * scheduler. */
void h_init(h_cluster_t *c, const char *test);

/* Starts bin (a name in $PS_BIN_DIR) with NULL-terminated args; stdout and
 * stderr go to dir/name.log. Returns the process slot. */
h_proc_t *h_spawn(h_cluster_t *c, const char *name, const char *bin, ...)
    __attribute__((sentinel));

/* Waits until p exits or timeout_ms passes. Returns 1 if it exited. */
int h_wait_exit(h_proc_t *p, int timeout_ms);

/* Waits until every process started exits; returns 1 if all did in time. */
int h_wait_all(h_cluster_t *c, int timeout_ms);

/* 1 once the file contains needle, 0 if the deadline passed. */
int h_wait_log(const char *path, const char *needle, int timeout_ms);

/* SIGKILLs every process still running and reaps it. */
void h_kill_all(h_cluster_t *c);

/* Prints the tail of every process log to stderr (on failure). */
void h_dump_logs(h_cluster_t *c);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int h_free_port(void);

/* Reads a whole file; caller frees. NULL if unreadable. */
char *h_read_file(const char *path, size_t *len);

/* The number after "key": in a flat JSON object, or NAN. */
double h_json_number(const char *json, const char *key);

/* Path of a file in the test's scratch dir (static buffer per call slot). */
const char *h_path(h_cluster_t *c, const char *file);

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
/* Waits until timeout_ms for every worker; SIGKILLs the late ones. Returns
 * 1 if all exited 0. */
int h_workers_reap(int timeout_ms);

/* Milliseconds on the monotonic clock. */
uint64_t h_now_ms(void);

#endif
