/* Workers' requests: dense pushes and pulls on the ranges this server is
 * the primary of, BSP pulls parked until their step is applied, and the
 * sparse tables. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/codec.h"
#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/optimizer.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "server_int.h"

/* At most this many BSP pulls wait for a step at once; more is a client bug
 * or an attack, not a training job, and must not grow memory without bound. */
#define PARKED_PULLS_MAX 65536

/* ---- pull replies ---- */

/* Builds the payload frames of a pull reply for [key_begin, +count) of r:
 * runs of the weights worth it go out without a copy, each pinning its
 * block's version until ZeroMQ's I/O thread has written it (see
 * ps-server/shard.h); neighbouring short runs are copied together into one
 * frame. Returns the number of frames, or a negative ps_err_t with every frame
 * closed. */
static int build_pull_frames(ps_server_t *s, const owned_range_t *r,
                             uint64_t key_begin, uint64_t count,
                             zmq_msg_t *frames) {
  ps_shard_run_t runs[PS_MAX_PAYLOAD_FRAMES];
  int nruns = ps_shard_runs(r->shard, key_begin, count, runs,
                            PS_MAX_PAYLOAD_FRAMES, NULL, 0);
  if (nruns < 0) return nruns;
  if (nruns > PS_MAX_PAYLOAD_FRAMES) {
    /* A slice over more blocks than a message may carry frames (an
     * unchunked pull of tens of MiB): one copied frame. */
    runs[0].count = count;
    runs[0].zero_copy = 0;
    nruns = 1;
  }
  int nframes = 0;
  for (int i = 0; i < nruns;) {
    if (runs[i].zero_copy) {
      ps_shard_pin(runs[i].version);
      if (ps_payload_wrap(&frames[nframes], (void *)runs[i].data,
                          (size_t)runs[i].count * sizeof(float), ps_shard_unpin,
                          runs[i].version) != PS_OK) {
        ps_shard_unpin(NULL, runs[i].version);
        goto nomem;
      }
      s->stats.pull_bytes_zero_copy += runs[i].count * sizeof(float);
      nframes++;
      i++;
      continue;
    }
    /* Copy this run and the short ones after it into one frame. */
    uint64_t first = key_begin, n = 0;
    for (int j = 0; j < i; j++) first += runs[j].count;
    int j = i;
    while (j < nruns && !runs[j].zero_copy) n += runs[j++].count;
    if (zmq_msg_init_size(&frames[nframes], (size_t)n * sizeof(float)) != 0)
      goto nomem;
    ps_shard_read(r->shard, first, n, zmq_msg_data(&frames[nframes]), NULL, 0);
    s->stats.pull_bytes_copied += n * sizeof(float);
    nframes++;
    i = j;
  }
  return nframes;
nomem:
  for (int i = 0; i < nframes; i++) zmq_msg_close(&frames[i]);
  return PS_ERR_NOMEM;
}

/* A reserve of bytes for s->decoded; PS_OK or PS_ERR_NOMEM. */
static int decoded_reserve(ps_server_t *s, size_t bytes) {
  if (bytes <= s->decoded_bytes) return PS_OK;
  float *grown = realloc(s->decoded, bytes);
  if (grown == NULL) return PS_ERR_NOMEM;
  s->decoded = grown;
  s->decoded_bytes = bytes;
  return PS_OK;
}

/* A pull reply in a codec: the weights read into s->decoded, encoded into
 * one frame of our own. 1 frame, or PS_ERR_NOMEM. */
static int build_coded_pull_frame(ps_server_t *s, const owned_range_t *r,
                                  uint64_t key_begin, uint64_t count, int codec,
                                  zmq_msg_t *frame) {
  if (decoded_reserve(s, (size_t)count * sizeof(float)) != PS_OK)
    return PS_ERR_NOMEM;
  ps_shard_read(r->shard, key_begin, count, s->decoded, NULL, 0);
  size_t bytes = ps_codec_encoded_bytes(codec, count, 0);
  if (zmq_msg_init_size(frame, bytes) != 0) return PS_ERR_NOMEM;
  ps_codec_encode(codec, s->decoded, count, 0, zmq_msg_data(frame), NULL);
  return 1;
}

static void send_pull_reply(ps_server_t *s, zmq_msg_t *route,
                            uint64_t request_id, const owned_range_t *r,
                            uint64_t key_begin, uint64_t count, int duplicate,
                            int codec) {
  zmq_msg_t frames[PS_MAX_PAYLOAD_FRAMES];
  int nframes =
      codec == PS_CODEC_NONE
          ? build_pull_frames(s, r, key_begin, count, frames)
          : build_coded_pull_frame(s, r, key_begin, count, codec, frames);
  if (nframes < 0) {
    /* The caller checked the slice; only memory can fail here. */
    ps__server_send_error(s, route, request_id, nframes,
                          "%s for a pull reply of %llu values",
                          ps_strerror(nframes), (unsigned long long)count);
    return;
  }
  Ps__PullReply pr = PS__PULL_REPLY__INIT;
  pr.key_begin = key_begin;
  pr.count = count;
  pr.clock = ps_shard_clock(r->shard);
  pr.duplicate = duplicate != 0;
  pr.codec = (Ps__Codec)codec;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = ps__server_view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_PULL_REPLY;
  env.pull_reply = &pr;
  ps__server_count_sent(s, &env,
                        codec == PS_CODEC_NONE ? (size_t)count * sizeof(float)
                                               : zmq_msg_size(&frames[0]));
  if (ps_msg_send(ps_zsock_socket(s->data), route, &env, frames, nframes) !=
      PS_OK)
    s->stats.send_failures++;
}

/* ---- requests in flight per worker ----
 * A push waits here until every backup holds it, a BSP pull until its step
 * is applied. However fast a peer sends, it may have at most
 * max_inflight_per_peer of them waiting; libps-client keeps `window` (8)
 * in flight per server, so only a broken or hostile peer meets the cap. */

/* Takes a slot for worker's request m, or refuses m and returns 0. */
static int inflight_take(ps_server_t *s, ps_msg_t *m, uint32_t worker) {
  if (worker >= s->inflight_nodes) {
    /* Ids are dense and checked against the view: this stays small. */
    size_t n = (size_t)worker + 64;
    uint32_t *grown = realloc(s->inflight, n * sizeof(*grown));
    if (grown == NULL) {
      ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to count requests");
      return 0;
    }
    memset(grown + s->inflight_nodes, 0,
           (n - s->inflight_nodes) * sizeof(*grown));
    s->inflight = grown;
    s->inflight_nodes = n;
  }
  if (s->inflight[worker] >= s->max_inflight_per_peer) {
    s->stats.inflight_refused++;
    ps__server_refuse(s, m, PS_ERR_REFUSED,
                      "worker %u already has %u requests waiting on server "
                      "%u (ps-server --max-inflight-per-peer)",
                      worker, s->inflight[worker], s->node_id);
    return 0;
  }
  s->inflight[worker]++;
  return 1;
}

