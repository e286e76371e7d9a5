/* Membership: the node table, registration, heartbeats, Done and leaving,
 * deaths and fencing, and workers joining a running job. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/beat.h"
#include "common/checkpoint.h"
#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/member.h"
#include "common/optimizer.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/sched_int.h"

#define SCHED_RANK_ANY 0xffffffffu
/* A worker joining a running BSP job starts this far ahead of the servers'
 * clocks (in time at their step rate, and at least in steps), so that the
 * view reaches every server before its step comes. */
#define SCHED_JOIN_MARGIN_MS 1000
#define SCHED_JOIN_MIN_STEPS 2
/* Servers that have not confirmed a join by then are asked again (a later
 * step): a reply lost with a restarted scheduler must not stall it. */
#define SCHED_JOIN_RETRY_MS 2000
/* A node still behind this long after its view was sent gets it again. */
#define SCHED_VIEW_RESEND_MS 1000

/* ---- the node table ------------------------------------------------- */

sched_node_t *ps__sched_node_by_id(ps_sched_t *s, uint32_t id) {
  if (id == 0 || id > s->nnodes) return NULL;
  return &s->nodes[id - 1];
}

const sched_node_t *ps__sched_node_by_id_const(const ps_sched_t *s,
                                               uint32_t id) {
  if (id == 0 || id > s->nnodes) return NULL;
  return &s->nodes[id - 1];
}

/* A node that is dead or left no longer holds its slot or its rank. */
int ps__sched_node_holds_slot(const sched_node_t *n) {
  return n->state == PS__NODE_STATE__NODE_STATE_ALIVE ||
         n->state == PS__NODE_STATE__NODE_STATE_DONE;
}

uint32_t ps__sched_count_nodes(const ps_sched_t *s, int role, int state) {
  uint32_t c = 0;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == role && s->nodes[i].state == state) c++;
  return c;
}

uint32_t ps__sched_count_slots(const ps_sched_t *s, int role) {
  uint32_t c = 0;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == role && ps__sched_node_holds_slot(&s->nodes[i]))
      c++;
  return c;
}

uint32_t ps__sched_live_workers(const ps_sched_t *s) {
  return ps__sched_count_nodes(s, PS__ROLE__ROLE_WORKER,
                               PS__NODE_STATE__NODE_STATE_ALIVE);
}

/* ---- deaths, fencing, joins (issue #4) ------------------------------ */

/* Tells node n, declared dead, that it is out: on the route of message m,
 * or unprompted on its membership link (m NULL). An Error, not a Shutdown,
 * because only an Error carries a code: ps_member reports it to its owner
 * as PS_ERR_FENCED, and a server exits non-zero (a supervisor restarts it
 * clean and it registers as a new node). */
void ps__sched_fence(ps_sched_t *s, sched_node_t *n, ps_msg_t *m) {
  char reason[96];
  snprintf(reason, sizeof(reason), "fenced: declared dead at epoch %" PRIu64,
           n->dead_epoch);
  if (m != NULL && !n->fence_logged) {
    /* Once per node: it may speak a few more times before it exits. */
    n->fence_logged = 1;
    s->stats.fenced[ps__sched_role_slot(n->role)]++;
    PS_WARN("node_fenced",
            "id=%u role=%s address=%s dead_epoch=%" PRIu64 " epoch=%" PRIu64
            " body=%s",
            n->id, ps__sched_role_name(n->role),
            ps__sched_addr_or_dash(n->address), n->dead_epoch, s->epoch,
            ps_body_name(m->env->body_case));
  }
  Ps__Error e = PS__ERROR__INIT;
  e.code = PS_ERR_FENCED;
  e.message = reason;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, m ? m->request_id : 0);
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  if (m != NULL)
    ps__sched_reply(s, m, &env);
  else
    ps__sched_send_to_node(s, n, &env);
}

static void join_forget(sched_node_t *w) {
  free(w->join_ok);
  w->join_ok = NULL;
  w->njoin_ok = 0;
}

/* The step a joining worker starts at: past the furthest clock the servers
 * reported (or floor, a clock a server just told of) by a margin of about
 * SCHED_JOIN_MARGIN_MS of steps at their measured rate. With no other live
 * worker the clock stands still: it joins at the servers' clock, so no
 * step goes without a worker (the servers skip steps no one computes). */
