#include "scheduler/coordinator.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

/* The first boundary tried past the highest reported clock, for a
 * checkpoint asked for "now": near enough not to wait, and doubled after
 * every late answer (heartbeat clocks lag by up to a heartbeat). */
#define COORD_FIRST_MARGIN 2

/* Attempts given up (failed, or dropped for a later step) whose late
 * replies still clean up after them. */
#define COORD_DEAD_ATTEMPTS 16

enum { SRV_ASKED, SRV_ACCEPTED, SRV_WRITTEN };

typedef struct {
  uint64_t id;
  char dir[PS_CHECKPOINT_PATH_MAX];
} coord_dead_t;

typedef struct {
  uint32_t id;
  int state;
  uint64_t clock;
  uint64_t write_us;
  ps_checkpoint_file_t *files;
  size_t nfiles;
} coord_server_t;

struct ps_coord_s {
  ps_coord_cbs_t cbs;
  uint64_t next_id;

  int active;
  uint64_t id, step;
  char base[PS_CHECKPOINT_PATH_MAX];
  char name[PS_CHECKPOINT_NAME_MAX];
  char dir[PS_CHECKPOINT_PATH_MAX];
  const char *reason;
  uint64_t every_steps;
  uint64_t max_clock;
  uint64_t margin;
  int attempts;
  int job_finished;
  ps_model_t model;
  int mode;
  uint64_t view_epoch;
  int timeout_ms;
  uint64_t started_ms;
  coord_server_t *servers;
  size_t nservers;
  coord_dead_t dead[COORD_DEAD_ATTEMPTS];
  size_t ndead; /* ever; the last COORD_DEAD_ATTEMPTS are kept */
};

static void servers_reset(ps_coord_t *c) {
  for (size_t i = 0; i < c->nservers; i++) {
    free(c->servers[i].files);
    c->servers[i].files = NULL;
    c->servers[i].nfiles = 0;
    c->servers[i].state = SRV_ASKED;
    c->servers[i].write_us = 0;
  }
}

static void run_clear(ps_coord_t *c) {
  servers_reset(c);
  free(c->servers);
  c->servers = NULL;
  c->nservers = 0;
  ps_model_clear(&c->model);
  c->active = 0;
}

ps_coord_t *ps_coord_new(const ps_coord_cbs_t *cbs, uint64_t next_id) {
  ps_coord_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->cbs = *cbs;
  c->next_id = next_id ? next_id : 1;
  return c;
}

void ps_coord_destroy(ps_coord_t **c_p) {
  ps_coord_t *c = *c_p;
  if (c == NULL) return;
  *c_p = NULL;
  run_clear(c);
  free(c);
}

int ps_coord_active(const ps_coord_t *c) {
  return c->active;
}
const char *ps_coord_base(const ps_coord_t *c) {
  return c->base;
}
const char *ps_coord_dir(const ps_coord_t *c) {
  return c->dir;
}
const char *ps_coord_reason(const ps_coord_t *c) {
  return c->reason ? c->reason : "";
}
uint64_t ps_coord_id(const ps_coord_t *c) {
  return c->id;
}
uint64_t ps_coord_step(const ps_coord_t *c) {
  return c->step;
}
uint64_t ps_coord_started_ms(const ps_coord_t *c) {
  return c->started_ms;
}
uint64_t ps_coord_next_id(const ps_coord_t *c) {
  return c->next_id;
}
void ps_coord_set_next_id(ps_coord_t *c, uint64_t next_id) {
  if (next_id > c->next_id) c->next_id = next_id;
}

static uint64_t unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int is_bsp(const ps_coord_t *c) {
  /* SSP applies steps one at a time too: a clock boundary exists. */
  return c->mode != PS__CONSISTENCY_MODE__MODE_ASP;
}

/* What the servers write into an attempt's directory: shard files and
 * their temporaries (common/checkpoint.c). Nothing else is touched. */
