#include "saver.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/log.h"
#include "common/optimizer.h"
#include "common/time.h"

/* One shard of a checkpoint being written: its range, the copy of its state
 * at the step (NULL until taken), and where it went. */
typedef struct {
  uint64_t begin, end, clock;
  int taken;
  float *weights;
  float *state; /* slots x (end - begin), or NULL */
  int slots;
  uint64_t *opt_steps; /* nopt_steps {tensor, count} pairs */
  size_t nopt_steps;
  uint8_t *sparse; /* the encoded sparse section, or NULL */
  size_t sparse_bytes;
  uint8_t *sketch; /* the encoded sketch section, or NULL */
  size_t sketch_bytes;
  char file[PS_CHECKPOINT_NAME_MAX];
  ps_checkpoint_file_stat_t stat;
} snap_t;

enum { JOB_WRITE, JOB_RESTORE };

/* A unit of work for the thread pool. A write job first waits, as the
 * saver's pending job, for its shards to reach the step. */
typedef struct {
  uv_work_t work;
  ps_saver_t *sv;
  int kind;
  uint64_t id, step;
  char dir[PS_CHECKPOINT_PATH_MAX];
  uint64_t fingerprint, view_epoch;
  uint32_t node_id;
  int mode;
  snap_t *snaps;
  size_t nsnaps;
  /* restore */
  ps_model_t model;
  ps_saver_range_t *ranges;
  size_t nranges;
  ps_range_t *parts;
  size_t nparts;
  uint64_t sparse_rows;
  /* results */
  uint64_t bytes;
  uint64_t work_us;
  int status;
  char err[512];
} job_t;

struct ps_saver_s {
  uv_loop_t *loop;
  ps_saver_cbs_t cbs;
  job_t *pending;
  uint64_t last_queued_id;
  int inflight;
  int destroyed;
};

static void job_free(job_t *j) {
  if (j == NULL) return;
  for (size_t i = 0; i < j->nsnaps; i++) {
    free(j->snaps[i].weights);
    free(j->snaps[i].state);
    free(j->snaps[i].opt_steps);
    free(j->snaps[i].sparse);
    free(j->snaps[i].sketch);
  }
  free(j->snaps);
  for (size_t i = 0; j->ranges && i < j->nranges; i++) {
    free(j->ranges[i].weights);
    free(j->ranges[i].state);
    free(j->ranges[i].tensor_steps);
    for (size_t t = 0; j->ranges[i].sparse && t < j->ranges[i].nsparse; t++) {
      free(j->ranges[i].sparse[t].ids);
      free(j->ranges[i].sparse[t].rows);
      free(j->ranges[i].sparse[t].sketch);
    }
    free(j->ranges[i].sparse);
  }
  free(j->ranges);
  free(j->parts);
  ps_model_clear(&j->model);
  free(j);
}

ps_saver_t *ps_saver_new(uv_loop_t *loop, const ps_saver_cbs_t *cbs) {
  ps_saver_t *sv = calloc(1, sizeof(*sv));
  if (sv == NULL) return NULL;
  sv->loop = loop;
  sv->cbs = *cbs;
  return sv;
}

int ps_saver_busy(const ps_saver_t *sv) {
  return sv->inflight > 0;
}

void ps_saver_destroy(ps_saver_t **sv_p) {
  ps_saver_t *sv = *sv_p;
  if (sv == NULL) return;
  *sv_p = NULL;
  job_free(sv->pending);
  sv->pending = NULL;
  sv->destroyed = 1;
  /* Work on the pool still points at sv; the last one frees it. */
  if (sv->inflight == 0) free(sv);
}

/* ---- replies --------------------------------------------------------- */

