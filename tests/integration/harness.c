#define _GNU_SOURCE /* pipe2 */

#include "harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/invariant.h"
#include "common/optimizer.h"
#include "common/proc.h"

uint64_t h_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t h_deadline_ms(int timeout_ms) {
  static double scale = 0;
  if (scale == 0) {
    const char *e = getenv("PS_TEST_TIME_SCALE");
    scale = e && atof(e) >= 1 ? atof(e) : 1;
  }
  return h_now_ms() + (uint64_t)(timeout_ms * scale);
}

void h_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void sleep_ms(int ms) {
  h_sleep_ms(ms);
}

int h_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
    ck_abort_msg("harness: no free loopback port: %s", strerror(errno));
  socklen_t len = sizeof(a);
  if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    ck_abort_msg("harness: getsockname: %s", strerror(errno));
  close(fd);
  return ntohs(a.sin_port);
}

int h_tcp_established(pid_t pid, int port) {
  /* The socket inodes of pid's descriptors. */
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (d == NULL) return -1;
  unsigned long inodes[1024];
  size_t ninodes = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && ninodes < 1024) {
    char link[64 + sizeof(e->d_name)], target[64];
    snprintf(link, sizeof(link), "%s/%s", path, e->d_name);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    unsigned long ino;
    if (sscanf(target, "socket:[%lu]", &ino) == 1) inodes[ninodes++] = ino;
  }
  closedir(d);
  /* /proc/net/tcp: "sl local rem st ... inode", addresses as hex
   * ADDR:PORT, state 01 established. */
  FILE *f = fopen("/proc/net/tcp", "r");
  if (f == NULL) return -1;
  char line[512];
  int count = 0;
  if (fgets(line, sizeof(line), f) == NULL) { /* the header */
    fclose(f);
    return -1;
  }
  while (fgets(line, sizeof(line), f)) {
    unsigned rem_addr, rem_port, st;
    unsigned long ino;
    if (sscanf(line, " %*d: %*x:%*x %x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
               &rem_addr, &rem_port, &st, &ino) != 4)
      continue;
    if (st != 0x01 || rem_port != (unsigned)port ||
        rem_addr != htonl(INADDR_LOOPBACK))
      continue;
    for (size_t i = 0; i < ninodes; i++)
      if (inodes[i] == ino) {
        count++;
        break;
      }
  }
  fclose(f);
  return count;
}

static void rm_rf_contents(const char *dir) {
  char cmd[1100];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "harness: cannot clean %s\n", dir);
}

void h_init(h_cluster_t *c, const char *test) {
  memset(c, 0, sizeof(*c));
  const char *base = getenv("PS_TEST_TMP");
  if (!base) base = "/tmp/ps-tests";
  mkdir(base, 0755);
  snprintf(c->dir, sizeof(c->dir), "%s/%s", base, test);
  rm_rf_contents(c->dir);
  mkdir(c->dir, 0755);
  h_new_sched_ep(c);
}

void h_new_sched_ep(h_cluster_t *c) {
  snprintf(c->sched_ep, sizeof(c->sched_ep), "tcp://127.0.0.1:%d",
           h_free_port());
}

const char *h_path(h_cluster_t *c, const char *file) {
  static char bufs[8][640];
  static int slot;
  char *b = bufs[slot++ % 8];
  snprintf(b, 640, "%s/%s", c->dir, file);
  return b;
}

const char *h_bin(const char *bin) {
  static char bufs[8][512];
  static int slot;
  char *b = bufs[slot++ % 8];
  const char *bindir = getenv("PS_BIN_DIR");
  if (!bindir) bindir = ".";
  snprintf(b, 512, "%s/%s", bindir, bin);
  return b;
}

/* argv[0] = first, then the NULL-terminated args of ap (63 in all at
 * most), then NULL. */
static void collect_argv(const char *argv[64], const char *first, va_list ap) {
  int argc = 0;
  argv[argc++] = first;
  const char *a;
  while (argc < 63 && (a = va_arg(ap, const char *)) != NULL) argv[argc++] = a;
  argv[argc] = NULL;
}

