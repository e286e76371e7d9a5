#include "replica.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "common/transport.h"

#define MAX_BACKUPS (PS_MAX_REPLICAS - 1)
/* Coalesced pushes (REPL_PUSHES): at most one frame per push in a message,
 * and a batch goes once it holds this many bytes of pushes, answered or
 * not, so a slow backup does not hold a growing pile. */
#define BATCH_MAX PS_MAX_PAYLOAD_FRAMES
#define BATCH_BYTES (8u << 20)
/* Only pushes smaller than this wait: a big one is worth a message of its
 * own, and holding it until the backups answer the last one would only
 * take it out of the pipe (ps-bench could not tell the two apart at 1 MiB
 * on 2 cores: 1,570-1,844 MB/s either way). */
#define BATCH_SMALL (256u << 10)

/* The connection to one backup node. */
typedef struct {
  uint32_t id;
  char address[PS_ADDR_MAX];
  ps_zsock_t *zs;
  ps_repl_t *r;
} peer_t;

/* A worker's push of a BSP step not complete yet (ps_repl_hold): its ack
 * waits for the step to be on every backup. */
typedef struct {
  zmq_msg_t route;
  uint64_t request_id;
  uint32_t worker;
  uint64_t seq;
  int duplicate;
} held_t;

/* Pushes to a range that came while its backups had not answered what
 * they were sent: they go together (REPL_PUSHES) when the backups answer,
 * in the order they came. Their entries wait in the ring (queued). */
typedef struct {
  uint32_t n;
  size_t bytes;
  uint64_t id[BATCH_MAX]; /* their entries */
  Ps__ReplPush push[BATCH_MAX];
  zmq_msg_t frame[BATCH_MAX]; /* the received frames, referenced */
} batch_t;

/* The backups of one range this node is the primary of. */
typedef struct {
  uint64_t begin, end;
  uint32_t n;
  uint32_t backups[MAX_BACKUPS];
  held_t *held; /* in arrival order */
  size_t nheld, held_cap;
  batch_t *batch; /* NULL until the first coalesced push */
} chain_t;

/* One change on its way to the backups. */
typedef struct {
  int has_route; /* a worker's push: answer it when done */
  zmq_msg_t route;
  uint32_t worker;
  uint64_t request_id, clock;
  int duplicate;
  uint64_t begin, end;
  uint32_t nwaiting;
  uint32_t waiting[MAX_BACKUPS];
  int status; /* PS_OK, or why it failed */
  char reason[160];
  /* The request id of the message that carries this change to the
   * backups: its own, or a REPL_PUSHES message's (its first entry's id). */
  uint64_t msg_id;
  int queued; /* a push in its chain's batch, not sent yet */
  /* A REPL_STEP; and the acks of its pushes, queued right behind it, which
   * fail when it does. */
  int is_step, follows_step;
  /* A snapshot: who it went to, its size and when. */
  int is_snapshot;
  uint32_t snap_backup;
  uint64_t snap_bytes, snap_start_ms;
} entry_t;

struct ps_repl_s {
  uv_loop_t *loop;
  void *zctx;
  ps_frame_limits_t limits;
  ps_repl_cbs_t cbs;
  void *arg;
  uint32_t node_id;
  uint64_t epoch;
  ps_auth_token_t token; /* this node's: backups check it (common/auth.h) */
  int has_token;
  const ps_keys_t *keys; /* CURVE: NULL for plaintext */
  peer_t **peers;
  size_t npeers;
  chain_t *chains;
  size_t nchains;
  /* Entry with id i is ring[i & (cap - 1)]; ids [head_id, head_id + count)
   * are in use. */
  entry_t *ring;
  size_t cap, count;
  uint64_t head_id;
  int completing;
  uint64_t pushes_sent, push_msgs_sent; /* ps_repl_push_stats */
  /* The last REPL_STEP entry completed: its followers take its outcome. */
  int step_status;
  char step_reason[160];
};

static chain_t *chain_find(const ps_repl_t *r, uint64_t begin, uint64_t end) {
  for (size_t i = 0; i < r->nchains; i++)
    if (r->chains[i].begin == begin && r->chains[i].end == end)
      return &r->chains[i];
  return NULL;
}

static entry_t *entry_at(ps_repl_t *r, uint64_t id) {
  if (id < r->head_id || id - r->head_id >= r->count) return NULL;
  return &r->ring[id & (r->cap - 1)];
}

static int ring_grow(ps_repl_t *r) {
  size_t cap = r->cap ? 2 * r->cap : 256;
  entry_t *ring = calloc(cap, sizeof(*ring));
  if (ring == NULL) return PS_ERR_NOMEM;
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    entry_t *from = &r->ring[id & (r->cap - 1)], *to = &ring[id & (cap - 1)];
    *to = *from;
    if (from->has_route) {
      zmq_msg_init(&to->route);
      zmq_msg_move(&to->route, &from->route);
      zmq_msg_close(&from->route);
    }
  }
  free(r->ring);
  r->ring = ring;
  r->cap = cap;
  return PS_OK;
}

/* A fresh entry at the tail (its id in *id), or NULL when out of memory. */
static entry_t *entry_push(ps_repl_t *r, uint64_t begin, uint64_t end,
                           uint64_t *id) {
  if (r->count == r->cap && ring_grow(r) != PS_OK) return NULL;
  *id = r->head_id + r->count;
  entry_t *e = &r->ring[*id & (r->cap - 1)];
  memset(e, 0, sizeof(*e));
  e->begin = begin;
  e->end = end;
  e->msg_id = *id;
  r->count++;
  return e;
}

static void entry_stop_waiting(entry_t *e, uint32_t backup) {
  for (uint32_t i = 0; i < e->nwaiting; i++)
    if (e->waiting[i] == backup) {
      e->waiting[i] = e->waiting[--e->nwaiting];
      return;
    }
}

