/* What the chaos tests share (ARCHITECTURE "Failure semantics", issue #4):
 * servers on addresses the test chose, so that a node id in psctl status
 * maps back to a process; a seeded random generator, so that a fault
 * schedule is printed and replayed from its seed; and the ledger, the
 * workload whose end state says whether an acknowledged push was lost or
 * applied twice.
 *
 * The ledger: W workers (forked children of the test, plain libps-client
 * programs) share one tensor of counters with the optimizer OPT_ADD
 * (w += g, exactly). Worker w pushes a vector with 1.0 at every key k with
 * k % W == w and 0 elsewhere, so each push touches every range and counts
 * one on the worker's own keys. Before a push it appends "i N" to its
 * ledger file and after the ack "a N" (write(2), so a SIGKILL loses
 * nothing written). At the end every counter of a worker that lived must
 * equal its acks exactly; one of a killed worker lies between its acks and
 * its intents (the one push in flight may or may not have landed). Every
 * other push is a push-pull (ps_client_pushpull, issue #15), whose reply
 * must already show the worker's own counters at exactly N + 1.
 *
 * All from the test's main thread (the workers are processes). */
#ifndef PS_TEST_CHAOS_H
#define PS_TEST_CHAOS_H

#include <stddef.h>
#include <stdint.h>

#include "tests/integration/harness.h"
#include "ps/client.h"

/* ctest's code for a skipped test (SKIP_RETURN_CODE). */
#define CHAOS_SKIP 77

/* One server slot: the process now running in it and its address. A
 * restarted server takes a fresh port, so it is a new node to the
 * scheduler (a spare) and its address says which process it is. */
typedef struct {
  h_proc_t *proc; /* NULL: none running */
  char address[128];
  int starts;
} chaos_server_t;

/* Starts a server in slot s on ip (a fresh port), named "<tag><i>" or
 * "<tag><i>_r<n>" for restarts; under `ip netns exec netns` if netns is
 * not NULL. */
h_proc_t *chaos_server_start(h_cluster_t *c, chaos_server_t *s, int i,
                             const char *tag, const char *ip,
                             const char *netns);
/* Starts a server in slot s again on the address it had, as systemd's
 * Restart= does: a new node to the scheduler on the old node's address. */
h_proc_t *chaos_server_restart_here(h_cluster_t *c, chaos_server_t *s, int i,
                                    const char *tag);

/* Starts an ASP job with the scheduler's default settings on c: the
 * scheduler, nservers servers in srv[0..nservers) (slots "server<i>" on
 * 127.0.0.1) and nworkers workers running fn. Returns 1 once every worker
 * has reached its first h_worker_sync (60 s at most). */
int chaos_job_start(h_cluster_t *c, chaos_server_t *srv, int nservers,
                    int nworkers, h_worker_fn fn);
/* The same with the scheduler's --heartbeat-timeout-ms set (0: its
 * default). */
int chaos_job_start_timeout(h_cluster_t *c, chaos_server_t *srv, int nservers,
                            int nworkers, h_worker_fn fn,
                            int heartbeat_timeout_ms);

/* The slot whose running server has the address of node id in the status
 * JSON, or -1. */
int chaos_server_slot(const chaos_server_t *s, int n, const char *json,
                      unsigned id);

/* SIGKILLs the primary of the range holding key 0 among srv[0, n), waits
 * (10 s at most) for the scheduler to declare it dead, and starts a fresh
 * server in its slot (a spare to the scheduler). Returns the killed
 * process, with its node id in *node; NULL with the reason in why. */
h_proc_t *chaos_kill_primary(h_cluster_t *c, chaos_server_t *srv, int n,
                             unsigned *node, char *why, size_t whylen);
/* The same without the restart: returns the killed server's slot, or -1
 * with the reason in why. */
int chaos_kill_primary_slot(h_cluster_t *c, chaos_server_t *srv, int n,
                            unsigned *node, char *why, size_t whylen);

/* Appends a printf-formatted line to the file at path (a test's record of
 * what its workers saw, read back by the test's own process). */
void chaos_append(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* 1 if every process of c but skip exited 0; else 0 with the first that
 * did not in why, and every log printed. */
int chaos_all_exit0_but(h_cluster_t *c, const h_proc_t *skip, char *why,
                        size_t whylen);

/* The primary and first backup (UINT32_MAX if none) of the range that holds
 * key, from psctl status; 0 if status failed. */
int chaos_range_holders(h_cluster_t *c, uint64_t key, unsigned *primary,
                        unsigned *backup);

/* A client for worker rank of a model of keys counters, "w" (OPT_ADD:
 * w += g exactly), with timeout_ms per call and 30 s to connect. NULL with
 * msg filled if it could not connect. Caller destroys the result. */
ps_client_t *chaos_counter_client(const char *sched_ep, int rank, uint64_t keys,
                                  int timeout_ms, char *msg, size_t len);

/* splitmix64: the schedule generator. */
uint64_t chaos_rand(uint64_t *state);
/* Uniform in [lo, hi]. */
int chaos_rand_int(uint64_t *state, int lo, int hi);

/* The seeds to run: $CHAOS_SEED alone if set (a replay), else n seeds
 * drawn from the clock (printed by the caller). Returns how many. */
int chaos_seeds(uint64_t *seeds, int n);

/* ---- the ledger ---------------------------------------------------------- */

/* Sets where the workers write (dir), how many there are and the model
 * size, before h_workers_start; max_s bounds a worker's pushing time. */
void chaos_ledger_setup(const char *dir, int workers, uint64_t keys, int max_s);

/* Before h_workers_start: each worker also counts on rows of its own in a
 * sparse table "ctr" (OPT_ADD, dim 2): every push adds 1 to its rows
 * (sparse push first, then the dense one, under one intent), and rank 0
 * pulls every worker's rows into dir/final_sparse.bin; the check holds
 * them to the same bounds as the dense counters. 0 (the default): dense
 * only. */
void chaos_ledger_sparse(int rows);

/* Before h_workers_start: the workers run in lock step, for a BSP job
 * (each push of step n is followed by a pull at clock n + 1). 0 (the
 * default): they push as fast as acks come (ASP). */
void chaos_ledger_bsp(int on);

/* The worker (an h_worker_fn): connects, syncs (1), pushes until
 * chaos_ledger_stop or max_s, syncs (2); rank 0 then pulls every counter
 * into dir/final.bin; syncs (3) and says Done. Returns 0, or 1 after a
 * failed call (written to its ledger as "f N msg"). */
int chaos_ledger_worker(const char *sched_ep, int rank);

/* Tells the workers to stop pushing. */
void chaos_ledger_stop(void);

/* What the files say: per worker acks and intents, and the check of the
 * counters in dir/final.bin (killed: the rank killed on purpose, or -1).
 * Returns 1 if the ledger holds, else 0 with why filled. */
typedef struct {
  uint64_t acked[16];
  uint64_t intents[16];
  int failed[16];
  uint64_t total_acked;
} chaos_ledger_result_t;
int chaos_ledger_check(int killed, chaos_ledger_result_t *res, char *why,
                       size_t len);

/* Ends a ledger run: chaos_ledger_stop, the workers' last two sync points
 * and their exit (60 s each at most), then chaos_ledger_check. res is
 * filled in any case; returns 1 if every worker stopped in time, the
 * survivors exited 0 and the ledger holds, else 0 with why. */
int chaos_ledger_finish(int killed, chaos_ledger_result_t *res, char *why,
                        size_t len);

#endif