h_proc_t *h_spawn(h_cluster_t *c, const char *name, const char *bin, ...) {
  const char *argv[64];
  va_list ap;
  va_start(ap, bin);
  collect_argv(argv, bin, ap);
  va_end(ap);
  return h_spawnv(c, name, argv);
}

h_proc_t *h_spawnv(h_cluster_t *c, const char *name, const char *const *args) {
  PS_ASSERT(c->nprocs < H_MAX_PROCS);
  char path[512];
  snprintf(path, sizeof(path), "%s",
           strchr(args[0], '/') ? args[0] : h_bin(args[0]));
  const char *argv[64];
  int argc = 0;
  argv[argc++] = path;
  while (args[argc] != NULL && argc < 63) {
    argv[argc] = args[argc];
    argc++;
  }
  argv[argc] = NULL;

  h_proc_t *p = &c->procs[c->nprocs++];
  memset(p, 0, sizeof(*p));
  snprintf(p->name, sizeof(p->name), "%s", name);
  char logpath[sizeof(p->log)];
  snprintf(logpath, sizeof(logpath), "%.500s/%.60s.log", c->dir, name);
  memcpy(p->log, logpath, sizeof(logpath));
  p->pid = ps_proc_spawn(path, (char *const *)argv, p->log);
  if (p->pid < 0)
    ck_abort_msg("harness: fork for %s: %s", name, strerror(errno));
  return p;
}

static int reap(h_proc_t *p, int flags) {
  if (!p->exited) p->exited = ps_proc_reap(p->pid, flags, &p->status);
  return p->exited;
}

static int wait_exit_until(h_proc_t *p, uint64_t end) {
  for (;;) {
    if (reap(p, WNOHANG)) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(10);
  }
}

int h_wait_exit(h_proc_t *p, int timeout_ms) {
  return wait_exit_until(p, h_deadline_ms(timeout_ms));
}

int h_wait_all_until(h_cluster_t *c, uint64_t end) {
  for (int i = 0; i < c->nprocs; i++)
    if (!wait_exit_until(&c->procs[i], end)) return 0;
  return 1;
}

int h_wait_all(h_cluster_t *c, int timeout_ms) {
  return h_wait_all_until(c, h_deadline_ms(timeout_ms));
}

int h_wait_exit0(h_cluster_t *c, h_proc_t *p, int timeout_ms, char *why,
                 size_t len) {
  if (!h_wait_exit(p, timeout_ms))
    snprintf(why, len, "%s did not exit within %d ms", p->name, timeout_ms);
  else if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != 0)
    snprintf(why, len, "%s exited with status %d", p->name, p->status);
  else
    return 1;
  h_dump_logs(c);
  return 0;
}

int h_wait_all_exit0(h_cluster_t *c, int from, int timeout_ms, char *why,
                     size_t len) {
  if (!h_wait_all(c, timeout_ms)) {
    snprintf(why, len, "not every process exited within %d ms", timeout_ms);
    h_dump_logs(c);
    return 0;
  }
  for (int i = from; i < c->nprocs; i++)
    if (!h_wait_exit0(c, &c->procs[i], 0, why, len)) return 0;
  return 1;
}

char *h_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  buf[got] = '\0';
  fclose(f);
  if (len) *len = got;
  return buf;
}

int h_wait_log(const char *path, const char *needle, int timeout_ms) {
  uint64_t end = h_deadline_ms(timeout_ms);
  for (;;) {
    char *s = h_read_file(path, NULL);
    int found = s && strstr(s, needle);
    free(s);
    if (found) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(20);
  }
}

unsigned long h_progress_step(const char *log, unsigned long *total) {
  char *s = h_read_file(log, NULL);
  unsigned long step = 0;
  const char *p = s;
  while (p && (p = strstr(p, "event=progress")) != NULL) {
    const char *q = strstr(p, " step=");
    const char *t = strstr(p, " steps=");
    if (q) step = strtoul(q + 6, NULL, 10);
    if (t && total) *total = strtoul(t + 7, NULL, 10);
    p += 14;
  }
  free(s);
  return step;
}