uint64_t ps__sched_steps_ahead(const ps_sched_t *s, uint64_t ms, uint64_t min) {
  /* The rate comes from the clocks nodes report: one absurd clock must not
   * make it overflow a step number (or be NaN). */
  double steps = s->steps_per_ms * (double)ms + 1;
  if (!(steps < 1e12)) steps = 1e12;
  uint64_t n = (uint64_t)steps;
  return n < min ? min : n;
}

static void join_pick(ps_sched_t *s, sched_node_t *w, uint64_t floor) {
  uint64_t base = s->start_clock > floor ? s->start_clock : floor;
  int others = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    if (n->role == PS__ROLE__ROLE_WORKER && n != w) others = 1;
    if (n->role == PS__ROLE__ROLE_SERVER && n->clock > base) base = n->clock;
  }
  uint64_t margin =
      ps__sched_steps_ahead(s, SCHED_JOIN_MARGIN_MS, SCHED_JOIN_MIN_STEPS);
  if (!others) margin = 0;
  w->join_clock = base > UINT64_MAX - margin ? UINT64_MAX : base + margin;
  w->join_asked_ms = ps_now_ms();
  join_forget(w);
}

/* 1 once every alive server that holds a replica confirmed w's step. */
static int join_confirmed(const ps_sched_t *s, const sched_node_t *w) {
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->role != PS__ROLE__ROLE_SERVER ||
        n->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        !ps__sched_holds_replica(s, n->id))
      continue;
    int ok = 0;
    for (size_t k = 0; k < w->njoin_ok && !ok; k++) ok = w->join_ok[k] == n->id;
    if (!ok) return 0;
  }
  return 1;
}

/* Ends every join the servers confirmed (one that was waiting on a server
 * that died may be complete now). Returns how many ended; the caller
 * publishes. */
int ps__sched_join_check_all(ps_sched_t *s) {
  int ended = 0;
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *w = &s->nodes[i];
    if (!w->joining || w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        !join_confirmed(s, w))
      continue;
    w->joining = 0;
    join_forget(w);
    ended++;
    PS_INFO(
        "worker_joined",
        "id=%u rank=%u join_clock=%" PRIu64 " ms=%" PRIu64 " epoch=%" PRIu64,
        w->id, w->rank, w->join_clock, now - w->join_started_ms, s->epoch + 1);
  }
  return ended;
}

/* Joins the servers left unanswered for SCHED_JOIN_RETRY_MS get a later
 * step. Returns how many; the caller publishes. */
int ps__sched_join_retry_due(ps_sched_t *s, uint64_t now) {
  int retried = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *w = &s->nodes[i];
    if (!w->joining || w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        now - w->join_asked_ms < SCHED_JOIN_RETRY_MS)
      continue;
    uint64_t old = w->join_clock;
    size_t confirmed = w->njoin_ok;
    join_pick(s, w, 0);
    retried++;
    PS_WARN("join_retry",
            "id=%u rank=%u old_join_clock=%" PRIu64 " join_clock=%" PRIu64
            " confirmed=%zu reason=\"not every server answered within %d ms\"",
            w->id, w->rank, old, w->join_clock, confirmed, SCHED_JOIN_RETRY_MS);
  }
  return retried;
}

/* A node registered while the job runs. A server in a dead one's place
 * takes its share of the copies with --rebalance (as psctl add-server
 * would make it: the copies move one at a time, handover.c), and is a
 * spare without: it takes only the backups ranges lack. A worker took a dead
 * one's slot: in BSP it joins at a step ahead of the servers (joining until
 * they confirm), in ASP at once. A worker that grows the job (a new rank,
 * workers.c) joins at a step ahead in ASP too, without confirmations: ASP
 * servers wait for no step, the step only tells every worker where the data is
 * shared anew. Publishes the view with it. */