static void inflight_give(ps_server_t *s, uint32_t worker) {
  if (worker < s->inflight_nodes && s->inflight[worker] > 0)
    s->inflight[worker]--;
}

/* The range's duplicate window for push seq of worker (a dense or a
 * sparse one, named by what): 1 if it is new and is to be applied; 0 if
 * it was answered here: a resend of an applied push is acked (once the
 * original is on every backup), one older than the window is refused. */
static int repl_push(ps_server_t *s, owned_range_t *r, ps_msg_t *m,
                     uint64_t clock_after, int duplicate, uint32_t worker,
                     const Ps__Push *p, zmq_msg_t *payload, pushpull_t **pp_p);
static int repl_hold(ps_server_t *s, owned_range_t *r, ps_msg_t *m,
                     uint32_t worker, uint64_t seq, int duplicate,
                     pushpull_t **pp_p);

static int push_is_new(ps_server_t *s, ps_msg_t *m, owned_range_t *r,
                       uint32_t worker, uint64_t seq, const char *what,
                       pushpull_t **pp_p) {
  int seen = ps_dedup_check(r->dedup, worker, seq);
  if (seen == PS_DEDUP_OLD) {
    ps__server_refuse(
        s, m, PS_ERR_REFUSED,
        "%s seq %llu of worker %u is older than the %d this range "
        "remembers: cannot tell whether it was applied",
        what, (unsigned long long)seq, worker, PS_DEDUP_WINDOW);
    return 0;
  }
  if (seen != PS_DEDUP_DUP) return 1;
  if (!inflight_take(s, m, worker)) return 0;
  if (ps_repl_held(s->repl, r->begin, r->end, worker, seq)) {
    /* The original waits for its step: so does this ack (a PushPull's
     * reply, after an Ack that frees the client's window slot). */
    if (repl_hold(s, r, m, worker, seq, 1, pp_p) != PS_OK) {
      inflight_give(s, worker);
      ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to queue an ack");
    }
    return 0;
  }
  /* duplicate = 1: nothing is sent to the backups, so no push body. A
   * PushPull's duplicate is answered with the weights all the same. */
  if (repl_push(s, r, m, ps_shard_clock(r->shard), 1, worker, NULL, NULL,
                pp_p) != PS_OK) {
    inflight_give(s, worker);
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to queue an ack");
  }
  return 0;
}

/* Parks a BSP pull of [key_begin, +count) of r until the shard reaches
 * clock; the caller took its slot in flight for worker. PS_OK, or
 * PS_ERR_NOMEM with nothing parked. */
static int park_pull(ps_server_t *s, owned_range_t *r, zmq_msg_t *route,
                     uint64_t request_id, uint32_t worker, uint64_t key_begin,
                     uint64_t count, uint64_t clock, int duplicate,
                     int codec) {
  parked_pull_t *pp = calloc(1, sizeof(*pp));
  if (pp == NULL) return PS_ERR_NOMEM;
  pp->worker = worker;
  zmq_msg_init(&pp->route);
  zmq_msg_copy(&pp->route, route);
  pp->request_id = request_id;
  pp->key_begin = key_begin;
  pp->count = count;
  pp->clock = clock;
  pp->duplicate = duplicate;
  pp->codec = codec;
  pp->parked_ns = ps_now_ns();
  parked_pull_t **tail = &r->parked;
  while (*tail) tail = &(*tail)->next;
  *tail = pp;
  s->stats.pulls_parked++;
  s->stats.parked_pulls++;
  return PS_OK;
}

static void parked_free(ps_server_t *s, parked_pull_t *p) {
  inflight_give(s, p->worker);
  zmq_msg_close(&p->route);
  free(p);
  s->stats.parked_pulls--;
}

/* Answers the parked pulls of r whose step the shard has reached. */
static void serve_parked(ps_server_t *s, owned_range_t *r) {
  /* SSP: a pull at worker clock c is served from clock c - S on. */
  uint64_t clock = ps_shard_clock(r->shard) + ps_shard_staleness(r->shard);
  parked_pull_t **pp = &r->parked;
  while (*pp) {
    parked_pull_t *p = *pp;
    if (p->clock > clock) {
      pp = &p->next;
      continue;
    }
    *pp = p->next;
    ps_hist_observe(&s->hist_bsp_wait, ps_now_ns() - p->parked_ns);
    send_pull_reply(s, &p->route, p->request_id, r, p->key_begin, p->count,
                    p->duplicate, p->codec);
    parked_free(s, p);
  }
}

/* Fails every parked pull of r with code: the range moved or the server
 * stops, and the worker should hear it now rather than time out. */
void ps__server_fail_parked(ps_server_t *s, owned_range_t *r, int code,
                            const char *why) {
  while (r->parked) {
    parked_pull_t *p = r->parked;
    r->parked = p->next;
    ps__server_send_error(
        s, &p->route, p->request_id, code, "pull of [%llu,+%llu): %s",
        (unsigned long long)p->key_begin, (unsigned long long)p->count, why);
    parked_free(s, p);
  }
}

/* The slowest shard's clock is the step this server has fully applied:
 * of the ranges it is the primary of, or, on a server that is a backup
 * only, of those it replays (the same steps, applied in the primary's
 * order). */
void ps__server_report_clock(ps_server_t *s) {
  if (s->nranges == 0 || s->member == NULL) return;
  uint64_t c = UINT64_MAX, backup_c = UINT64_MAX;
  for (size_t i = 0; i < s->nranges; i++) {
    if (s->ranges[i].shard == NULL) continue;
    uint64_t ci = ps_shard_clock(s->ranges[i].shard);
    if (s->ranges[i].primary && ci < c) c = ci;
    if (!s->ranges[i].primary && ci < backup_c) backup_c = ci;
  }
  if (c == UINT64_MAX) c = backup_c;
  if (c != UINT64_MAX && c != s->reported_clock) {
    s->reported_clock = c;
    ps_member_set_clock(s->member, c);
  }
}

static void sparse_step_applied(ps_server_t *s, owned_range_t *r);

int ps__server_step_repl(const ps_server_t *s) {
  return s->view != NULL && s->view->mode == PS__CONSISTENCY_MODE__MODE_BSP &&
         s->view->model.nsparse == 0;
}

void ps__server_flush_step(ps_server_t *s, owned_range_t *r) {
  if (!r->primary || r->shard == NULL || !ps__server_step_repl(s)) return;
  uint64_t clock = ps_shard_clock(r->shard);
  if (clock <= r->repl_clock || !ps_repl_has_chain(s->repl, r->begin, r->end))
    return;
  uint64_t step = 0;
  float scale = 1.0f;
  const float *sum = ps_shard_step_sum(r->shard, &step, &scale);
  if (sum != NULL && step > r->repl_clock)
    PS_ERROR("step_not_replicated",
             "range=[%llu,%llu) told=%llu applied=%llu clock=%llu",
             (unsigned long long)r->begin, (unsigned long long)r->end,
             (unsigned long long)r->repl_clock, (unsigned long long)step,
             (unsigned long long)clock);
  if (sum != NULL && step != r->repl_clock) sum = NULL; /* a skip only */
  if (ps_repl_step(s->repl, r->begin, r->end, r->repl_clock, clock, sum,
                   scale) != PS_OK) {
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory replicating a step", 1);
    return;
  }
  r->repl_clock = clock;
}

