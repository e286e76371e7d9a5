/* Planned moves: psctl drain (planned maintenance), evening out primaries
 * after a failover left one server leading most ranges (--rebalance), and
 * elastic re-sharding (issue #16): servers that join with --join or
 * psctl add-server, and psctl remove-server, move copies of whole ranges
 * one at a time (ps_place_next_step: a copy made on the new server and
 * synced, then the old one dropped, a primary handed over first when its
 * copy is the one to go). Re-sharding goes first at every tick, then a
 * drain's or rebalance's primary move.
 *
 * One move at a time: the scheduler asks the primary to hand a range to a
 * backup in step (Handover); the primary holds pushes for the range until
 * every backup acked every change it made and says HandoverReady; the next
 * view names the backup as the primary and keeps the old primary as a
 * backup in step (ps_place_handover). No failover timeout passes and no
 * snapshot moves: all copies are bitwise the same at that point. A move
 * that is not ready within HANDOVER_WAIT_MS, or whose servers die, is
 * cancelled and a view goes out so that held pushes are resent.
 *
 * A drained server, once it leads no range, leaves the job: it is marked
 * LEFT (the placement tops its chains up from the other servers, as after
 * a death, but nothing fails over), told to exit 0 (Shutdown), and psctl's
 * call is answered. A removed server (psctl remove-server) leaves once it
 * holds no copy at all, or no step can move one. psctl add-server's call
 * is answered once nothing is left to move.
 */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"

/* Servers hold pushes at most 10 s (ps-server/handover.c); far less here,
 * so a swap published in time always finds the range held. */
#define HANDOVER_WAIT_MS 2000

static ps_range_t *range_of(ps_sched_t *s, uint64_t begin, uint64_t end) {
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].begin == begin && s->ranges[i].end == end)
      return &s->ranges[i];
  return NULL;
}

static void send_handover(ps_sched_t *s, uint32_t primary, int cancel) {
  sched_node_t *n = ps__sched_node_by_id(s, primary);
  if (n == NULL) return;
  Ps__Handover h = PS__HANDOVER__INIT;
  h.id = s->handover.id;
  h.range_begin = s->handover.begin;
  h.range_end = s->handover.end;
  h.to = s->handover.to;
  h.cancel = cancel;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_HANDOVER;
  env.handover = &h;
  ps__sched_send_to_node(s, n, &env);
}

/* Gives the move in progress up: the primary takes pushes again, and a
 * view goes out so that the clients it held resend. */
static void abandon(ps_sched_t *s, const char *why) {
  PS_WARN("handover_abandoned",
          "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64
          ") from=%u to=%u for=%s ms=%" PRIu64 " reason=\"%s\"",
          s->handover.id, s->handover.begin, s->handover.end, s->handover.from,
          s->handover.to, s->handover.why, ps_now_ms() - s->handover.asked_ms,
          why);
  if (ps__sched_server_alive(s, s->handover.from))
    send_handover(s, s->handover.from, 1);
  s->stats.handovers_abandoned++;
  s->handover.id = 0;
  ps__sched_publish(s, "handover_abandoned");
}

static void drain_answer(ps_sched_t *s, sched_node_t *n, int code,
                         const char *text) {
  if (n->drain_route_len == 0) return;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, n->drain_request_id);
  Ps__Ack ack = PS__ACK__INIT;
  Ps__Error e = PS__ERROR__INIT;
  if (code == PS_OK) {
    ack.clock = n->clock;
    env.body_case = PS__ENVELOPE__BODY_ACK;
    env.ack = &ack;
  } else {
    e.code = code;
    e.message = (char *)text;
    env.body_case = PS__ENVELOPE__BODY_ERROR;
    env.error = &e;
  }
  ps__sched_send_to_route(s, n->drain_route, n->drain_route_len, 0, &env);
  n->drain_route_len = 0;
}

/* A drained server that leads nothing leaves: every chain drops it (and is
 * topped up elsewhere), it is told to exit 0, psctl hears it. */
static void drain_finish(ps_sched_t *s, sched_node_t *n, uint64_t now) {
  n->state = PS__NODE_STATE__NODE_STATE_LEFT;
  n->draining = 0;
  s->stats.drains++;
  PS_INFO("drained",
          "id=%u address=%s ms=%" PRIu64 " epoch=%" PRIu64 " reason=\"%s\"",
          n->id, ps__sched_addr_or_dash(n->address), now - n->drain_started_ms,
          s->epoch + 1,
          n->removing ? "psctl remove-server: its copies are on other servers"
                      : "psctl drain: its ranges are led by other servers");
  ps__sched_replan(s, s->epoch + 1);
  ps__sched_publish(s, "drained");
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason =
      n->removing
          ? (char *)"removed by psctl: every copy it held is on other servers"
          : (char *)"drained by psctl: every range it led moved to a backup";
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  ps__sched_send_to_node(s, n, &env);
  drain_answer(s, n, PS_OK, NULL);
}