static void reply(ps_saver_t *sv, uint64_t id, int code, const char *message,
                  uint64_t clock, int written, int late, const job_t *j) {
  Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
  r.id = id;
  r.code = code;
  r.message = (char *)(message ? message : "");
  r.clock = clock;
  r.written = written;
  r.late = late;
  Ps__CheckpointShard *shards = NULL;
  Ps__CheckpointShard **ptrs = NULL;
  if (written && j && j->nsnaps > 0) {
    shards = calloc(j->nsnaps, sizeof(*shards));
    ptrs = calloc(j->nsnaps, sizeof(*ptrs));
    if (shards == NULL || ptrs == NULL) {
      free(shards);
      free(ptrs);
      reply(sv, id, PS_ERR_NOMEM, "server out of memory for its reply", clock,
            0, 0, NULL);
      return;
    }
    for (size_t i = 0; i < j->nsnaps; i++) {
      const snap_t *s = &j->snaps[i];
      ps__checkpoint_shard__init(&shards[i]);
      shards[i].file = (char *)s->file;
      shards[i].begin = s->begin;
      shards[i].end = s->end;
      shards[i].bytes = s->stat.bytes;
      shards[i].crc32c = s->stat.crc32c;
      shards[i].clock = s->clock;
      shards[i].server_id = j->node_id;
      ptrs[i] = &shards[i];
    }
    r.n_shards = j->nsnaps;
    r.shards = ptrs;
  }
  if (j) r.write_us = j->work_us;
  if (sv->cbs.reply_cb) sv->cbs.reply_cb(sv, &r, sv->cbs.arg);
  free(shards);
  free(ptrs);
}

/* ---- writing --------------------------------------------------------- */

static void write_work(uv_work_t *w) {
  job_t *j = w->data;
  uint64_t t0 = ps_now_ns();
  j->status = ps_checkpoint_mkdirs(j->dir, j->err, sizeof(j->err));
  for (size_t i = 0; i < j->nsnaps && j->status == PS_OK; i++) {
    snap_t *s = &j->snaps[i];
    snprintf(s->file, sizeof(s->file), "shard-%llu-%llu.psck",
             (unsigned long long)s->begin, (unsigned long long)s->end);
    ps_checkpoint_shard_meta_t meta = {
        .fingerprint = j->fingerprint,
        .begin = s->begin,
        .end = s->end,
        .clock = s->clock,
        .view_epoch = j->view_epoch,
        .checkpoint_id = j->id,
        .mode = j->mode,
        .state_slots = s->slots,
    };
    j->status = ps_checkpoint_shard_write_sparse(
        j->dir, s->file, &meta, s->weights, s->state, s->opt_steps,
        s->nopt_steps, s->sparse, s->sparse_bytes, s->sketch, s->sketch_bytes,
        &s->stat, j->err, sizeof(j->err));
    j->bytes += s->stat.bytes;
    /* The copy is on disk: give the memory back before the next shard. */
    free(s->weights);
    free(s->state);
    free(s->sparse);
    free(s->sketch);
    s->weights = s->state = NULL;
    s->sparse = s->sketch = NULL;
  }
  j->work_us = (ps_now_ns() - t0) / 1000;
}

/* The loop-thread end of a job: NULL if the saver was destroyed meanwhile
 * (the job and, with the last job, the saver are freed here); else the job,
 * with a thread-pool failure folded into its status. */
static job_t *job_finished(uv_work_t *w, int status) {
  job_t *j = w->data;
  ps_saver_t *sv = j->sv;
  sv->inflight--;
  if (sv->destroyed) {
    job_free(j);
    if (sv->inflight == 0) free(sv);
    return NULL;
  }
  if (status != 0 && j->status == PS_OK) {
    j->status = PS_ERR_IO;
    snprintf(j->err, sizeof(j->err), "thread pool: %s", uv_strerror(status));
  }
  return j;
}

static void write_done(uv_work_t *w, int status) {
  job_t *j = job_finished(w, status);
  if (j == NULL) return;
  ps_saver_t *sv = j->sv;
  double ms = (double)j->work_us / 1e3;
  if (j->status == PS_OK) {
    PS_INFO("checkpoint_shards_written",
            "id=%llu step=%llu dir=%s files=%zu bytes=%llu ms=%.1f mbps=%.1f",
            (unsigned long long)j->id, (unsigned long long)j->step, j->dir,
            j->nsnaps, (unsigned long long)j->bytes, ms,
            ms > 0 ? (double)j->bytes / 1e6 / (ms / 1e3) : 0.0);
    reply(sv, j->id, PS_OK, "", j->step, 1, 0, j);
  } else {
    PS_ERROR("checkpoint_write_failed",
             "id=%llu step=%llu dir=%s err=%s reason=\"%s\"",
             (unsigned long long)j->id, (unsigned long long)j->step, j->dir,
             ps_err_name(j->status), j->err);
    reply(sv, j->id, j->status, j->err, j->step, 0, 0, NULL);
  }
  job_free(j);
}