/* Answers, in order, every entry at the head that waits for no one. */
static void complete(ps_repl_t *r) {
  if (r->completing) return; /* a callback may add entries */
  r->completing = 1;
  while (r->count > 0) {
    entry_t *e = &r->ring[r->head_id & (r->cap - 1)];
    if (e->nwaiting > 0 || e->queued) break;
    entry_t done = *e;
    r->head_id++;
    r->count--;
    if (done.is_step) {
      r->step_status = done.status;
      snprintf(r->step_reason, sizeof(r->step_reason), "%s", done.reason);
    } else if (done.follows_step && r->step_status != PS_OK) {
      done.status = r->step_status;
      snprintf(done.reason, sizeof(done.reason), "%s", r->step_reason);
    }
    if (done.has_route) {
      if (r->cbs.push_done)
        r->cbs.push_done(r->arg, &done.route, done.request_id, done.worker,
                         done.clock, done.duplicate, done.status, done.reason);
      zmq_msg_close(&done.route);
    } else if (done.is_snapshot && done.status == PS_OK && r->cbs.synced) {
      r->cbs.synced(r->arg, done.begin, done.end, done.snap_backup,
                    done.snap_bytes, ps_now_ms() - done.snap_start_ms);
    } else if (done.status != PS_OK) {
      PS_WARN("replication_failed", "range=[%llu,%llu) reason=\"%s\"",
              (unsigned long long)done.begin, (unsigned long long)done.end,
              done.reason);
    }
  }
  r->completing = 0;
}

/* Answers every push c holds with status (an error: the step will not be
 * replicated from here) and forgets them. */
static void held_fail(ps_repl_t *r, chain_t *c, int status,
                      const char *reason) {
  for (size_t i = 0; i < c->nheld; i++) {
    held_t *h = &c->held[i];
    if (r->cbs.push_done)
      r->cbs.push_done(r->arg, &h->route, h->request_id, h->worker, 0,
                       h->duplicate, status, reason);
    zmq_msg_close(&h->route);
  }
  c->nheld = 0;
}

static void batch_free(batch_t **b_p) {
  batch_t *b = *b_p;
  if (b == NULL) return;
  for (uint32_t i = 0; i < b->n; i++) zmq_msg_close(&b->frame[i]);
  free(b);
  *b_p = NULL;
}

static void chain_free(ps_repl_t *r, chain_t *c, int status,
                       const char *reason) {
  held_fail(r, c, status, reason);
  batch_free(&c->batch);
  free(c->held);
  c->held = NULL;
  c->held_cap = 0;
}

static void flush(ps_repl_t *r, chain_t *c);
static void flush_ready(ps_repl_t *r);

/* ---- connections ---- */

static void on_peer_reply(ps_zsock_t *zs, ps_msg_t *m, int status,
                          const char *reason, void *arg) {
  peer_t *p = arg;
  ps_repl_t *r = p->r;
  entry_t *e = m->env ? entry_at(r, m->request_id) : NULL;
  if (status != PS_OK || e == NULL) {
    PS_WARN("replica_reply_dropped", "backup=%u request=%llu status=%s %s",
            p->id, (unsigned long long)m->request_id, ps_err_name(status),
            reason);
  } else {
    int code = PS_OK;
    if (m->env->body_case != PS__ENVELOPE__BODY_ACK) {
      code = m->env->body_case == PS__ENVELOPE__BODY_ERROR ? m->env->error->code
                                                           : PS_ERR_PROTO;
      if (code >= 0) code = PS_ERR_PROTO;
      /* The backup follows a view in which this node is not the primary
       * of the range: the worker must go to the one that is. */
      if (code == PS_ERR_FENCED) code = PS_ERR_STALE_EPOCH;
    }
    /* Every change the message carried (a REPL_PUSHES message: its
     * pushes, whose entries follow the first in the ring). */
    for (uint64_t id = m->request_id; id < r->head_id + r->count; id++) {
      entry_t *x = &r->ring[id & (r->cap - 1)];
      if (x->msg_id != m->request_id) continue;
      if (code != PS_OK) {
        x->status = code;
        snprintf(x->reason, sizeof(x->reason), "backup %u refused: %s", p->id,
                 m->env->body_case == PS__ENVELOPE__BODY_ERROR &&
                         m->env->error->message
                     ? m->env->error->message
                     : ps_body_name(m->env->body_case));
      }
      entry_stop_waiting(x, p->id);
    }
  }
  ps_msg_close(m);
  complete(r);
  flush_ready(r);
  if (r->cbs.progress) r->cbs.progress(r->arg);
}

static peer_t *peer_find(const ps_repl_t *r, uint32_t id) {
  for (size_t i = 0; i < r->npeers; i++)
    if (r->peers[i]->id == id) return r->peers[i];
  return NULL;
}

static int peer_get(ps_repl_t *r, const ps_view_t *view, uint32_t id,
                    peer_t **out) {
  *out = peer_find(r, id);
  if (*out) return PS_OK;
  const ps_node_t *node = ps_view_node(view, id);
  if (node == NULL || node->address[0] == '\0') return PS_ERR_INVAL;
  peer_t **grown = realloc(r->peers, (r->npeers + 1) * sizeof(*grown));
  if (grown == NULL) return PS_ERR_NOMEM;
  r->peers = grown;
  peer_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return PS_ERR_NOMEM;
  p->id = id;
  p->r = r;
  snprintf(p->address, sizeof(p->address), "%s", node->address);
  int err = 0;
  char why[256];
  ps_zsock_opts_t zo = {.limits = &r->limits,
                        .token = r->has_token ? &r->token : NULL,
                        .token_use = PS_AUTH_USE_REPLICA,
                        .keys = r->keys,
                        .peer_key = node->curve_key};
  p->zs = ps_zsock_new(r->loop, r->zctx, ZMQ_DEALER, NULL, p->address, &zo,
                       on_peer_reply, p, &err, why, sizeof(why));
  if (p->zs == NULL) {
    PS_ERROR("replica_connect_failed", "backup=%u address=%s err=%s %s", id,
             p->address, ps_err_name(err), why);
    free(p);
    return err ? err : PS_ERR_ZMQ;
  }
  r->peers[r->npeers++] = p;
  *out = p;
  PS_INFO("replica_connected", "backup=%u address=%s", id, p->address);
  return PS_OK;
}