void h_kill_all(h_cluster_t *c) {
  for (int i = 0; i < c->nprocs; i++) {
    h_proc_t *p = &c->procs[i];
    if (p->exited) continue;
    kill(p->pid, SIGKILL);
    reap(p, 0);
  }
}

void h_dump_logs(h_cluster_t *c) {
  for (int i = 0; i < c->nprocs; i++) {
    size_t len;
    char *s = h_read_file(c->procs[i].log, &len);
    if (!s) continue;
    const char *tail = len > 3000 ? s + len - 3000 : s;
    h_proc_t *p = &c->procs[i];
    char how[64] = "running";
    reap(p, WNOHANG);
    if (p->exited && WIFEXITED(p->status))
      snprintf(how, sizeof(how), "exited %d", WEXITSTATUS(p->status));
    else if (p->exited && WIFSIGNALED(p->status))
      snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(p->status));
    else if (p->exited)
      snprintf(how, sizeof(how), "ended, status lost");
    fprintf(stderr, "---- %s (%s, %s) ----\n%s\n", p->name, p->log, how, tail);
    free(s);
  }
}

double h_json_number(const char *json, const char *key) {
  char pat[128];
  snprintf(pat, sizeof(pat), "\"%s\"", key);
  const char *p = strstr(json, pat);
  if (!p) return NAN;
  p += strlen(pat);
  while (*p == ' ' || *p == ':') p++;
  char *end;
  double v = strtod(p, &end);
  return end == p ? NAN : v;
}

int h_dump_matches_checkpoint(const char *dump, const char *ckpt_dir, char *why,
                              size_t len) {
  ps_checkpoint_manifest_t m;
  char err[1024];
  if (ps_checkpoint_manifest_read(ckpt_dir, &m, err, sizeof(err)) != PS_OK) {
    snprintf(why, len, "%s", err);
    return 0;
  }
  size_t n = (size_t)m.model.total, nd = 0;
  float *w = malloc(n * sizeof(float));
  size_t slots = (size_t)ps_model_state_slots(&m.model);
  float *mom = slots ? malloc(n * slots * sizeof(float)) : NULL;
  int rc = ps_checkpoint_load_range(ckpt_dir, &m, 0, m.model.total, w, mom,
                                    NULL, NULL, err, sizeof(err));
  free(mom);
  ps_checkpoint_manifest_clear(&m);
  char *d = NULL;
  int same = 0;
  if (rc != PS_OK) {
    snprintf(why, len, "%s", err);
  } else if ((d = h_read_file(dump, &nd)) == NULL) {
    snprintf(why, len, "no weights dumped to %s", dump);
  } else if (nd != n * sizeof(float)) {
    snprintf(why, len, "%zu bytes dumped to %s, want %zu", nd, dump,
             n * sizeof(float));
  } else {
    size_t first = 0;
    while (first < n &&
           memcmp(d + first * sizeof(float), &w[first], sizeof(float)) == 0)
      first++;
    same = first == n;
    if (!same)
      snprintf(why, len, "key %zu of %s differs from the checkpoint", first,
               dump);
  }
  free(d);
  free(w);
  return same;
}

void h_dense_model(ps_model_t *model, ps_tensor_spec_t *t, uint64_t keys,
                   int optimizer, float learning_rate) {
  memset(t, 0, sizeof(*t));
  snprintf(t->name, sizeof(t->name), "w");
  t->length = keys;
  t->init = PS__INIT__INIT_ZERO;
  memset(model, 0, sizeof(*model));
  model->ntensors = 1;
  model->tensors = t;
  model->total = keys;
  model->optimizer = optimizer;
  model->learning_rate = learning_rate;
  model->seed = 1;
}