void ps__server_after_apply(ps_server_t *s, owned_range_t *r) {
  /* The backups first: the step's acks wait for them (BSP only). */
  ps__server_flush_step(s, r);
  /* SSP: the steps after it that every worker pushed already follow, one
   * at a time, so that a checkpoint sees each clock. */
  do {
    s->stats.applies++;
    /* With the dense step, before anyone (a checkpoint, a parked pull) sees
     * the range at the new clock. */
    sparse_step_applied(s, r);
    /* First: a checkpoint waiting for this clock copies the shard before a
     * reply or another apply can follow. */
    if (s->saver)
      ps_saver_shard_applied(s->saver, r->shard, r->sparse,
                             r->sparse ? r->nsparse : 0);
    /* contributors: the workers whose mean step clock - 1 applied (BSP,
     * SSP; issue #16's test counts them against the worker set). */
    float scale = ps_shard_step_scale(r->shard);
    PS_DEBUG("step_applied",
             "range=[%llu,%llu) mode=%s clock=%llu contributors=%.0f",
             (unsigned long long)ps_shard_begin(r->shard),
             (unsigned long long)ps_shard_end(r->shard),
             ps__server_mode_name(ps_shard_mode(r->shard)),
             (unsigned long long)ps_shard_clock(r->shard),
             scale > 0 ? 1.0 / (double)scale : 0.0);
    serve_parked(s, r);
  } while (ps_shard_apply_ready(r->shard));
  ps__server_report_clock(s);
}

/* ---- requests ---- */

/* The range this server is the primary of that holds the whole slice, or
 * NULL after refusing m: with STALE_EPOCH when the request's view is older
 * than ours (the keys moved: the client takes the new view and resends),
 * else UNKNOWN_KEY. */
static owned_range_t *find_range(ps_server_t *s, ps_msg_t *m,
                                 uint64_t key_begin, uint64_t count) {
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->shard && ps_shard_contains(r->shard, key_begin, count))
      return r;
  }
  char owned[256];
  ps__server_refuse(
      s, m,
      m->env->epoch < ps__server_view_epoch(s) ? PS_ERR_STALE_EPOCH
                                               : PS_ERR_UNKNOWN_KEY,
      "keys [%llu,+%llu) are not inside one range of server %u (owns %s "
      "at epoch %llu)",
      (unsigned long long)key_begin, (unsigned long long)count, s->node_id,
      ps__server_format_ranges(s, owned, sizeof(owned)),
      (unsigned long long)ps__server_view_epoch(s));
  return NULL;
}

/* Refuses m unless the server has a view with a model, at m's epoch or a
 * newer one (a request from an older view is served when the keys are
 * still this server's: find_range). */
static int check_epoch(ps_server_t *s, ps_msg_t *m) {
  if (s->view == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOT_READY,
                      "server %u has no cluster view yet", s->node_id);
    return 0;
  }
  if (s->view->model.total == 0 && s->view->model.nsparse == 0) {
    ps__server_refuse(
        s, m, PS_ERR_NOT_READY,
        "cluster view epoch %llu has no model yet (no worker registered)",
        (unsigned long long)s->view->epoch);
    return 0;
  }
  if (m->env->epoch > s->view->epoch) {
    ps__server_refuse(
        s, m, PS_ERR_STALE_EPOCH, "request epoch %llu, server view epoch %llu",
        (unsigned long long)m->env->epoch, (unsigned long long)s->view->epoch);
    return 0;
  }
  /* Its view is not newer than ours: a worker of the job is in it. */
  return ps__server_sender_is(s, m, PS__ROLE__ROLE_WORKER);
}

int ps__server_sender_is(ps_server_t *s, ps_msg_t *m, int role) {
  const ps_node_t *n = s->view ? ps_view_node(s->view, m->env->sender) : NULL;
  if (n != NULL && n->role == role &&
      (n->token[0] == '\0' ||
       (m->has_route && ps_auth_route_is(&m->route, n->token))))
    return 1;
  ps__server_refuse(s, m, PS_ERR_PERMISSION_DENIED,
                    "node %u is not a %s of this job%s", m->env->sender,
                    role == PS__ROLE__ROLE_WORKER ? "worker" : "server",
                    n != NULL && n->role == role
                        ? " on this connection (it registered on another)"
                        : "");
  return 0;
}

/* Answers a push on route: the Ack carries the server clock after it. */
static void send_ack(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                     uint64_t clock, int duplicate, int held) {
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = clock;
  ack.duplicate = duplicate != 0;
  ack.held = held != 0;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = ps__server_view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  ps__server_count_sent(s, &env, 0);
  if (s->data == NULL ||
      ps_msg_send(ps_zsock_socket(s->data), route, &env, NULL, 0) != PS_OK)
    s->stats.send_failures++;
}

void ps__server_reply_ack(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                          uint64_t clock, int duplicate) {
  send_ack(s, route, request_id, clock, duplicate, 0);
}

static void reply_held_ack(ps_server_t *s, zmq_msg_t *route,
                           uint64_t request_id, uint64_t clock) {
  send_ack(s, route, request_id, clock, 0, 1);
}

/* ---- push and pull in one round trip (issue #15) ----
 * A PushPull is served as a push; its reply waits, like the push's ack
 * would, until the replicator says every backup holds the push, and is
 * then built like a pull at the push's step + 1 (parked until the BSP step
 * is applied, if need be). push_done only hands back the route, request id
 * and worker, so the PushPulls waiting for it are kept here and found by
 * those (a client's request ids are unique on its connection). */

static pushpull_t *pushpull_unlink(ps_server_t *s, pushpull_t *pp) {
  for (pushpull_t **at = &s->pushpulls; *at; at = &(*at)->next)
    if (*at == pp) {
      *at = pp->next;
      break;
    }
  pp->linked = 0;
  return pp;
}

/* The primary range of this server holding all of [key_begin, +count), or
 * NULL. */
static owned_range_t *range_of(ps_server_t *s, uint64_t key_begin,
                               uint64_t count) {
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->shard && ps_shard_contains(r->shard, key_begin, count))
      return r;
  }
  return NULL;
}

/* Answers pp, which is off the list: status PS_OK (its push is on every
 * copy) with the weights at pull_clock, now or once the step is applied;
 * else with the push's error. Frees pp. */
