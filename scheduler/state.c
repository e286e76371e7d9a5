/* The state file (--state-file): the scheduler's state written on every
 * change, and read back by a restarted scheduler to take the job over. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/sched_int.h"

/* The state file: a framed SchedulerState (common/checkpoint.h). */
static const char SCHED_STATE_MAGIC[8] = {'P', 'S', 'S', 'C',
                                          'H', 'S', 'T', 'A'};
#define SCHED_STATE_VERSION 1

/* ---- persistence (ARCHITECTURE "Failure semantics" 4) --------------- */

uint64_t ps__sched_unix_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes the state file, crash safe. Called after every change of what it
 * holds and before the change is announced (a view goes out only once it is
 * on disk), so a restarted scheduler never knows less than its nodes. The
 * file is small (the view); it is written on the loop because the order
 * matters more than the milliseconds. */
void ps__sched_state_save(ps_sched_t *s) {
  if (s->state_file == NULL) return;
  uint64_t t0 = ps_now_ns();
  view_pb_t v;
  char err[1200];
  int rc = ps__sched_view_pb_build(s, &v);
  if (rc != PS_OK) {
    PS_ERROR("state_save_failed", "file=%s err=%s", s->state_file,
             ps_err_name(rc));
    s->state_failed = 1;
    return;
  }
  /* The file is the scheduler's own: the tokens that bind node ids to
   * connections survive a restart in it. */
  for (size_t i = 0; i < s->nnodes; i++) {
    v.infos[i].token = s->nodes[i].token;
    /* And the keys of their heartbeat datagrams (beats.c). */
    if (s->nodes[i].beat_keyed) {
      v.infos[i].beat_key.data = s->nodes[i].beat_key;
      v.infos[i].beat_key.len = PS_BEAT_KEY_BYTES;
    }
  }
  Ps__SchedulerState st = PS__SCHEDULER_STATE__INIT;
  st.format_version = SCHED_STATE_VERSION;
  st.view = &v.view;
  st.published = s->published;
  st.finished = s->finished;
  st.expected_servers = s->opts.servers;
  st.expected_workers = s->opts.workers;
  st.model_node = s->model_node;
  /* A checkpoint in progress may still take ids for its retries. */
  st.next_checkpoint_id =
      ps_coord_next_id(s->coord) +
      (ps_coord_active(s->coord) ? PS_COORD_MAX_ATTEMPTS : 0);
  Ps__CheckpointInfo last = s->last;
  last.dir = s->last_dir;
  last.reason = s->last_reason;
  last.age_ms = 0;
  if (s->has_last) st.last_checkpoint = &last;
  st.replication = s->opts.replication;
  uint64_t *dead = calloc(2 * s->nnodes + 1, sizeof(*dead));
  if (dead) {
    uint64_t *heard = dead + s->nnodes;
    uint64_t now = ps_now_ms(), wall = ps__sched_unix_now_ms();
    for (size_t i = 0; i < s->nnodes; i++) {
      uint64_t age =
          now > s->nodes[i].last_seen_ms ? now - s->nodes[i].last_seen_ms : 0;
      dead[i] = s->nodes[i].dead_epoch;
      heard[i] = wall > age ? wall - age : 0;
    }
    st.dead_epochs = dead;
    st.n_dead_epochs = s->nnodes;
    st.last_heard_unix_ms = heard;
    st.n_last_heard_unix_ms = s->nnodes;
  }
  size_t len = ps__scheduler_state__get_packed_size(&st);
  uint8_t *buf = dead ? malloc(len ? len : 1) : NULL;
  if (buf == NULL) {
    rc = PS_ERR_NOMEM;
    snprintf(err, sizeof(err), "out of memory");
  } else {
    ps__scheduler_state__pack(&st, buf);
    rc = ps_checkpoint_write_framed_mode(s->state_file, SCHED_STATE_MAGIC,
                                         SCHED_STATE_VERSION, buf, len, 0600,
                                         err, sizeof(err));
  }
  free(buf);
  free(dead);
  ps__sched_view_pb_free(&v);
  if (rc != PS_OK) {
    /* The job goes on: losing the scheduler's memory of it is a risk for
     * later, stopping the job now would be a certain loss. */
    PS_ERROR("state_save_failed", "file=%s err=%s reason=\"%s\"", s->state_file,
             ps_err_name(rc), err);
    s->state_failed = 1;
    return;
  }
  if (s->state_failed)
    PS_INFO("state_save_recovered", "file=%s", s->state_file);
  s->state_failed = 0;
  PS_DEBUG("state_saved", "file=%s epoch=%" PRIu64 " bytes=%zu ms=%.2f",
           s->state_file, s->epoch, len, (double)(ps_now_ns() - t0) / 1e6);
}

