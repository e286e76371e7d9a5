#include "tests/chaos/chaos.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "proto/ps.pb-c.h"
#include "ps/client.h"

/* ---- servers --------------------------------------------------------------
 */

static const char *ip_binary(void) {
  static const char *where[] = {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip",
                                "/bin/ip"};
  for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++)
    if (access(where[i], X_OK) == 0) return where[i];
  return "/usr/sbin/ip";
}

/* Starts a server in slot s on s->address. */
static h_proc_t *server_spawn(h_cluster_t *c, chaos_server_t *s, int i,
                              const char *tag, const char *netns) {
  char name[64];
  if (s->starts == 0)
    snprintf(name, sizeof(name), "%s%d", tag, i);
  else
    snprintf(name, sizeof(name), "%s%d_r%d", tag, i, s->starts);
  const char *argv[16];
  int n = 0;
  if (netns) {
    argv[n++] = ip_binary();
    argv[n++] = "netns";
    argv[n++] = "exec";
    argv[n++] = netns;
  }
  argv[n++] = h_bin("ps-server");
  argv[n++] = "--scheduler";
  argv[n++] = c->sched_ep;
  argv[n++] = "--bind";
  argv[n++] = s->address;
  argv[n] = NULL;
  s->proc = h_spawnv(c, name, argv);
  s->starts++;
  return s->proc;
}

h_proc_t *chaos_server_start(h_cluster_t *c, chaos_server_t *s, int i,
                             const char *tag, const char *ip,
                             const char *netns) {
  snprintf(s->address, sizeof(s->address), "tcp://%s:%d", ip, h_free_port());
  return server_spawn(c, s, i, tag, netns);
}

h_proc_t *chaos_server_restart_here(h_cluster_t *c, chaos_server_t *s, int i,
                                    const char *tag) {
  return server_spawn(c, s, i, tag, NULL);
}

int chaos_job_start(h_cluster_t *c, chaos_server_t *srv, int nservers,
                    int nworkers, h_worker_fn fn) {
  return chaos_job_start_timeout(c, srv, nservers, nworkers, fn, 0);
}

int chaos_job_start_timeout(h_cluster_t *c, chaos_server_t *srv, int nservers,
                            int nworkers, h_worker_fn fn,
                            int heartbeat_timeout_ms) {
  char ns[16], nw[16], hb[16];
  snprintf(ns, sizeof(ns), "%d", nservers);
  snprintf(nw, sizeof(nw), "%d", nworkers);
  snprintf(hb, sizeof(hb), "%d", heartbeat_timeout_ms);
  if (heartbeat_timeout_ms > 0)
    h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep,
            "--servers", ns, "--workers", nw, "--mode", "asp",
            "--heartbeat-timeout-ms", hb, NULL);
  else
    h_spawn(c, "scheduler", "ps-scheduler", "--bind", c->sched_ep,
            "--servers", ns, "--workers", nw, "--mode", "asp", NULL);
  memset(srv, 0, (size_t)nservers * sizeof(*srv));
  for (int i = 0; i < nservers; i++)
    chaos_server_start(c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_workers_start(c, nworkers, fn);
  return h_workers_sync_timeout(60000);
}

int chaos_server_slot(const chaos_server_t *s, int n, const char *json,
                      unsigned id) {
  h_node_t nodes[64];
  int nn = h_status_nodes(json, nodes, 64);
  const h_node_t *node = h_find_node(nodes, nn, id);
  if (node == NULL) return -1;
  for (int i = 0; i < n; i++)
    if (s[i].proc && strcmp(s[i].address, node->address) == 0) return i;
  return -1;
}

int chaos_kill_primary_slot(h_cluster_t *c, chaos_server_t *srv, int n,
                            unsigned *node, char *why, size_t whylen) {
  unsigned backup;
  if (!chaos_range_holders(c, 0, node, &backup)) {
    snprintf(why, whylen, "psctl status did not answer");
    return -1;
  }
  char *js = h_status_json(c, 2000);
  int slot = js ? chaos_server_slot(srv, n, js, *node) : -1;
  free(js);
  if (slot < 0) {
    snprintf(why, whylen, "primary %u is no server we run", *node);
    return -1;
  }
  h_proc_t *killed = srv[slot].proc;
  kill(killed->pid, SIGKILL);
  h_wait_exit(killed, 5000);
  if (!h_wait_node_state(c, srv[slot].address, "dead", 10000)) {
    snprintf(why, whylen, "the killed server %s was not declared dead in 10 s",
             killed->name);
    return -1;
  }
  return slot;
}