static void pushpull_finish(ps_server_t *s, pushpull_t *pp, int status,
                            int duplicate, const char *reason) {
  owned_range_t *r = NULL;
  if (s->data == NULL) {
    /* Tearing down: nowhere to answer. */
  } else if (status != PS_OK) {
    ps__server_send_error(s, &pp->route, pp->request_id, status,
                          "push not replicated: %s", reason);
  } else if ((r = range_of(s, pp->key_begin, pp->count)) == NULL) {
    /* Applied and on every copy, but the keys moved since: the client
     * resends to their new primary, which acks the push as a duplicate and
     * serves the weights. */
    ps__server_send_error(
        s, &pp->route, pp->request_id, PS_ERR_STALE_EPOCH,
        "push_pull of keys [%llu,+%llu) applied, but server %u no longer "
        "leads them at epoch %llu",
        (unsigned long long)pp->key_begin, (unsigned long long)pp->count,
        s->node_id, (unsigned long long)ps__server_view_epoch(s));
  } else {
    if (duplicate) s->stats.duplicate_pushes++;
    /* The pull's rule (ps__server_handle_pull): BSP waits for the step,
     * SSP for the step - staleness. */
    if (ps_shard_mode(r->shard) != PS__CONSISTENCY_MODE__MODE_ASP &&
        pp->pull_clock >
            ps_shard_clock(r->shard) + ps_shard_staleness(r->shard)) {
      /* The step waits for other pushes, maybe this worker's own next
       * pieces, which its window may hold back until this one is
       * answered: the push is acked now (Ack, same request id), and the
       * weights follow once the step is applied. The push's slot in
       * flight, given back by push_done, is the parked pull's now; no cap
       * here: the push took one already. */
      ps__server_reply_ack(s, &pp->route, pp->request_id,
                           ps_shard_clock(r->shard), duplicate);
      if (pp->worker < s->inflight_nodes) s->inflight[pp->worker]++;
      if (park_pull(s, r, &pp->route, pp->request_id, pp->worker, pp->key_begin,
                    pp->count, pp->pull_clock, 0, pp->codec) != PS_OK) {
        inflight_give(s, pp->worker);
        ps__server_send_error(s, &pp->route, pp->request_id, PS_ERR_NOMEM,
                              "push applied, but no memory to park its pull");
      }
    } else {
      send_pull_reply(s, &pp->route, pp->request_id, r, pp->key_begin,
                      pp->count, duplicate, pp->codec);
    }
  }
  zmq_msg_close(&pp->route);
  free(pp);
}

/* push_done for a PushPull: 1 if (route, request_id, worker) is one (it
 * is answered, or, while its push is still being applied, marked to be
 * answered right after), 0 if it is a plain push. */
static int pushpull_done(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                         uint32_t worker, int duplicate, int status,
                         const char *reason) {
  size_t n = zmq_msg_size(route);
  for (pushpull_t *pp = s->pushpulls; pp; pp = pp->next) {
    if (pp->request_id != request_id || pp->worker != worker ||
        zmq_msg_size(&pp->route) != n ||
        memcmp(zmq_msg_data(&pp->route), zmq_msg_data(route), n) != 0)
      continue;
    if (pp->applying) {
      /* push_done ran inside ps_repl_push (nothing to wait for), before
       * the apply: serve_push answers once the push is applied. */
      pp->ready = 1;
      pp->status = status;
      return 1;
    }
    pushpull_finish(s, pushpull_unlink(s, pp), status, duplicate, reason);
    return 1;
  }
  return 0;
}

/* ps_repl_push for m's push p, with a PushPull's reply-to-be *pp_p (NULL
 * for a plain push): the list takes it, and push_done answers it, unless
 * the call fails (then *pp_p is the caller's again). */
/* Puts a PushPull's reply-to-be *pp_p (if any) on the list, where
 * push_done finds it; returns it (NULL for a plain push). */
static pushpull_t *pushpull_link(ps_server_t *s, ps_msg_t *m,
                                 pushpull_t **pp_p) {
  pushpull_t *pp = pp_p ? *pp_p : NULL;
  if (pp == NULL) return NULL;
  zmq_msg_init(&pp->route);
  zmq_msg_copy(&pp->route, &m->route);
  pp->next = s->pushpulls;
  s->pushpulls = pp;
  pp->linked = 1;
  *pp_p = NULL;
  return pp;
}

/* The replicator refused pp's push (push_done will not be called): pp is
 * the caller's again. */
static void pushpull_give_back(ps_server_t *s, pushpull_t *pp,
                               pushpull_t **pp_p) {
  if (pp == NULL) return;
  pushpull_unlink(s, pp);
  zmq_msg_close(&pp->route);
  *pp_p = pp;
}

/* ps_repl_push for m's push p, with a PushPull's reply-to-be *pp_p (NULL
 * for a plain push): the list takes it, and push_done answers it, unless
 * the call fails (then *pp_p is the caller's again). */
static int repl_push(ps_server_t *s, owned_range_t *r, ps_msg_t *m,
                     uint64_t clock_after, int duplicate, uint32_t worker,
                     const Ps__Push *p, zmq_msg_t *payload, pushpull_t **pp_p) {
  pushpull_t *pp = pushpull_link(s, m, pp_p);
  int rc = ps_repl_push(s->repl, r->begin, r->end, &m->route, m->request_id,
                        clock_after, duplicate, worker, p, payload);
  if (rc != PS_OK) pushpull_give_back(s, pp, pp_p);
  return rc;
}

/* The same with ps_repl_hold (replication per BSP step): the reply waits
 * for the step to be on every backup. A held PushPull is acked now (Ack,
 * same request id): not a promise, the reply is that, but so the client
 * frees its window slot, as the step may wait for its own next pieces. A
 * new push's Ack waits until it is applied (serve_push): the step may
 * complete with it. */
static int repl_hold(ps_server_t *s, owned_range_t *r, ps_msg_t *m,
                     uint32_t worker, uint64_t seq, int duplicate,
                     pushpull_t **pp_p) {
  pushpull_t *pp = pushpull_link(s, m, pp_p);
  if (pp) pp->applying = !duplicate;
  int rc = ps_repl_hold(s->repl, r->begin, r->end, &m->route, m->request_id,
                        worker, seq, duplicate);
  if (rc != PS_OK)
    pushpull_give_back(s, pp, pp_p);
  else if (pp && duplicate)
    ps__server_reply_ack(s, &m->route, m->request_id, ps_shard_clock(r->shard),
                         1);
  return rc;
}

void ps__server_pushpull_free(ps_server_t *s) {
  while (s->pushpulls) {
    pushpull_t *pp = pushpull_unlink(s, s->pushpulls);
    zmq_msg_close(&pp->route);
    free(pp);
  }
}

/* ps-server/replica.h: a worker's push is on every backup (or cannot be). */
void ps__server_repl_push_done(void *arg, zmq_msg_t *route, uint64_t request_id,
                               uint32_t worker, uint64_t clock, int duplicate,
                               int status, const char *reason) {
  ps_server_t *s = arg;
  inflight_give(s, worker);
  if (s->pushpulls != NULL &&
      pushpull_done(s, route, request_id, worker, duplicate, status, reason))
    return;
  if (status == PS_OK) {
    if (duplicate) s->stats.duplicate_pushes++;
    ps__server_reply_ack(s, route, request_id, clock, duplicate);
    return;
  }
  ps__server_send_error(s, route, request_id, status, "push not replicated: %s",
                        reason);
}