static void node_joined(ps_sched_t *s, sched_node_t *n, int grown) {
  if (n->role == PS__ROLE__ROLE_SERVER) {
    if (!n->active && s->opts.rebalance) {
      n->active = 1;
      s->elastic = 1;
    }
    int assigned = ps__sched_replan(s, s->epoch + 1);
    PS_INFO(n->active ? "server_joined" : "spare_joined",
            "id=%u address=%s assigned=%d epoch=%" PRIu64, n->id,
            ps__sched_addr_or_dash(n->address), assigned, s->epoch + 1);
    ps__sched_publish(s, "server_joined");
    return;
  }
  n->join_started_ms = ps_now_ms();
  if (s->opts.mode != PS__CONSISTENCY_MODE__MODE_ASP) {
    join_pick(s, n, 0);
    n->joining = !join_confirmed(s, n);
  } else if (grown) {
    join_pick(s, n, 0);
  }
  PS_INFO("worker_joining",
          "id=%u rank=%u join_clock=%" PRIu64
          " joining=%d steps_per_s=%.1f "
          "epoch=%" PRIu64,
          n->id, n->rank, n->join_clock, n->joining, s->steps_per_ms * 1e3,
          s->epoch + 1);
  ps__sched_publish(s, n->joining ? "worker_joining" : "worker_joined");
}

/* Node n missed heartbeats for silent ms. */
void ps__sched_declare_dead(ps_sched_t *s, sched_node_t *n, uint64_t silent) {
  n->state = PS__NODE_STATE__NODE_STATE_DEAD;
  s->stats.timeouts[ps__sched_role_slot(n->role)]++;
  /* The view that says so is the next one (none before the first). */
  n->dead_epoch = s->published ? s->epoch + 1 : s->epoch;
  ps__sched_barrier_leave(n);
  n->joining = 0;
  join_forget(n);
  PS_WARN("node_dead",
          "id=%u role=%s address=%s silent_ms=%" PRIu64 " epoch=%" PRIu64,
          n->id, ps__sched_role_name(n->role),
          ps__sched_addr_or_dash(n->address), silent, n->dead_epoch);
  /* A node that is only paused or cut off hears it first thing when it
   * comes back, before it can act on its old view for long. */
  ps__sched_fence(s, n, NULL);
  if (n->role == PS__ROLE__ROLE_SERVER) ps_coord_server_lost(s->coord, n->id);
}

/* ---- request handlers ----------------------------------------------- */

/* Says how b differs from the job's model a, for the refusal. */
static void model_diff(const ps_model_t *a, const ps_model_t *b, char *out,
                       size_t len) {
  if (a->ntensors != b->ntensors) {
    snprintf(out, len, "%zu tensors, the job's model has %zu", b->ntensors,
             a->ntensors);
    return;
  }
  for (size_t i = 0; i < a->ntensors; i++) {
    const ps_tensor_spec_t *x = &a->tensors[i], *y = &b->tensors[i];
    if (strcmp(x->name, y->name) != 0 || x->length != y->length ||
        x->offset != y->offset) {
      snprintf(out, len,
               "tensor %zu is \"%s\" of %" PRIu64 " keys at %" PRIu64
               ", the job's is \"%s\" of %" PRIu64 " keys at %" PRIu64,
               i, y->name, y->length, y->offset, x->name, x->length, x->offset);
      return;
    }
    if (x->push_codec != y->push_codec || x->pull_codec != y->pull_codec ||
        x->topk_fraction != y->topk_fraction) {
      snprintf(out, len,
               "tensor \"%s\" codecs push %s pull %s (top-k %g), the job's "
               "are push %s pull %s (top-k %g)",
               y->name, ps_codec_name(y->push_codec),
               ps_codec_name(y->pull_codec), (double)y->topk_fraction,
               ps_codec_name(x->push_codec), ps_codec_name(x->pull_codec),
               (double)x->topk_fraction);
      return;
    }
    if (x->init != y->init || x->init_scale != y->init_scale) {
      snprintf(out, len,
               "tensor \"%s\" init %d scale %g, the job's is init %d scale %g",
               y->name, y->init, (double)y->init_scale, x->init,
               (double)x->init_scale);
      return;
    }
  }
  for (size_t i = 0; i < a->ntensors; i++) {
    const ps_tensor_spec_t *x = &a->tensors[i], *y = &b->tensors[i];
    if (x->has_optimizer != y->has_optimizer ||
        (x->has_optimizer &&
         !ps_optimizer_equal(&x->optimizer, &y->optimizer))) {
      snprintf(
          out, len,
          "tensor \"%s\" optimizer %s, the job's is %s (or their "
          "settings differ)",
          y->name,
          y->has_optimizer ? ps_optimizer_name(y->optimizer.kind) : "default",
          x->has_optimizer ? ps_optimizer_name(x->optimizer.kind) : "default");
      return;
    }
  }
  ps_optimizer_spec_t da, db;
  ps_model_default_optimizer(a, &da);
  ps_model_default_optimizer(b, &db);
  if (a->optimizer != b->optimizer)
    snprintf(out, len, "optimizer %d, the job's is %d", b->optimizer,
             a->optimizer);
  else if (!ps_lr_schedule_equal(&a->lr_schedule, &b->lr_schedule))
    snprintf(
        out, len,
        "learning-rate schedule %s over %" PRIu64 " steps with %" PRIu64
        " warm-up steps, the job's is %s over %" PRIu64 " with %" PRIu64
        " (every worker needs the same --epochs and schedule flags)",
        b->lr_schedule.kind == PS_LR_SCHEDULE_COSINE ? "cosine" : "constant",
        b->lr_schedule.total_steps, b->lr_schedule.warmup_steps,
        a->lr_schedule.kind == PS_LR_SCHEDULE_COSINE ? "cosine" : "constant",
        a->lr_schedule.total_steps, a->lr_schedule.warmup_steps);
  else if (a->learning_rate != b->learning_rate)
    snprintf(out, len, "learning_rate %g, the job's is %g",
             (double)b->learning_rate, (double)a->learning_rate);
  else if (a->momentum != b->momentum)
    snprintf(out, len, "momentum %g, the job's is %g", (double)b->momentum,
             (double)a->momentum);
  else if (a->seed != b->seed)
    snprintf(out, len, "seed %" PRIu64 ", the job's is %" PRIu64, b->seed,
             a->seed);
  else if (!ps_optimizer_equal(&da, &db))
    snprintf(out, len,
             "optimizer settings (beta1 %g beta2 %g epsilon %g l1 %g l2 %g "
             "ftrl_beta %g), the job's are (%g %g %g %g %g %g)",
             (double)db.beta1, (double)db.beta2, (double)db.epsilon,
             (double)db.l1, (double)db.l2, (double)db.ftrl_beta,
             (double)da.beta1, (double)da.beta2, (double)da.epsilon,
             (double)da.l1, (double)da.l2, (double)da.ftrl_beta);
  else
    snprintf(out, len, "the model specs differ");
}