char *h_run(h_cluster_t *c, int timeout_ms, int *status, const char *bin, ...) {
  static unsigned runs;
  const char *argv[64];
  char path[512];
  snprintf(path, sizeof(path), "%s", h_bin(bin));
  va_list ap;
  va_start(ap, bin);
  collect_argv(argv, path, ap);
  va_end(ap);

  char out[700];
  snprintf(out, sizeof(out), "%.500s/run-%d-%u.out", c->dir, (int)getpid(),
           runs++);
  pid_t pid = ps_proc_spawn(path, (char *const *)argv, out);
  if (pid < 0) return NULL;
  int st;
  if (!ps_proc_wait(pid, (int)(h_deadline_ms(timeout_ms) - h_now_ms()), &st)) {
    kill(pid, SIGKILL);
    ps_proc_reap(pid, 0, &st);
    st = -1;
  }
  if (status) *status = st;
  char *text = h_read_file(out, NULL);
  unlink(out);
  return text;
}

char *h_status_json(h_cluster_t *c, int timeout_ms) {
  char ms[32];
  snprintf(ms, sizeof(ms), "%d", timeout_ms);
  int st;
  char *js = h_run(c, timeout_ms + 2000, &st, "psctl", "--scheduler",
                   c->sched_ep, "--timeout-ms", ms, "--json", "status", NULL);
  if (js && st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
      strstr(js, "\"ranges\"") != NULL)
    return js;
  free(js);
  return NULL;
}

#define H_OBJ_MAX 4096

/* Calls parse(obj, out, i) on each of the first max objects of the array
 * "key":[{...},{...}] of json, obj a copy of the i-th one as a string
 * (objects here hold arrays but no objects). Returns how many, or -1 if
 * there is no such array. */
static int json_each_object(const char *json, const char *key, int max,
                            void (*parse)(const char *obj, void *out, int i),
                            void *out) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":[", key);
  const char *p = strstr(json, pat);
  if (p == NULL) return -1;
  p += strlen(pat);
  int n = 0;
  while (*p && *p != ']' && n < max) {
    if (*p != '{') {
      p++;
      continue;
    }
    const char *q = strchr(p, '}');
    if (q == NULL) break;
    char obj[H_OBJ_MAX];
    size_t len = (size_t)(q + 1 - p);
    if (len >= sizeof(obj)) len = sizeof(obj) - 1;
    memcpy(obj, p, len);
    obj[len] = '\0';
    parse(obj, out, n++);
    p = q + 1;
  }
  return n;
}

static void json_str(const char *obj, const char *key, char *out, size_t len) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":\"", key);
  const char *p = strstr(obj, pat);
  out[0] = '\0';
  if (p == NULL) return;
  p += strlen(pat);
  size_t i = 0;
  while (*p && *p != '"' && i + 1 < len) out[i++] = *p++;
  out[i] = '\0';
}

/* Reads "key":[1,2,3] into out; -1 if obj has no such key. */
static int json_uints(const char *obj, const char *key, unsigned *out,
                      int max) {
  char pat[64];
  snprintf(pat, sizeof(pat), "\"%s\":[", key);
  const char *p = strstr(obj, pat);
  if (p == NULL) return -1;
  p += strlen(pat);
  int n = 0;
  while (*p && *p != ']') {
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p) {
      p++;
      continue;
    }
    if (n < max) out[n++] = (unsigned)v;
    p = end;
  }
  return n;
}

static void parse_node(const char *obj, void *out, int i) {
  h_node_t *node = (h_node_t *)out + i;
  memset(node, 0, sizeof(*node));
  node->id = (unsigned)h_json_number(obj, "id");
  json_str(obj, "role", node->role, sizeof(node->role));
  json_str(obj, "state", node->state, sizeof(node->state));
  json_str(obj, "address", node->address, sizeof(node->address));
}

int h_status_nodes(const char *json, h_node_t *out, int max) {
  return json_each_object(json, "nodes", max, parse_node, out);
}

