/* libps-client's background thread: a uv loop with the member link to the
 * scheduler (registration, heartbeats, views, Shutdown), Done or Leave sent
 * on that link, and the wait for the scheduler to take it when the client
 * stops. See worker/client/client_int.h. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/view.h"
#include "worker/client/client_int.h"

/* How long ps_client_destroy waits for the scheduler to take the Done or
 * Leave when it does not answer: shorter than ps-worker's stop grace
 * (worker/main.c), so a worker stopped while the scheduler is away still
 * exits cleanly. */
#define PS__FAREWELL_WAIT_MS 2000

/* ---- background thread ------------------------------------------------ */

void ps__client_member_registered_cb(ps_member_t *m, uint32_t node_id,
                                     uint32_t rank, uint32_t num_workers,
                                     void *arg) {
  ps_client_t *c = arg;
  pthread_mutex_lock(&c->mu);
  c->shared.registered = 1;
  c->shared.node_id = node_id;
  c->shared.rank = rank;
  c->shared.num_workers = num_workers;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void ps__client_member_view_cb(ps_member_t *m, ps_view_t *view, void *arg) {
  ps_client_t *c = arg;
  ps_view_t *old;
  if (c->thread_done_sent) {
    const ps_node_t *me = ps_view_node(view, ps_member_node_id(m));
    if (me == NULL || me->state == PS__NODE_STATE__NODE_STATE_DONE ||
        me->state == PS__NODE_STATE__NODE_STATE_LEFT)
      c->thread_farewell_taken = 1;
  }
  pthread_mutex_lock(&c->mu);
  /* Only the newest view matters to the caller; one it never took is
   * superseded. */
  old = c->shared.view;
  c->shared.view = view;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  ps_view_destroy(&old);
  ps__client_wake_caller(c);
}

void ps__client_member_shutdown_cb(ps_member_t *m, int status,
                                   const char *reason, void *arg) {
  ps_client_t *c = arg;
  c->thread_farewell_taken = 1;
  pthread_mutex_lock(&c->mu);
  if (!c->shared.shutdown) {
    c->shared.shutdown = 1;
    c->shared.shutdown_status = status;
    snprintf(c->shared.shutdown_reason, sizeof(c->shared.shutdown_reason), "%s",
             reason ? reason : "");
  }
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  ps__client_wake_caller(c);
  PS_INFO("client_shutdown", "status=%s reason=\"%s\"", ps_err_name(status),
          reason ? reason : "");
}

static void ps__client_farewell_timer_cb(uv_timer_t *t) {
  ps_client_t *c = t->data;
  if (c->member && ps_member_farewell_acked(c->member))
    c->thread_farewell_taken = 1;
  if (c->member && c->thread_done_sent && !c->thread_farewell_taken &&
      ps_now_ms() < c->farewell_deadline_ms)
    return;
  if (c->member && c->thread_done_sent && !c->thread_farewell_taken)
    PS_WARN("client_farewell_unconfirmed", "scheduler=%s wait_ms=%d",
            c->scheduler, PS__FAREWELL_WAIT_MS);
  ps_member_destroy(&c->member);
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, NULL);
  uv_close((uv_handle_t *)&c->async, NULL);
}

void ps__client_thread_async_cb(uv_async_t *h) {
  ps_client_t *c = h->data;
  pthread_mutex_lock(&c->mu);
  int stop = c->shared.stop;
  int done = c->shared.done;
  int leave = c->shared.leave;
  uint64_t clock = c->shared.clock;
  uint64_t metrics_gen = c->shared.metrics_gen;
  char metrics_address[PS_ADDR_MAX];
  memcpy(metrics_address, c->shared.metrics_address, sizeof(metrics_address));
  pthread_mutex_unlock(&c->mu);

  if (c->member && clock != c->thread_clock) {
    ps_member_set_clock(c->member, clock);
    c->thread_clock = clock;
  }
  if (c->member && metrics_gen != c->thread_metrics_gen) {
    /* Its length was checked by the caller. */
    ps_member_set_metrics_address(c->member, metrics_address);
    c->thread_metrics_gen = metrics_gen;
  }
  /* Done goes out before the member is destroyed in the same callback; the
   * member lingers its socket after a Done, so a destroy right after
   * ps_client_done still delivers it. It travels on the member's link so the
   * scheduler sees it where it sees this worker's heartbeats. */
  if (c->member && leave && !c->thread_done_sent) {
    ps_member_send_leave(c->member, c->shared.leave_reason);
    c->thread_done_sent = 1;
  }
  if (c->member && done && !c->thread_done_sent) {
    ps_member_send_done(c->member);
    c->thread_done_sent = 1;
  }
  if (stop && !c->thread_stopping) {
    c->thread_stopping = 1;
    /* Several workers finishing together each move the view on, and a Done
     * sent at the old epoch is refused as stale; the member resends it,
     * but only while it exists. So it stays until the Done is taken (or a
     * bounded wait passes: a scheduler that is gone answers nothing). The
     * member is never destroyed from inside its own callbacks, hence the
     * timer. */
    c->farewell_deadline_ms = ps_now_ms() + PS__FAREWELL_WAIT_MS;
    uv_timer_start(&c->farewell_timer, ps__client_farewell_timer_cb, 0, 10);
  }
}

void *ps__client_thread_main(void *arg) {
  ps_client_t *c = arg;
  /* Runs until the stop request has closed the member and the async
   * handle, so every close callback has run when the thread ends. */
  uv_run(&c->loop, UV_RUN_DEFAULT);
  return NULL;
}

void ps__client_thread_poke(ps_client_t *c) {
  if (c->async_ready) uv_async_send(&c->async);
}