/* Closes the connections no chain needs any more. */
static void peers_prune(ps_repl_t *r) {
  for (size_t i = 0; i < r->npeers;) {
    peer_t *p = r->peers[i];
    int used = 0;
    for (size_t c = 0; c < r->nchains && !used; c++)
      for (uint32_t k = 0; k < r->chains[c].n; k++)
        if (r->chains[c].backups[k] == p->id) used = 1;
    if (used) {
      i++;
      continue;
    }
    ps_zsock_destroy(&p->zs);
    free(p);
    r->peers[i] = r->peers[--r->npeers];
  }
}

static void envelope_init(const ps_repl_t *r, Ps__Envelope *env, uint64_t id) {
  ps__envelope__init(env);
  env->request_id = id;
  env->sender = r->node_id;
  env->epoch = r->epoch;
}

/* ---- interface ---- */

ps_repl_t *ps_repl_new(uv_loop_t *loop, void *zctx,
                       const ps_frame_limits_t *limits,
                       const ps_repl_cbs_t *cbs, void *arg) {
  ps_repl_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->loop = loop;
  r->zctx = zctx;
  r->limits = *limits;
  r->cbs = *cbs;
  r->arg = arg;
  if (ring_grow(r) != PS_OK) {
    free(r);
    return NULL;
  }
  return r;
}

void ps_repl_destroy(ps_repl_t **r_p) {
  ps_repl_t *r = *r_p;
  if (r == NULL) return;
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    entry_t *e = &r->ring[id & (r->cap - 1)];
    e->nwaiting = 0;
    e->queued = 0;
    e->status = PS_ERR_SHUTDOWN;
    snprintf(e->reason, sizeof(e->reason), "the server stops");
  }
  complete(r);
  for (size_t i = 0; i < r->nchains; i++)
    chain_free(r, &r->chains[i], PS_ERR_SHUTDOWN, "the server stops");
  for (size_t i = 0; i < r->npeers; i++) {
    ps_zsock_destroy(&r->peers[i]->zs);
    free(r->peers[i]);
  }
  free(r->peers);
  free(r->chains);
  free(r->ring);
  free(r);
  *r_p = NULL;
}

void ps_repl_set_keys(ps_repl_t *r, const ps_keys_t *keys) {
  r->keys = keys;
}

void ps_repl_set_token(ps_repl_t *r, const ps_auth_token_t *t) {
  r->token = *t;
  r->has_token = 1;
}

void ps_repl_set_identity(ps_repl_t *r, uint32_t node_id, uint64_t epoch) {
  r->node_id = node_id;
  r->epoch = epoch;
}

int ps_repl_set_chain(ps_repl_t *r, const ps_view_t *view,
                      const ps_range_t *vr) {
  chain_t *c = chain_find(r, vr->begin, vr->end);
  if (c == NULL) {
    batch_t *b = calloc(1, sizeof(*b));
    chain_t *grown =
        b ? realloc(r->chains, (r->nchains + 1) * sizeof(*grown)) : NULL;
    if (grown == NULL) {
      free(b);
      return PS_ERR_NOMEM;
    }
    r->chains = grown;
    c = &r->chains[r->nchains++];
    memset(c, 0, sizeof(*c));
    c->begin = vr->begin;
    c->end = vr->end;
    c->batch = b;
  }
  /* The pushes waiting to go go to the backups they came for: the old
   * chain's (those that leave it are no longer waited for, below). */
  flush(r, c);
  /* Connect first, so a failure leaves the old chain in place. */
  for (uint32_t k = 0; k < vr->nbackups; k++) {
    peer_t *p;
    int rc = peer_get(r, view, vr->backups[k], &p);
    if (rc != PS_OK) return rc;
  }
  c->n = vr->nbackups;
  memcpy(c->backups, vr->backups, sizeof(c->backups));
  /* Changes waiting for a backup that left the chain wait no more: the
   * new backups get the range by snapshot, which holds them. */
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    entry_t *e = &r->ring[id & (r->cap - 1)];
    if (e->begin != vr->begin || e->end != vr->end) continue;
    for (uint32_t i = 0; i < e->nwaiting;) {
      if (ps_range_has_backup(vr, e->waiting[i])) {
        i++;
        continue;
      }
      e->waiting[i] = e->waiting[--e->nwaiting];
    }
  }
  peers_prune(r);
  complete(r);
  return PS_OK;
}

void ps_repl_drop_chain(ps_repl_t *r, uint64_t begin, uint64_t end) {
  chain_t *c = chain_find(r, begin, end);
  if (c == NULL) return;
  char why[160];
  snprintf(why, sizeof(why),
           "server %u is no longer the primary of [%llu,%llu) at epoch %llu",
           r->node_id, (unsigned long long)begin, (unsigned long long)end,
           (unsigned long long)r->epoch);
  chain_free(r, c, PS_ERR_STALE_EPOCH, why);
  *c = r->chains[--r->nchains];
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    entry_t *e = &r->ring[id & (r->cap - 1)];
    if (e->begin != begin || e->end != end || (e->nwaiting == 0 && !e->queued))
      continue;
    e->nwaiting = 0;
    e->queued = 0;
    e->status = PS_ERR_STALE_EPOCH;
    snprintf(e->reason, sizeof(e->reason),
             "server %u is no longer the primary of [%llu,%llu) at epoch "
             "%llu",
             r->node_id, (unsigned long long)begin, (unsigned long long)end,
             (unsigned long long)r->epoch);
  }
  peers_prune(r);
  complete(r);
}

void ps_repl_push_stats(const ps_repl_t *r, uint64_t *pushes,
                        uint64_t *messages) {
  *pushes = r->pushes_sent;
  *messages = r->push_msgs_sent;
}

uint32_t ps_repl_nbackups(const ps_repl_t *r, uint64_t begin, uint64_t end) {
  const chain_t *c = chain_find(r, begin, end);
  return c ? c->n : 0;
}

size_t ps_repl_waiting(const ps_repl_t *r) {
  return r->count;
}

size_t ps_repl_range_waiting(const ps_repl_t *r, uint64_t begin, uint64_t end) {
  size_t n = 0;
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    const entry_t *e = &r->ring[id & (r->cap - 1)];
    n += e->begin == begin && e->end == end && (e->nwaiting > 0 || e->queued);
  }
  return n;
}