static int attempt_file(const char *name) {
  size_t n = strlen(name);
  if (strncmp(name, "shard-", 6) == 0 && n > 5 &&
      strcmp(name + n - 5, ".psck") == 0)
    return 1;
  return name[0] == '.' && strstr(name, ".tmp.") != NULL;
}

/* Removes what an attempt that will never be a checkpoint wrote, and its
 * directory, so a full disk does not fill up with dead attempts. A
 * directory with a MANIFEST is a checkpoint and is never touched. */
static void remove_attempt(uint64_t id, const char *dir) {
  char path[PS_CHECKPOINT_PATH_MAX + PS_CHECKPOINT_NAME_MAX + 16];
  snprintf(path, sizeof(path), "%s/%s", dir, PS_CHECKPOINT_MANIFEST);
  if (access(path, F_OK) == 0) return;
  DIR *d = opendir(dir);
  if (d == NULL) return; /* never made, or gone already */
  uint64_t bytes = 0;
  int files = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!attempt_file(e->d_name)) continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (unlink(path) == 0) {
      files++;
      bytes += (uint64_t)st.st_size;
    } else {
      PS_WARN("checkpoint_cleanup_failed", "id=%" PRIu64 " file=%s err=\"%s\"",
              id, path, strerror(errno));
    }
  }
  closedir(d);
  /* Fails (ENOTEMPTY) while something unknown is in it: left as it is. */
  int gone = rmdir(dir) == 0;
  PS_INFO("checkpoint_cleaned",
          "id=%" PRIu64 " dir=%s files=%d bytes=%" PRIu64 " dir_removed=%d", id,
          dir, files, bytes, gone);
}

/* The attempt in progress is given up: its files go now, and what its
 * servers finish later goes when they report it (ps_coord_on_reply). */
static void drop_attempt(ps_coord_t *c) {
  if (c->dir[0] == '\0') return;
  coord_dead_t *d = &c->dead[c->ndead++ % COORD_DEAD_ATTEMPTS];
  d->id = c->id;
  snprintf(d->dir, sizeof(d->dir), "%s", c->dir);
  remove_attempt(d->id, d->dir);
}

static void finish(ps_coord_t *c, int status, const char *reason,
                   const ps_coord_result_t *res) {
  if (status != PS_OK) drop_attempt(c);
  run_clear(c);
  if (c->cbs.done_cb) c->cbs.done_cb(c, status, reason, res, c->cbs.arg);
}

void ps_coord_fail(ps_coord_t *c, int code, const char *reason) {
  if (!c->active) return;
  finish(c, code, reason, NULL);
}

static void send_request(ps_coord_t *c, coord_server_t *srv) {
  Ps__CheckpointRequest req = PS__CHECKPOINT_REQUEST__INIT;
  req.id = c->id;
  req.step = c->step;
  req.dir = c->dir;
  req.job_finished = c->job_finished;
  if (c->cbs.send_cb) c->cbs.send_cb(c, srv->id, &req, c->cbs.arg);
}

/* One try at a step boundary: a fresh id, a directory, a request to every
 * server. Returns PS_OK or a failure with err (the caller ends the run). */
static int start_attempt(ps_coord_t *c, char *err, size_t errlen) {
  c->attempts++;
  c->id = c->next_id++;
  if (!is_bsp(c)) {
    c->step = c->max_clock;
  } else if (c->every_steps > 0) {
    c->step = (c->max_clock / c->every_steps + 1) * c->every_steps;
  } else {
    c->step = c->max_clock + c->margin;
  }
  /* A step written before keeps its directory: an ASP checkpoint (or a
   * retry) of the same step gets a new one. */
  int n = snprintf(c->name, sizeof(c->name), "ckpt-%012" PRIu64, c->step);
  char probe[PS_CHECKPOINT_PATH_MAX + PS_CHECKPOINT_NAME_MAX + 16];
  snprintf(probe, sizeof(probe), "%s/%s/%s", c->base, c->name,
           PS_CHECKPOINT_MANIFEST);
  if (access(probe, F_OK) == 0)
    n = snprintf(c->name, sizeof(c->name), "ckpt-%012" PRIu64 "-%" PRIu64,
                 c->step, c->id);
  int m = snprintf(c->dir, sizeof(c->dir), "%s/%s", c->base, c->name);
  if (n < 0 || m < 0 || (size_t)m >= sizeof(c->dir)) {
    snprintf(err, errlen, "checkpoint directory %s/%s: path too long", c->base,
             c->name);
    return PS_ERR_INVAL;
  }
  int rc = ps_checkpoint_mkdirs(c->dir, err, errlen);
  if (rc != PS_OK) return rc;
  servers_reset(c);
  PS_INFO("checkpoint_requested",
          "id=%" PRIu64 " step=%" PRIu64
          " dir=%s servers=%zu attempt=%d "
          "reason=%s",
          c->id, c->step, c->dir, c->nservers, c->attempts, ps_coord_reason(c));
  for (size_t i = 0; i < c->nservers && c->active; i++)
    send_request(c, &c->servers[i]);
  return PS_OK;
}