static void queue_write(ps_saver_t *sv, job_t *j) {
  if (sv->pending == j) sv->pending = NULL;
  j->work.data = j;
  int rc = uv_queue_work(sv->loop, &j->work, write_work, write_done);
  if (rc != 0) {
    char why[128];
    snprintf(why, sizeof(why), "cannot queue the write: %s", uv_strerror(rc));
    reply(sv, j->id, PS_ERR_IO, why, j->step, 0, 0, NULL);
    job_free(j);
    return;
  }
  sv->last_queued_id = j->id;
  sv->inflight++;
}

static int all_taken(const job_t *j) {
  for (size_t i = 0; i < j->nsnaps; i++)
    if (!j->snaps[i].taken) return 0;
  return 1;
}

static void put_u32le(uint8_t *p, uint32_t v) {
  memcpy(p, &v, 4); /* little-endian hosts only: see server_int.h */
}
static void put_u64le(uint8_t *p, uint64_t v) {
  memcpy(p, &v, 8);
}

/* Encodes the rows of tables as a sparse section
 * (PS_CHECKPOINT_SECTION_SPARSE) into s. */
static int encode_sparse(snap_t *s, ps_sparse_table_t *const *tables,
                         size_t ntables) {
  size_t bytes = 0;
  for (size_t t = 0; t < ntables; t++) {
    uint64_t n = ps_sparse_table_rows(tables[t]);
    if (n == 0) continue;
    bytes += 16 + n * (sizeof(uint64_t) +
                       ps_sparse_table_row_floats(tables[t]) * sizeof(float));
  }
  if (bytes == 0) return PS_OK;
  uint8_t *p = malloc(bytes);
  if (p == NULL) return PS_ERR_NOMEM;
  s->sparse = p;
  s->sparse_bytes = bytes;
  for (size_t t = 0; t < ntables; t++) {
    uint64_t n = ps_sparse_table_rows(tables[t]);
    if (n == 0) continue;
    size_t rf = ps_sparse_table_row_floats(tables[t]);
    put_u32le(p, (uint32_t)t);
    put_u32le(p + 4, (uint32_t)rf);
    put_u64le(p + 8, n);
    uint8_t *ids = p + 16, *rows = ids + n * sizeof(uint64_t);
    /* Least recently pushed first, so a restore keeps the recency order. */
    uint64_t at = ps_sparse_table_lru_first(tables[t]);
    for (uint64_t i = 0; i < n;
         i++, at = ps_sparse_table_lru_next(tables[t], at)) {
      uint64_t id;
      const float *row = ps_sparse_table_row_at(tables[t], at, &id);
      memcpy(ids + i * sizeof(uint64_t), &id, sizeof(id));
      memcpy(rows + i * rf * sizeof(float), row, rf * sizeof(float));
    }
    p = rows + n * rf * sizeof(float);
  }
  return PS_OK;
}

/* Encodes the admission sketches of tables (those that have one) as a
 * sketch section (PS_CHECKPOINT_SECTION_SKETCH) into s. */
static int encode_sketch(snap_t *s, ps_sparse_table_t *const *tables,
                         size_t ntables) {
  size_t bytes = 0;
  for (size_t t = 0; t < ntables; t++) {
    size_t n = ps_sparse_table_sketch_cells(tables[t]);
    if (n) bytes += 8 + n * sizeof(uint32_t);
  }
  if (bytes == 0) return PS_OK;
  uint8_t *p = malloc(bytes);
  if (p == NULL) return PS_ERR_NOMEM;
  s->sketch = p;
  s->sketch_bytes = bytes;
  for (size_t t = 0; t < ntables; t++) {
    size_t n = ps_sparse_table_sketch_cells(tables[t]);
    if (n == 0) continue;
    put_u32le(p, (uint32_t)t);
    put_u32le(p + 4, (uint32_t)n);
    memcpy(p + 8, ps_sparse_table_sketch(tables[t]), n * sizeof(uint32_t));
    p += 8 + n * sizeof(uint32_t);
  }
  return PS_OK;
}

/* Copies the shard's weights, optimizer state and update counts (and its
 * range's sparse rows, with their optimizer state, and the tables'
 * admission sketches) as they are now. */