static void parse_range(const char *obj, void *out, int i) {
  h_range_t *r = (h_range_t *)out + i;
  memset(r, 0, sizeof(*r));
  r->begin = (unsigned long long)h_json_number(obj, "begin");
  r->end = (unsigned long long)h_json_number(obj, "end");
  r->server_id = (unsigned)h_json_number(obj, "server_id");
  r->nbackups = json_uints(obj, "backups", r->backups, H_MAX_REPLICAS);
  r->nsyncing = json_uints(obj, "syncing", r->syncing, H_MAX_REPLICAS);
  if (r->nsyncing < 0) r->nsyncing = 0;
}

int h_status_ranges(const char *json, h_range_t *out, int max) {
  return json_each_object(json, "ranges", max, parse_range, out);
}

const h_node_t *h_find_node(const h_node_t *nodes, int n, unsigned id) {
  for (int i = 0; i < n; i++)
    if (nodes[i].id == id) return &nodes[i];
  return NULL;
}

int h_status_replicated(const char *json, int copies, char *why, size_t len) {
  h_node_t nodes[64];
  h_range_t ranges[64];
  char dummy[8];
  if (why == NULL) {
    why = dummy;
    len = sizeof(dummy);
  }
  int nn = h_status_nodes(json, nodes, 64);
  int nr = h_status_ranges(json, ranges, 64);
  if (nn <= 0 || nr <= 0) {
    snprintf(why, len, "status has no nodes or ranges");
    return 0;
  }
  for (int i = 0; i < nr; i++) {
    const h_range_t *r = &ranges[i];
    const h_node_t *p = h_find_node(nodes, nn, r->server_id);
    if (p == NULL || strcmp(p->state, "alive") != 0) {
      snprintf(why, len, "range [%llu, %llu): primary %u is %s", r->begin,
               r->end, r->server_id, p ? p->state : "unknown");
      return 0;
    }
    if (copies > 1 && r->nbackups < 0) {
      snprintf(why, len, "status lists no backups");
      return 0;
    }
    if (r->nbackups >= 0 && r->nbackups < copies - 1) {
      snprintf(why, len, "range [%llu, %llu): %d backup(s), want %d", r->begin,
               r->end, r->nbackups, copies - 1);
      return 0;
    }
    if (r->nsyncing > 0) {
      snprintf(why, len, "range [%llu, %llu): backup %u is syncing", r->begin,
               r->end, r->syncing[0]);
      return 0;
    }
    for (int b = 0; b < r->nbackups; b++) {
      const h_node_t *n = h_find_node(nodes, nn, r->backups[b]);
      if (n == NULL || strcmp(n->state, "alive") != 0) {
        snprintf(why, len, "range [%llu, %llu): backup %u is %s", r->begin,
                 r->end, r->backups[b], n ? n->state : "unknown");
        return 0;
      }
    }
  }
  return 1;
}

int h_wait_replicated(h_cluster_t *c, int copies, int timeout_ms, char *why,
                      size_t len) {
  uint64_t end = h_deadline_ms(timeout_ms);
  for (;;) {
    char *js = h_status_json(c, 2000);
    int ok = js && h_status_replicated(js, copies, why, len);
    if (js == NULL && why) snprintf(why, len, "psctl status failed");
    free(js);
    if (ok) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(50);
  }
}

int h_wait_node_state(h_cluster_t *c, const char *address, const char *state,
                      int timeout_ms) {
  uint64_t end = h_deadline_ms(timeout_ms);
  for (;;) {
    char *js = h_status_json(c, 2000);
    int ok = 0;
    if (js) {
      h_node_t nodes[64];
      int nn = h_status_nodes(js, nodes, 64);
      for (int i = 0; i < nn; i++)
        if (strcmp(nodes[i].address, address) == 0 &&
            strcmp(nodes[i].state, state) == 0)
          ok = 1;
    }
    free(js);
    if (ok) return 1;
    if (h_now_ms() >= end) return 0;
    sleep_ms(20);
  }
}

static struct {
  int n;
  pid_t pids[H_MAX_WORKERS];
  int reaped[H_MAX_WORKERS]; /* killed by h_worker_kill */
  int to_test[H_MAX_WORKERS][2], from_test[H_MAX_WORKERS][2];
} workers;