int ps_coord_start(ps_coord_t *c, const ps_coord_start_t *st, uint64_t now_ms,
                   char *err, size_t errlen) {
  if (c->active) {
    snprintf(err, errlen,
             "checkpoint %" PRIu64 " of step %" PRIu64
             " is in progress into %s",
             c->id, c->step, c->dir);
    return PS_ERR_REFUSED;
  }
  if (st->base == NULL || st->base[0] != '/' ||
      strlen(st->base) >= sizeof(c->base) - 40) {
    snprintf(err, errlen,
             "checkpoint directory \"%s\" must be an absolute path shorter "
             "than %zu bytes",
             st->base ? st->base : "", sizeof(c->base) - 40);
    return PS_ERR_INVAL;
  }
  if (st->nservers == 0 || st->model == NULL || st->timeout_ms <= 0) {
    snprintf(err, errlen, "no servers, no model or no timeout");
    return PS_ERR_INVAL;
  }
  memset(&c->model, 0, sizeof(c->model));
  c->servers = calloc(st->nservers, sizeof(*c->servers));
  /* A copy of its own, sparse tables included: run_clear frees both
   * arrays, and the caller's model outlives the checkpoint. */
  if (c->servers == NULL || ps_model_copy(&c->model, st->model) != PS_OK) {
    free(c->servers);
    c->servers = NULL;
    snprintf(err, errlen, "out of memory");
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < st->nservers; i++) c->servers[i].id = st->servers[i];
  c->nservers = st->nservers;
  snprintf(c->base, sizeof(c->base), "%s", st->base);
  c->reason = st->reason;
  c->every_steps = st->every_steps;
  c->max_clock = st->max_clock;
  c->margin = COORD_FIRST_MARGIN;
  c->attempts = 0;
  c->job_finished = 0;
  c->mode = st->mode;
  c->view_epoch = st->view_epoch;
  c->timeout_ms = st->timeout_ms;
  c->started_ms = now_ms;
  c->dir[0] = '\0';
  c->active = 1;
  int rc = start_attempt(c, err, errlen);
  if (rc != PS_OK) run_clear(c);
  return rc;
}

static coord_server_t *find_server(ps_coord_t *c, uint32_t id) {
  for (size_t i = 0; i < c->nservers; i++)
    if (c->servers[i].id == id) return &c->servers[i];
  return NULL;
}

