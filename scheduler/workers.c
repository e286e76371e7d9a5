/* Workers joining a running job with a new rank and leaving it for good
 * (issue #16, README "Workers join and leave"). A worker registered with
 * join_new_rank takes a rank from --workers up to --max-workers - 1 once
 * the ranks below --workers are held, and joins like a replacement
 * (membership.c, node_joined: a join_clock ahead of the servers, confirmed
 * by them). psctl remove-worker gives a live worker a leave_clock ahead of
 * every clock; the worker stops before that step and sends Done, and is
 * then LEFT, not DONE: its rank is free, and the job goes on. In ASP the
 * steps are the workers' own (a server's clock is the highest step pushed
 * to it): the announced step is where the workers share the data anew,
 * and nothing waits for it. */

#include <inttypes.h>
#include <stdio.h>

#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "scheduler/sched_int.h"

/* As a join's (membership.c): about a second of steps ahead, at least 2. */
#define SCHED_LEAVE_MARGIN_MS 1000
#define SCHED_LEAVE_MIN_STEPS 2

int ps__sched_worker_grow(ps_sched_t *s, ps_msg_t *m, uint32_t *rank) {
  const Ps__Register *r = m->env->register_;
  if (r->role != PS__ROLE__ROLE_WORKER || !r->join_new_rank) return 0;
  /* A free rank below --workers: it joins in place of the worker that
   * held it, as any worker does. */
  if (ps__sched_count_slots(s, PS__ROLE__ROLE_WORKER) < s->opts.workers)
    return 0;
  if (!s->published) {
    ps__sched_reply_error(
        s, m, PS_ERR_NOT_READY,
        "a worker joins with a new rank once the job runs; the job has not "
        "started (start it without --join to be one of the --workers=%u)",
        s->opts.workers);
    return -1;
  }
  uint32_t slots = ps__sched_count_slots(s, PS__ROLE__ROLE_WORKER);
  if (slots >= s->opts.max_workers) {
    ps__sched_reply_error(
        s, m, PS_ERR_REFUSED,
        "the job has %u workers alive or done, the most it may grow to "
        "(ps-scheduler --max-workers=%u)",
        slots, s->opts.max_workers);
    return -1;
  }
  /* The requested rank if free, else the lowest free one: below
   * --workers too, where a worker that left freed it. */
  uint32_t pick = r->rank;
  if (pick >= s->opts.max_workers || ps__sched_rank_taken(s, pick)) {
    pick = 0;
    while (pick < s->opts.max_workers && ps__sched_rank_taken(s, pick)) pick++;
  }
  if (pick >= s->opts.max_workers) { /* ranks from a larger --max-workers */
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "every rank below --max-workers=%u is held",
                          s->opts.max_workers);
    return -1;
  }
  *rank = pick;
  PS_INFO("worker_grows", "rank=%u workers=%u max_workers=%u", pick, slots + 1,
          s->opts.max_workers);
  return 1;
}

/* The step a leaving worker stops before: ahead of every clock a server or
 * worker reported, by about SCHED_LEAVE_MARGIN_MS of steps, so that the
 * view reaches every worker before it (they re-shard the data there), and
 * after the worker's own first step. */
static uint64_t leave_pick(const ps_sched_t *s, const sched_node_t *w) {
  uint64_t base = s->start_clock;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    if (n->clock > base) base = n->clock;
  }
  uint64_t margin =
      ps__sched_steps_ahead(s, SCHED_LEAVE_MARGIN_MS, SCHED_LEAVE_MIN_STEPS);
  uint64_t at = base > UINT64_MAX - margin ? UINT64_MAX : base + margin;
  if (at <= w->join_clock) at = w->join_clock + 1;
  return at;
}

void ps__sched_handle_remove_worker(ps_sched_t *s, ps_msg_t *m) {
  uint32_t id = m->env->remove_worker_command->worker;
  sched_node_t *w = ps__sched_node_by_id(s, id);
  if (w == NULL || w->role != PS__ROLE__ROLE_WORKER) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL, "node %u is not a worker", id);
    return;
  }
  if (w->leave_clock != 0) { /* asked again: the same answer */
    ps__sched_reply_ack(s, m, w->leave_clock);
    return;
  }
  if (w->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED, "worker %u is %s", id,
                          ps__sched_state_name(w->state));
    return;
  }
  if (!s->published || s->ending) {
    ps__sched_reply_error(s, m, PS_ERR_NOT_READY,
                          "the job is not running: no step to leave at");
    return;
  }
  if (w->joining) {
    ps__sched_reply_error(s, m, PS_ERR_NOT_READY,
                          "worker %u is still joining (at step %" PRIu64
                          "): try again once it joined",
                          id, w->join_clock);
    return;
  }
  uint32_t staying = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    staying += n->role == PS__ROLE__ROLE_WORKER &&
               n->state == PS__NODE_STATE__NODE_STATE_ALIVE &&
               n->leave_clock == 0 && n != w;
  }
  if (staying == 0) {
    ps__sched_reply_error(s, m, PS_ERR_REFUSED,
                          "worker %u is the last one that is not leaving; "
                          "end the job instead (psctl stop)",
                          id);
    return;
  }
  w->leave_clock = leave_pick(s, w);
  PS_INFO("worker_leaving",
          "id=%u rank=%u leave_clock=%" PRIu64 " clock=%" PRIu64
          " steps_per_s=%.1f epoch=%" PRIu64,
          w->id, w->rank, w->leave_clock, w->clock, s->steps_per_ms * 1e3,
          s->epoch + 1);
  ps__sched_state_save(s);
  ps__sched_reply_ack(s, m, w->leave_clock);
  ps__sched_publish(s, "worker_leaving");
}

int ps__sched_worker_left(ps_sched_t *s, sched_node_t *n) {
  if (n->leave_clock == 0) return 0;
  n->state = PS__NODE_STATE__NODE_STATE_LEFT;
  PS_INFO("worker_left",
          "id=%u rank=%u leave_clock=%" PRIu64 " clock=%" PRIu64
          " live_workers=%u",
          n->id, n->rank, n->leave_clock, n->clock, ps__sched_live_workers(s));
  return 1;
}