/* Where the job's model came from, for a refusal. */
static const char *model_source(const ps_sched_t *s, char *buf, size_t len) {
  if (s->model_node == 0 && s->restore_dir)
    snprintf(buf, len, "from checkpoint %s", s->restore_dir);
  else
    snprintf(buf, len, "declared by node %u", s->model_node);
  return buf;
}

static int route_equal(const sched_node_t *n, ps_msg_t *m) {
  return m->has_route && zmq_msg_size(&m->route) == n->route_len &&
         memcmp(zmq_msg_data(&m->route), n->route, n->route_len) == 0;
}

void ps__sched_node_touch(sched_node_t *n, ps_msg_t *m, int membership_link) {
  n->last_seen_ms = ps_now_ms();
  if (!membership_link || !m->has_route) return;
  size_t len = zmq_msg_size(&m->route);
  if (len == 0 || len > sizeof(n->route)) return;
  /* A new connection: what went to the old one may be lost. */
  if (len != n->route_len || memcmp(n->route, zmq_msg_data(&m->route), len))
    n->view_sent_epoch = 0;
  memcpy(n->route, zmq_msg_data(&m->route), len);
  n->route_len = len;
}

static void reply_registered(ps_sched_t *s, ps_msg_t *m, sched_node_t *n) {
  Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
  rr.node_id = n->id;
  rr.rank = n->role == PS__ROLE__ROLE_WORKER ? n->rank : 0;
  rr.num_workers = s->opts.workers;
  if (ps__sched_beats_port(s) != 0) {
    if (!n->beat_keyed && ps_beat_key_new(n->beat_key) == PS_OK)
      n->beat_keyed = 1;
    if (n->beat_keyed) {
      rr.beat_port = ps__sched_beats_port(s);
      rr.beat_key.data = (uint8_t *)n->beat_key;
      rr.beat_key.len = PS_BEAT_KEY_BYTES;
    }
  }
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_REGISTER_REPLY;
  env.register_reply = &rr;
  ps__sched_reply(s, m, &env);
}