h_proc_t *chaos_kill_primary(h_cluster_t *c, chaos_server_t *srv, int n,
                             unsigned *node, char *why, size_t whylen) {
  int slot = chaos_kill_primary_slot(c, srv, n, node, why, whylen);
  if (slot < 0) return NULL;
  h_proc_t *killed = srv[slot].proc;
  /* Only now: a newcomer is refused while every expected server looks
   * alive. */
  chaos_server_start(c, &srv[slot], slot, "server", "127.0.0.1", NULL);
  return killed;
}

void chaos_append(const char *path, const char *fmt, ...) {
  FILE *f = fopen(path, "a");
  if (f == NULL) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

int chaos_all_exit0_but(h_cluster_t *c, const h_proc_t *skip, char *why,
                        size_t whylen) {
  for (int i = 0; i < c->nprocs; i++) {
    h_proc_t *p = &c->procs[i];
    if (p == skip) continue;
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(c);
      snprintf(why, whylen, "%s did not exit 0 (status %d)", p->name,
               p->status);
      return 0;
    }
  }
  return 1;
}

int chaos_range_holders(h_cluster_t *c, uint64_t key, unsigned *primary,
                        unsigned *backup) {
  char *js = h_status_json(c, 2000);
  if (js == NULL) return 0;
  h_range_t r[64];
  int nr = h_status_ranges(js, r, 64);
  free(js);
  for (int i = 0; i < nr; i++) {
    if (key < r[i].begin || key >= r[i].end) continue;
    *primary = r[i].server_id;
    *backup = r[i].nbackups > 0 ? r[i].backups[0] : UINT32_MAX;
    return 1;
  }
  return 0;
}

ps_client_t *chaos_counter_client(const char *sched_ep, int rank, uint64_t keys,
                                  int timeout_ms, char *msg, size_t len) {
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, keys, PS__OPTIMIZER__OPT_ADD, 0.0f);
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = timeout_ms;
  o.connect_timeout_ms = 30000;
  int err;
  return ps_client_new(&o, &model, &err, msg, len);
}

/* ---- random schedules ------------------------------------------------------
 */

uint64_t chaos_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int chaos_rand_int(uint64_t *state, int lo, int hi) {
  return lo + (int)(chaos_rand(state) % (uint64_t)(hi - lo + 1));
}

int chaos_seeds(uint64_t *seeds, int n) {
  const char *env = getenv("CHAOS_SEED");
  if (env && env[0]) {
    seeds[0] = strtoull(env, NULL, 0);
    return 1;
  }
  uint64_t st = h_now_ms() ^ ((uint64_t)getpid() << 32);
  for (int i = 0; i < n; i++) seeds[i] = chaos_rand(&st) % 1000000007ull;
  return n;
}

/* ---- the ledger ------------------------------------------------------------
 */

static struct {
  char dir[600];
  int workers;
  uint64_t keys;
  int max_s;
  int sparse_rows; /* rows of table "ctr" per worker; 0: dense only */
  int bsp;         /* each push n is followed by a pull at clock n + 1 */
} ledger;

void chaos_ledger_sparse(int rows) {
  ledger.sparse_rows = rows;
}

void chaos_ledger_bsp(int on) {
  ledger.bsp = on;
}

/* Row r of worker w's counters in table "ctr": ids far apart, so they
 * spread over every range. */
static uint64_t ledger_row_id(int w, int r) {
  return ((uint64_t)w << 32) + (uint64_t)r * 7919u + 1;
}

void chaos_ledger_setup(const char *dir, int workers, uint64_t keys,
                        int max_s) {
  snprintf(ledger.dir, sizeof(ledger.dir), "%s", dir);
  ledger.workers = workers;
  ledger.keys = keys;
  ledger.max_s = max_s;
}

/* A static buffer per call slot, so two paths may be used together. */
static const char *ledger_path(const char *file) {
  static char bufs[4][700];
  static int slot;
  char *b = bufs[slot++ % 4];
  snprintf(b, 700, "%s/%s", ledger.dir, file);
  return b;
}

/* The pushes worker rank's ledger says were acked so far ("a N" lines). */
static uint64_t ledger_acks(int rank) {
  char name[32];
  snprintf(name, sizeof(name), "ledger%d", rank);
  FILE *f = fopen(ledger_path(name), "r");
  uint64_t n = 0;
  char line[512];
  while (f && fgets(line, sizeof(line), f))
    n += line[0] == 'a' && line[1] == ' ';
  if (f) fclose(f);
  return n;
}

