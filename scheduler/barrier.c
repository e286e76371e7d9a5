/* Barriers: a worker waits in one until every live worker entered it. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/log.h"
#include "scheduler/sched_int.h"

#define SCHED_BARRIER_NAME_MAX 128

/* ---- barriers ------------------------------------------------------- */

void ps__sched_barrier_leave(sched_node_t *n) {
  free(n->barrier);
  n->barrier = NULL;
  n->barrier_request_id = 0;
}

/* Releases the barrier called name if every live worker is in it. Nothing
 * is released before the view: until then not every worker is known. */
static int barrier_check(ps_sched_t *s, const char *barrier_name) {
  if (!s->published || s->finished) return 0;
  /* The caller's name may be a worker's own copy, which releasing that
   * worker frees: compare against a copy of ours. */
  char name[SCHED_BARRIER_NAME_MAX + 1];
  snprintf(name, sizeof(name), "%s", barrier_name);
  uint32_t live = 0, in = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->role != PS__ROLE__ROLE_WORKER ||
        n->state != PS__NODE_STATE__NODE_STATE_ALIVE)
      continue;
    live++;
    if (n->barrier && strcmp(n->barrier, name) == 0) in++;
  }
  if (live == 0 || in < live) return 0;
  s->stats.barrier_releases++;
  PS_INFO("barrier_released", "name=%s workers=%u epoch=%" PRIu64, name, in,
          s->epoch);
  Ps__Ack ack = PS__ACK__INIT;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->barrier == NULL || strcmp(n->barrier, name) != 0) continue;
    env.request_id = n->barrier_request_id;
    ps__sched_send_to_route(s, n->barrier_route, n->barrier_route_len, n->id,
                            &env);
    ps__sched_barrier_leave(n);
  }
  return 1;
}

/* After a membership change a barrier may be complete without anyone new
 * entering it. */
void ps__sched_barrier_check_all(ps_sched_t *s) {
  int released;
  do {
    released = 0;
    for (size_t i = 0; i < s->nnodes && !released; i++) {
      if (s->nodes[i].barrier == NULL) continue;
      char name[SCHED_BARRIER_NAME_MAX + 1];
      snprintf(name, sizeof(name), "%s", s->nodes[i].barrier);
      released = barrier_check(s, name);
    }
  } while (released);
}

void ps__sched_handle_barrier(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = ps__sched_sender_node(s, m);
  if (n == NULL || !ps__sched_epoch_current(s, m) ||
      !ps__sched_require_state(s, m, n, PS__ROLE__ROLE_WORKER))
    return;
  const char *name = m->env->barrier->name ? m->env->barrier->name : "";
  size_t len = strlen(name);
  if (len == 0 || len > SCHED_BARRIER_NAME_MAX) {
    ps__sched_reply_error(s, m, PS_ERR_INVAL,
                          "barrier name of %zu bytes, expected 1 to %d", len,
                          SCHED_BARRIER_NAME_MAX);
    return;
  }
  char *copy = strdup(name);
  if (copy == NULL) {
    ps__sched_reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
    return;
  }
  ps__sched_barrier_leave(n); /* a worker waits in one barrier at a time */
  n->barrier = copy;
  s->stats.barrier_entries++;
  n->barrier_request_id = m->request_id;
  n->barrier_route_len = 0;
  if (m->has_route && zmq_msg_size(&m->route) <= sizeof(n->barrier_route)) {
    n->barrier_route_len = zmq_msg_size(&m->route);
    memcpy(n->barrier_route, zmq_msg_data(&m->route), n->barrier_route_len);
  }
  PS_DEBUG("barrier_enter", "id=%u name=%s", n->id, name);
  barrier_check(s, copy);
}