/* A pointer to the floats of frame f (count values), aligned: ZeroMQ may
 * hand over a small frame at any byte offset inside its receive buffer,
 * and a float array must be aligned, so such a frame is copied into a
 * scratch buffer the server keeps (rare, counted; no allocation once it is
 * big enough). NULL when out of memory. */
const float *ps__server_aligned_floats(ps_server_t *s, zmq_msg_t *f,
                                       uint64_t count) {
  const void *data = zmq_msg_data(f);
  if ((uintptr_t)data % _Alignof(float) == 0) return data;
  size_t bytes = (size_t)count * sizeof(float);
  if (bytes > s->scratch_bytes) {
    float *grown = realloc(s->scratch, bytes);
    if (grown == NULL) return NULL;
    s->scratch = grown;
    s->scratch_bytes = bytes;
  }
  memcpy(s->scratch, data, bytes);
  s->stats.unaligned_payloads++;
  return s->scratch;
}

float *ps__server_push_floats(ps_server_t *s, zmq_msg_t *f, uint64_t count,
                              int codec, int *code, char *why, size_t wlen) {
  if (codec == PS_CODEC_NONE) {
    float *g = (float *)ps__server_aligned_floats(s, f, count);
    if (g == NULL) {
      *code = PS_ERR_NOMEM;
      snprintf(why, wlen, "no memory to align a push of %llu values",
               (unsigned long long)count);
    }
    return g;
  }
  if (decoded_reserve(s, (size_t)count * sizeof(float)) != PS_OK) {
    *code = PS_ERR_NOMEM;
    snprintf(why, wlen, "no memory to decode a push of %llu values",
             (unsigned long long)count);
    return NULL;
  }
  char err[200];
  int rc = ps_codec_decode(codec, zmq_msg_data(f), zmq_msg_size(f), count,
                           s->decoded, err, sizeof(err));
  if (rc != PS_OK) {
    *code = rc;
    snprintf(why, wlen, "push in %s: %s", ps_codec_name(codec), err);
    return NULL;
  }
  return s->decoded;
}

/* A push's values g (n floats: the received frame, or its aligned copy,
 * both ours) may reach the weights: 1. With NaN or Inf in them, --nonfinite
 * reject refuses m (PS_ERR_NONFINITE) and returns 0; skip zeroes them, so
 * the push still counts (a BSP step waits for every worker's) but moves
 * nothing, and returns 1. Either way it is counted. */
static int nonfinite_ok(ps_server_t *s, ps_msg_t *m, float *g, uint64_t n,
                        zmq_msg_t *frame, int codec, const char *what,
                        uint64_t first) {
  if (ps_floats_finite(g, (size_t)n)) return 1;
  s->stats.nonfinite_pushes++;
  if (s->nonfinite == PS_SERVER_NONFINITE_SKIP) {
    memset(g, 0, (size_t)n * sizeof(float));
    /* The backups get the frame itself: zeros there too (a coded frame
     * keeps its structure and decodes to zeros). */
    if (zmq_msg_data(frame) != (void *)g)
      ps_codec_zero(codec, zmq_msg_data(frame), zmq_msg_size(frame));
    return 1;
  }
  if (strcmp(what, "keys") == 0)
    ps__server_refuse(s, m, PS_ERR_NONFINITE,
                      "push to keys [%llu,+%llu) holds NaN or Inf; refused "
                      "(ps-server --nonfinite reject)",
                      (unsigned long long)first, (unsigned long long)n);
  else
    ps__server_refuse(s, m, PS_ERR_NONFINITE,
                      "sparse push of %llu values holds NaN or Inf; refused "
                      "(ps-server --nonfinite reject)",
                      (unsigned long long)n);
  return 0;
}

/* A push p (m's, or a PushPull's: then *pp_p is its reply-to-be, which
 * this takes over, setting *pp_p to NULL, once the replicator will answer
 * it; else it stays the caller's). */
/* The second half of a push that passed ps_shard_push_begin: marked in the
 * duplicate window, applied, and what a step it completes sets off.
 * Returns whether it completed a step (or was applied at once, ASP). */
static int apply_push(ps_server_t *s, owned_range_t *r, uint32_t worker,
                      const Ps__Push *p, const float *g) {
  ps_dedup_mark(r->dedup, worker, p->seq);
  int applied = 0;
  uint64_t t0 = ps_now_ns();
  ps_shard_push_end(r->shard, worker, p->key_begin, p->count, g, p->clock,
                    &applied);
  ps_hist_observe(&s->hist_apply, ps_now_ns() - t0);
  if (applied) ps__server_after_apply(s, r);
  return applied;
}

/* A PushPull's push is applied: if its replication already ended (no
 * backups, or a failure), its reply goes now; returns whether it did. */
static int pushpull_applied(ps_server_t *s, pushpull_t *pp) {
  pp->applying = 0;
  if (!pp->ready) return 0;
  pushpull_finish(s, pushpull_unlink(s, pp), pp->status, 0, "the push failed");
  return 1;
}