/* The servers as the placement sees them (calloc'd, *n of them); NULL when
 * out of memory. */
static ps_place_server_t *place_servers(const ps_sched_t *s, size_t *n) {
  ps_place_server_t *servers = calloc(s->nnodes + 1, sizeof(*servers));
  *n = 0;
  if (servers == NULL) return NULL;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *nd = &s->nodes[i];
    if (nd->role != PS__ROLE__ROLE_SERVER) continue;
    ps_place_server_t *p = &servers[(*n)++];
    p->id = nd->id;
    p->alive = nd->state == PS__NODE_STATE__NODE_STATE_ALIVE;
    p->leaving = nd->draining;
    p->active = nd->active;
  }
  return servers;
}

static int any_syncing(const ps_sched_t *s) {
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].syncing_mask) return 1;
  return 0;
}

/* The next step of elastic re-sharding, if any is due (nothing syncs). */
static int next_step(const ps_sched_t *s, const ps_place_server_t *servers,
                     size_t n, ps_place_step_t *step) {
  if (!s->elastic || any_syncing(s)) return 0;
  return ps_place_next_step(s->ranges, s->nranges, servers, n, s->replication,
                            step);
}

/* Whether re-sharding still has copies to move: one syncs, or a step is
 * due. Out of memory counts as pending (the next tick looks again). */
static int reshard_pending(const ps_sched_t *s) {
  if (!s->elastic) return 0;
  if (any_syncing(s) || s->handover.id != 0) return 1;
  size_t n = 0;
  ps_place_server_t *servers = place_servers(s, &n);
  if (servers == NULL) return 1;
  ps_place_step_t step;
  int due = next_step(s, servers, n, &step);
  size_t j = 0;
  uint32_t to = 0;
  if (!due && s->opts.rebalance)
    due = ps_place_next_move(s->ranges, s->nranges, servers, n, 1, &j, &to);
  free(servers);
  return due;
}

/* Drains whose server died fail; drains whose server leads nothing end
 * (psctl remove-server: once it holds no copy either, or no step can move
 * one). */
static void drains_check(ps_sched_t *s, uint64_t now) {
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (!n->draining) continue;
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
      n->draining = 0;
      PS_WARN("drain_failed", "id=%u reason=\"the server died\"", n->id);
      drain_answer(s, n, PS_ERR_PEER,
                   "the server died while it was drained; its ranges failed "
                   "over");
      continue;
    }
    if (ps_place_primaries(s->ranges, s->nranges, n->id) != 0 ||
        (s->coord != NULL && ps_coord_active(s->coord)))
      continue;
    if (n->removing && ps_place_held(s->ranges, s->nranges, n->id) > 0 &&
        reshard_pending(s))
      continue;
    drain_finish(s, n, now);
  }
}

/* psctl add-server calls end once nothing is left to move (or fail when
 * their server died). */
static void adds_check(ps_sched_t *s) {
  int pending = -1;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (!n->adding) continue;
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
      n->adding = 0;
      PS_WARN("add_failed", "id=%u reason=\"the server died\"", n->id);
      drain_answer(s, n, PS_ERR_PEER,
                   "the server died while copies moved to it");
      continue;
    }
    if (pending < 0) pending = reshard_pending(s);
    if (pending) continue;
    n->adding = 0;
    PS_INFO("server_added",
            "id=%u copies=%u leads=%u ms=%" PRIu64 " epoch=%" PRIu64, n->id,
            ps_place_held(s->ranges, s->nranges, n->id),
            ps_place_primaries(s->ranges, s->nranges, n->id),
            ps_now_ms() - n->drain_started_ms, s->epoch);
    drain_answer(s, n, PS_OK, NULL);
  }
}

/* Asks range j's primary to hand it to its backup to. */
static void start_move(ps_sched_t *s, size_t j, uint32_t to, const char *why,
                       uint64_t now) {
  const ps_range_t *r = &s->ranges[j];
  s->handover.id = ++s->handover_next_id;
  s->handover.begin = r->begin;
  s->handover.end = r->end;
  s->handover.from = r->server_id;
  s->handover.to = to;
  s->handover.asked_ms = now;
  s->handover.why = why;
  PS_INFO("handover_started",
          "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64
          ") from=%u to=%u for=%s from_leads=%u to_leads=%u epoch=%" PRIu64,
          s->handover.id, r->begin, r->end, r->server_id, to, s->handover.why,
          ps_place_primaries(s->ranges, s->nranges, r->server_id),
          ps_place_primaries(s->ranges, s->nranges, to), s->epoch);
  send_handover(s, r->server_id, 0);
}