static int snapshot(job_t *j, snap_t *s, const ps_shard_t *shard,
                    ps_sparse_table_t *const *tables, size_t ntables, char *err,
                    size_t errlen) {
  if (tables && (encode_sparse(s, tables, ntables) != PS_OK ||
                 encode_sketch(s, tables, ntables) != PS_OK)) {
    snprintf(err, errlen, "no memory to copy the sparse rows of [%llu,%llu)",
             (unsigned long long)s->begin, (unsigned long long)s->end);
    return PS_ERR_NOMEM;
  }
  size_t n = (size_t)(s->end - s->begin);
  s->weights = malloc(n * sizeof(float));
  const float *st = ps_shard_opt_state(shard, &s->slots);
  if (st) s->state = malloc(n * (size_t)s->slots * sizeof(float));
  size_t nseg;
  const ps_shard_segment_t *seg = ps_shard_segments(shard, &nseg);
  const uint64_t *steps = ps_shard_opt_steps(shard);
  s->opt_steps = malloc((2 * nseg + 1) * sizeof(uint64_t));
  if (s->weights == NULL || (st && s->state == NULL) || s->opt_steps == NULL) {
    snprintf(err, errlen, "no memory to copy shard [%llu,%llu) (%zu keys)",
             (unsigned long long)s->begin, (unsigned long long)s->end, n);
    return PS_ERR_NOMEM;
  }
  int rc = ps_shard_read(shard, s->begin, s->end - s->begin, s->weights, err,
                         errlen);
  if (rc != PS_OK) return rc;
  if (st) memcpy(s->state, st, n * (size_t)s->slots * sizeof(float));
  for (size_t i = 0; i < nseg; i++) {
    s->opt_steps[2 * i] = seg[i].tensor;
    s->opt_steps[2 * i + 1] = steps[i];
  }
  s->nopt_steps = nseg;
  s->clock = ps_shard_clock(shard);
  s->taken = 1;
  PS_DEBUG("checkpoint_snapshot", "id=%llu range=[%llu,%llu) clock=%llu",
           (unsigned long long)j->id, (unsigned long long)s->begin,
           (unsigned long long)s->end, (unsigned long long)s->clock);
  return PS_OK;
}

static void fail_job(ps_saver_t *sv, job_t *j, int code, const char *why) {
  PS_WARN("checkpoint_refused", "id=%llu step=%llu err=%s reason=\"%s\"",
          (unsigned long long)j->id, (unsigned long long)j->step,
          ps_err_name(code), why);
  reply(sv, j->id, code, why, j->step, 0, 0, NULL);
  if (sv->pending == j) sv->pending = NULL;
  job_free(j);
}

/* The job finished: no step will come, so a shard short of the step never
 * gets there. */
static int check_finished(ps_saver_t *sv, job_t *j) {
  for (size_t i = 0; i < j->nsnaps; i++) {
    const snap_t *s = &j->snaps[i];
    if (s->taken) continue;
    char why[256];
    snprintf(why, sizeof(why),
             "the job finished with shard [%llu,%llu) before step %llu",
             (unsigned long long)s->begin, (unsigned long long)s->end,
             (unsigned long long)j->step);
    fail_job(sv, j, PS_ERR_REFUSED, why);
    return 1;
  }
  return 0;
}

