/* Checkpoints from the scheduler's side (scheduler/coordinator.h takes
 * them): starting one on psctl's word or periodically, answering psctl,
 * recording the latest, and verifying the one --restore names. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/sched_int.h"

#define SCHED_CKPT_TIMEOUT_MS 120000
/* After a failed periodic checkpoint, the next waits this long, so a full
 * disk does not turn into a request storm. */
#define SCHED_CKPT_BACKOFF_MS 5000

/* ---- checkpoints (issue #4) ----------------------------------------- */

static void waiters_answer(ps_sched_t *s, int status, const char *reason,
                           Ps__CheckpointInfo *info) {
  void *sock = ps__sched_socket(s);
  for (size_t i = 0; i < s->nwaiters && sock; i++) {
    zmq_msg_t route;
    if (zmq_msg_init_size(&route, s->waiters[i].route_len) != 0) continue;
    memcpy(zmq_msg_data(&route), s->waiters[i].route, s->waiters[i].route_len);
    Ps__Envelope env;
    ps__sched_envelope_init(s, &env, s->waiters[i].request_id);
    Ps__Error e = PS__ERROR__INIT;
    if (status == PS_OK) {
      env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_INFO;
      env.checkpoint_info = info;
    } else {
      e.code = status;
      e.message = (char *)reason;
      env.body_case = PS__ENVELOPE__BODY_ERROR;
      env.error = &e;
    }
    ps_msg_send(sock, &route, &env, NULL, 0);
    zmq_msg_close(&route);
  }
  s->nwaiters = 0;
}

void ps__sched_coord_send_cb(ps_coord_t *c, uint32_t node_id,
                             Ps__CheckpointRequest *req, void *arg) {
  ps_sched_t *s = arg;
  sched_node_t *n = ps__sched_node_by_id(s, node_id);
  if (n == NULL) return;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_REQUEST;
  env.checkpoint_request = req;
  ps__sched_send_to_node(s, n, &env);
}

void ps__sched_coord_done_cb(ps_coord_t *c, int status, const char *reason,
                             const ps_coord_result_t *res, void *arg) {
  ps_sched_t *s = arg;
  uint64_t now = ps_now_ms();
  s->ckpt_last_ms = now;
  if (status == PS_OK) {
    s->stats.ckpt_ok++;
    s->has_last = 1;
    ps__checkpoint_info__init(&s->last);
    s->last.id = res->id;
    s->last.step = res->step;
    s->last.bytes = res->bytes;
    s->last.duration_ms = res->duration_ms;
    s->last.write_ms = res->write_ms;
    s->last.shards = res->shards;
    s->last.created_unix_ms = res->created_unix_ms;
    snprintf(s->last_dir, sizeof(s->last_dir), "%s", res->dir);
    snprintf(s->last_reason, sizeof(s->last_reason), "%s",
             res->reason ? res->reason : "");
    s->last.dir = s->last_dir;
    s->last.reason = s->last_reason;
    s->last_done_ms = now;
    /* ms: from the request to the MANIFEST, waiting for the step included;
     * write_ms: the slowest server's copy-to-durable time, which the rate
     * is over (the servers write in parallel). */
    double secs = (double)(res->write_ms ? res->write_ms : 1) / 1e3;
    PS_INFO("checkpoint_written",
            "id=%" PRIu64 " step=%" PRIu64 " dir=%s shards=%u bytes=%" PRIu64
            " ms=%" PRIu64 " write_ms=%" PRIu64
            " mbps=%.1f attempts=%d reason=%s",
            res->id, res->step, res->dir, res->shards, res->bytes,
            res->duration_ms, res->write_ms, (double)res->bytes / 1e6 / secs,
            res->attempts, s->last_reason);
    ps__sched_state_save(s);
    Ps__CheckpointInfo info = s->last;
    info.age_ms = 0;
    waiters_answer(s, PS_OK, "", &info);
    /* The next periodic one is asked for now, well before its step. */
    if (!s->ending && !s->finished) ps__sched_ckpt_periodic(s, now);
  } else {
    /* At the end of a job, a step that never came is no failure. */
    if (s->ending || s->finished)
      PS_INFO("checkpoint_cancelled", "err=%s reason=\"%s\"",
              ps_err_name(status), reason);
    else
      PS_ERROR("checkpoint_failed", "err=%s reason=\"%s\"", ps_err_name(status),
               reason);
    if (!s->ending && !s->finished) s->stats.ckpt_failed++;
    s->ckpt_retry_ms = now + SCHED_CKPT_BACKOFF_MS;
    if (!s->ending && !s->finished) {
      /* For psctl status: a failure nobody waited for is still seen. */
      s->has_failure = 1;
      ps__checkpoint_info__init(&s->failure);
      s->failure.id = ps_coord_id(c);
      s->failure.step = ps_coord_step(c);
      s->failure.code = status;
      s->failure.created_unix_ms = ps__sched_unix_now_ms();
      s->failure.duration_ms = now - ps_coord_started_ms(c);
      snprintf(s->failure_dir, sizeof(s->failure_dir), "%s", ps_coord_dir(c));
      snprintf(s->failure_reason, sizeof(s->failure_reason), "%s",
               ps_coord_reason(c));
      snprintf(s->failure_error, sizeof(s->failure_error), "%s", reason);
      s->failure.dir = s->failure_dir;
      s->failure.reason = s->failure_reason;
      s->failure.error = s->failure_error;
      s->failure_ms = now;
    }
    waiters_answer(s, status, reason, NULL);
  }
  if (s->ending && !s->finished) ps_sched_stop(s, s->end_reason);
}