static void serve_push(ps_server_t *s, ps_msg_t *m, const Ps__Push *p,
                       pushpull_t **pp_p) {
  if (!check_epoch(s, m)) return;
  owned_range_t *r = find_range(s, m, p->key_begin, p->count);
  if (r == NULL) return;
  uint32_t worker = m->env->sender;
  if (ps__server_handover_holds(s, r)) {
    /* Our epoch: the client waits for the view that moves the range. */
    s->stats.handover_held++;
    ps__server_refuse(s, m, PS_ERR_STALE_EPOCH,
                      "range [%llu,%llu) is being handed to server %u; the "
                      "next view names its primary",
                      (unsigned long long)r->begin, (unsigned long long)r->end,
                      r->handover_to);
    return;
  }

  /* A resend of a push this range applied (the client resends whatever
   * was not acked after a failover or a timeout) is acked, not applied;
   * the ack still waits for the backups to hold the original. */
  if (!push_is_new(s, m, r, worker, p->seq, "push", pp_p)) return;
  /* The gradient is applied straight from the received frame (ps_msg_recv
   * checked that it holds exactly count floats). */
  int code = PS_OK;
  char bad[256];
  float *g = ps__server_push_floats(s, &m->payload[0], p->count, (int)p->codec,
                                    &code, bad, sizeof(bad));
  if (g == NULL) {
    ps__server_refuse(s, m, code, "%s", bad);
    return;
  }
  if (!nonfinite_ok(s, m, g, p->count, &m->payload[0], (int)p->codec, "keys",
                    p->key_begin))
    return;
  if (!inflight_take(s, m, worker)) return;
  char why[256];
  uint64_t clock_after = 0;
  int rc = ps_dedup_reserve(r->dedup, worker);
  if (rc == PS_OK)
    rc = ps_shard_push_begin(r->shard, worker, p->key_begin, p->count, p->clock,
                             &clock_after, why, sizeof(why));
  else
    snprintf(why, sizeof(why), "no memory to remember worker %u", worker);
  if (rc != PS_OK) {
    inflight_give(s, worker);
    ps__server_refuse(s, m, rc, "%s", why);
    return;
  }
  if (ps__server_step_repl(s) &&
      ps_repl_nbackups(s->repl, r->begin, r->end) > 0) {
    /* Step by step: the backups get the step's sum once it is applied;
     * this push's ack waits for that. */
    pushpull_t *held = pp_p ? *pp_p : NULL;
    if (repl_hold(s, r, m, worker, p->seq, 0, pp_p) != PS_OK) {
      ps_server_stop(s, PS_ERR_NOMEM, "out of memory holding a push's ack", 1);
      return;
    }
    int applied = apply_push(s, r, worker, p, g);
    if (held) {
      if (!pushpull_applied(s, held))
        ps__server_reply_ack(s, &m->route, m->request_id,
                             ps_shard_clock(r->shard), 0);
    } else if (!applied &&
               ps_shard_contributed(r->shard, worker) < r->end - r->begin) {
      /* The worker owes the step more pieces of this range, which may
       * wait behind this one in its window (proto Ack.held). */
      s->stats.held_acks++;
      reply_held_ack(s, &m->route, m->request_id, ps_shard_clock(r->shard));
    }
    return;
  }
  /* Forwarded to the backups before it is applied here, so their copies
   * are on the wire while this thread applies. With no backups the ack
   * goes out now, before the apply: ZeroMQ's I/O thread sends it while
   * this thread applies, nothing can fail past the begin, and this thread
   * serves nothing else before the end, so every request served after
   * this one sees the push. */
  pushpull_t *pp = pp_p ? *pp_p : NULL;
  /* With no backups, push_done runs inside repl_push, before the apply:
   * a PushPull's weights must wait for it (pushpull_done). */
  if (pp) pp->applying = 1;
  if (repl_push(s, r, m, clock_after, 0, worker, p, &m->payload[0], pp_p) !=
      PS_OK) {
    /* Applied but not on the backups: this server cannot keep its
     * promise; the backup takes over with what it has. */
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory queueing replication", 1);
    return;
  }
  apply_push(s, r, worker, p, g);
  if (pp) pushpull_applied(s, pp);
}

void ps__server_handle_push(ps_server_t *s, ps_msg_t *m) {
  serve_push(s, m, m->env->push, NULL);
}

void ps__server_handle_pull(ps_server_t *s, ps_msg_t *m) {
  const Ps__Pull *p = m->env->pull;
  if (!check_epoch(s, m)) return;
  if (p->count == 0) {
    ps__server_refuse(s, m, PS_ERR_PROTO, "pull of 0 keys");
    return;
  }
  if (p->count > s->limits.max_payload_bytes / sizeof(float)) {
    ps__server_refuse(
        s, m, PS_ERR_TOO_BIG,
        "pull of %llu values exceeds the limit of %zu bytes per frame",
        (unsigned long long)p->count, s->limits.max_payload_bytes);
    return;
  }
  owned_range_t *r = find_range(s, m, p->key_begin, p->count);
  if (r == NULL) return;

  /* BSP: the pull waits for its step; SSP: for its step - staleness. */
  if (ps_shard_mode(r->shard) != PS__CONSISTENCY_MODE__MODE_ASP &&
      p->clock > ps_shard_clock(r->shard) + ps_shard_staleness(r->shard)) {
    if (s->stats.parked_pulls >= PARKED_PULLS_MAX) {
      ps__server_refuse(
          s, m, PS_ERR_REFUSED,
          "%d pulls already wait for a step; pull for step %llu refused",
          PARKED_PULLS_MAX, (unsigned long long)p->clock);
      return;
    }
    if (!inflight_take(s, m, m->env->sender)) return;
    if (park_pull(s, r, &m->route, m->request_id, m->env->sender, p->key_begin,
                  p->count, p->clock, 0, (int)p->codec) != PS_OK) {
      inflight_give(s, m->env->sender);
      ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to park a pull");
    }
    return;
  }
  send_pull_reply(s, &m->route, m->request_id, r, p->key_begin, p->count, 0,
                  (int)p->codec);
}

/* ---- sparse tables (issues #3, #14) ----
 * A row lives in one dense range (ps_view_sparse_range) and every copy of
 * the range holds it: a sparse push follows a dense push's path, the
 * range's duplicate window, the fan-out to its backups, and in BSP its
 * step. */

/* Grows *buf to bytes; PS_OK or PS_ERR_NOMEM. */
static int scratch_reserve(void **buf, size_t *have, size_t bytes) {
  if (bytes <= *have) return PS_OK;
  void *grown = realloc(*buf, bytes);
  if (grown == NULL) return PS_ERR_NOMEM;
  *buf = grown;
  *have = bytes;
  return PS_OK;
}

const uint64_t *ps__server_aligned_keys(ps_server_t *s, zmq_msg_t *f,
                                        uint64_t n) {
  /* A frame may sit at any offset in ZeroMQ's buffer, so the keys are
   * copied to an aligned scratch (a few KiB; cheaper than a branch per
   * key). */
  size_t bytes = (size_t)n * sizeof(uint64_t);
  if (scratch_reserve((void **)&s->key_scratch, &s->key_scratch_bytes,
                      bytes ? bytes : 1) != PS_OK)
    return NULL;
  memcpy(s->key_scratch, zmq_msg_data(f), bytes);
  return s->key_scratch;
}

/* Rows of a table of spec one copy of a range may hold under the cap: the
 * server's bytes split over the tables and over the copies a server holds
 * when the copies of the sparse partitions are spread evenly over the
 * servers the job started with: replication of them with one range per
 * server, 6 for 6 ranges of 2 copies on 2 servers (--ranges, issue #16).
 * A function of the view's fixed settings only, so every copy of a range
 * has the same cap and evicts the same rows. Each row costs its floats and
 * at most about 40 bytes of bookkeeping (ps-server/sparse.c: its id, 8;
 * 1.33 to 2.67 hash slots of 8; recency links, 8). */
static uint64_t sparse_cap_rows(const ps_server_t *s, const ps_view_t *view,
                                const ps_sparse_spec_t *spec) {
  if (s->sparse_max_bytes == 0) return 0;
  uint64_t copies = view->replication ? view->replication : 1;
  if (view->servers > 0 && view->nsparse_parts > 0)
    copies = (view->nsparse_parts * copies + view->servers - 1) / view->servers;
  uint64_t per_row =
      ps_sparse_row_floats(spec, &view->model) * sizeof(float) + 40;
  uint64_t rows =
      s->sparse_max_bytes / copies / view->model.nsparse / per_row;
  return rows ? rows : 1;
}