/* An ADD or DROP of re-sharding: the next view says it (an added backup
 * then gets the primary's snapshot; a dropped one frees its copy). */
static void apply_step(ps_sched_t *s, const ps_place_step_t *step) {
  ps_range_t *r = &s->ranges[step->range];
  if (!ps_place_apply(r, step)) return;
  int add = step->kind == PS_PLACE_STEP_ADD;
  if (add)
    s->stats.copies_added++;
  else
    s->stats.copies_dropped++;
  PS_INFO(add ? "copy_added" : "copy_dropped",
          "range=[%" PRIu64 ",%" PRIu64
          ") server=%u primary=%u copies=%u "
          "held=%u epoch=%" PRIu64,
          r->begin, r->end, step->server, r->server_id, r->nbackups + 1,
          ps_place_held(s->ranges, s->nranges, step->server), s->epoch + 1);
  ps__sched_publish(s, add ? "copy_added" : "copy_dropped");
}

void ps__sched_handover_tick(ps_sched_t *s, uint64_t now) {
  if (!s->published || s->finished || s->ending) return;
  if (s->handover.id != 0) {
    if (!ps__sched_server_alive(s, s->handover.from) ||
        !ps__sched_server_alive(s, s->handover.to))
      abandon(s, "a server of the move died");
    else if (now - s->handover.asked_ms > HANDOVER_WAIT_MS)
      abandon(s, "the primary did not get ready in time");
    return;
  }
  drains_check(s, now);
  /* A checkpoint names the primaries that write it: no move meanwhile. */
  if (s->coord && ps_coord_active(s->coord)) return;
  size_t n = 0;
  ps_place_server_t *servers = place_servers(s, &n);
  if (servers == NULL) return; /* the next tick tries again */
  int draining = 0;
  for (size_t i = 0; i < n; i++) draining |= servers[i].leaving;
  /* Re-sharding first: a copy too many goes before a primary moves for
   * balance, so that the two never undo each other. */
  ps_place_step_t step;
  if (next_step(s, servers, n, &step)) {
    free(servers);
    if (step.kind == PS_PLACE_STEP_MOVE)
      start_move(s, step.range, step.server, "reshard", now);
    else
      apply_step(s, &step);
    return;
  }
  /* Rebalance only a settled cluster: while a backup syncs, it cannot lead
   * yet, and the next synced one may change the best move. */
  int rebalance = s->opts.rebalance && !any_syncing(s);
  size_t j = 0;
  uint32_t to = 0;
  int found =
      (draining || rebalance) &&
      ps_place_next_move(s->ranges, s->nranges, servers, n, rebalance, &j, &to);
  free(servers);
  if (!found) {
    adds_check(s);
    return;
  }
  const sched_node_t *from =
      ps__sched_node_by_id_const(s, s->ranges[j].server_id);
  start_move(s, j, to, from && from->draining ? "drain" : "rebalance", now);
}

/* HandoverReady comes on a server's membership link: like ReplicaSynced,
 * never answered with an Error (ps_member takes REFUSED as the loss of its
 * membership), except the fence for a server declared dead. */
void ps__sched_handle_handover_ready(ps_sched_t *s, ps_msg_t *m) {
  const Ps__HandoverReady *hr = m->env->handover_ready;
  sched_node_t *n = ps__sched_server_report(s, m, "handover_ready_ignored");
  if (n == NULL) return;
  if (hr->id == 0 || hr->id != s->handover.id || n->id != s->handover.from) {
    /* One given up already (its cancel is on the way), or a repeat. */
    PS_DEBUG("handover_ready_ignored", "sender=%u id=%" PRIu64, n->id, hr->id);
    return;
  }
  if (hr->code != PS_OK) {
    abandon(
        s, hr->message && hr->message[0] ? hr->message : ps_err_name(hr->code));
    return;
  }
  ps_range_t *r = range_of(s, s->handover.begin, s->handover.end);
  uint64_t ms = ps_now_ms() - s->handover.asked_ms;
  if (r == NULL || r->server_id != n->id ||
      !ps__sched_server_alive(s, s->handover.to) ||
      !ps_place_handover(r, s->handover.to)) {
    abandon(s, "the range's chain changed while the primary got ready");
    return;
  }
  s->stats.handovers++;
  PS_INFO("handover",
          "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64
          ") from=%u to=%u for=%s clock=%" PRIu64 " ms=%" PRIu64
          " epoch=%" PRIu64,
          s->handover.id, s->handover.begin, s->handover.end, s->handover.from,
          s->handover.to, s->handover.why, hr->clock, ms, s->epoch + 1);
  s->handover.id = 0;
  ps__sched_publish(s, "handover");
  /* The next move of a drain can go at once: its Handover follows this
   * view on the same link. */
  ps__sched_handover_tick(s, ps_now_ms());
}

