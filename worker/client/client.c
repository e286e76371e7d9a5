/* libps-client's life cycle: options, creating a client (the link to the
 * scheduler, the background thread, the first view) and destroying it,
 * accessors, Done and Leave. How a client works and which file holds what:
 * worker/client/client_int.h. */
#include "ps/client.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/view.h"
#include "common/workset.h"
#include "worker/client/client_defaults.h"
#include "worker/client/client_int.h"

#define PS__MAX_WINDOW 4096

int ps__client_fail(ps_client_t *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(c->errmsg, sizeof(c->errmsg), code, fmt, ap);
  va_end(ap);
  return code;
}

void ps__client_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu,
                                uint64_t deadline_ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(deadline_ms / 1000);
  ts.tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
  pthread_cond_timedwait(cv, mu, &ts);
}

static int ps__client_cond_init(pthread_cond_t *cv) {
  /* Deadlines are on the monotonic clock (common/time.h); a wall-clock
   * condvar would stretch or cut waits when the clock is stepped. */
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return -1;
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(cv, &attr);
  pthread_condattr_destroy(&attr);
  return rc == 0 ? 0 : -1;
}

void ps__client_wake_caller(ps_client_t *c) {
  uint64_t one = 1;
  ssize_t w = write(c->wake_fd, &one, sizeof(one));
  (void)w; /* EAGAIN: the counter is already non-zero, the caller wakes */
}

void ps__client_drain_wake(ps_client_t *c) {
  uint64_t n;
  ssize_t r = read(c->wake_fd, &n, sizeof(n));
  (void)r;
}

/* ---- Done and Leave ----------------------------------------------------- */

int ps_client_done(ps_client_t *c) {
  if (c->done_sent) return PS_OK;
  c->done_sent = 1;
  pthread_mutex_lock(&c->mu);
  c->shared.done = 1;
  pthread_mutex_unlock(&c->mu);
  ps__client_thread_poke(c);
  PS_INFO("client_done", "scheduler=%s", c->scheduler);
  return PS_OK;
}

int ps_client_leave(ps_client_t *c, const char *reason) {
  if (c->done_sent) return PS_OK;
  c->done_sent = 1;
  pthread_mutex_lock(&c->mu);
  c->shared.leave = 1;
  snprintf(c->shared.leave_reason, sizeof(c->shared.leave_reason), "%s",
           reason ? reason : "");
  pthread_mutex_unlock(&c->mu);
  ps__client_thread_poke(c);
  PS_INFO("client_leave", "scheduler=%s reason=\"%s\"", c->scheduler,
          reason ? reason : "");
  return PS_OK;
}

int ps_client_shutting_down(ps_client_t *c) {
  pthread_mutex_lock(&c->mu);
  int s = c->shared.shutdown;
  pthread_mutex_unlock(&c->mu);
  return s;
}

/* ---- life cycle --------------------------------------------------------- */

void ps_client_opts_init(ps_client_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->scheduler = NULL;
  o->timeout_ms = PS_CLIENT_DEFAULT_TIMEOUT_MS;
  o->connect_timeout_ms = PS_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS;
  o->heartbeat_ms = PS_CLIENT_DEFAULT_HEARTBEAT_MS;
  o->rank = -1;
  o->window = PS_CLIENT_DEFAULT_WINDOW;
  o->chunk_bytes = PS_CLIENT_DEFAULT_CHUNK_BYTES;
  o->resend_ms = PS_CLIENT_DEFAULT_RESEND_MS;
}

static int ps__client_opts_check(const ps_client_opts_t *o,
                                 const ps_model_t *model, char *errmsg,
                                 size_t errlen) {
  char bad[160] = "";
  if (o == NULL)
    snprintf(bad, sizeof(bad), "options are NULL");
  else if (o->scheduler == NULL || o->scheduler[0] == '\0')
    snprintf(bad, sizeof(bad), "scheduler endpoint is not set");
  else if (o->timeout_ms <= 0)
    snprintf(bad, sizeof(bad), "timeout_ms %d is not positive", o->timeout_ms);
  else if (o->connect_timeout_ms <= 0)
    snprintf(bad, sizeof(bad), "connect_timeout_ms %d is not positive",
             o->connect_timeout_ms);
  else if (o->heartbeat_ms <= 0)
    snprintf(bad, sizeof(bad), "heartbeat_ms %d is not positive",
             o->heartbeat_ms);
  else if (o->rank < -1 || o->rank >= (int64_t)UINT32_MAX)
    snprintf(bad, sizeof(bad),
             "rank %" PRId64 " is neither -1 (any) nor in [0, %u)", o->rank,
             UINT32_MAX);
  else if (o->window < 1 || o->window > PS__MAX_WINDOW)
    snprintf(bad, sizeof(bad), "window %d is not in [1, %d]", o->window,
             PS__MAX_WINDOW);
  else if (o->resend_ms < 0)
    snprintf(bad, sizeof(bad), "resend_ms %d is negative (0: never resend)",
             o->resend_ms);
  else if (o->chunk_bytes % sizeof(float) != 0)
    snprintf(bad, sizeof(bad),
             "chunk_bytes %" PRIu64 " is not a multiple of %zu (0: no chunks)",
             o->chunk_bytes, sizeof(float));
  else if (model == NULL || model->ntensors == 0)
    snprintf(bad, sizeof(bad), "the model has no tensors");
  if (bad[0] == '\0') return PS_OK;
  if (errmsg && errlen) snprintf(errmsg, errlen, "ps_client_new: %s", bad);
  return PS_ERR_INVAL;
}