/* Takes over the job in the state file. Returns 1 when a running job was
 * loaded, 0 when there is none (no file, or its job finished), or a
 * failure with err: a state file that cannot be read is not silently
 * replaced by a new job. */
int ps__sched_state_load(ps_sched_t *s, char *err, size_t errlen) {
  uint8_t *body;
  size_t len;
  char why[1200];
  int rc = ps_checkpoint_read_framed(s->state_file, SCHED_STATE_MAGIC,
                                     SCHED_STATE_VERSION, &body, &len, why,
                                     sizeof(why));
  if (rc == PS_ERR_IO && errno == ENOENT) return 0;
  if (rc != PS_OK) {
    snprintf(err, errlen, "state file %s (move it away to start a new job)",
             why);
    return rc;
  }
  Ps__SchedulerState *st = ps__scheduler_state__unpack(NULL, len, body);
  free(body);
  if (st == NULL || st->view == NULL ||
      st->format_version != SCHED_STATE_VERSION) {
    snprintf(err, errlen, "state file %s: not a scheduler state of version %d",
             s->state_file, SCHED_STATE_VERSION);
    if (st) ps__scheduler_state__free_unpacked(st, NULL);
    return PS_ERR_FORMAT;
  }
  const Ps__View *pv = st->view;
  if (st->finished) {
    PS_INFO("state_job_finished",
            "file=%s epoch=%" PRIu64
            " hint=\"the previous job ended; starting a new one\"",
            s->state_file, pv->epoch);
    ps__scheduler_state__free_unpacked(st, NULL);
    return 0;
  }
  /* A state file of a job from before replication has none recorded. */
  uint32_t replication = st->replication ? st->replication : 1;
  if (st->expected_servers != s->opts.servers ||
      st->expected_workers != s->opts.workers ||
      (int)pv->mode != s->opts.mode || pv->staleness != s->opts.staleness ||
      replication != s->opts.replication) {
    snprintf(err, errlen,
             "state file %s is of a job with --servers=%u --workers=%u "
             "--mode=%s --staleness=%u --replication=%u; this scheduler was "
             "given --servers=%u --workers=%u --mode=%s --staleness=%u "
             "--replication=%u",
             s->state_file, st->expected_servers, st->expected_workers,
             ps__sched_mode_name((int)pv->mode), pv->staleness, replication,
             s->opts.servers, s->opts.workers,
             ps__sched_mode_name(s->opts.mode), s->opts.staleness,
             s->opts.replication);
    rc = PS_ERR_CONFIG;
    goto out;
  }
  ps_view_t *valid = NULL;
  if (st->published) {
    /* The same checks a node makes: ranges tile the model, owners exist. */
    valid = ps_view_from_pb(pv, why, sizeof(why));
    if (valid == NULL) {
      snprintf(err, errlen, "state file %s: bad view: %s", s->state_file, why);
      rc = PS_ERR_FORMAT;
      goto out;
    }
  }
  s->nodes = calloc(pv->n_nodes + 8, sizeof(*s->nodes));
  s->cap = pv->n_nodes + 8;
  if (s->nodes == NULL) {
    ps_view_destroy(&valid);
    snprintf(err, errlen, "out of memory");
    rc = PS_ERR_NOMEM;
    goto out;
  }
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < pv->n_nodes; i++) {
    const Ps__NodeInfo *ni = pv->nodes[i];
    const char *addr = ni->address ? ni->address : "";
    /* Node id i is nodes[i - 1]: ids are dense and never reused. */
    if (ni->id != i + 1 || strlen(addr) >= PS_ADDR_MAX) {
      snprintf(err, errlen,
               "state file %s: node %zu has id %u or a bad address",
               s->state_file, i, ni->id);
      ps_view_destroy(&valid);
      rc = PS_ERR_FORMAT;
      goto out;
    }
    sched_node_t *n = &s->nodes[i];
    n->id = ni->id;
    n->role = ni->role;
    n->state = ni->state;
    /* Checked by ps_view_from_pb above: empty or a whole token. */
    snprintf(n->token, sizeof(n->token), "%s", ni->token ? ni->token : "");
    snprintf(n->curve_key, sizeof(n->curve_key), "%s",
             ni->curve_key ? ni->curve_key : "");
    if (ni->beat_key.len == PS_BEAT_KEY_BYTES) {
      memcpy(n->beat_key, ni->beat_key.data, PS_BEAT_KEY_BYTES);
      n->beat_keyed = 1;
    }
    n->rank = ni->rank;
    n->clock = ni->clock;
    n->join_clock = ni->join_clock;
    n->joining = ni->joining;
    n->active = ni->active;
    /* Copies go on moving where the old scheduler left them. */
    s->elastic |= ni->active && ni->role == PS__ROLE__ROLE_SERVER &&
                  ni->state == PS__NODE_STATE__NODE_STATE_ALIVE;
    n->leave_clock = ni->leave_clock;
    /* The servers' confirmations died with the old scheduler: they are
     * asked again (a later step) after SCHED_JOIN_RETRY_MS. */
    n->join_started_ms = n->join_asked_ms = now;
    if (i < st->n_dead_epochs) n->dead_epoch = st->dead_epochs[i];
    snprintf(n->address, sizeof(n->address), "%s", addr);
    /* Routes are learned again from the first heartbeat; a node that does
     * not send one within the timeout is declared dead as usual. */
    n->last_seen_ms = now;
    /* One that will not send any keeps the age of its silence. */
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE &&
        i < st->n_last_heard_unix_ms && st->last_heard_unix_ms[i] != 0) {
      uint64_t wall = ps__sched_unix_now_ms();
      uint64_t age = wall > st->last_heard_unix_ms[i]
                         ? wall - st->last_heard_unix_ms[i]
                         : 0;
      n->last_seen_ms = now > age ? now - age : 0;
    }
    s->nnodes = i + 1;
  }
  if (pv->model && pv->model->n_tensors > 0) {
    if (ps_model_from_pb(pv->model, &s->model, why, sizeof(why)) != PS_OK) {
      snprintf(err, errlen, "state file %s: bad model: %s", s->state_file, why);
      ps_view_destroy(&valid);
      rc = PS_ERR_FORMAT;
      goto out;
    }
    s->has_model = 1;
    s->model_node = st->model_node;
  }
  if (valid) {
    s->ranges = calloc(valid->nranges + 1, sizeof(*s->ranges));
    if (s->ranges == NULL) {
      ps_view_destroy(&valid);
      snprintf(err, errlen, "out of memory");
      rc = PS_ERR_NOMEM;
      goto out;
    }
    memcpy(s->ranges, valid->ranges, valid->nranges * sizeof(*s->ranges));
    s->nranges = valid->nranges;
    ps_view_destroy(&valid);
  }
  s->epoch = pv->epoch;
  if (pv->replication) s->replication = pv->replication;
  s->published = st->published;
  s->start_clock = pv->start_clock;
  if (pv->restore_dir && pv->restore_dir[0])
    s->restore_dir = strdup(pv->restore_dir);
  ps_coord_set_next_id(s->coord, st->next_checkpoint_id);
  if (st->last_checkpoint) {
    const Ps__CheckpointInfo *ci = st->last_checkpoint;
    s->has_last = 1;
    /* Field by field: the message's strings and unknown fields are freed
     * with st below, and s->last is packed into every status and save. */
    ps__checkpoint_info__init(&s->last);
    s->last.id = ci->id;
    s->last.step = ci->step;
    s->last.bytes = ci->bytes;
    s->last.duration_ms = ci->duration_ms;
    s->last.shards = ci->shards;
    s->last.created_unix_ms = ci->created_unix_ms;
    s->last.write_ms = ci->write_ms;
    snprintf(s->last_dir, sizeof(s->last_dir), "%s", ci->dir ? ci->dir : "");
    snprintf(s->last_reason, sizeof(s->last_reason), "%s",
             ci->reason ? ci->reason : "");
    s->last.dir = s->last_dir;
    s->last.reason = s->last_reason;
    /* Its age carries on from the wall clock. */
    uint64_t wall = ps__sched_unix_now_ms();
    uint64_t age = wall > ci->created_unix_ms ? wall - ci->created_unix_ms : 0;
    s->last_done_ms = now > age ? now - age : 0;
  }
  PS_INFO("state_restored",
          "file=%s epoch=%" PRIu64
          " published=%d nodes=%zu start_clock=%" PRIu64
          " last_checkpoint_step=%" PRIu64 " last_checkpoint=%s",
          s->state_file, s->epoch, s->published, s->nnodes, s->start_clock,
          s->has_last ? s->last.step : 0,
          s->has_last && s->last_dir[0] ? s->last_dir : "-");
  rc = 1;
out:
  ps__scheduler_state__free_unpacked(st, NULL);
  return rc;
}