void ps_saver_request(ps_saver_t *sv, const Ps__CheckpointRequest *req,
                      const ps_saver_ctx_t *ctx) {
  if (sv->pending && sv->pending->id == req->id &&
      sv->pending->step == req->step) {
    if (req->job_finished) check_finished(sv, sv->pending);
    return;
  }
  /* Already copied and on its way to disk: the written reply follows. */
  if (req->id == sv->last_queued_id) return;
  if (sv->pending) {
    PS_INFO("checkpoint_superseded", "id=%llu step=%llu by_id=%llu",
            (unsigned long long)sv->pending->id,
            (unsigned long long)sv->pending->step, (unsigned long long)req->id);
    job_free(sv->pending);
    sv->pending = NULL;
  }
  const char *dir = req->dir ? req->dir : "";
  job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) {
    reply(sv, req->id, PS_ERR_NOMEM, "server out of memory", 0, 0, 0, NULL);
    return;
  }
  j->sv = sv;
  j->kind = JOB_WRITE;
  j->id = req->id;
  j->step = req->step;
  j->fingerprint = ctx->fingerprint;
  j->view_epoch = ctx->view_epoch;
  j->node_id = ctx->node_id;
  j->mode = PS__CONSISTENCY_MODE__MODE_BSP;
  if (dir[0] != '/' || strlen(dir) >= sizeof(j->dir)) {
    fail_job(sv, j, PS_ERR_INVAL,
             "checkpoint directory must be an absolute path shorter than "
             "1024 bytes");
    return;
  }
  snprintf(j->dir, sizeof(j->dir), "%s", dir);
  j->snaps = calloc(ctx->nshards + 1, sizeof(*j->snaps));
  if (j->snaps == NULL) {
    fail_job(sv, j, PS_ERR_NOMEM, "server out of memory");
    return;
  }
  j->nsnaps = ctx->nshards;
  uint64_t lo = UINT64_MAX, hi = 0;
  for (size_t i = 0; i < ctx->nshards; i++) {
    const ps_shard_t *sh = ctx->shards[i];
    j->snaps[i].begin = ps_shard_begin(sh);
    j->snaps[i].end = ps_shard_end(sh);
    j->mode = ps_shard_mode(sh);
    uint64_t c = ps_shard_clock(sh);
    if (c < lo) lo = c;
    if (c > hi) hi = c;
  }
  if (ctx->nshards == 0) lo = hi = req->step;
  /* BSP and SSP: each shard is written at exactly the step. */
  int bsp = j->mode != PS__CONSISTENCY_MODE__MODE_ASP;
  if (bsp && hi > req->step) {
    char why[128];
    snprintf(why, sizeof(why), "the server is at step %llu, past step %llu",
             (unsigned long long)hi, (unsigned long long)req->step);
    PS_INFO("checkpoint_late", "id=%llu step=%llu clock=%llu",
            (unsigned long long)req->id, (unsigned long long)req->step,
            (unsigned long long)hi);
    reply(sv, req->id, PS_ERR_REFUSED, why, hi, 0, 1, NULL);
    job_free(j);
    return;
  }
  reply(sv, j->id, PS_OK, "", lo, 0, 0, NULL);
  PS_INFO("checkpoint_accepted", "id=%llu step=%llu clock=%llu dir=%s",
          (unsigned long long)j->id, (unsigned long long)j->step,
          (unsigned long long)lo, j->dir);
  for (size_t i = 0; i < ctx->nshards; i++) {
    const ps_shard_t *sh = ctx->shards[i];
    if (bsp && ps_shard_clock(sh) != req->step) continue;
    char why[256];
    int rc = snapshot(j, &j->snaps[i], sh, ctx->sparse ? ctx->sparse[i] : NULL,
                      ctx->nsparse, why, sizeof(why));
    if (rc != PS_OK) {
      fail_job(sv, j, rc, why);
      return;
    }
  }
  if (!bsp) j->step = lo; /* ASP: the files say what they hold */
  if (all_taken(j)) {
    queue_write(sv, j);
    return;
  }
  sv->pending = j;
  if (req->job_finished) check_finished(sv, j);
}

void ps_saver_shard_applied(ps_saver_t *sv, const ps_shard_t *shard,
                            ps_sparse_table_t *const *tables, size_t ntables) {
  job_t *j = sv->pending;
  if (j == NULL) return;
  uint64_t begin = ps_shard_begin(shard), end = ps_shard_end(shard);
  snap_t *s = NULL;
  for (size_t i = 0; i < j->nsnaps; i++)
    if (j->snaps[i].begin == begin && j->snaps[i].end == end) s = &j->snaps[i];
  if (s == NULL || s->taken) return;
  uint64_t clock = ps_shard_clock(shard);
  if (clock < j->step) return;
  char why[256];
  if (clock > j->step) {
    /* Every apply comes through here, one step at a time; reaching this
     * means one did not. */
    snprintf(why, sizeof(why),
             "shard [%llu,%llu) moved from before step %llu to %llu unseen",
             (unsigned long long)begin, (unsigned long long)end,
             (unsigned long long)j->step, (unsigned long long)clock);
    fail_job(sv, j, PS_ERR_PEER, why);
    return;
  }
  int rc = snapshot(j, s, shard, tables, ntables, why, sizeof(why));
  if (rc != PS_OK) {
    fail_job(sv, j, rc, why);
    return;
  }
  if (all_taken(j)) queue_write(sv, j);
}

/* ---- restoring ------------------------------------------------------- */