ps_sparse_table_t **ps__server_sparse_new_tables(const ps_server_t *s,
                                                 const ps_view_t *view) {
  const ps_model_t *m = &view->model;
  ps_sparse_table_t **t = calloc(m->nsparse + 1, sizeof(*t));
  if (t == NULL) return NULL;
  for (size_t i = 0; i < m->nsparse; i++)
    if ((t[i] = ps_sparse_table_new(&m->sparse[i], m)) == NULL ||
        ps_sparse_table_set_limits(t[i], sparse_cap_rows(s, view, &m->sparse[i]),
                                   s->sparse_admit_after) != PS_OK) {
      ps__server_sparse_free_tables(&t, i + 1);
      return NULL;
    }
  return t;
}

void ps__server_sparse_retire_tables(ps_server_t *s, ps_sparse_table_t ***t_p,
                                     size_t n) {
  for (size_t i = 0; *t_p && i < n; i++) {
    if ((*t_p)[i] == NULL) continue;
    ps_sparse_stats_t st;
    ps_sparse_table_stats((*t_p)[i], &st);
    s->sparse_gone.evictions += st.evictions;
    s->sparse_gone.not_admitted += st.not_admitted;
  }
  ps__server_sparse_free_tables(t_p, n);
}

void ps__server_sparse_stats(const ps_server_t *s, ps_sparse_stats_t *out) {
  *out = s->sparse_gone;
  out->rows = 0;
  for (size_t i = 0; i < s->nranges; i++) {
    const owned_range_t *r = &s->ranges[i];
    for (size_t t = 0; r->sparse && t < r->nsparse; t++) {
      ps_sparse_stats_t st;
      ps_sparse_table_stats(r->sparse[t], &st);
      out->rows += st.rows;
      out->evictions += st.evictions;
      out->not_admitted += st.not_admitted;
    }
  }
}

void ps__server_sparse_free_tables(ps_sparse_table_t ***t_p, size_t n) {
  if (*t_p == NULL) return;
  for (size_t i = 0; i < n; i++) ps_sparse_table_destroy(&(*t_p)[i]);
  free(*t_p);
  *t_p = NULL;
}

int ps__server_sparse_apply(ps_server_t *s, owned_range_t *r,
                            ps_sparse_table_t *t, const uint64_t *keys,
                            size_t n, const float *g, uint64_t step,
                            char *err, size_t errlen) {
  if (ps_shard_mode(r->shard) == PS__CONSISTENCY_MODE__MODE_BSP)
    return ps_sparse_table_accumulate(t, keys, n, g, step, err, errlen);
  int rc = ps_sparse_table_push(t, keys, n, g, ps_shard_push_scale(r->shard),
                                step, err, errlen);
  if (rc == PS_OK) s->stats.applies++;
  return rc;
}

/* The index of the sparse table called name in the model, or -1. */
static int sparse_index(const ps_model_t *m, const char *name) {
  for (size_t i = 0; name && i < m->nsparse; i++)
    if (strcmp(m->sparse[i].name, name) == 0) return (int)i;
  return -1;
}

/* The range this server is the primary of that holds every row of a
 * sparse request, its table (in *t) and its keys, aligned and checked.
 * NULL after refusing m. */
static owned_range_t *sparse_begin(ps_server_t *s, ps_msg_t *m,
                                   const char *table, uint64_t nkeys,
                                   ps_sparse_table_t **t,
                                   const uint64_t **keys_out) {
  if (!check_epoch(s, m)) return NULL;
  if (nkeys > s->max_sparse_keys) {
    ps__server_refuse(s, m, PS_ERR_TOO_BIG,
                      "%llu rows in one sparse request, the limit is %llu "
                      "(ps-server --max-sparse-keys)",
                      (unsigned long long)nkeys,
                      (unsigned long long)s->max_sparse_keys);
    return NULL;
  }
  int ti = sparse_index(&s->view->model, table);
  if (ti < 0) {
    ps__server_refuse(s, m, PS_ERR_UNKNOWN_KEY,
                      "no sparse table \"%s\" in the model",
                      table ? table : "");
    return NULL;
  }
  /* ps_msg_recv checked the frame holds exactly nkeys uint64. */
  const uint64_t *keys = ps__server_aligned_keys(s, &m->payload[0], nkeys);
  if (keys == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory for %llu keys",
                      (unsigned long long)nkeys);
    return NULL;
  }
  char why[256];
  if (ps_sparse_keys_check(keys, nkeys, why, sizeof(why)) != PS_OK) {
    ps__server_refuse(s, m, PS_ERR_PROTO, "table \"%s\": %s", table, why);
    return NULL;
  }
  uint64_t salt = s->view->model.sparse[ti].salt;
  int64_t ri = ps_view_sparse_range(s->view, salt, keys[0]);
  if (ri < 0) {
    ps__server_refuse(s, m, PS_ERR_UNKNOWN_KEY,
                      "table \"%s\": the model has no dense range to hold "
                      "sparse rows (README, Sparse tables)",
                      table);
    return NULL;
  }
  for (uint64_t i = 1; i < nkeys; i++)
    if (ps_view_sparse_range(s->view, salt, keys[i]) != ri) {
      ps__server_refuse(s, m, PS_ERR_PROTO,
                        "table \"%s\": rows %llu and %llu belong to different "
                        "ranges: one request per range",
                        table, (unsigned long long)keys[0],
                        (unsigned long long)keys[i]);
      return NULL;
    }
  const ps_range_t *vr = &s->view->ranges[ri];
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->shard && r->sparse && r->begin == vr->begin &&
        r->end == vr->end) {
      *t = r->sparse[ti];
      *keys_out = keys;
      return r;
    }
  }
  ps__server_refuse(
      s, m,
      m->env->epoch < ps__server_view_epoch(s) ? PS_ERR_STALE_EPOCH
                                               : PS_ERR_UNKNOWN_KEY,
      "table \"%s\": row %llu belongs to range [%llu,%llu) of server %u, "
      "not %u, at epoch %llu",
      table, (unsigned long long)keys[0], (unsigned long long)vr->begin,
      (unsigned long long)vr->end, vr->server_id, s->node_id,
      (unsigned long long)ps__server_view_epoch(s));
  return NULL;
}