/* Sends one Replicate with request id id (and a reference to each of the
 * npayload frames of payload) to every backup of c; their ids go to sent.
 * Returns how many. */
static uint32_t send_msg(ps_repl_t *r, const chain_t *c, uint64_t id,
                         Ps__Replicate *rep, zmq_msg_t *payload, int npayload,
                         uint32_t *sent) {
  Ps__Envelope env;
  envelope_init(r, &env, id);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = rep;
  uint32_t n = 0;
  for (uint32_t k = 0; k < c->n; k++) {
    peer_t *p = peer_find(r, c->backups[k]);
    if (p == NULL) continue;
    zmq_msg_t f[BATCH_MAX];
    int nf = payload ? npayload : 0;
    for (int i = 0; i < nf; i++) {
      zmq_msg_init(&f[i]);
      zmq_msg_copy(&f[i], &payload[i]);
    }
    if (ps_msg_send(ps_zsock_socket(p->zs), NULL, &env, nf ? f : NULL, nf) !=
        PS_OK) {
      /* Only a closed socket fails here; the view will drop the backup. */
      PS_WARN("replica_send_failed", "backup=%u", p->id);
    }
    sent[n++] = p->id;
  }
  return n;
}

/* send_msg for the change of entry e (request id id): e waits for every
 * backup it went to. */
static void send_all(ps_repl_t *r, const chain_t *c, entry_t *e, uint64_t id,
                     Ps__Replicate *rep, zmq_msg_t *payload, int npayload) {
  e->nwaiting = send_msg(r, c, id, rep, payload, npayload, e->waiting);
}

/* 1 while something sent to c's backups is unanswered. */
static int chain_busy(const ps_repl_t *r, const chain_t *c) {
  for (uint64_t id = r->head_id; id < r->head_id + r->count; id++) {
    const entry_t *e = &r->ring[id & (r->cap - 1)];
    if (e->nwaiting > 0 && e->begin == c->begin && e->end == c->end) return 1;
  }
  return 0;
}

/* Sends c's coalesced pushes, if any: one REPL_PUSH for one, else one
 * REPL_PUSHES whose request id is the first one's entry id, which every
 * entry of it then answers to. */
static void flush(ps_repl_t *r, chain_t *c) {
  batch_t *b = c->batch;
  if (b == NULL || b->n == 0) return;
  Ps__Replicate rep = PS__REPLICATE__INIT;
  rep.range_begin = c->begin;
  rep.range_end = c->end;
  Ps__ReplPush *pushes[BATCH_MAX];
  if (b->n == 1) {
    const Ps__ReplPush *p = &b->push[0];
    rep.kind = PS__REPLICATE_KIND__REPL_PUSH;
    rep.worker = p->worker;
    rep.seq = p->seq;
    rep.key_begin = p->key_begin;
    rep.count = p->count;
    rep.clock = p->clock;
    rep.codec = p->codec;
  } else {
    rep.kind = PS__REPLICATE_KIND__REPL_PUSHES;
    for (uint32_t i = 0; i < b->n; i++) pushes[i] = &b->push[i];
    rep.n_pushes = b->n;
    rep.pushes = pushes;
  }
  uint64_t msg = b->id[0];
  uint32_t sent[MAX_BACKUPS];
  uint32_t nsent = send_msg(r, c, msg, &rep, b->frame, (int)b->n, sent);
  for (uint32_t i = 0; i < b->n; i++) {
    entry_t *e = entry_at(r, b->id[i]);
    if (e != NULL) {
      e->queued = 0;
      e->msg_id = msg;
      e->nwaiting = nsent;
      memcpy(e->waiting, sent, sizeof(sent));
    }
    zmq_msg_close(&b->frame[i]);
  }
  r->pushes_sent += b->n;
  r->push_msgs_sent++;
  b->n = 0;
  b->bytes = 0;
}

/* After backups answered: the chains whose backups have nothing more to
 * answer send what they coalesced meanwhile. */
static void flush_ready(ps_repl_t *r) {
  for (size_t i = 0; i < r->nchains; i++) {
    chain_t *c = &r->chains[i];
    if (c->batch && c->batch->n > 0 && !chain_busy(r, c)) flush(r, c);
  }
}

/* A queued entry that answers the worker's request (route, request_id)
 * once every backup acked it; NULL on no memory. */
static entry_t *entry_for_reply(ps_repl_t *r, uint64_t begin, uint64_t end,
                                zmq_msg_t *route, uint64_t request_id,
                                uint32_t worker, uint64_t clock_after,
                                uint64_t *id) {
  entry_t *e = entry_push(r, begin, end, id);
  if (e == NULL) return NULL;
  e->has_route = 1;
  zmq_msg_init(&e->route);
  zmq_msg_copy(&e->route, route);
  e->request_id = request_id;
  e->worker = worker;
  e->clock = clock_after;
  return e;
}