void chaos_ledger_stop(void) {
  /* In lock step every worker must stop after the same step, or the ones
   * that go on wait for ever for those that stopped: the file names it, a
   * few steps past the furthest worker (all are within a step of each
   * other). Written whole, then renamed. */
  uint64_t last = 0;
  for (int w = 0; ledger.bsp && w < ledger.workers; w++) {
    uint64_t a = ledger_acks(w);
    if (a > last) last = a;
  }
  int fd = open(ledger_path("stop.tmp"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  char text[32];
  int len = snprintf(text, sizeof(text), "%" PRIu64 "\n", last + 16);
  if (write(fd, text, (size_t)len) != len)
    fprintf(stderr, "chaos: stop file: %s\n", strerror(errno));
  close(fd);
  rename(ledger_path("stop.tmp"), ledger_path("stop"));
}

/* Whether a worker that acked n pushes stops now: ASP at once when told;
 * BSP at the step the stop file names. */
static int ledger_stopping(uint64_t n, uint64_t *stop_at) {
  if (*stop_at == UINT64_MAX) {
    FILE *f = fopen(ledger_path("stop"), "r");
    if (f == NULL) return 0;
    unsigned long long at = 0;
    if (fscanf(f, "%llu", &at) != 1) at = 0;
    fclose(f);
    *stop_at = ledger.bsp ? (uint64_t)at : 0;
  }
  return n >= *stop_at;
}

static void ledger_line(int fd, const char *fmt, uint64_t n, const char *msg) {
  char line[512];
  int len = snprintf(line, sizeof(line), fmt, n, msg);
  if (len > (int)sizeof(line) - 1) len = (int)sizeof(line) - 1;
  /* Runs in a worker process: its failure is the worker's exit status. */
  if (write(fd, line, (size_t)len) != len) {
    fprintf(stderr, "chaos: ledger write: %s\n", strerror(errno));
    _exit(1);
  }
}

/* chaos_counter_client with the ledger's sparse table "ctr" (OPT_ADD,
 * zero rows of LEDGER_DIM), when it has one. */
#define LEDGER_DIM 2
static ps_client_t *ledger_client(const char *sched_ep, int rank, char *msg,
                                  size_t len) {
  if (ledger.sparse_rows == 0)
    return chaos_counter_client(sched_ep, rank, ledger.keys, 30000, msg, len);
  ps_tensor_spec_t t;
  ps_model_t model;
  h_dense_model(&model, &t, ledger.keys, PS__OPTIMIZER__OPT_ADD, 0.0f);
  ps_sparse_spec_t sp;
  memset(&sp, 0, sizeof(sp));
  snprintf(sp.name, sizeof(sp.name), "ctr");
  sp.dim = LEDGER_DIM;
  sp.init = PS__INIT__INIT_ZERO;
  model.nsparse = 1;
  model.sparse = &sp;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = sched_ep;
  o.rank = rank;
  o.timeout_ms = 30000;
  o.connect_timeout_ms = 30000;
  int err;
  return ps_client_new(&o, &model, &err, msg, len);
}

int chaos_ledger_worker(const char *sched_ep, int rank) {
  char msg[256];
  ps_client_t *c = ledger_client(sched_ep, rank, msg, sizeof(msg));
  char name[32];
  snprintf(name, sizeof(name), "ledger%d", rank);
  int fd =
      open(ledger_path(name), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  if (c == NULL || fd < 0) {
    fprintf(stderr, "ledger worker %d: %s\n", rank,
            c == NULL ? msg : strerror(errno));
    h_worker_sync(rank);
    h_worker_sync(rank);
    h_worker_sync(rank);
    return 1;
  }
  float *g = calloc(ledger.keys, sizeof(float));
  float *wts = calloc(ledger.keys, sizeof(float));
  float *pulled = calloc(ledger.keys, sizeof(float));
  for (uint64_t k = (uint64_t)rank; k < ledger.keys; k += ledger.workers)
    g[k] = 1.0f;
  size_t nrows = (size_t)ledger.sparse_rows;
  uint64_t *ids = calloc(nrows + 1, sizeof(*ids));
  float *ones = calloc(nrows * LEDGER_DIM + 1, sizeof(float));
  for (size_t r = 0; r < nrows; r++) {
    ids[r] = ledger_row_id(rank, (int)r);
    for (int j = 0; j < LEDGER_DIM; j++) ones[r * LEDGER_DIM + j] = 1.0f;
  }

  int ok = h_worker_sync(rank);
  uint64_t end = h_now_ms() + (uint64_t)ledger.max_s * 1000;
  uint64_t n = 0, stop_at = UINT64_MAX;
  while (ok && h_now_ms() < end && !ledger_stopping(n, &stop_at)) {
    ledger_line(fd, "i %" PRIu64 "\n", n, "");
    /* One intent covers the sparse push and the dense one: both count 1
     * on the worker's own counters. */
    int rc = nrows ? ps_client_sparse_push(c, "ctr", ids, nrows, ones, n)
                   : PS_OK;
    /* Every other push is a push-pull (issue #15), whose reply must show
     * this worker's own counters (no one else adds to them; ASP answers
     * after the apply, BSP once step n is applied) at exactly n + 1: none
     * lost, none twice. */
    int fused = n % 2 == 1;
    if (rc == PS_OK)
      rc = fused ? ps_client_pushpull(c, 0, ledger.keys, g, n, wts)
                 : ps_client_push(c, 0, ledger.keys, g, n);
    char why[400] = "";
    for (uint64_t k = (uint64_t)rank; fused && rc == PS_OK && k < ledger.keys;
         k += ledger.workers)
      if (wts[k] != (float)(n + 1)) {
        snprintf(why, sizeof(why),
                 "push-pull reply: own counter %" PRIu64
                 " is %g, want %" PRIu64,
                 k, wts[k], n + 1);
        rc = PS_ERR_PROTO;
      }
    if (rc != PS_OK) {
      if (why[0] == '\0')
        snprintf(why, sizeof(why), "%s: %s", ps_err_name(rc),
                 ps_client_errmsg(c));
      ledger_line(fd, "f %" PRIu64 " %s\n", n, why);
      fprintf(stderr, "ledger worker %d: push %" PRIu64 " failed: %s\n", rank,
              n, why);
      ok = 0;
      break;
    }
    ledger_line(fd, "a %" PRIu64 "\n", n, "");
    n++;
    /* BSP: step n + 1 may be pushed once every live worker's step n is
     * applied (a push-pull's reply said so already). */
    if (ledger.bsp && !fused) rc = ps_client_pull(c, 0, ledger.keys, pulled, n);
    if (rc != PS_OK) {
      snprintf(why, sizeof(why), "pull at clock %" PRIu64 ": %s: %s", n,
               ps_err_name(rc), ps_client_errmsg(c));
      ledger_line(fd, "f %" PRIu64 " %s\n", n, why);
      fprintf(stderr, "ledger worker %d: %s\n", rank, why);
      ok = 0;
      break;
    }
  }
  fprintf(stderr,
          "ledger worker %d: %" PRIu64 " pushes acked, %" PRIu64
          " duplicate acks\n",
          rank, n, ps_client_duplicate_acks(c));
  int synced = h_worker_sync(rank);
  if (synced && rank == 0) {
    float *out = calloc(ledger.keys, sizeof(float));
    int rc = ps_client_pull(c, 0, ledger.keys, out, 0);
    if (rc != PS_OK) {
      fprintf(stderr, "ledger worker 0: final pull failed: %s\n",
              ps_client_errmsg(c));
      ok = 0;
    } else {
      int ffd = open(ledger_path("final.bin.tmp"), O_WRONLY | O_CREAT | O_TRUNC,
                     0644);
      size_t bytes = ledger.keys * sizeof(float);
      ok =
          ffd >= 0 && write(ffd, out, bytes) == (ssize_t)bytes &&
          close(ffd) == 0 &&
          rename(ledger_path("final.bin.tmp"), ledger_path("final.bin")) == 0 &&
          ok;
    }
    free(out);
    /* Every worker's rows, into dir/final_sparse.bin. */
    size_t all = nrows * (size_t)ledger.workers;
    uint64_t *every = calloc(all + 1, sizeof(*every));
    float *rows = calloc(all * LEDGER_DIM + 1, sizeof(float));
    for (int w = 0; w < ledger.workers; w++)
      for (size_t r = 0; r < nrows; r++)
        every[(size_t)w * nrows + r] = ledger_row_id(w, (int)r);
    if (ok && all) {
      rc = ps_client_sparse_pull(c, "ctr", every, all, rows);
      int ffd = rc == PS_OK ? open(ledger_path("final_sparse.bin"),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644)
                            : -1;
      size_t bytes = all * LEDGER_DIM * sizeof(float);
      ok = ffd >= 0 && write(ffd, rows, bytes) == (ssize_t)bytes &&
           close(ffd) == 0;
      if (!ok)
        fprintf(stderr, "ledger worker 0: final sparse pull: %s\n",
                rc == PS_OK ? strerror(errno) : ps_client_errmsg(c));
    }
    free(every);
    free(rows);
  }
  h_worker_sync(rank);
  close(fd);
  free(ids);
  free(ones);
  free(g);
  free(wts);
  free(pulled);
  ps_client_destroy(&c);
  return ok ? 0 : 1;
}

int chaos_ledger_check(int killed, chaos_ledger_result_t *res, char *why,
                       size_t len) {
  memset(res, 0, sizeof(*res));
  why[0] = '\0';
  int holds = 1;
  for (int w = 0; w < ledger.workers && w < 16; w++) {
    char name[32];
    snprintf(name, sizeof(name), "ledger%d", w);
    char *text = h_read_file(ledger_path(name), NULL);
    if (text == NULL) {
      snprintf(why, len, "worker %d wrote no ledger", w);
      return 0;
    }
    for (char *line = text; *line;) {
      if (line[0] == 'i') res->intents[w]++;
      if (line[0] == 'a') res->acked[w]++;
      if (line[0] == 'f') {
        res->failed[w] = 1;
        if (w != killed && holds) {
          char *nl = strchr(line, '\n');
          if (nl) *nl = '\0';
          snprintf(why, len, "worker %d: push failed: %.300s", w, line);
          holds = 0;
          if (nl) *nl = '\n';
        }
      }
      char *nl = strchr(line, '\n');
      if (nl == NULL) break;
      line = nl + 1;
    }
    free(text);
    res->total_acked += res->acked[w];
  }
  size_t bytes = 0;
  float *v = (float *)h_read_file(ledger_path("final.bin"), &bytes);
  if (v == NULL || bytes != ledger.keys * sizeof(float)) {
    if (holds)
      snprintf(why, len, "no final counters (%zu bytes of %zu)", bytes,
               (size_t)(ledger.keys * sizeof(float)));
    free(v);
    return 0;
  }
  uint64_t bad = 0;
  for (uint64_t k = 0; k < ledger.keys; k++) {
    int w = (int)(k % (uint64_t)ledger.workers);
    double lo = (double)res->acked[w];
    double hi = w == killed || res->failed[w] ? (double)res->intents[w] : lo;
    double got = (double)v[k];
    if (got >= lo && got <= hi) continue;
    if (bad++ == 0 && holds)
      snprintf(why, len,
               "key %" PRIu64
               " (worker %d%s): counter %.0f, acked %.0f, "
               "intents %.0f: %s",
               k, w, w == killed ? ", killed" : "", got, lo,
               (double)res->intents[w],
               got < lo ? "acknowledged pushes LOST" : "pushes applied TWICE");
  }
  size_t nrows = (size_t)ledger.sparse_rows * (size_t)ledger.workers;
  float *sv = NULL;
  if (nrows) {
    sv = (float *)h_read_file(ledger_path("final_sparse.bin"), &bytes);
    if (sv == NULL || bytes != nrows * LEDGER_DIM * sizeof(float)) {
      if (holds)
        snprintf(why, len, "no final sparse rows (%zu bytes)", bytes);
      free(sv);
      free(v);
      return 0;
    }
  }
  for (size_t i = 0; i < nrows * LEDGER_DIM; i++) {
    int w = (int)(i / LEDGER_DIM / (size_t)ledger.sparse_rows);
    double lo = (double)res->acked[w];
    double hi = w == killed || res->failed[w] ? (double)res->intents[w] : lo;
    double got = (double)sv[i];
    if (got >= lo && got <= hi) continue;
    if (bad++ == 0 && holds)
      snprintf(why, len,
               "sparse row %" PRIu64 "[%zu] (worker %d%s): counter %.0f, "
               "acked %.0f, intents %.0f: %s",
               ledger_row_id(w, (int)(i / LEDGER_DIM %
                                      (size_t)ledger.sparse_rows)),
               i % LEDGER_DIM, w, w == killed ? ", killed" : "", got, lo,
               (double)res->intents[w],
               got < lo ? "acknowledged pushes LOST" : "pushes applied TWICE");
  }
  free(sv);
  if (bad) {
    size_t used = strlen(why);
    snprintf(why + used, len - used, " (%" PRIu64 " keys wrong)", bad);
    holds = 0;
  }
  free(v);
  return holds;
}

int chaos_ledger_finish(int killed, chaos_ledger_result_t *res, char *why,
                        size_t len) {
  chaos_ledger_stop();
  int synced = h_workers_sync_timeout(60000) && h_workers_sync_timeout(60000);
  int reaped = h_workers_reap(60000);
  char lwhy[512] = "";
  int holds = chaos_ledger_check(killed, res, lwhy, sizeof(lwhy));
  if (!synced)
    snprintf(why, len, "the workers did not stop within 60 s");
  else if (!holds)
    snprintf(why, len, "%s", lwhy);
  else if (!reaped)
    snprintf(why, len, "a surviving worker exited non-zero");
  return synced && holds && reaped;
}