void ps__server_handle_sparse_push(ps_server_t *s, ps_msg_t *m) {
  const Ps__SparsePush *p = m->env->sparse_push;
  const uint64_t *keys;
  ps_sparse_table_t *t;
  owned_range_t *r = sparse_begin(s, m, p->table, p->nkeys, &t, &keys);
  if (r == NULL) return;
  uint32_t worker = m->env->sender;
  if (ps__server_handover_holds(s, r)) {
    s->stats.handover_held++;
    ps__server_refuse(s, m, PS_ERR_STALE_EPOCH,
                      "range [%llu,%llu) is being handed to server %u; the "
                      "next view names its primary",
                      (unsigned long long)r->begin, (unsigned long long)r->end,
                      r->handover_to);
    return;
  }
  size_t bytes = (size_t)p->nkeys * ps_sparse_table_dim(t) * sizeof(float);
  size_t got = zmq_msg_size(&m->payload[1]);
  if (got != bytes) {
    ps__server_refuse(
        s, m, PS_ERR_PROTO,
        "table \"%s\": values frame has %zu bytes, %llu keys of dim %u "
        "need %zu",
        p->table, got, (unsigned long long)p->nkeys, ps_sparse_table_dim(t),
        bytes);
    return;
  }
  /* The range's duplicate window, as for a dense push: a resend after a
   * failover or a timeout is acked once its original is on the backups. */
  if (!push_is_new(s, m, r, worker, p->seq, "sparse push", NULL)) return;
  const float *g = ps__server_aligned_floats(s, &m->payload[1],
                                             bytes / sizeof(float));
  if (g == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to align a sparse push");
    return;
  }
  if (!nonfinite_ok(s, m, (float *)g, bytes / sizeof(float), &m->payload[1],
                    PS_CODEC_NONE, "rows of", 0))
    return;
  char why[256];
  int rc = ps_shard_check_step(r->shard, worker, p->clock, why, sizeof(why));
  if (rc != PS_OK) {
    ps__server_refuse(s, m, rc, "table \"%s\": %s", p->table, why);
    return;
  }
  if (!inflight_take(s, m, worker)) return;
  if (ps_dedup_reserve(r->dedup, worker) != PS_OK) {
    inflight_give(s, worker);
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory to remember worker %u",
                      worker);
    return;
  }
  rc = ps__server_sparse_apply(s, r, t, keys, p->nkeys, g, p->clock, why,
                               sizeof(why));
  if (rc != PS_OK) {
    /* Part of the rows may have moved: the copies would differ. */
    inflight_give(s, worker);
    ps__server_refuse(s, m, rc, "table \"%s\": %s", p->table, why);
    ps_server_stop(s, rc, "a sparse push failed half-applied", 1);
    return;
  }
  ps_dedup_mark(r->dedup, worker, p->seq);
  /* The frames themselves go to the backups, by reference. */
  if (ps_repl_sparse_push(s->repl, r->begin, r->end, &m->route, m->request_id,
                          ps_shard_clock(r->shard), worker, p,
                          m->payload) != PS_OK)
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory queueing replication", 1);
}

/* BSP: the range's dense step was applied; its rows' sums follow, scaled
 * the same way. */
static void sparse_step_applied(ps_server_t *s, owned_range_t *r) {
  if (r->sparse == NULL ||
      ps_shard_mode(r->shard) != PS__CONSISTENCY_MODE__MODE_BSP)
    return;
  float scale = ps_shard_step_scale(r->shard);
  uint64_t step = ps_shard_clock(r->shard) - 1;
  for (size_t i = 0; i < r->nsparse; i++)
    if (ps_sparse_table_apply_pending(r->sparse[i], scale, step) != PS_OK) {
      ps_server_stop(s, PS_ERR_NOMEM, "out of memory applying sparse rows", 1);
      return;
    }
}

static void sparse_rows_free(void *data, void *hint) {
  (void)hint;
  free(data);
}

void ps__server_handle_sparse_pull(ps_server_t *s, ps_msg_t *m) {
  const Ps__SparsePull *p = m->env->sparse_pull;
  const uint64_t *keys;
  ps_sparse_table_t *t;
  owned_range_t *range = sparse_begin(s, m, p->table, p->nkeys, &t, &keys);
  if (range == NULL) return;
  uint32_t dim = ps_sparse_table_dim(t);
  if (p->nkeys > s->limits.max_payload_bytes / sizeof(float) / dim) {
    ps__server_refuse(
        s, m, PS_ERR_TOO_BIG,
        "pull of %llu rows of dim %u exceeds the limit of %zu bytes",
        (unsigned long long)p->nkeys, dim, s->limits.max_payload_bytes);
    return;
  }
  size_t bytes = (size_t)p->nkeys * dim * sizeof(float);
  /* Rows are copied into a frame ZeroMQ owns: the table's arena moves when
   * it grows, so it cannot be lent zero-copy as dense blocks are. */
  float *rows = malloc(bytes);
  if (rows == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory for a sparse pull reply");
    return;
  }
  char why[256];
  int rc = ps_sparse_table_pull(t, keys, p->nkeys, rows, why, sizeof(why));
  if (rc != PS_OK) {
    free(rows);
    ps__server_refuse(s, m, rc, "table \"%s\": %s", p->table, why);
    return;
  }
  zmq_msg_t frame;
  if (ps_payload_wrap(&frame, rows, bytes, sparse_rows_free, NULL) != PS_OK) {
    free(rows);
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory for a sparse pull reply");
    return;
  }
  s->stats.pull_bytes_copied += bytes;
  Ps__SparsePullReply r = PS__SPARSE_PULL_REPLY__INIT;
  r.table = p->table;
  r.nkeys = p->nkeys;
  r.dim = dim;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m->request_id;
  env.sender = s->node_id;
  env.epoch = ps__server_view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL_REPLY;
  env.sparse_pull_reply = &r;
  ps__server_count_sent(s, &env, bytes);
  if (ps_msg_send(ps_zsock_socket(s->data), &m->route, &env, &frame, 1) !=
      PS_OK)
    s->stats.send_failures++;
}

void ps__server_sparse_free(ps_server_t *s) {
  free(s->key_scratch);
  s->key_scratch = NULL;
  s->key_scratch_bytes = 0;
}

void ps__server_handle_pushpull(ps_server_t *s, ps_msg_t *m) {
  const Ps__PushPull *q = m->env->push_pull;
  if (q->count == 0) {
    ps__server_refuse(s, m, PS_ERR_PROTO, "push_pull of 0 keys");
    return;
  }
  if (q->clock == UINT64_MAX) {
    ps__server_refuse(s, m, PS_ERR_PROTO,
                      "push_pull at step %llu: no next step to pull",
                      (unsigned long long)q->clock);
    return;
  }
  pushpull_t *pp = calloc(1, sizeof(*pp));
  if (pp == NULL) {
    ps__server_refuse(s, m, PS_ERR_NOMEM, "no memory for a push_pull");
    return;
  }
  pp->request_id = m->request_id;
  pp->worker = m->env->sender;
  pp->key_begin = q->key_begin;
  pp->count = q->count;
  pp->pull_clock = q->clock + 1;
  pp->codec = (int)q->pull_codec; /* ps_msg_recv checked it */
  /* The same push, so the same checks, decoder, window and replication
   * (a coded frame goes to the backups as it came, as a Push's). */
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = q->key_begin;
  p.count = q->count;
  p.clock = q->clock;
  p.seq = q->seq;
  p.codec = q->codec;
  serve_push(s, m, &p, &pp);
  /* Not taken (refused, answered already) or given back: ours to free. */
  free(pp);
}