int ps_repl_push(ps_repl_t *r, uint64_t begin, uint64_t end, zmq_msg_t *route,
                 uint64_t request_id, uint64_t clock_after, int duplicate,
                 uint32_t worker, const Ps__Push *p, zmq_msg_t *payload) {
  chain_t *c = chain_find(r, begin, end);
  if (!duplicate && (c == NULL || c->n == 0) && r->count == 0) {
    /* Nothing to wait for and nothing before it: answer now. */
    if (r->cbs.push_done)
      r->cbs.push_done(r->arg, route, request_id, worker, clock_after, 0,
                       PS_OK, "");
    return PS_OK;
  }
  uint64_t id;
  entry_t *e = entry_for_reply(r, begin, end, route, request_id, worker,
                               clock_after, &id);
  if (e == NULL) return PS_ERR_NOMEM;
  e->duplicate = duplicate;
  if (!duplicate && c != NULL && c->n > 0 && c->batch != NULL &&
      zmq_msg_size(payload) < BATCH_SMALL &&
      (c->batch->n > 0 || chain_busy(r, c))) {
    /* The backups have yet to answer what they were sent: this push waits
     * for them with the others that come meanwhile, and all go as one
     * message (REPL_PUSHES), fewer and bigger messages for a busy backup. */
    batch_t *b = c->batch;
    uint32_t i = b->n++;
    b->id[i] = id;
    ps__repl_push__init(&b->push[i]);
    b->push[i].worker = worker;
    b->push[i].seq = p->seq;
    b->push[i].key_begin = p->key_begin;
    b->push[i].count = p->count;
    b->push[i].clock = p->clock;
    b->push[i].codec = p->codec;
    zmq_msg_init(&b->frame[i]);
    zmq_msg_copy(&b->frame[i], payload);
    b->bytes += zmq_msg_size(payload);
    e->queued = 1;
    if (b->n == BATCH_MAX || b->bytes >= BATCH_BYTES) flush(r, c);
  } else if (!duplicate && c != NULL && c->n > 0) {
    flush(r, c); /* the small ones that wait go first */
    r->pushes_sent++;
    r->push_msgs_sent++;
    Ps__Replicate rep = PS__REPLICATE__INIT;
    rep.range_begin = begin;
    rep.range_end = end;
    rep.kind = PS__REPLICATE_KIND__REPL_PUSH;
    rep.worker = worker;
    rep.seq = p->seq;
    rep.key_begin = p->key_begin;
    rep.count = p->count;
    rep.clock = p->clock;
    rep.codec = p->codec; /* the frame goes as it came: see ps.proto */
    send_all(r, c, e, id, &rep, payload, 1);
  }
  complete(r);
  return PS_OK;
}

int ps_repl_hold(ps_repl_t *r, uint64_t begin, uint64_t end, zmq_msg_t *route,
                 uint64_t request_id, uint32_t worker, uint64_t seq,
                 int duplicate) {
  chain_t *c = chain_find(r, begin, end);
  if (c == NULL) return PS_ERR_INVAL;
  if (c->nheld == c->held_cap) {
    size_t cap = c->held_cap ? 2 * c->held_cap : 16;
    held_t *grown = realloc(c->held, cap * sizeof(*grown));
    if (grown == NULL) return PS_ERR_NOMEM;
    c->held = grown;
    c->held_cap = cap;
  }
  held_t *h = &c->held[c->nheld++];
  zmq_msg_init(&h->route);
  zmq_msg_copy(&h->route, route);
  h->request_id = request_id;
  h->worker = worker;
  h->seq = seq;
  h->duplicate = duplicate;
  return PS_OK;
}

int ps_repl_held(const ps_repl_t *r, uint64_t begin, uint64_t end,
                 uint32_t worker, uint64_t seq) {
  const chain_t *c = chain_find(r, begin, end);
  for (size_t i = 0; c != NULL && i < c->nheld; i++)
    if (c->held[i].worker == worker && c->held[i].seq == seq) return 1;
  return 0;
}

int ps_repl_has_chain(const ps_repl_t *r, uint64_t begin, uint64_t end) {
  return chain_find(r, begin, end) != NULL;
}

int ps_repl_step(ps_repl_t *r, uint64_t begin, uint64_t end, uint64_t step,
                 uint64_t clock_after, const float *sum, float scale) {
  chain_t *c = chain_find(r, begin, end);
  if (c == NULL) return PS_ERR_INVAL;
  flush(r, c); /* every change in the primary's order */
  /* Everything the entries need first, so a failure changes nothing. */
  size_t need = 1 + c->nheld;
  while (r->cap - r->count < need)
    if (ring_grow(r) != PS_OK) return PS_ERR_NOMEM;
  uint32_t *workers = calloc(c->nheld + 1, sizeof(*workers));
  uint64_t *seqs = calloc(c->nheld + 1, sizeof(*seqs));
  zmq_msg_t frame;
  int has_frame = 0;
  if (workers == NULL || seqs == NULL) goto nomem;
  if (c->n > 0 && sum != NULL) {
    size_t bytes = (size_t)(end - begin) * sizeof(float);
    if (zmq_msg_init_size(&frame, bytes) != 0) goto nomem;
    memcpy(zmq_msg_data(&frame), sum, bytes);
    has_frame = 1;
  }
  uint64_t id;
  if (c->n > 0) {
    size_t n = 0;
    for (size_t i = 0; i < c->nheld; i++)
      if (!c->held[i].duplicate) {
        workers[n] = c->held[i].worker;
        seqs[n++] = c->held[i].seq;
      }
    entry_t *e = entry_push(r, begin, end, &id);
    e->is_step = 1;
    e->clock = clock_after;
    Ps__Replicate rep = PS__REPLICATE__INIT;
    rep.range_begin = begin;
    rep.range_end = end;
    rep.kind = PS__REPLICATE_KIND__REPL_STEP;
    rep.clock = step;
    rep.clock_after = clock_after;
    rep.sum = sum != NULL;
    rep.count = sum != NULL ? end - begin : 0;
    rep.step_scale = scale;
    rep.n_step_workers = n;
    rep.step_workers = workers;
    rep.n_step_seqs = n;
    rep.step_seqs = seqs;
    send_all(r, c, e, id, &rep, has_frame ? &frame : NULL, has_frame);
  }
  free(workers);
  free(seqs);
  if (has_frame) zmq_msg_close(&frame);
  /* The step's acks, in arrival order, right behind it (or at once when
   * nothing is before them). */
  for (size_t i = 0; i < c->nheld; i++) {
    held_t *h = &c->held[i];
    entry_t *e = entry_push(r, begin, end, &id);
    e->has_route = 1;
    zmq_msg_init(&e->route);
    zmq_msg_move(&e->route, &h->route);
    zmq_msg_close(&h->route);
    e->request_id = h->request_id;
    e->worker = h->worker;
    e->clock = clock_after;
    e->duplicate = h->duplicate;
    e->follows_step = c->n > 0;
  }
  c->nheld = 0;
  complete(r);
  return PS_OK;
nomem:
  free(workers);
  free(seqs);
  return PS_ERR_NOMEM;
}