void h_workers_start(h_cluster_t *c, int n, h_worker_fn fn) {
  PS_ASSERT(n <= H_MAX_WORKERS);
  workers.n = n;
  memset(workers.reaped, 0, sizeof(workers.reaped));
  /* Close-on-exec, so daemons started later hold no end; and each worker
   * closes the others' ends, so the test sees EOF from a worker that died
   * (it then counts as arrived). */
  for (int r = 0; r < n; r++)
    if (pipe2(workers.to_test[r], O_CLOEXEC) != 0 ||
        pipe2(workers.from_test[r], O_CLOEXEC) != 0)
      ck_abort_msg("harness: pipe2: %s", strerror(errno));
  pid_t parent = getpid();
  for (int r = 0; r < n; r++) {
    pid_t pid = fork();
    if (pid < 0)
      ck_abort_msg("harness: fork of worker %d: %s", r, strerror(errno));
    if (pid == 0) {
      ps_proc_child_setup(parent);
      for (int o = 0; o < n; o++) {
        if (o != r) {
          close(workers.to_test[o][1]);
          close(workers.from_test[o][0]);
        }
        close(workers.to_test[o][0]);
        close(workers.from_test[o][1]);
      }
      _exit(fn(c->sched_ep, r));
    }
    workers.pids[r] = pid;
  }
  for (int r = 0; r < n; r++) {
    close(workers.to_test[r][1]);
    close(workers.from_test[r][0]);
  }
}

int h_worker_sync(int rank) {
  char b = 'a';
  return write(workers.to_test[rank][1], &b, 1) == 1 &&
         read(workers.from_test[rank][0], &b, 1) == 1;
}

int h_workers_sync_timeout(int timeout_ms) {
  char b;
  uint64_t end = h_deadline_ms(timeout_ms);
  for (int r = 0; r < workers.n; r++) {
    if (workers.reaped[r]) continue;
    struct pollfd pfd = {.fd = workers.to_test[r][0], .events = POLLIN};
    for (;;) {
      uint64_t now = h_now_ms();
      if (now >= end) return 0;
      int left = (int)(end - now);
      int got = poll(&pfd, 1, left);
      if (got > 0) break;
      if (got < 0 && errno != EINTR) break;
    }
    if (read(workers.to_test[r][0], &b, 1) != 1) b = 0;
  }
  /* A worker that died makes the write fail (EPIPE): ignored. */
  signal(SIGPIPE, SIG_IGN);
  for (int r = 0; r < workers.n; r++)
    if (!workers.reaped[r] && write(workers.from_test[r][1], "g", 1) != 1)
      b = 0;
  return 1;
}

void h_workers_sync(void) {
  h_workers_sync_timeout(INT_MAX);
}

pid_t h_worker_pid(int rank) {
  return workers.pids[rank];
}

void h_worker_kill(int rank) {
  if (workers.reaped[rank]) return;
  int st;
  kill(workers.pids[rank], SIGKILL);
  ps_proc_reap(workers.pids[rank], 0, &st);
  workers.reaped[rank] = 1;
}

int h_workers_reap(int timeout_ms) {
  int ok = 1;
  uint64_t end = h_deadline_ms(timeout_ms);
  for (int r = 0; r < workers.n; r++) {
    if (workers.reaped[r]) continue;
    uint64_t now = h_now_ms();
    int left = now >= end ? 0 : (int)(end - now);
    int st;
    if (!ps_proc_wait(workers.pids[r], left, &st)) {
      kill(workers.pids[r], SIGKILL);
      ps_proc_reap(workers.pids[r], 0, &st);
      fprintf(stderr, "harness: worker %d timed out\n", r);
      ok = 0;
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      ok = 0;
    }
  }
  for (int r = 0; r < workers.n; r++) {
    close(workers.to_test[r][0]);
    close(workers.from_test[r][1]);
  }
  return ok;
}
