/* Planned moves of a primary (proto Handover): the scheduler drains a
 * server, or evens out primaries after a failover, without a failover
 * timeout and without a snapshot.
 *
 * The primary stops taking pushes for the range (they get STALE_EPOCH at
 * our epoch, and the client waits for the next view), waits until every
 * backup acked every change it made, and says HandoverReady. From then on
 * every copy is bitwise the same, so the next view can name the backup as
 * the primary and this server as a backup in step. Pulls are served
 * throughout: they change nothing.
 *
 * The hold is bounded: a scheduler that never answers (it died, its view
 * is lost) would otherwise stall the range for good. After
 * PS_HANDOVER_HOLD_MS the range takes pushes again; should a view still
 * demote it after that, this copy may be ahead of the new primary's, and
 * the server stops (exit 1) rather than serve as a backup that differs.
 */

#include <inttypes.h>
#include <stdio.h>

#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "server_int.h"

/* Far longer than the scheduler waits for HandoverReady
 * (scheduler/handover.c), so a view it publishes in time always finds the
 * range held. */
#define PS_HANDOVER_HOLD_MS 10000

static void send_ready(ps_server_t *s, const owned_range_t *r, uint64_t id,
                       int code, const char *message) {
  if (s->member == NULL) return;
  Ps__HandoverReady hr = PS__HANDOVER_READY__INIT;
  hr.id = id;
  hr.range_begin = r ? r->begin : 0;
  hr.range_end = r ? r->end : 0;
  hr.clock = r && r->shard ? ps_shard_clock(r->shard) : 0;
  hr.code = code;
  hr.message = (char *)(message ? message : "");
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_HANDOVER_READY;
  env.handover_ready = &hr;
  int rc = ps_member_send(s->member, &env);
  if (rc != PS_OK)
    PS_WARN("handover_ready_send_failed", "id=%" PRIu64 " err=%s", id,
            ps_err_name(rc));
}

static owned_range_t *find_primary(ps_server_t *s, uint64_t begin,
                                   uint64_t end) {
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->begin == begin && r->end == end) return r;
  }
  return NULL;
}

/* Says ready for every held range whose backups hold every change. */
void ps__server_handover_progress(void *arg) {
  ps_server_t *s = arg;
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (!r->primary || r->handover_id == 0 || r->handover_ready) continue;
    if (ps_repl_range_waiting(s->repl, r->begin, r->end) > 0) continue;
    r->handover_ready = 1;
    r->handover_resumed = 0; /* every copy is the same again */
    PS_INFO("handover_ready",
            "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64 ") to=%u clock=%" PRIu64
            " ms=%" PRIu64,
            r->handover_id, r->begin, r->end, r->handover_to,
            r->shard ? ps_shard_clock(r->shard) : 0,
            ps_now_ms() - r->handover_since_ms);
    send_ready(s, r, r->handover_id, PS_OK, NULL);
  }
}

void ps__server_handle_handover(ps_server_t *s, const Ps__Handover *h) {
  owned_range_t *r = find_primary(s, h->range_begin, h->range_end);
  if (h->cancel) {
    if (r != NULL && r->handover_id == h->id) {
      PS_INFO("handover_cancelled",
              "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64 ") held_ms=%" PRIu64,
              h->id, r->begin, r->end, ps_now_ms() - r->handover_since_ms);
      r->handover_id = 0;
      r->handover_ready = 0;
    }
    return;
  }
  if (r == NULL || r->shard == NULL) {
    char msg[160];
    snprintf(msg, sizeof(msg),
             "server %u is not the primary of [%" PRIu64 ",%" PRIu64
             ") at epoch %" PRIu64,
             s->node_id, h->range_begin, h->range_end,
             ps__server_view_epoch(s));
    PS_WARN("handover_refused", "id=%" PRIu64 " reason=\"%s\"", h->id, msg);
    owned_range_t none = {.begin = h->range_begin, .end = h->range_end};
    send_ready(s, &none, h->id, PS_ERR_STALE_EPOCH, msg);
    return;
  }
  /* A repeat of the one in progress: say ready again if it is. */
  if (r->handover_id != h->id) {
    r->handover_id = h->id;
    r->handover_to = h->to;
    r->handover_since_ms = ps_now_ms();
    r->handover_ready = 0;
    PS_INFO("handover_started",
            "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64
            ") to=%u waiting=%zu clock=%" PRIu64,
            h->id, r->begin, r->end, h->to,
            ps_repl_range_waiting(s->repl, r->begin, r->end),
            ps_shard_clock(r->shard));
  } else if (r->handover_ready) {
    send_ready(s, r, r->handover_id, PS_OK, NULL);
    return;
  }
  ps__server_handover_progress(s);
}

int ps__server_handover_holds(ps_server_t *s, owned_range_t *r) {
  (void)s;
  if (r->handover_id == 0) return 0;
  uint64_t held = ps_now_ms() - r->handover_since_ms;
  if (held < PS_HANDOVER_HOLD_MS) return 1;
  PS_WARN("handover_expired",
          "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64 ") to=%u held_ms=%" PRIu64
          " reason=\"no view moved the range; taking pushes again\"",
          r->handover_id, r->begin, r->end, r->handover_to, held);
  r->handover_id = 0;
  r->handover_ready = 0;
  r->handover_resumed = 1;
  return 0;
}

int ps__server_handover_demoted(ps_server_t *s, const owned_range_t *old,
                                char *err, size_t errlen) {
  if (old->handover_id != 0 && old->handover_ready) {
    s->stats.handovers++;
    PS_INFO("handed_over",
            "id=%" PRIu64 " range=[%" PRIu64 ",%" PRIu64 ") to=%u ms=%" PRIu64,
            old->handover_id, old->begin, old->end, old->handover_to,
            ps_now_ms() - old->handover_since_ms);
    return PS_OK;
  }
  /* Only a handover demotes a live primary; without one that held to the
   * end, this copy may hold changes the new primary never got. */
  snprintf(err, errlen,
           "demoted from primary of [%" PRIu64 ",%" PRIu64
           ") without a completed handover%s: this copy may differ from the "
           "new primary's",
           old->begin, old->end,
           old->handover_resumed ? " (the last one expired and pushes were "
                                   "taken again)"
                                 : "");
  return PS_ERR_FENCED;
}