static int cmp_file(const void *a, const void *b) {
  const ps_checkpoint_file_t *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Every server's files are durable: the MANIFEST goes last, then LATEST. */
static void complete(ps_coord_t *c, uint64_t now_ms) {
  size_t nfiles = 0;
  uint64_t bytes = 0, write_us = 0;
  for (size_t i = 0; i < c->nservers; i++) {
    nfiles += c->servers[i].nfiles;
    if (c->servers[i].write_us > write_us) write_us = c->servers[i].write_us;
  }
  ps_checkpoint_file_t *files = calloc(nfiles + 1, sizeof(*files));
  if (files == NULL) {
    finish(c, PS_ERR_NOMEM, "out of memory writing the manifest", NULL);
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < c->nservers; i++)
    for (size_t j = 0; j < c->servers[i].nfiles; j++) {
      files[k] = c->servers[i].files[j];
      bytes += files[k].bytes;
      k++;
    }
  qsort(files, nfiles, sizeof(*files), cmp_file);
  uint64_t step = c->step;
  if (!is_bsp(c)) {
    step = UINT64_MAX;
    for (size_t i = 0; i < nfiles; i++)
      if (files[i].clock < step) step = files[i].clock;
    if (nfiles == 0) step = c->step;
  }
  char err[1024];
  if (step != c->step) {
    /* ASP: the step is known only now; the directory takes its name
     * before the MANIFEST makes it a checkpoint. */
    char name[PS_CHECKPOINT_NAME_MAX], dir[PS_CHECKPOINT_PATH_MAX];
    snprintf(name, sizeof(name), "ckpt-%012" PRIu64, step);
    int n = snprintf(dir, sizeof(dir), "%s/%s", c->base, name);
    if (access(dir, F_OK) == 0) {
      snprintf(name, sizeof(name), "ckpt-%012" PRIu64 "-%" PRIu64, step, c->id);
      n = snprintf(dir, sizeof(dir), "%s/%s", c->base, name);
    }
    /* The new entry in base is made durable with LATEST (its write
     * fsyncs base). */
    if (n > 0 && (size_t)n < sizeof(dir) && rename(c->dir, dir) == 0) {
      snprintf(c->name, sizeof(c->name), "%s", name);
      snprintf(c->dir, sizeof(c->dir), "%s", dir);
    } else {
      PS_WARN("checkpoint_rename_failed", "from=%s to=%s err=\"%s\"", c->dir,
              dir, strerror(errno));
    }
  }
  ps_checkpoint_manifest_t m = {
      .id = c->id,
      .step = step,
      .view_epoch = c->view_epoch,
      .mode = c->mode,
      .num_servers = (uint32_t)c->nservers,
      .model = c->model,
      .fingerprint = ps_checkpoint_fingerprint(&c->model),
      .created_unix_ms = unix_ms(),
      .nshards = nfiles,
      .shards = files,
  };
  int rc = ps_checkpoint_manifest_write(c->dir, &m, err, sizeof(err));
  free(files);
  if (rc != PS_OK) {
    char why[1200];
    snprintf(why, sizeof(why), "cannot write the manifest: %s", err);
    finish(c, rc, why, NULL);
    return;
  }
  if (ps_checkpoint_set_latest(c->base, c->name, err, sizeof(err)) != PS_OK)
    /* The checkpoint is complete; only the pointer to it is stale. */
    PS_ERROR("checkpoint_latest_failed", "dir=%s reason=\"%s\"", c->dir, err);
  ps_coord_result_t res;
  memset(&res, 0, sizeof(res));
  res.id = c->id;
  res.step = step;
  snprintf(res.dir, sizeof(res.dir), "%s", c->dir);
  snprintf(res.name, sizeof(res.name), "%s", c->name);
  res.bytes = bytes;
  res.shards = (uint32_t)nfiles;
  res.duration_ms = now_ms - c->started_ms;
  res.write_ms = write_us / 1000;
  res.created_unix_ms = m.created_unix_ms;
  res.attempts = c->attempts;
  res.reason = c->reason;
  c->dir[0] = '\0';
  finish(c, PS_OK, "", &res);
}

void ps_coord_on_reply(ps_coord_t *c, uint32_t node_id,
                       const Ps__CheckpointReply *r, uint64_t now_ms) {
  if (!c->active || r->id != c->id) {
    PS_DEBUG("checkpoint_reply_ignored", "from=%u id=%" PRIu64, node_id, r->id);
    /* A server that finished writing for an attempt given up meanwhile. */
    size_t kept =
        c->ndead < COORD_DEAD_ATTEMPTS ? c->ndead : COORD_DEAD_ATTEMPTS;
    for (size_t i = 0; i < kept && r->written; i++)
      if (c->dead[i].id == r->id) remove_attempt(r->id, c->dead[i].dir);
    return;
  }
  coord_server_t *srv = find_server(c, node_id);
  if (srv == NULL) return;
  const char *msg = r->message ? r->message : "";
  char why[1200];
  if (r->code != PS_OK) {
    if (r->late && is_bsp(c) && !c->job_finished &&
        c->attempts < PS_COORD_MAX_ATTEMPTS) {
      if (r->clock > c->max_clock) c->max_clock = r->clock;
      c->margin *= 2;
      PS_INFO("checkpoint_retry",
              "id=%" PRIu64 " step=%" PRIu64 " server=%u server_clock=%" PRIu64
              " attempt=%d",
              c->id, c->step, node_id, r->clock, c->attempts);
      drop_attempt(c);
      int rc = start_attempt(c, why, sizeof(why));
      if (rc != PS_OK) finish(c, rc, why, NULL);
      return;
    }
    snprintf(why, sizeof(why), "server %u: %s (%s)", node_id, msg,
             ps_err_name(r->code));
    finish(c, r->code < 0 ? r->code : PS_ERR_PEER, why, NULL);
    return;
  }
  if (!r->written) {
    srv->state = SRV_ACCEPTED;
    srv->clock = r->clock;
    return;
  }
  if (srv->state == SRV_WRITTEN) return;
  free(srv->files);
  srv->files = calloc(r->n_shards + 1, sizeof(*srv->files));
  if (srv->files == NULL) {
    finish(c, PS_ERR_NOMEM, "out of memory", NULL);
    return;
  }
  for (size_t i = 0; i < r->n_shards; i++) {
    const Ps__CheckpointShard *s = r->shards[i];
    ps_checkpoint_file_t *f = &srv->files[i];
    snprintf(f->file, sizeof(f->file), "%s", s->file ? s->file : "");
    f->begin = s->begin;
    f->end = s->end;
    f->bytes = s->bytes;
    f->crc32c = s->crc32c;
    f->clock = s->clock;
    f->server_id = node_id;
  }
  srv->nfiles = r->n_shards;
  srv->write_us = r->write_us;
  srv->state = SRV_WRITTEN;
  for (size_t i = 0; i < c->nservers; i++)
    if (c->servers[i].state != SRV_WRITTEN) return;
  complete(c, now_ms);
}

void ps_coord_server_lost(ps_coord_t *c, uint32_t node_id) {
  if (!c->active) return;
  coord_server_t *srv = find_server(c, node_id);
  if (srv == NULL || srv->state == SRV_WRITTEN) return;
  char why[160];
  snprintf(why, sizeof(why),
           "server %u was lost before its shards of step %" PRIu64
           " were written",
           node_id, c->step);
  finish(c, PS_ERR_PEER, why, NULL);
}

void ps_coord_job_finished(ps_coord_t *c) {
  if (!c->active || c->job_finished) return;
  c->job_finished = 1;
  for (size_t i = 0; i < c->nservers && c->active; i++)
    if (c->servers[i].state != SRV_WRITTEN) send_request(c, &c->servers[i]);
}

void ps_coord_tick(ps_coord_t *c, uint64_t now_ms) {
  if (!c->active || now_ms - c->started_ms < (uint64_t)c->timeout_ms) return;
  char why[600];
  int n = snprintf(why, sizeof(why),
                   "timed out after %d ms at step %" PRIu64
                   "; servers not written:",
                   c->timeout_ms, c->step);
  for (size_t i = 0; i < c->nservers && n > 0 && (size_t)n < sizeof(why); i++) {
    const coord_server_t *s = &c->servers[i];
    if (s->state == SRV_WRITTEN) continue;
    n += snprintf(why + n, sizeof(why) - (size_t)n,
                  " %u(%s, clock %" PRIu64 ")", s->id,
                  s->state == SRV_ASKED ? "no answer" : "waiting", s->clock);
  }
  finish(c, PS_ERR_TIMEOUT, why, NULL);
}