/* Starts a checkpoint into base. Every server of the view must be alive:
 * a checkpoint that misses a range is no checkpoint. */
static int ckpt_start(ps_sched_t *s, const char *base, const char *reason,
                      uint64_t every_steps, char *err, size_t errlen) {
  uint32_t *ids = calloc(s->nnodes + 1, sizeof(*ids));
  if (ids == NULL) {
    snprintf(err, errlen, "scheduler out of memory");
    return PS_ERR_NOMEM;
  }
  size_t n = 0;
  uint64_t max_clock = s->start_clock;
  /* The primaries write the ranges; backups hold the same bytes. */
  for (size_t r = 0; r < s->nranges; r++) {
    const ps_range_t *rg = &s->ranges[r];
    const sched_node_t *nd = ps__sched_node_by_id(s, rg->server_id);
    int listed = 0;
    for (size_t k = 0; k < n && !listed; k++) listed = ids[k] == rg->server_id;
    if (listed) continue;
    if (nd == NULL || nd->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
      snprintf(err, errlen,
               "range [%" PRIu64 ", %" PRIu64
               ") cannot be written: its primary, server %u, is %s and no "
               "synced replica is left",
               rg->begin, rg->end, rg->server_id,
               nd ? ps__sched_state_name(nd->state) : "unknown");
      free(ids);
      return PS_ERR_UNAVAILABLE;
    }
    if (nd->route_len == 0) {
      /* A restarted scheduler learns routes from heartbeats. */
      snprintf(err, errlen,
               "server %u has not been heard from since the scheduler "
               "started; try again in a moment",
               nd->id);
      free(ids);
      return PS_ERR_NOT_READY;
    }
    ids[n++] = nd->id;
    if (nd->clock > max_clock) max_clock = nd->clock;
  }
  /* The next one comes after the last, whatever stale clocks say. */
  if (s->has_last && s->last.step > max_clock) max_clock = s->last.step;
  ps_coord_start_t st = {
      .base = base,
      .reason = reason,
      .every_steps = every_steps,
      .servers = ids,
      .nservers = n,
      .max_clock = max_clock,
      .model = &s->model,
      .mode = s->opts.mode,
      .view_epoch = s->epoch,
      .timeout_ms = s->opts.checkpoint_timeout_ms > 0
                        ? s->opts.checkpoint_timeout_ms
                        : SCHED_CKPT_TIMEOUT_MS,
  };
  int rc = ps_coord_start(s->coord, &st, ps_now_ms(), err, errlen);
  free(ids);
  /* The ids it took are on disk before a server sees one, so a restarted
   * scheduler never hands out an id a server may still hold. */
  if (rc == PS_OK) ps__sched_state_save(s);
  return rc;
}

static void add_waiter(ps_sched_t *s, ps_msg_t *m) {
  if (!m->has_route || zmq_msg_size(&m->route) > SCHED_ROUTE_MAX) return;
  if (s->nwaiters == SCHED_CKPT_WAITERS) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "%d psctl calls already wait for this checkpoint",
                          SCHED_CKPT_WAITERS);
    return;
  }
  size_t len = zmq_msg_size(&m->route);
  memcpy(s->waiters[s->nwaiters].route, zmq_msg_data(&m->route), len);
  s->waiters[s->nwaiters].route_len = len;
  s->waiters[s->nwaiters].request_id = m->request_id;
  s->nwaiters++;
}

/* psctl checkpoint: answered once the MANIFEST is durable, or with why
 * not. */