int ps_repl_sparse_push(ps_repl_t *r, uint64_t begin, uint64_t end,
                        zmq_msg_t *route, uint64_t request_id,
                        uint64_t clock_after, uint32_t worker,
                        const Ps__SparsePush *p, zmq_msg_t *frames) {
  chain_t *c = chain_find(r, begin, end);
  if (c != NULL) flush(r, c); /* every change in the primary's order */
  if ((c == NULL || c->n == 0) && r->count == 0) {
    if (r->cbs.push_done)
      r->cbs.push_done(r->arg, route, request_id, worker, clock_after, 0,
                       PS_OK, "");
    return PS_OK;
  }
  uint64_t id;
  entry_t *e = entry_for_reply(r, begin, end, route, request_id, worker,
                               clock_after, &id);
  if (e == NULL) return PS_ERR_NOMEM;
  if (c != NULL && c->n > 0) {
    Ps__Replicate rep = PS__REPLICATE__INIT;
    rep.range_begin = begin;
    rep.range_end = end;
    rep.kind = PS__REPLICATE_KIND__REPL_SPARSE_PUSH;
    rep.worker = worker;
    rep.seq = p->seq;
    rep.clock = p->clock;
    rep.table = p->table;
    rep.nkeys = p->nkeys;
    send_all(r, c, e, id, &rep, frames, 2);
  }
  complete(r);
  return PS_OK;
}

int ps_repl_live(ps_repl_t *r, uint64_t begin, uint64_t end,
                 const ps_shard_live_t *live, size_t n) {
  chain_t *c = chain_find(r, begin, end);
  if (c != NULL) flush(r, c); /* every change in the primary's order */
  if (c == NULL || c->n == 0) return PS_OK;
  uint32_t *ids = calloc(n + 1, sizeof(*ids));
  uint64_t *from = calloc(n + 1, sizeof(*from));
  uint64_t id;
  entry_t *e = ids && from ? entry_push(r, begin, end, &id) : NULL;
  if (e == NULL) {
    free(ids);
    free(from);
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    ids[i] = (uint32_t)live[i].worker;
    from[i] = live[i].from_step;
  }
  Ps__Replicate rep = PS__REPLICATE__INIT;
  rep.range_begin = begin;
  rep.range_end = end;
  rep.kind = PS__REPLICATE_KIND__REPL_LIVE;
  rep.n_live = n;
  rep.live = ids;
  rep.n_live_from = n;
  rep.live_from = from;
  send_all(r, c, e, id, &rep, NULL, 0);
  free(ids);
  free(from);
  complete(r);
  return PS_OK;
}

/* A frame holding a copy of n bytes of src. */
static int frame_copy(zmq_msg_t *f, const void *src, size_t n) {
  if (zmq_msg_init_size(f, n) != 0) return PS_ERR_NOMEM;
  if (n) memcpy(zmq_msg_data(f), src, n);
  return PS_OK;
}

/* Floats per copied chunk frame: the weights' block size, so copied and
 * zero-copy chunks look alike. */
#define CHUNK_FRAME_KEYS PS_SHARD_BLOCK_KEYS

/* Builds the frames of a snapshot chunk: up to PS_MAX_PAYLOAD_FRAMES
 * frames of range offsets [off, end) of one array, the weights straight
 * from their block versions (pinned until ZeroMQ has sent them), the other
 * arrays copied. Returns the number of frames (*count floats), or a
 * negative ps_err_t with every frame closed. */
static int chunk_frames(ps_shard_t *shard, int array, const float *src,
                        uint64_t off, uint64_t end, zmq_msg_t *f,
                        uint64_t *count) {
  int n = 0;
  *count = 0;
  uint64_t begin = ps_shard_begin(shard);
  while (off < end && n < PS_MAX_PAYLOAD_FRAMES) {
    if (array == PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS) {
      /* One run: the rest of the block off is in. */
      ps_shard_run_t run;
      uint64_t blk = CHUNK_FRAME_KEYS - off % CHUNK_FRAME_KEYS;
      uint64_t len = end - off < blk ? end - off : blk;
      if (ps_shard_runs(shard, begin + off, len, &run, 1, NULL, 0) != 1)
        goto fail;
      ps_shard_pin(run.version);
      if (ps_payload_wrap(&f[n], (void *)run.data, run.count * sizeof(float),
                          ps_shard_unpin, run.version) != PS_OK) {
        ps_shard_unpin(NULL, run.version);
        goto fail;
      }
      off += run.count;
      *count += run.count;
    } else {
      uint64_t len =
          end - off < CHUNK_FRAME_KEYS ? end - off : CHUNK_FRAME_KEYS;
      if (frame_copy(&f[n], src + off, len * sizeof(float)) != PS_OK) goto fail;
      off += len;
      *count += len;
    }
    n++;
  }
  return n;
fail:
  for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
  return PS_ERR_NOMEM;
}

/* Rows per sparse chunk of a snapshot: a few MiB, under the frame limit. */
static uint64_t sparse_chunk_rows(const ps_repl_t *r, size_t floats) {
  uint64_t n = r->limits.max_payload_bytes / (floats * sizeof(float));
  return n > 65536 ? 65536 : n ? n : 1;
}

/* Sends the rows (or, sums, the BSP step's sums) of sparse table number
 * table as chunks of snapshot id. Returns the bytes sent, or a negative
 * ps_err_t. */