static void ps__client_free(ps_client_t *c) {
  if (c->thread_started) {
    pthread_mutex_lock(&c->mu);
    c->shared.stop = 1;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
    pthread_join(c->thread, NULL);
  } else if (c->async_ready) {
    /* The thread never ran: close the loop's handles here. */
    if (c->member) ps_member_destroy(&c->member);
    uv_close((uv_handle_t *)&c->async, NULL);
    uv_close((uv_handle_t *)&c->farewell_timer, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
  }
  if (c->async_ready && uv_loop_close(&c->loop) != 0)
    PS_ERROR("client_loop_busy", "scheduler=%s", c->scheduler);

  for (size_t i = 0; i < c->nconns; i++) ps__client_conn_close(&c->conns[i]);
  /* The context is gone (below): ZeroMQ released every frame, so the calls
   * its free callbacks point at can go. */
  free(c->poll_items);
  free(c->poll_conns);
  if (c->sched_sock) zmq_close(c->sched_sock);
  /* Waits up to the scheduler socket's linger for a last Barrier to go. */
  if (c->zctx) zmq_ctx_term(c->zctx);
  for (size_t i = 0; i < c->nconns; i++) free(c->conns[i].slots);
  free(c->conns);
  for (size_t i = 0; i < c->nops; i++) ps__client_op_free(c->ops[i]);
  free(c->ops);
  free(c->residual);
  free(c->topk_scratch);
  while (c->free_ops) {
    ps__op_t *op = c->free_ops;
    c->free_ops = op->next_free;
    ps__client_op_free(op);
  }

  ps_view_destroy(&c->view);
  ps_view_destroy(&c->shared.view);
  ps_keys_destroy(&c->keys);
  if (c->wake_fd >= 0) close(c->wake_fd);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->rel_cv);
  pthread_mutex_destroy(&c->rel_mu);
  free(c->scheduler);
  free(c);
}

/* A worker that registers while a BSP job runs gets a join step, and the
 * servers must confirm they are not past it before it may push: until
 * then the view lists it as joining. Waits for a view that does not. */
static int ps__client_wait_joined(ps_client_t *c, uint64_t deadline) {
  int logged = 0;
  for (;;) {
    const ps_node_t *me = ps_view_node(c->view, c->node_id);
    if (me == NULL || !me->joining) return PS_OK;
    if (!logged) {
      PS_INFO("client_joining", "join_clock=%" PRIu64 " epoch=%" PRIu64,
              me->join_clock, c->view->epoch);
      logged = 1;
    }
    pthread_mutex_lock(&c->mu);
    while (c->shared.view == NULL && !c->shared.shutdown &&
           ps_now_ms() < deadline)
      ps__client_cond_wait_until(&c->cv, &c->mu, deadline);
    pthread_mutex_unlock(&c->mu);
    int rc = ps__client_refresh(c);
    if (rc < 0) return rc;
    if (rc == 0 && ps_now_ms() >= deadline) {
      me = ps_view_node(c->view, c->node_id);
      return ps__client_fail(
          c, PS_ERR_TIMEOUT,
          "scheduler %s: the servers did not confirm this "
          "worker's join at step %" PRIu64 " within connect_timeout_ms %d",
          c->scheduler, me ? me->join_clock : 0, c->opts.connect_timeout_ms);
    }
  }
}