static uint32_t get_u32le(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get_u64le(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* Appends row id (rf floats) to rows, growing it. */
static int rows_append(ps_saver_rows_t *r, uint64_t *cap, size_t rf,
                       uint64_t id, const uint8_t *row) {
  if (r->nrows == *cap) {
    uint64_t c = *cap ? *cap * 2 : 1024;
    uint64_t *ids = realloc(r->ids, c * sizeof(*ids));
    if (ids == NULL) return PS_ERR_NOMEM;
    r->ids = ids;
    float *rows = realloc(r->rows, c * rf * sizeof(float));
    if (rows == NULL) return PS_ERR_NOMEM;
    r->rows = rows;
    *cap = c;
  }
  r->ids[r->nrows] = id;
  memcpy(r->rows + r->nrows * rf, row, rf * sizeof(float));
  r->nrows++;
  return PS_OK;
}

/* Files the rows of one shard file's sparse section (bytes, from path)
 * under the loaded ranges that are their partitions now; caps[k * nsparse
 * + t] is the room of ranges[k].sparse[t]. Checks every record against the
 * model. */
static int restore_sparse_section(job_t *j, const char *path, const uint8_t *p,
                                  uint64_t bytes, uint64_t *caps) {
  const ps_model_t *m = &j->model;
  uint64_t off = 0;
  while (off < bytes) {
    if (bytes - off < 16) {
      snprintf(j->err, sizeof(j->err),
               "%.200s: sparse section: %llu bytes left, a record header is 16",
               path, (unsigned long long)(bytes - off));
      return PS_ERR_FORMAT;
    }
    uint32_t t = get_u32le(p + off), rf = get_u32le(p + off + 4);
    uint64_t n = get_u64le(p + off + 8);
    size_t want_rf =
        t < m->nsparse ? ps_sparse_row_floats(&m->sparse[t], m) : 0;
    uint64_t per = sizeof(uint64_t) + (uint64_t)rf * sizeof(float);
    if (t >= m->nsparse || rf != want_rf || n == 0 ||
        n > (bytes - off - 16) / per) {
      snprintf(j->err, sizeof(j->err),
               "%.200s: sparse section: a record of table %u with %llu rows "
               "of %u floats does not fit the model (%zu tables, %zu floats "
               "per row) or the %llu bytes left",
               path, t, (unsigned long long)n, rf, m->nsparse, want_rf,
               (unsigned long long)(bytes - off - 16));
      return PS_ERR_FORMAT;
    }
    const uint8_t *ids = p + off + 16, *rows = ids + n * sizeof(uint64_t);
    uint64_t salt = m->sparse[t].salt;
    for (uint64_t i = 0; i < n; i++) {
      uint64_t id = get_u64le(ids + i * sizeof(uint64_t));
      const ps_range_t *part =
          &j->parts[ps_sparse_part_of(salt, id, (uint32_t)j->nparts)];
      for (size_t k = 0; k < j->nranges; k++) {
        ps_saver_range_t *r = &j->ranges[k];
        if (r->begin != part->begin || r->end != part->end) continue;
        if (rows_append(&r->sparse[t], &caps[k * m->nsparse + t], rf, id,
                        rows + i * rf * sizeof(float)) != PS_OK) {
          snprintf(j->err, sizeof(j->err), "no memory for sparse rows");
          return PS_ERR_NOMEM;
        }
        j->sparse_rows++;
      }
    }
    off += 16 + n * per;
  }
  return PS_OK;
}

/* Files one shard file's sketch section (bytes, from path, the file of
 * range [fbegin, fend)): onto the same cut (exact), to the loaded range
 * that is the file's; onto another, added into every loaded range's
 * (saturating), so that every id counts at least the pushes it had: rows
 * are admitted early, never late. Every copy of a range loads the same. */
static int restore_sketch_section(job_t *j, const char *path, const uint8_t *p,
                                  uint64_t bytes, int exact, uint64_t fbegin,
                                  uint64_t fend) {
  uint64_t off = 0;
  while (off < bytes) {
    uint32_t t = bytes - off >= 8 ? get_u32le(p + off) : 0;
    uint32_t n = bytes - off >= 8 ? get_u32le(p + off + 4) : 0;
    if (bytes - off < 8 || t >= j->model.nsparse || n == 0 ||
        n > (bytes - off - 8) / sizeof(uint32_t)) {
      snprintf(j->err, sizeof(j->err),
               "%.200s: sketch section: a record of table %u with %u cells "
               "does not fit the model (%zu tables) or the %llu bytes left",
               path, t, n, j->model.nsparse, (unsigned long long)(bytes - off));
      return PS_ERR_FORMAT;
    }
    const uint8_t *cells = p + off + 8;
    for (size_t k = 0; k < j->nranges; k++) {
      ps_saver_range_t *r = &j->ranges[k];
      if (exact && (r->begin != fbegin || r->end != fend)) continue;
      ps_saver_rows_t *rows = &r->sparse[t];
      if (rows->sketch == NULL) {
        rows->sketch = calloc(n, sizeof(uint32_t));
        if (rows->sketch == NULL) return PS_ERR_NOMEM;
        rows->sketch_cells = n;
      } else if (rows->sketch_cells != n) {
        snprintf(j->err, sizeof(j->err),
                 "%.200s: sketch section: table %u has %u cells, another "
                 "file's %zu",
                 path, t, n, rows->sketch_cells);
        return PS_ERR_FORMAT;
      }
      for (uint32_t i = 0; i < n; i++) {
        uint32_t v = get_u32le(cells + (size_t)i * sizeof(uint32_t));
        uint32_t sum = rows->sketch[i] + v;
        rows->sketch[i] = sum < v ? UINT32_MAX : sum;
      }
    }
    off += 8 + (uint64_t)n * sizeof(uint32_t);
  }
  return PS_OK;
}

/* 1 when the checkpoint was cut as the view being restored: every shard
 * file is the file of one of its sparse partitions, and there are as many
 * (so a row's partition is the same in both). */
static int same_cut(const job_t *j, const ps_checkpoint_manifest_t *m) {
  if (m->nshards != j->nparts) return 0;
  for (size_t i = 0; i < m->nshards; i++) {
    int found = 0;
    for (size_t k = 0; k < j->nparts && !found; k++)
      found = j->parts[k].begin == m->shards[i].begin &&
              j->parts[k].end == m->shards[i].end;
    if (!found) return 0;
  }
  return 1;
}

/* Every shard file's sparse rows, each to the loaded range that is its
 * partition in the view being restored, and the tables' admission
 * sketches. */
static int restore_sparse(job_t *j, const ps_checkpoint_manifest_t *m) {
  size_t ns = j->model.nsparse;
  if (ns == 0 || j->nranges == 0) return PS_OK;
  if (j->nparts == 0) {
    snprintf(j->err, sizeof(j->err),
             "the view has no dense range to hold sparse rows");
    return PS_ERR_INVAL;
  }
  uint64_t *caps = calloc(j->nranges * ns, sizeof(*caps));
  if (caps == NULL) return PS_ERR_NOMEM;
  int rc = PS_OK, exact = same_cut(j, m);
  for (size_t k = 0; k < j->nranges && rc == PS_OK; k++) {
    j->ranges[k].sparse = calloc(ns, sizeof(*j->ranges[k].sparse));
    j->ranges[k].nsparse = ns;
    if (j->ranges[k].sparse == NULL) rc = PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < m->nshards && rc == PS_OK; i++) {
    char path[PS_CHECKPOINT_PATH_MAX + PS_CHECKPOINT_NAME_MAX + 2];
    snprintf(path, sizeof(path), "%s/%s", j->dir, m->shards[i].file);
    ps_checkpoint_shard_t sh;
    rc = ps_checkpoint_shard_read(path, &sh, j->err, sizeof(j->err));
    if (rc != PS_OK) break;
    j->bytes += sh.stat.bytes;
    if (sh.stat.bytes != m->shards[i].bytes ||
        sh.stat.crc32c != m->shards[i].crc32c) {
      snprintf(j->err, sizeof(j->err),
               "%.200s: %llu bytes with CRC32C 0x%08x, the manifest says "
               "%llu bytes with 0x%08x",
               path, (unsigned long long)sh.stat.bytes, sh.stat.crc32c,
               (unsigned long long)m->shards[i].bytes, m->shards[i].crc32c);
      rc = PS_ERR_FORMAT;
    }
    if (rc == PS_OK && sh.sparse)
      rc = restore_sparse_section(j, path, sh.sparse, sh.sparse_bytes, caps);
    if (rc == PS_OK && sh.sketch)
      rc = restore_sketch_section(j, path, sh.sketch, sh.sketch_bytes, exact,
                                  sh.meta.begin, sh.meta.end);
    ps_checkpoint_shard_clear(&sh);
  }
  if (rc == PS_ERR_NOMEM && j->err[0] == '\0')
    snprintf(j->err, sizeof(j->err), "no memory for sparse rows");
  free(caps);
  return rc;
}

static void restore_work(uv_work_t *w) {
  job_t *j = w->data;
  uint64_t t0 = ps_now_ns();
  ps_checkpoint_manifest_t m;
  j->status = ps_checkpoint_manifest_read(j->dir, &m, j->err, sizeof(j->err));
  if (j->status != PS_OK) goto out;
  if (m.fingerprint != ps_checkpoint_fingerprint(&j->model)) {
    j->status = PS_ERR_FORMAT;
    snprintf(j->err, sizeof(j->err),
             "%.300s: the checkpoint was written for another model than the "
             "job's (fingerprint %016llx, the job's %016llx)",
             j->dir, (unsigned long long)m.fingerprint,
             (unsigned long long)ps_checkpoint_fingerprint(&j->model));
    goto out;
  }
  if (m.step != j->step) {
    j->status = PS_ERR_FORMAT;
    snprintf(j->err, sizeof(j->err),
             "%.300s: the checkpoint is at step %llu, the job restores step "
             "%llu",
             j->dir, (unsigned long long)m.step, (unsigned long long)j->step);
    goto out;
  }
  size_t slots = (size_t)ps_model_state_slots(&j->model);
  for (size_t i = 0; i < j->nranges && j->status == PS_OK; i++) {
    ps_saver_range_t *r = &j->ranges[i];
    size_t n = (size_t)(r->end - r->begin);
    r->clock = m.step;
    r->weights = malloc(n * sizeof(float));
    if (slots) r->state = malloc(n * slots * sizeof(float));
    r->tensor_steps = calloc(j->model.ntensors + 1, sizeof(uint64_t));
    if (r->weights == NULL || (slots && r->state == NULL) ||
        r->tensor_steps == NULL) {
      j->status = PS_ERR_NOMEM;
      snprintf(j->err, sizeof(j->err), "no memory to restore %zu keys", n);
      break;
    }
    uint64_t bytes = 0;
    j->status = ps_checkpoint_load_range(j->dir, &m, r->begin, r->end,
                                         r->weights, r->state, r->tensor_steps,
                                         &bytes, j->err, sizeof(j->err));
    j->bytes += bytes;
  }
  if (j->status == PS_OK) j->status = restore_sparse(j, &m);
  ps_checkpoint_manifest_clear(&m);
out:
  j->work_us = (ps_now_ns() - t0) / 1000;
}

static void restore_done(uv_work_t *w, int status) {
  job_t *j = job_finished(w, status);
  if (j == NULL) return;
  ps_saver_t *sv = j->sv;
  double ms = (double)j->work_us / 1e3;
  if (j->status == PS_OK)
    PS_INFO("checkpoint_loaded",
            "dir=%s step=%llu ranges=%zu sparse_rows=%llu bytes_read=%llu "
            "ms=%.1f mbps=%.1f",
            j->dir, (unsigned long long)j->step, j->nranges,
            (unsigned long long)j->sparse_rows, (unsigned long long)j->bytes,
            ms, ms > 0 ? (double)j->bytes / 1e6 / (ms / 1e3) : 0.0);
  if (sv->cbs.restored_cb)
    sv->cbs.restored_cb(sv, j->status, j->err, j->ranges, j->nranges,
                        sv->cbs.arg);
  job_free(j);
}

int ps_saver_restore(ps_saver_t *sv, const char *dir, const ps_model_t *model,
                     uint64_t step, const ps_range_t *ranges, size_t n,
                     const ps_range_t *parts, size_t nparts) {
  if (dir == NULL || strlen(dir) >= PS_CHECKPOINT_PATH_MAX) return PS_ERR_INVAL;
  job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) return PS_ERR_NOMEM;
  j->sv = sv;
  j->kind = JOB_RESTORE;
  j->step = step;
  snprintf(j->dir, sizeof(j->dir), "%s", dir);
  /* A deep copy: the view the model lives in may be replaced meanwhile. */
  j->ranges = calloc(n + 1, sizeof(*j->ranges));
  j->parts = calloc(nparts + 1, sizeof(*j->parts));
  if (j->ranges == NULL || j->parts == NULL ||
      ps_model_copy(&j->model, model) != PS_OK) {
    job_free(j);
    return PS_ERR_NOMEM;
  }
  if (nparts) memcpy(j->parts, parts, nparts * sizeof(*parts));
  j->nparts = nparts;
  for (size_t i = 0; i < n; i++) {
    j->ranges[i].begin = ranges[i].begin;
    j->ranges[i].end = ranges[i].end;
  }
  j->nranges = n;
  j->work.data = j;
  int rc = uv_queue_work(sv->loop, &j->work, restore_work, restore_done);
  if (rc != 0) {
    job_free(j);
    return PS_ERR_IO;
  }
  sv->inflight++;
  return PS_OK;
}