static int64_t send_sparse_chunks(ps_repl_t *r, void *sock, uint64_t id,
                                  uint64_t begin, uint64_t end, uint32_t table,
                                  const ps_sparse_table_t *t, int sums) {
  size_t floats = sums ? ps_sparse_table_dim(t) : ps_sparse_table_row_floats(t);
  uint64_t n = sums ? ps_sparse_table_pending(t) : ps_sparse_table_rows(t);
  uint64_t per = sparse_chunk_rows(r, floats);
  int64_t bytes = 0;
  /* Rows least recently pushed first: the backup puts them in this order
   * and so holds the same recency order (ps-server/sparse.h). */
  uint64_t at = sums ? 0 : ps_sparse_table_lru_first(t);
  for (uint64_t off = 0; off < n; off += per) {
    uint64_t k = n - off < per ? n - off : per;
    zmq_msg_t f[2];
    if (zmq_msg_init_size(&f[0], k * sizeof(uint64_t)) != 0)
      return PS_ERR_NOMEM;
    if (zmq_msg_init_size(&f[1], k * floats * sizeof(float)) != 0) {
      zmq_msg_close(&f[0]);
      return PS_ERR_NOMEM;
    }
    uint64_t *ids = zmq_msg_data(&f[0]);
    float *rows = zmq_msg_data(&f[1]);
    for (uint64_t i = 0; i < k; i++) {
      const float *src;
      if (sums) {
        src = ps_sparse_table_pending_at(t, off + i, &ids[i]);
      } else {
        src = ps_sparse_table_row_at(t, at, &ids[i]);
        at = ps_sparse_table_lru_next(t, at);
      }
      memcpy(rows + i * floats, src, floats * sizeof(float));
    }
    Ps__ReplicaChunk ch = PS__REPLICA_CHUNK__INIT;
    ch.range_begin = begin;
    ch.range_end = end;
    ch.array = sums ? PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SUM
                    : PS__SNAPSHOT_ARRAY__SNAP_SPARSE_ROWS;
    ch.offset = off;
    ch.count = k;
    ch.table = table;
    Ps__Envelope env;
    envelope_init(r, &env, id);
    env.body_case = PS__ENVELOPE__BODY_REPLICA_CHUNK;
    env.replica_chunk = &ch;
    bytes += (int64_t)(zmq_msg_size(&f[0]) + zmq_msg_size(&f[1]));
    if (ps_msg_send(sock, NULL, &env, f, 2) != PS_OK)
      PS_WARN("replica_send_failed", "backup snapshot sparse chunk");
  }
  return bytes;
}

static uint32_t sparse_chunks(const ps_repl_t *r, const ps_sparse_table_t *t) {
  uint64_t per = sparse_chunk_rows(r, ps_sparse_table_row_floats(t));
  uint64_t per_sum = sparse_chunk_rows(r, ps_sparse_table_dim(t));
  return (uint32_t)((ps_sparse_table_rows(t) + per - 1) / per +
                    (ps_sparse_table_pending(t) + per_sum - 1) / per_sum +
                    (ps_sparse_table_sketch_cells(t) > 0));
}

/* The table's admission sketch, if it has one, as one chunk. */
static int64_t send_sketch_chunk(ps_repl_t *r, void *sock, uint64_t id,
                                 uint64_t begin, uint64_t end, uint32_t table,
                                 const ps_sparse_table_t *t) {
  size_t n = ps_sparse_table_sketch_cells(t);
  if (n == 0) return 0;
  zmq_msg_t f;
  if (frame_copy(&f, ps_sparse_table_sketch(t), n * sizeof(uint32_t)) != PS_OK)
    return PS_ERR_NOMEM;
  Ps__ReplicaChunk ch = PS__REPLICA_CHUNK__INIT;
  ch.range_begin = begin;
  ch.range_end = end;
  ch.array = PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SKETCH;
  ch.count = n;
  ch.table = table;
  Ps__Envelope env;
  envelope_init(r, &env, id);
  env.body_case = PS__ENVELOPE__BODY_REPLICA_CHUNK;
  env.replica_chunk = &ch;
  if (ps_msg_send(sock, NULL, &env, &f, 1) != PS_OK)
    PS_WARN("replica_send_failed", "backup snapshot sketch chunk");
  return (int64_t)(n * sizeof(uint32_t));
}