ps_client_t *ps_client_new(const ps_client_opts_t *o, const ps_model_t *model,
                           int *err, char *errmsg, size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  *err = ps__client_opts_check(o, model, errmsg, errlen);
  if (*err != PS_OK) return NULL;

  ps_client_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    *err = PS_ERR_NOMEM;
    if (errmsg && errlen) snprintf(errmsg, errlen, "out of memory");
    return NULL;
  }
  c->opts = *o;
  c->last_pull_clock = UINT64_MAX;
  c->chunk_keys = o->chunk_bytes / sizeof(float);
  c->wake_fd = -1;
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->rel_mu, NULL);
  int rc = PS_OK;
  if (ps__client_cond_init(&c->cv) != 0 ||
      ps__client_cond_init(&c->rel_cv) != 0 ||
      (c->scheduler = strdup(o->scheduler)) == NULL) {
    rc = ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  c->opts.scheduler = c->scheduler;
  c->opts.keys_dir = c->opts.key_file = NULL; /* not kept: read here */
  if (o->keys_dir && o->keys_dir[0]) {
    char why[512];
    int kerr = PS_OK;
    c->keys = ps_keys_load(o->keys_dir, o->key_file, PS_KEY_ROLE_WORKER, &kerr,
                           why, sizeof(why));
    if (c->keys == NULL) {
      rc = ps__client_fail(c, kerr, "%s", why);
      goto fail;
    }
  }
  if ((c->zctx = zmq_ctx_new()) == NULL) {
    rc = ps__client_fail(c, PS_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    goto fail;
  }
  if ((c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    rc = ps__client_fail(c, PS_ERR_IO, "eventfd: %s", strerror(errno));
    goto fail;
  }
  if (uv_loop_init(&c->loop) != 0) {
    rc = ps__client_fail(c, PS_ERR_IO, "uv_loop_init failed");
    goto fail;
  }
  if (uv_async_init(&c->loop, &c->async, ps__client_thread_async_cb) != 0) {
    uv_loop_close(&c->loop);
    rc = ps__client_fail(c, PS_ERR_IO, "uv_async_init failed");
    goto fail;
  }
  c->async.data = c;
  uv_timer_init(&c->loop, &c->farewell_timer);
  c->farewell_timer.data = c;
  c->async_ready = 1;

  /* Created here, before the thread exists, so a failure is reported
   * synchronously; the loop only runs on the thread from then on. */
  ps_member_opts_t mo = {
      .scheduler = c->scheduler,
      .role = PS__ROLE__ROLE_WORKER,
      .address = "",
      .model = model,
      .rank = o->rank,
      .heartbeat_ms = o->heartbeat_ms,
      /* While the scheduler is down pushes and pulls go on
       * (ARCHITECTURE.md, failure semantics 4): never give up on it. */
      .scheduler_timeout_ms = 0,
      .keys = c->keys,
      .join_new_rank = o->join_new_rank,
  };
  ps_member_cbs_t cbs = {
      .registered_cb = ps__client_member_registered_cb,
      .view_cb = ps__client_member_view_cb,
      .shutdown_cb = ps__client_member_shutdown_cb,
      .arg = c,
  };
  int merr = PS_OK;
  c->member = ps_member_new(&c->loop, c->zctx, &mo, &cbs, &merr);
  if (c->member == NULL) {
    rc = ps__client_fail(c, merr < 0 ? merr : PS_ERR_IO,
                         "cannot start the link to scheduler %s: %s",
                         c->scheduler, ps_strerror(merr));
    goto fail;
  }
  /* Read by the caller's thread too: it never changes. */
  c->token = *ps_member_token(c->member);
  if (pthread_create(&c->thread, NULL, ps__client_thread_main, c) != 0) {
    rc = ps__client_fail(c, PS_ERR_NOMEM, "cannot start the client thread");
    goto fail;
  }
  c->thread_started = 1;

  uint64_t deadline = ps_now_ms() + (uint64_t)o->connect_timeout_ms;
  pthread_mutex_lock(&c->mu);
  while (!(c->shared.registered && c->shared.view) && !c->shared.shutdown &&
         ps_now_ms() < deadline)
    ps__client_cond_wait_until(&c->cv, &c->mu, deadline);
  int registered = c->shared.registered;
  int ready = registered && c->shared.view;
  int shutdown = c->shared.shutdown;
  int status = c->shared.shutdown_status;
  char reason[sizeof(c->shared.shutdown_reason)];
  memcpy(reason, c->shared.shutdown_reason, sizeof(reason));
  pthread_mutex_unlock(&c->mu);

  if (shutdown) {
    /* status < 0: registration refused (e.g. a model that disagrees);
     * otherwise the job ended before this worker got going. */
    rc = ps__client_fail(c, status < 0 ? status : PS_ERR_SHUTDOWN,
                         "scheduler %s %s: %s", c->scheduler,
                         status < 0 ? "refused the registration" : "shut down",
                         reason);
    goto fail;
  }
  if (!ready) {
    /* A scheduler that does not admit our CURVE key never answers: the
     * handshake fails before any message, so all we see is silence. */
    rc = ps__client_fail(c, PS_ERR_TIMEOUT,
                         "scheduler %s: %s within connect_timeout_ms %d%s",
                         c->scheduler,
                         registered ? "registered but no cluster view"
                                    : "no answer to registration",
                         o->connect_timeout_ms,
                         c->keys && !registered
                             ? " (CURVE: is it running with a --keys-dir "
                               "that holds this worker's .pub, and is ours "
                               "its scheduler.pub?)"
                             : "");
    goto fail;
  }
  if ((rc = ps__client_refresh(c)) < 0) goto fail;
  if ((rc = ps__client_wait_joined(c, deadline)) != PS_OK) goto fail;
  PS_INFO("client_ready",
          "scheduler=%s rank=%u epoch=%" PRIu64
          " ranges=%zu start_clock=%" PRIu64,
          c->scheduler, c->rank, c->view->epoch, c->view->nranges,
          ps_client_start_clock(c));
  *err = PS_OK;
  return c;

fail:
  *err = rc;
  if (errmsg && errlen) snprintf(errmsg, errlen, "%s", c->errmsg);
  PS_WARN("client_new_failed", "scheduler=%s err=%s", o->scheduler,
          ps_err_name(rc));
  ps__client_free(c);
  return NULL;
}

void ps_client_destroy(ps_client_t **c_p) {
  if (c_p == NULL || *c_p == NULL) return;
  ps_client_t *c = *c_p;
  *c_p = NULL;
  ps_client_done(c);
  ps__client_free(c);
}

uint32_t ps_client_rank(const ps_client_t *c) {
  return c->rank;
}

uint32_t ps_client_num_workers(const ps_client_t *c) {
  return c->num_workers;
}

uint32_t ps_client_node_id(const ps_client_t *c) {
  return c->node_id;
}

const ps_view_t *ps_client_view(ps_client_t *c) {
  (void)ps__client_refresh(c);
  return c->view;
}

uint64_t ps_client_start_clock(ps_client_t *c) {
  (void)ps__client_refresh(c);
  uint64_t start = c->view->start_clock;
  const ps_node_t *me = ps_view_node(c->view, c->node_id);
  if (me && me->join_clock > start) start = me->join_clock;
  return start;
}

uint64_t ps_client_leave_clock(ps_client_t *c) {
  (void)ps__client_refresh(c);
  const ps_node_t *me = ps_view_node(c->view, c->node_id);
  return me ? me->leave_clock : 0;
}

int ps_client_step_share(ps_client_t *c, uint64_t step, uint32_t *index,
                         uint32_t *count, uint64_t *before) {
  (void)ps__client_refresh(c);
  ps_workset_member_t *m;
  size_t n;
  int rc = ps_workset_from_view(c->view, &m, &n);
  if (rc != PS_OK) return rc;
  uint32_t idx;
  uint32_t cnt = ps_workset_at(m, n, step, c->rank, &idx);
  if (index) *index = idx;
  if (count) *count = cnt;
  if (before) *before = ps_workset_before(m, n, step);
  free(m);
  return PS_OK;
}

uint64_t ps_client_last_pull_clock(const ps_client_t *c) {
  return c->last_pull_clock;
}

void ps_client_wire_bytes(const ps_client_t *c, uint64_t *push_bytes,
                          uint64_t *pull_bytes) {
  if (push_bytes) *push_bytes = c->push_bytes;
  if (pull_bytes) *pull_bytes = c->pull_bytes;
}

uint64_t ps_client_duplicate_acks(const ps_client_t *c) {
  return c->duplicate_acks;
}

int ps_client_set_metrics_address(ps_client_t *c, const char *address) {
  const char *a = address ? address : "";
  if (strlen(a) >= sizeof(c->shared.metrics_address))
    return ps__client_fail(c, PS_ERR_INVAL,
                           "metrics address of %zu bytes: at most %zu",
                           strlen(a), sizeof(c->shared.metrics_address) - 1);
  pthread_mutex_lock(&c->mu);
  snprintf(c->shared.metrics_address, sizeof(c->shared.metrics_address), "%s",
           a);
  c->shared.metrics_gen++;
  pthread_mutex_unlock(&c->mu);
  uv_async_send(&c->async);
  return PS_OK;
}

const char *ps_client_errmsg(const ps_client_t *c) {
  return c->errmsg;
}