int ps__sched_rank_taken(const ps_sched_t *s, uint32_t rank) {
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->role == PS__ROLE__ROLE_WORKER && ps__sched_node_holds_slot(n) &&
        n->rank == rank)
      return 1;
  }
  return 0;
}

/* The lowest rank no worker holds, in one pass over the nodes: asking
 * ps__sched_rank_taken for rank after rank made a cluster of W workers register
 * in O(W^3) (seconds at a thousand, with the heartbeats waiting). workers when
 * every rank is taken. */
static uint32_t lowest_free_rank(const ps_sched_t *s) {
  uint32_t nw = s->opts.workers;
  uint8_t *taken = calloc((size_t)nw + 1, 1);
  if (taken == NULL) {
    uint32_t rank = 0;
    while (rank < nw && ps__sched_rank_taken(s, rank)) rank++;
    return rank;
  }
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->role == PS__ROLE__ROLE_WORKER && ps__sched_node_holds_slot(n) &&
        n->rank < nw)
      taken[n->rank] = 1;
  }
  uint32_t rank = 0;
  while (rank < nw && taken[rank]) rank++;
  free(taken);
  return rank;
}

void ps__sched_handle_register(ps_sched_t *s, ps_msg_t *m) {
  const Ps__Register *r = m->env->register_;
  int role = r->role;
  const char *addr = r->address ? r->address : "";
  if (role != PS__ROLE__ROLE_SERVER && role != PS__ROLE__ROLE_WORKER) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL,
                          "only servers and workers register, not role %d (%s)",
                          role, ps__sched_role_name(role));
    return;
  }
  if (strlen(addr) >= PS_ADDR_MAX) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL,
                          "address of %zu bytes, the limit is %d", strlen(addr),
                          PS_ADDR_MAX - 1);
    return;
  }
  /* The node's identity from now on (common/auth.h). */
  ps_auth_token_t token;
  if (!m->has_route || !ps_auth_route_token(&m->route, &token)) {
    ps__sched_reply_error(s, m, PS_ERR_PERMISSION_DENIED,
                          "a node registers on a connection that carries its "
                          "token (libps-client, ps-server), this one does not");
    return;
  }
  /* A node retries Register until it hears back, so the same connection
   * may ask twice: answer with what it already got. */
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (ps__sched_node_holds_slot(n) && n->role == role && route_equal(n, m) &&
        strcmp(n->address, addr) == 0) {
      ps__sched_node_touch(n, m, 1);
      reply_registered(s, m, n);
      return;
    }
  }
  /* A worker whose model is not the job's is told so first: that is the
   * mistake to fix, whatever else is wrong with its registration. */
  if (role == PS__ROLE__ROLE_WORKER && s->has_model && r->model != NULL) {
    ps_model_t declared;
    char why[256];
    memset(&declared, 0, sizeof(declared));
    if (ps_model_from_pb(r->model, &declared, why, sizeof(why)) != PS_OK ||
        ps_lr_schedule_resolve(&declared.lr_schedule, s->opts.workers, why,
                               sizeof(why)) != PS_OK) {
      ps_model_clear(&declared);
      ps__sched_reply_error(s, m, PS_ERR_INVAL, "bad model spec: %s", why);
      return;
    }
    char src[PS_CHECKPOINT_PATH_MAX + 32];
    int same = ps_model_equal(&s->model, &declared);
    if (!same) {
      model_diff(&s->model, &declared, why, sizeof(why));
      ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                            "model differs from the job's (%s): %s",
                            model_source(s, src, sizeof(src)), why);
    }
    ps_model_clear(&declared);
    if (!same) return;
  }
  if (s->ending) {
    ps__sched_reply_error(s, m, PS_ERR_SHUTDOWN, "the job is over (%s)",
                          s->end_reason);
    return;
  }
  if (role == PS__ROLE__ROLE_SERVER && addr[0] == '\0') {
    ps__sched_reply_error(s, m, PS_ERR_INVAL,
                          "a server must advertise the address it serves on");
    return;
  }
  if (addr[0] != '\0') {
    for (size_t i = 0; i < s->nnodes; i++) {
      sched_node_t *n = &s->nodes[i];
      if (ps__sched_node_holds_slot(n) && n->role == role &&
          strcmp(n->address, addr) == 0) {
        ps__sched_reply_error(
            s, m, PS_ERR_REFUSED,
            "%s address %s is already registered as node %u; a "
            "restarted node may register once the old one is "
            "declared dead",
            ps__sched_role_name(role), addr, n->id);
        return;
      }
    }
  }
  /* While the job runs, a dead node's slot (and a worker's rank) is free
   * for its replacement. */
  uint32_t expected =
      role == PS__ROLE__ROLE_SERVER ? s->opts.servers : s->opts.workers;
  /* ps-server --join, once the job runs: one more server (issue #16). */
  int join = role == PS__ROLE__ROLE_SERVER && r->join && s->published;
  if (join && ps__sched_count_slots(s, role) >= SCHED_MAX_SERVERS) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "%u servers are registered, the most a job takes",
                          SCHED_MAX_SERVERS);
    return;
  }
  /* Issue #16: or a worker grows the job with a new rank (workers.c). */
  uint32_t grow_rank = 0;
  int grow = ps__sched_worker_grow(s, m, &grow_rank);
  if (grow < 0) return;
  if (!join && !grow && ps__sched_count_slots(s, role) >= expected) {
    ps__sched_reply_error(
        s, m, PS_ERR_REFUSED,
        "all %u expected %ss are registered and %s (--%ss=%u)", expected,
        ps__sched_role_name(role),
        role == PS__ROLE__ROLE_SERVER ? "alive" : "alive or done",
        ps__sched_role_name(role), expected);
    return;
  }

  ps_model_t model;
  memset(&model, 0, sizeof(model));
  uint32_t rank = 0;
  if (role == PS__ROLE__ROLE_WORKER) {
    char why[256];
    if (r->model == NULL) {
      ps__sched_reply_error(s, m, PS_ERR_INVAL,
                            "a worker must declare its model");
      return;
    }
    if (ps_model_from_pb(r->model, &model, why, sizeof(why)) != PS_OK ||
        ps_lr_schedule_resolve(&model.lr_schedule, s->opts.workers, why,
                               sizeof(why)) != PS_OK) {
      ps_model_clear(&model);
      ps__sched_reply_error(s, m, PS_ERR_INVAL, "bad model spec: %s", why);
      return;
    }
    if (s->has_model && !ps_model_equal(&s->model, &model)) {
      char src[PS_CHECKPOINT_PATH_MAX + 32];
      model_diff(&s->model, &model, why, sizeof(why));
      ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                            "model differs from the job's (%s): %s",
                            model_source(s, src, sizeof(src)), why);
      ps_model_clear(&model);
      return;
    }
    if (grow) {
      rank = grow_rank;
    } else if (r->rank != SCHED_RANK_ANY && r->rank < s->opts.workers &&
               !ps__sched_rank_taken(s, r->rank)) {
      rank = r->rank;
    } else {
      /* The slot count above guarantees a free rank. */
      rank = lowest_free_rank(s);
      if (r->rank != SCHED_RANK_ANY)
        PS_INFO("rank_reassigned", "requested=%u assigned=%u", r->rank, rank);
    }
  }

  if (s->nnodes == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    sched_node_t *nodes = realloc(s->nodes, cap * sizeof(*nodes));
    if (nodes == NULL) {
      ps_model_clear(&model);
      ps__sched_reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
      return;
    }
    s->nodes = nodes;
    s->cap = cap;
  }
  sched_node_t *n = &s->nodes[s->nnodes];
  memset(n, 0, sizeof(*n));
  n->id = (uint32_t)++s->nnodes;
  n->role = role;
  n->state = PS__NODE_STATE__NODE_STATE_ALIVE;
  n->rank = rank;
  snprintf(n->address, sizeof(n->address), "%s", addr);
  memcpy(n->token, token.hex, sizeof(n->token));
  /* Checked against the connection's key in scheduler.c (role_allowed). */
  snprintf(n->curve_key, sizeof(n->curve_key), "%s",
           r->curve_key ? r->curve_key : "");
  ps__sched_node_touch(n, m, 1);
  if (join) {
    n->active = 1;
    s->elastic = 1;
  }
  if (role == PS__ROLE__ROLE_WORKER) {
    if (s->has_model) {
      ps_model_clear(&model);
    } else {
      s->model = model; /* takes the tensors */
      s->has_model = 1;
      s->model_node = n->id;
    }
  }
  PS_INFO("node_registered",
          "id=%u role=%s address=%s rank=%u servers=%u/%u "
          "workers=%u/%u running=%d",
          n->id, ps__sched_role_name(role), ps__sched_addr_or_dash(n->address),
          rank, ps__sched_count_slots(s, PS__ROLE__ROLE_SERVER),
          s->opts.servers, ps__sched_count_slots(s, PS__ROLE__ROLE_WORKER),
          s->opts.workers, s->published);
  ps__sched_state_save(s);
  reply_registered(s, m, n);
  if (s->published)
    node_joined(s, n, grow);
  else
    ps__sched_maybe_publish_first(s);
}