int ps_repl_snapshot(ps_repl_t *r, uint32_t backup, ps_shard_t *shard,
                     const ps_dedup_t *dedup, ps_sparse_table_t *const *sparse,
                     size_t nsparse) {
  uint64_t begin = ps_shard_begin(shard), end = ps_shard_end(shard);
  uint64_t len = end - begin;
  peer_t *p = peer_find(r, backup);
  if (p == NULL) return PS_ERR_INVAL;
  void *sock = ps_zsock_socket(p->zs);
  ps_shard_state_t st;
  ps_shard_export_state(shard, &st);

  /* The arrays, and how many chunk messages they take: the weights, the
   * optimizer state, the current step's sum, and (SSP) the later steps'. */
  struct {
    int array;
    const float *src; /* range offset 0; NULL: the weights' versions */
    uint64_t lo, hi;
    uint32_t step_ahead;
  } arrays[3 + PS_SSP_STALENESS_MAX] = {
      {PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS, NULL, 0, len, 0},
      {PS__SNAPSHOT_ARRAY__SNAP_STATE, st.state, 0,
       st.state ? len * (uint64_t)st.state_slots : 0, 0},
      {PS__SNAPSHOT_ARRAY__SNAP_SUM, st.acc ? st.acc - st.acc_lo : NULL,
       st.acc_lo, st.acc_hi, 0},
  };
  int narrays = 3;
  uint64_t pending_lo[PS_SSP_STALENESS_MAX], pending_hi[PS_SSP_STALENESS_MAX];
  uint32_t pending_ncontrib[PS_SSP_STALENESS_MAX];
  /* Every step's contributions in one frame, the current step's first. */
  size_t ncontrib = st.ncontrib;
  for (size_t i = 0; i < st.npending; i++) {
    const ps_shard_pending_t *pd = &st.pending[i];
    arrays[narrays].array = PS__SNAPSHOT_ARRAY__SNAP_SUM;
    arrays[narrays].src = pd->acc ? pd->acc - pd->acc_lo : NULL;
    arrays[narrays].lo = pd->acc_lo;
    arrays[narrays].hi = pd->acc_hi;
    arrays[narrays].step_ahead = (uint32_t)i + 1;
    narrays++;
    pending_lo[i] = pd->acc_lo;
    pending_hi[i] = pd->acc_hi;
    pending_ncontrib[i] = (uint32_t)pd->ncontrib;
    ncontrib += pd->ncontrib;
  }
  ps_shard_contrib_t *contrib = calloc(ncontrib + 1, sizeof(*contrib));
  if (contrib == NULL) return PS_ERR_NOMEM;
  if (st.ncontrib) memcpy(contrib, st.contrib, st.ncontrib * sizeof(*contrib));
  for (size_t i = 0, k = st.ncontrib; i < st.npending; i++) {
    if (st.pending[i].ncontrib)
      memcpy(contrib + k, st.pending[i].contrib,
             st.pending[i].ncontrib * sizeof(*contrib));
    k += st.pending[i].ncontrib;
  }
  const uint64_t per_msg = (uint64_t)PS_MAX_PAYLOAD_FRAMES * CHUNK_FRAME_KEYS;
  uint32_t nchunks = 0;
  for (int a = 0; a < narrays; a++) {
    /* Weights chunks follow the blocks, so count them the same way. */
    uint64_t lo = arrays[a].lo, hi = arrays[a].hi;
    while (lo < hi) {
      uint64_t stop = (lo / per_msg + 1) * per_msg;
      lo = stop < hi ? stop : hi;
      nchunks++;
    }
  }
  uint64_t nrows = 0;
  for (size_t i = 0; i < nsparse; i++) {
    nchunks += sparse_chunks(r, sparse[i]);
    nrows += ps_sparse_table_rows(sparse[i]);
  }

  size_t ndedup = ps_dedup_count(dedup);
  ps_dedup_record_t *recs = calloc(ndedup + 1, sizeof(*recs));
  if (recs == NULL) {
    free(contrib);
    return PS_ERR_NOMEM;
  }
  ps_dedup_export(dedup, recs);
  zmq_msg_t f[PS_MAX_PAYLOAD_FRAMES];
  int rc = frame_copy(&f[0], st.live, st.nlive * sizeof(*st.live));
  if (rc == PS_OK)
    rc = frame_copy(&f[1], contrib, ncontrib * sizeof(*contrib));
  else
    zmq_msg_init(&f[1]);
  free(contrib);
  if (rc == PS_OK)
    rc = frame_copy(&f[2], recs, ndedup * sizeof(*recs));
  else
    zmq_msg_init(&f[2]);
  free(recs);
  uint64_t id;
  entry_t *e = rc == PS_OK ? entry_push(r, begin, end, &id) : NULL;
  if (e == NULL) {
    for (int i = 0; i < 3; i++) zmq_msg_close(&f[i]);
    return PS_ERR_NOMEM;
  }
  e->is_snapshot = 1;
  e->snap_backup = backup;
  e->snap_start_ms = ps_now_ms();
  e->waiting[e->nwaiting++] = backup;

  Ps__ReplicaSnapshot snap = PS__REPLICA_SNAPSHOT__INIT;
  snap.range_begin = begin;
  snap.range_end = end;
  snap.clock = st.clock;
  snap.state_slots = (uint32_t)st.state_slots;
  /* protobuf-c reads it while packing only. */
  snap.n_opt_steps = st.nopt_steps;
  snap.opt_steps = (uint64_t *)st.opt_steps;
  snap.acc_lo = st.acc_lo;
  snap.acc_hi = st.acc_hi;
  snap.nlive = (uint32_t)st.nlive;
  snap.ncontrib = (uint32_t)ncontrib;
  snap.n_pending_lo = snap.n_pending_hi = snap.n_pending_ncontrib = st.npending;
  snap.pending_lo = pending_lo;
  snap.pending_hi = pending_hi;
  snap.pending_ncontrib = pending_ncontrib;
  snap.ndedup = (uint32_t)ndedup;
  snap.nchunks = nchunks;
  Ps__Envelope env;
  envelope_init(r, &env, id);
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SNAPSHOT;
  env.replica_snapshot = &snap;
  uint64_t bytes =
      zmq_msg_size(&f[0]) + zmq_msg_size(&f[1]) + zmq_msg_size(&f[2]);
  if (ps_msg_send(sock, NULL, &env, f, 3) != PS_OK)
    PS_WARN("replica_send_failed", "backup=%u snapshot", backup);

  /* All in this one turn of the loop, so every change after the snapshot
   * follows its last chunk on the connection. */
  for (int a = 0; a < narrays && rc == PS_OK; a++) {
    uint64_t off = arrays[a].lo;
    while (off < arrays[a].hi) {
      uint64_t stop = (off / per_msg + 1) * per_msg;
      if (stop > arrays[a].hi) stop = arrays[a].hi;
      uint64_t count;
      int nf = chunk_frames(shard, arrays[a].array, arrays[a].src, off, stop, f,
                            &count);
      if (nf < 0) {
        /* The backup never gets the last chunk and never acks: the
         * scheduler's view will give the range another chance. */
        rc = nf;
        break;
      }
      Ps__ReplicaChunk ch = PS__REPLICA_CHUNK__INIT;
      ch.range_begin = begin;
      ch.range_end = end;
      ch.array = arrays[a].array;
      ch.offset = off;
      ch.count = count;
      ch.step_ahead = arrays[a].step_ahead;
      envelope_init(r, &env, id);
      env.body_case = PS__ENVELOPE__BODY_REPLICA_CHUNK;
      env.replica_chunk = &ch;
      if (ps_msg_send(sock, NULL, &env, f, nf) != PS_OK)
        PS_WARN("replica_send_failed", "backup=%u snapshot chunk", backup);
      bytes += count * sizeof(float);
      off += count;
    }
  }
  for (size_t i = 0; i < nsparse && rc == PS_OK; i++) {
    int64_t b = send_sketch_chunk(r, sock, id, begin, end, (uint32_t)i,
                                  sparse[i]);
    if (b < 0)
      rc = (int)b;
    else
      bytes += (uint64_t)b;
  }
  for (size_t i = 0; i < nsparse && rc == PS_OK; i++)
    for (int sums = 0; sums < 2 && rc == PS_OK; sums++) {
      int64_t b = send_sparse_chunks(r, sock, id, begin, end, (uint32_t)i,
                                     sparse[i], sums);
      if (b < 0)
        rc = (int)b;
      else
        bytes += (uint64_t)b;
    }
  e->snap_bytes = bytes;
  PS_INFO("snapshot_sent",
          "range=[%llu,%llu) backup=%u clock=%llu bytes=%llu chunks=%u "
          "workers=%zu sparse_rows=%llu steps_ahead=%zu",
          (unsigned long long)begin, (unsigned long long)end, backup,
          (unsigned long long)st.clock, (unsigned long long)bytes, nchunks,
          ndedup, (unsigned long long)nrows, st.npending);
  return rc;
}
