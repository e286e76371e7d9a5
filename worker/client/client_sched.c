/* libps-client's own socket to the scheduler, on the calling thread:
 * barriers. (Done and Leave go on the background thread's member link.)
 * See worker/client/client_int.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <zmq.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "worker/client/client_int.h"

/* Long enough for a Barrier/Done queued on the scheduler socket to leave
 * when the client is destroyed, short enough not to hold up exit when the
 * scheduler is gone. */
#define PS__SCHED_LINGER_MS 1000

/* ---- scheduler requests on the calling thread --------------------------- */

static int ps__client_sched_socket(ps_client_t *c) {
  if (c->sched_sock) return PS_OK;
  void *s = zmq_socket(c->zctx, ZMQ_DEALER);
  if (s == NULL)
    return ps__client_fail(c, PS_ERR_ZMQ, "scheduler %s: socket: %s",
                           c->scheduler, zmq_strerror(errno));
  char why[256];
  if (ps_zsock_configure(s, why, sizeof(why)) != PS_OK) {
    zmq_close(s);
    return ps__client_fail(c, PS_ERR_ZMQ, "scheduler %s: %s", c->scheduler,
                           why);
  }
  int linger = PS__SCHED_LINGER_MS;
  if (zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger)) != 0) {
    int e = errno;
    zmq_close(s);
    return ps__client_fail(c, PS_ERR_ZMQ,
                           "scheduler %s: zmq_setsockopt(ZMQ_LINGER): %s",
                           c->scheduler, zmq_strerror(e));
  }
  if (ps_auth_set_routing_id(s, &c->token, PS_AUTH_USE_REQUEST, why,
                             sizeof(why)) != PS_OK) {
    zmq_close(s);
    return ps__client_fail(c, PS_ERR_ZMQ, "scheduler %s: %s", c->scheduler,
                           why);
  }
  if (c->keys &&
      ps_keys_apply(s, c->keys, ps_keys_scheduler_key(c->keys), why,
                    sizeof(why)) != PS_OK) {
    zmq_close(s);
    return ps__client_fail(c, PS_ERR_ZMQ, "scheduler %s: %s", c->scheduler,
                           why);
  }
  if (ps_zmq_connect(s, c->scheduler) != 0) {
    int e = errno;
    zmq_close(s);
    return ps__client_fail(c, PS_ERR_ZMQ, "scheduler %s: cannot connect: %s",
                           c->scheduler, zmq_strerror(e));
  }
  c->sched_sock = s;
  return PS_OK;
}

static int ps__client_barrier_send(ps_client_t *c, const char *name,
                                   uint64_t *request_id) {
  Ps__Barrier barrier = PS__BARRIER__INIT;
  barrier.name = (char *)name;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  env.body_case = PS__ENVELOPE__BODY_BARRIER;
  env.barrier = &barrier;
  *request_id = env.request_id;
  int rc = ps_msg_send(c->sched_sock, NULL, &env, NULL, 0);
  if (rc != PS_OK)
    return ps__client_fail(c, rc,
                           "barrier \"%s\": send to scheduler %s failed: %s",
                           name, c->scheduler, zmq_strerror(errno));
  return PS_OK;
}

/* What the scheduler said to one Barrier: 1 released, 0 refused for a stale
 * epoch (resend), or the error. */
static int ps__client_barrier_reply(ps_client_t *c, const char *name,
                                    ps_msg_t *m, int status, const char *reason,
                                    uint64_t *retry_at_ms) {
  if (status != PS_OK)
    return ps__client_fail(c, PS_ERR_PROTO,
                           "barrier \"%s\": bad reply from scheduler %s: %s",
                           name, c->scheduler, reason);
  Ps__Envelope *r = m->env;
  if (r->body_case == PS__ENVELOPE__BODY_ACK) return 1;
  if (r->body_case != PS__ENVELOPE__BODY_ERROR)
    return ps__client_fail(c, PS_ERR_PROTO,
                           "barrier \"%s\": scheduler %s sent %s, not ack",
                           name, c->scheduler, ps_body_name(r->body_case));
  int code = r->error->code < 0 ? r->error->code : PS_ERR_PROTO;
  if (code == PS_ERR_STALE_EPOCH) {
    /* A worker finished or died and the view moved on: enter again at the
     * new epoch once the background thread has it. */
    *retry_at_ms =
        r->epoch < c->view->epoch ? ps_now_ms() + PS__STALE_RETRY_MS : 0;
    return 0;
  }
  return ps__client_fail(c, code, "barrier \"%s\": scheduler %s: %s: %s", name,
                         c->scheduler, ps_err_name(code),
                         r->error->message ? r->error->message : "");
}