/* The node a message claims to come from, with its last-seen time (and, for
 * messages of its membership link, its route) refreshed; NULL (and an Error
 * sent) if there is no such node or it was declared dead (fenced). */
sched_node_t *ps__sched_sender_node(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = ps__sched_node_by_id(s, m->env->sender);
  if (n == NULL) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "unknown node id %u: register first", m->env->sender);
    return NULL;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    /* The cluster moved on without it: its ranges have new primaries. */
    ps__sched_fence(s, n, m);
    return NULL;
  }
  ps__sched_node_touch(n, m,
                       m->env->body_case == PS__ENVELOPE__BODY_HEARTBEAT ||
                           m->env->body_case == PS__ENVELOPE__BODY_REGISTER);
  return n;
}

int ps__sched_epoch_current(ps_sched_t *s, ps_msg_t *m) {
  uint64_t e = m->env->epoch;
  if (e == 0 || e == s->epoch) return 1;
  ps__sched_reply_error(s, m, PS_ERR_STALE_EPOCH,
                        "%s at epoch %" PRIu64
                        ", the current view is epoch %" PRIu64,
                        ps_body_name(m->env->body_case), e, s->epoch);
  return 0;
}

int ps__sched_require_state(ps_sched_t *s, ps_msg_t *m, sched_node_t *n,
                            int role) {
  if (n->role != role) {
    ps__sched_reply_error(
        s, m, PS_ERR_REFUSED, "%s from node %u, a %s: only %ss send it",
        ps_body_name(m->env->body_case), n->id, ps__sched_role_name(n->role),
        ps__sched_role_name(role));
    return 0;
  }
  if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED, "%s from node %u, which is %s",
                          ps_body_name(m->env->body_case), n->id,
                          ps__sched_state_name(n->state));
    return 0;
  }
  return 1;
}