static sched_node_t *drain_target(ps_sched_t *s, ps_msg_t *m, uint32_t id,
                                  int action) {
  sched_node_t *n = ps__sched_node_by_id(s, id);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL, "node %u is not a server", id);
    return NULL;
  }
  if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL, "server %u is %s, not alive", id,
                          ps__sched_state_name(n->state));
    return NULL;
  }
  if (n->draining) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "server %u is being drained already", id);
    return NULL;
  }
  if (n->adding) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "server %u is being added already", id);
    return NULL;
  }
  if (action == PS__SERVER_ACTION__SERVER_ADD) {
    if (n->active) {
      ps__sched_reply_error(
          s, m, PS_ERR_REFUSED,
          "server %u takes its share already (a server of the first view, "
          "or one that joined with --join or was added)",
          id);
      return NULL;
    }
    return n;
  }
  uint32_t others = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *o = &s->nodes[i];
    others += o->id != id && o->role == PS__ROLE__ROLE_SERVER &&
              o->state == PS__NODE_STATE__NODE_STATE_ALIVE && !o->draining;
  }
  if (others == 0) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "server %u is the last one that may lead ranges", id);
    return NULL;
  }
  /* remove-server makes a copy elsewhere before it moves a primary. */
  for (size_t i = 0;
       i < s->nranges && action == PS__SERVER_ACTION__SERVER_DRAIN; i++) {
    const ps_range_t *r = &s->ranges[i];
    if (r->server_id == id && r->nbackups == 0) {
      ps__sched_reply_error(
          s, m, PS_ERR_REFUSED,
          "server %u leads [%" PRIu64 ",%" PRIu64
          ") alone: with no backup (--replication 1, or the others died) a "
          "drain would lose it; psctl remove-server copies it first",
          id, r->begin, r->end);
      return NULL;
    }
  }
  return n;
}

void ps__sched_handle_drain(ps_sched_t *s, ps_msg_t *m) {
  const Ps__DrainCommand *dc = m->env->drain_command;
  uint32_t id = dc->server;
  int action = dc->action;
  if (action != PS__SERVER_ACTION__SERVER_DRAIN &&
      action != PS__SERVER_ACTION__SERVER_REMOVE &&
      action != PS__SERVER_ACTION__SERVER_ADD) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL, "unknown server action %d",
                          action);
    return;
  }
  if (!s->published || s->ending || s->finished) {
    ps__sched_reply_error(
        s, m, PS_ERR_NOT_READY,
        s->published ? "the job is ending" : "the job has not started yet");
    return;
  }
  if (!m->has_route || zmq_msg_size(&m->route) > SCHED_ROUTE_MAX) return;
  sched_node_t *n = drain_target(s, m, id, action);
  if (n == NULL) return;
  n->drain_started_ms = ps_now_ms();
  n->drain_request_id = m->request_id;
  n->drain_route_len = zmq_msg_size(&m->route);
  memcpy(n->drain_route, zmq_msg_data(&m->route), n->drain_route_len);
  if (action == PS__SERVER_ACTION__SERVER_ADD) {
    n->active = 1;
    n->adding = 1;
    s->elastic = 1;
    PS_INFO("add_started", "id=%u address=%s copies=%u epoch=%" PRIu64, n->id,
            ps__sched_addr_or_dash(n->address),
            ps_place_held(s->ranges, s->nranges, n->id), s->epoch);
  } else {
    n->draining = 1;
    n->removing = action == PS__SERVER_ACTION__SERVER_REMOVE;
    s->elastic |= n->removing;
    PS_INFO("drain_started",
            "id=%u address=%s leads=%u copies=%u remove=%d epoch=%" PRIu64,
            n->id, ps__sched_addr_or_dash(n->address),
            ps_place_primaries(s->ranges, s->nranges, n->id),
            ps_place_held(s->ranges, s->nranges, n->id), n->removing, s->epoch);
  }
  ps__sched_handover_tick(s, n->drain_started_ms);
}