int ps_client_barrier(ps_client_t *c, const char *name) {
  int rc = ps__client_refresh(c);
  if (rc < 0) return rc;
  if (name == NULL || name[0] == '\0')
    return ps__client_fail(c, PS_ERR_INVAL, "barrier name is empty");
  if ((rc = ps__client_sched_socket(c)) != PS_OK) return rc;

  /* A barrier waits for every worker, including ones still starting up, so
   * it gets the start-up deadline rather than a data call's. */
  uint64_t deadline = ps_now_ms() + (uint64_t)c->opts.connect_timeout_ms;
  uint64_t request_id = 0, sent_gen = 0, retry_at = 0;
  int stale = 0;
  for (;;) {
    if ((rc = ps__client_refresh(c)) < 0) return rc;
    uint64_t now = ps_now_ms();
    if (request_id == 0 ||
        (stale && (c->view_gen > sent_gen || (retry_at && now >= retry_at)))) {
      if ((rc = ps__client_barrier_send(c, name, &request_id)) != PS_OK)
        return rc;
      sent_gen = c->view_gen;
      stale = 0;
      retry_at = 0;
    }
    if (now >= deadline)
      return ps__client_fail(
          c, PS_ERR_TIMEOUT,
          "barrier \"%s\": %s from scheduler %s within %d ms", name,
          stale ? "stale epoch and no newer view" : "no answer", c->scheduler,
          c->opts.connect_timeout_ms);
    uint64_t wake_at =
        stale && retry_at && retry_at < deadline ? retry_at : deadline;
    uint64_t slice = wake_at > now ? wake_at - now : 0;
    if (slice > PS__POLL_SLICE_MS) slice = PS__POLL_SLICE_MS;
    zmq_pollitem_t items[2] = {
        {.fd = c->wake_fd, .events = ZMQ_POLLIN},
        {.socket = c->sched_sock, .events = ZMQ_POLLIN},
    };
    if (zmq_poll(items, 2, (long)slice) < 0 && errno != EINTR)
      return ps__client_fail(c, PS_ERR_ZMQ, "zmq_poll: %s",
                             zmq_strerror(errno));
    if (items[0].revents & ZMQ_POLLIN) ps__client_drain_wake(c);
    if (!(items[1].revents & ZMQ_POLLIN)) continue;
    for (;;) {
      ps_msg_t m;
      char reason[256] = "";
      rc = ps_msg_recv(c->sched_sock, 0, &ps_frame_default_limits, &m, reason,
                       sizeof(reason));
      if (rc == PS_ERR_TIMEOUT) break;
      if (rc != PS_OK && rc != PS_ERR_PROTO && rc != PS_ERR_VERSION &&
          rc != PS_ERR_TOO_BIG) {
        ps_msg_close(&m);
        return ps__client_fail(
            c, rc, "barrier \"%s\": receive from scheduler %s failed: %s", name,
            c->scheduler, reason);
      }
      if (stale || m.request_id != request_id) {
        /* An answer to an earlier barrier that timed out, or to the entry
         * about to be resent. */
        ps_msg_close(&m);
        continue;
      }
      rc = ps__client_barrier_reply(c, name, &m, rc, reason, &retry_at);
      ps_msg_close(&m);
      if (rc == 1) return PS_OK;
      if (rc < 0) return rc;
      stale = 1;
      PS_INFO("client_barrier_stale", "name=%s epoch=%" PRIu64, name,
              c->view->epoch);
    }
  }
}