void ps__sched_handle_heartbeat(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = ps__sched_sender_node(s, m);
  if (n == NULL) return;
  if (!ps__sched_node_holds_slot(n)) {
    /* A node that left (dead ones are fenced above) is done with. */
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "node %u is %s; restart it to join a new job", n->id,
                          ps__sched_state_name(n->state));
    return;
  }
  n->clock = m->env->heartbeat->clock;
  s->stats.heartbeats_link++;
  if (m->env->epoch > s->epoch) {
    ps__sched_reply_error(s, m, PS_ERR_STALE_EPOCH,
                          "heartbeat at epoch %" PRIu64
                          " is ahead of the scheduler's epoch %" PRIu64,
                          m->env->epoch, s->epoch);
    return;
  }
  /* The Ack is how the node knows the scheduler is still there; one every
   * PS_MEMBER_ACK_EVERY_MS is enough (common/member.h), and a thousand
   * nodes' heartbeats then cost 1.2 messages each, not 2. */
  uint64_t now = ps_now_ms();
  if (now - n->hb_acked_ms >= PS_MEMBER_ACK_EVERY_MS) {
    ps__sched_reply_ack(s, m, n->clock);
    n->hb_acked_ms = now;
  }
  ps__sched_view_behind(s, n, m->env->epoch, now);
}

void ps__sched_view_behind(ps_sched_t *s, sched_node_t *n, uint64_t epoch,
                           uint64_t now) {
  /* A node behind gets the view again, but not while the one just
   * published is on its way to it: during a publish to a thousand nodes,
   * the heartbeats sent before it arrived asked for ten thousand more
   * copies, which held up the first. */
  if (s->published && epoch < s->epoch &&
      (n->view_sent_epoch < s->epoch ||
       now - n->view_sent_ms >= SCHED_VIEW_RESEND_MS))
    ps__sched_send_view(s, n);
}