int ps__sched_ckpt_confine(const char *base, const char *dir, char *out,
                           size_t len, char *why, size_t whylen) {
  size_t blen = strlen(base);
  while (blen > 1 && base[blen - 1] == '/') blen--;
  const char *rest = dir;
  if (dir[0] == '/') {
    /* An absolute path must lie in the base. */
    if (strncmp(dir, base, blen) != 0 || (dir[blen] != '/' && dir[blen]))
      return ps_errf(why, whylen, PS_ERR_PERMISSION_DENIED,
                     "not inside the configured --checkpoint-dir %.*s",
                     (int)blen, base);
    rest = dir + blen;
  }
  /* No component may climb out. */
  for (const char *p = rest; *p;) {
    while (*p == '/') p++;
    const char *e = strchr(p, '/');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n == 2 && p[0] == '.' && p[1] == '.')
      return ps_errf(why, whylen, PS_ERR_PERMISSION_DENIED,
                     "\"..\" may not appear in it");
    p += n;
  }
  while (*rest == '/') rest++;
  int w = rest[0] ? snprintf(out, len, "%.*s/%s", (int)blen, base, rest)
                  : snprintf(out, len, "%.*s", (int)blen, base);
  if (w < 0 || (size_t)w >= len)
    return ps_errf(why, whylen, PS_ERR_PERMISSION_DENIED, "path too long");
  return PS_OK;
}

void ps__sched_handle_checkpoint_command(ps_sched_t *s, ps_msg_t *m) {
  const char *dir =
      m->env->checkpoint_command->dir ? m->env->checkpoint_command->dir : "";
  if (!s->published || !s->has_model) {
    ps__sched_reply_error(s, m, PS_ERR_NOT_READY,
                          "the job has not started: no view published yet");
    return;
  }
  if (s->ending) {
    ps__sched_reply_error(s, m, PS_ERR_SHUTDOWN, "the job is over");
    return;
  }
  /* The daemons write where a message says: only inside the directory
   * the operator configured (ARCHITECTURE "Security"). */
  if (s->ckpt_base == NULL) {
    ps__sched_reply_error(
        s, m, PS_ERR_PERMISSION_DENIED,
        "no checkpoint directory is configured: start ps-scheduler with "
        "--checkpoint-dir; psctl checkpoint --dir may then name a directory "
        "inside it");
    return;
  }
  char inside[PS_CHECKPOINT_PATH_MAX];
  char why[256];
  if (ps__sched_ckpt_confine(s->ckpt_base, dir, inside, sizeof(inside), why,
                             sizeof(why)) != PS_OK) {
    ps__sched_reply_error(s, m, PS_ERR_PERMISSION_DENIED,
                          "checkpoint directory \"%s\": %s", dir, why);
    return;
  }
  const char *base = inside;
  if (ps_coord_active(s->coord)) {
    if (strcmp(base, ps_coord_base(s->coord)) != 0) {
      ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                            "a checkpoint of step %" PRIu64
                            " into %s is in progress",
                            ps_coord_step(s->coord), ps_coord_dir(s->coord));
      return;
    }
    add_waiter(s, m); /* the one in progress is as good */
    return;
  }
  char err[1200];
  int rc = ckpt_start(s, base, "psctl", 0, err, sizeof(err));
  if (rc != PS_OK) {
    ps__sched_reply_error(s, m, rc, "%s", err);
    return;
  }
  add_waiter(s, m);
}

void ps__sched_handle_checkpoint_reply(ps_sched_t *s, ps_msg_t *m) {
  /* Never an Error back: a member takes REFUSED as the loss of its
   * membership, and a reply to a request of a previous scheduler life is
   * merely stale. */
  sched_node_t *n = ps__sched_node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG("checkpoint_reply_ignored", "sender=%u", m->env->sender);
    return;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    ps__sched_fence(s, n, m);
    return;
  }
  ps__sched_node_touch(n, m, 1);
  /* Fresher than the last heartbeat's. */
  if (m->env->checkpoint_reply->clock > n->clock)
    n->clock = m->env->checkpoint_reply->clock;
  ps_coord_on_reply(s->coord, n->id, m->env->checkpoint_reply, ps_now_ms());
}

/* Periodic checkpoints. Every-N-steps asks for the next multiple once the
 * servers are within a few seconds of it (by their step rate), so that a
 * request is never late for lack of notice and every-S-seconds has room in
 * between. */