void ps__sched_handle_done(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = ps__sched_sender_node(s, m);
  if (n == NULL || !ps__sched_epoch_current(s, m)) return;
  if (n->role == PS__ROLE__ROLE_WORKER &&
      (n->state == PS__NODE_STATE__NODE_STATE_DONE ||
       (n->state == PS__NODE_STATE__NODE_STATE_LEFT && n->leave_clock))) {
    ps__sched_reply_ack(s, m, n->clock); /* a resent Done */
    return;
  }
  if (!ps__sched_require_state(s, m, n, PS__ROLE__ROLE_WORKER)) return;
  if (!s->published) {
    ps__sched_reply_error(
        s, m, PS_ERR_NOT_READY,
        "done before the job started: the view is not published");
    return;
  }
  int left = ps__sched_worker_left(s, n);
  if (!left) n->state = PS__NODE_STATE__NODE_STATE_DONE;
  ps__sched_barrier_leave(n);
  if (!left)
    PS_INFO("worker_done", "id=%u rank=%u clock=%" PRIu64 " live_workers=%u",
            n->id, n->rank, n->clock, ps__sched_live_workers(s));
  ps__sched_reply_ack(s, m, n->clock);
  if (ps__sched_check_job_finished(s)) return;
  ps__sched_publish(s, left ? "worker_left" : "worker_done");
  ps__sched_barrier_check_all(s);
}

void ps__sched_handle_leave(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = ps__sched_sender_node(s, m);
  if (n == NULL) return;
  const char *why = m->env->shutdown->reason ? m->env->shutdown->reason : "";
  n->state = PS__NODE_STATE__NODE_STATE_LEFT;
  ps__sched_barrier_leave(n);
  PS_INFO("node_left", "id=%u role=%s address=%s reason=\"%s\"", n->id,
          ps__sched_role_name(n->role), ps__sched_addr_or_dash(n->address),
          why);
  /* The leaving node waits for this before it exits; the Shutdown
   * broadcast below skips it (it left). */
  ps__sched_reply_ack(s, m, n->clock);
  char reason[512];
  snprintf(reason, sizeof(reason), "node %u left: %s", n->id,
           why[0] ? why : "no reason given");
  ps_sched_stop(s, reason);
}

/* ---- servers' reports on joins (issue #4) --------------------------- */

/* Like CheckpointReply, these come on a server's membership link and are
 * never answered with an Error (ps_member takes REFUSED as the loss of its
 * membership), except the fence for a server declared dead. */

void ps__sched_handle_join_reply(ps_sched_t *s, ps_msg_t *m) {
  const Ps__JoinReply *jr = m->env->join_reply;
  sched_node_t *n = ps__sched_node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG("join_reply_ignored", "sender=%u", m->env->sender);
    return;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    ps__sched_fence(s, n, m);
    return;
  }
  ps__sched_node_touch(n, m, 1);
  if (jr->clock > n->clock) n->clock = jr->clock;
  sched_node_t *w = ps__sched_node_by_id(s, jr->node);
  /* Replies to an earlier join_clock of the same join are stale. */
  if (w == NULL || !w->joining ||
      w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
      jr->join_clock != w->join_clock) {
    PS_DEBUG("join_reply_ignored",
             "sender=%u node=%u join_clock=%" PRIu64 " ok=%d", n->id, jr->node,
             jr->join_clock, jr->ok);
    return;
  }
  if (!jr->ok) {
    join_pick(s, w, jr->clock);
    PS_INFO("join_late",
            "id=%u server=%u join_clock=%" PRIu64 " server_clock=%" PRIu64
            " new_join_clock=%" PRIu64,
            w->id, n->id, jr->join_clock, jr->clock, w->join_clock);
    ps__sched_publish(s, "join_retry");
    return;
  }
  for (size_t k = 0; k < w->njoin_ok; k++)
    if (w->join_ok[k] == n->id) return; /* a repeat */
  uint32_t *ok = realloc(w->join_ok, (w->njoin_ok + 1) * sizeof(*ok));
  if (ok == NULL) {
    /* The retry timer asks again. */
    PS_ERROR("join_reply_dropped", "err=%s", ps_err_name(PS_ERR_NOMEM));
    return;
  }
  w->join_ok = ok;
  w->join_ok[w->njoin_ok++] = n->id;
  if (ps__sched_join_check_all(s) > 0) ps__sched_publish(s, "worker_joined");
}