void ps__sched_ckpt_periodic(ps_sched_t *s, uint64_t now) {
  uint64_t max_clock = s->start_clock;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == PS__ROLE__ROLE_SERVER &&
        s->nodes[i].clock > max_clock)
      max_clock = s->nodes[i].clock;
  if (max_clock > s->rate_clock && s->rate_ms > 0 && now > s->rate_ms) {
    double r = (double)(max_clock - s->rate_clock) / (double)(now - s->rate_ms);
    s->steps_per_ms = s->steps_per_ms > 0 ? 0.5 * s->steps_per_ms + 0.5 * r : r;
  }
  if (max_clock != s->rate_clock || s->rate_ms == 0) {
    s->rate_clock = max_clock;
    s->rate_ms = now;
  }
  if (!s->published || s->finished || s->ending || s->ckpt_base == NULL ||
      !s->has_model || ps_coord_active(s->coord) || now < s->ckpt_retry_ms ||
      ps__sched_live_workers(s) == 0)
    return;
  const char *reason = NULL;
  uint64_t every = s->opts.checkpoint_every_steps;
  if (every > 0) {
    uint64_t next = (max_clock / every + 1) * every;
    /* No rate yet: ask at once; waiting costs nothing. */
    double lead = s->steps_per_ms > 0 ? s->steps_per_ms * 3000.0 + 2 : 1e18;
    if ((double)(next - max_clock) <= lead) reason = "every_steps";
  }
  if (reason == NULL && s->opts.checkpoint_every_s > 0 &&
      (double)(now - s->ckpt_last_ms) >= s->opts.checkpoint_every_s * 1e3) {
    reason = "every_s";
    every = 0;
  }
  if (reason == NULL) return;
  char err[1200];
  int rc = ckpt_start(s, s->ckpt_base, reason, every, err, sizeof(err));
  if (rc != PS_OK) {
    PS_WARN("checkpoint_not_started", "reason=%s err=%s why=\"%s\"", reason,
            ps_err_name(rc), err);
    s->ckpt_retry_ms = now + SCHED_CKPT_BACKOFF_MS;
  }
}

/* ---- restore -------------------------------------------------------- */

/* --restore: the checkpoint is read and checked in full before the job
 * exists, so a damaged one stops the scheduler at start, and the job takes
 * its model and step from it. */
int ps__sched_restore_prepare(ps_sched_t *s, const char *path, char *err,
                              size_t errlen) {
  char in[PS_CHECKPOINT_PATH_MAX], dir[PS_CHECKPOINT_PATH_MAX];
  if (ps__sched_abs_path(path, in, sizeof(in)) != 0) {
    snprintf(err, errlen, "restore %s: path too long", path);
    return PS_ERR_CONFIG;
  }
  int rc = ps_checkpoint_resolve(in, dir, sizeof(dir), err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t t0 = ps_now_ns();
  ps_checkpoint_manifest_t m;
  rc = ps_checkpoint_manifest_read(dir, &m, err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t bytes = 0;
  rc = ps_checkpoint_verify(dir, &m, &bytes, err, errlen);
  if (rc != PS_OK) {
    ps_checkpoint_manifest_clear(&m);
    return rc;
  }
  double ms = (double)(ps_now_ns() - t0) / 1e6;
  s->restore_dir = strdup(dir);
  if (s->restore_dir == NULL) {
    ps_checkpoint_manifest_clear(&m);
    snprintf(err, errlen, "out of memory");
    return PS_ERR_NOMEM;
  }
  if (m.mode != s->opts.mode)
    PS_WARN("restore_mode_changed", "checkpoint_mode=%s mode=%s",
            ps__sched_mode_name(m.mode), ps__sched_mode_name(s->opts.mode));
  s->model = m.model; /* takes the tensors and sparse tables */
  m.model.tensors = NULL;
  m.model.sparse = NULL;
  m.model.nsparse = 0;
  s->has_model = 1;
  s->model_node = 0;
  s->start_clock = m.step;
  s->has_last = 1;
  ps__checkpoint_info__init(&s->last);
  s->last.id = m.id;
  s->last.step = m.step;
  s->last.bytes = bytes;
  s->last.shards = (uint32_t)m.nshards;
  s->last.created_unix_ms = m.created_unix_ms;
  snprintf(s->last_dir, sizeof(s->last_dir), "%s", dir);
  snprintf(s->last_reason, sizeof(s->last_reason), "restored");
  s->last.dir = s->last_dir;
  s->last.reason = s->last_reason;
  uint64_t wall = ps__sched_unix_now_ms(), now = ps_now_ms();
  uint64_t age = wall > m.created_unix_ms ? wall - m.created_unix_ms : 0;
  s->last_done_ms = now > age ? now - age : 0;
  ps_coord_set_next_id(s->coord, m.id + 1);
  PS_INFO("restore_verified",
          "dir=%s step=%" PRIu64 " id=%" PRIu64
          " servers_then=%u servers_now=%u shards=%zu bytes=%" PRIu64
          " ms=%.1f mbps=%.1f",
          dir, m.step, m.id, m.num_servers, s->opts.servers, m.nshards, bytes,
          ms, ms > 0 ? (double)bytes / 1e6 / (ms / 1e3) : 0.0);
  ps_checkpoint_manifest_clear(&m);
  return PS_OK;
}
