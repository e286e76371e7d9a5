/* The server daemon's life cycle: starting, the data socket's loop and
 * dispatch, replies and refusals, stats, stopping, and the scheduler link's
 * callbacks (views, checkpoints, restore). See ps-server/server_int.h for the
 * other files. */

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include "common/checkpoint.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/notify.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "server_int.h"

/* Refused requests are logged at most once per this many ms. */
#define WARN_INTERVAL_MS 1000

const char *ps__server_mode_name(int mode) {
  return mode == PS__CONSISTENCY_MODE__MODE_ASP   ? "asp"
         : mode == PS__CONSISTENCY_MODE__MODE_SSP ? "ssp"
                                                  : "bsp";
}

uint64_t ps__server_view_epoch(const ps_server_t *s) {
  return s->view ? s->view->epoch : 0;
}

static void count_error(ps_server_t *s, int code) {
  int i = -code;
  if (i < 0 || i >= PS_SERVER_NERR) i = 0;
  s->stats.errors[i]++;
}

static void ratelimit_flush_cb(uv_timer_t *t) {
  ratelimit_t *rl = t->data;
  if (rl->suppressed == 0) return;
  PS_WARN("request_refused_suppressed", "count=%llu window_ms=%d",
          (unsigned long long)rl->suppressed, WARN_INTERVAL_MS);
  rl->suppressed = 0;
  rl->last_ms = ps_now_ms();
}

/* One line per WARN_INTERVAL_MS at most, so a flood of bad packets cannot
 * flood the log; what a window suppressed is reported with the next line or,
 * if none comes, by the flush timer when the window ends. */
static int ratelimit_allow(ratelimit_t *rl, uint64_t *suppressed) {
  uint64_t now = ps_now_ms();
  if (rl->armed && now - rl->last_ms < WARN_INTERVAL_MS) {
    rl->suppressed++;
    if (rl->flush_open && !uv_is_active((uv_handle_t *)&rl->flush_timer))
      uv_timer_start(&rl->flush_timer, ratelimit_flush_cb,
                     WARN_INTERVAL_MS - (now - rl->last_ms), 0);
    return 0;
  }
  *suppressed = rl->suppressed;
  rl->suppressed = 0;
  rl->last_ms = now;
  rl->armed = 1;
  return 1;
}

void ps__server_fill_tick(void *arg) {
  ps_server_t *s = arg;
  ps_member_keepalive(s->member);
}

void ps__server_count_sent(ps_server_t *s, Ps__Envelope *env, size_t payload) {
  /* ps_msg_send sets the version; set it first so the size is the real one. */
  env->version = PS_PROTOCOL_VERSION;
  size_t bytes = ps__envelope__get_packed_size(env) + payload;
  s->stats.bytes_out += bytes;
  int body = (int)env->body_case;
  s->stats.bytes_out_by[body >= 0 && body < PS_SERVER_NBODY ? body : 0] +=
      bytes;
}

static void send_error_v(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                         int code, const char *fmt, va_list ap) {
  char text[512];
  vsnprintf(text, sizeof(text), fmt, ap);
  count_error(s, code);
  if (s->data == NULL || route == NULL) return;
  Ps__Error e = PS__ERROR__INIT;
  e.code = code;
  e.message = text;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = ps__server_view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  ps__server_count_sent(s, &env, 0);
  if (ps_msg_send(ps_zsock_socket(s->data), route, &env, NULL, 0) != PS_OK)
    s->stats.send_failures++;
}

void ps__server_send_error(ps_server_t *s, zmq_msg_t *route,
                           uint64_t request_id, int code, const char *fmt,
                           ...) {
  va_list ap;
  va_start(ap, fmt);
  send_error_v(s, route, request_id, code, fmt, ap);
  va_end(ap);
}

/* Refuses request m: an Error reply when the peer can be reached, a counter,
 * and a rate-limited warning. */
void ps__server_refuse(ps_server_t *s, ps_msg_t *m, int code, const char *fmt,
                       ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  ps__server_send_error(s, m->has_route ? &m->route : NULL, m->request_id, code,
                        "%s", text);
  uint64_t suppressed;
  if (ratelimit_allow(&s->warn_limit, &suppressed))
    PS_WARN("request_refused",
            "code=%s body=%s sender=%u request_id=%llu reason=\"%s\" "
            "suppressed=%llu",
            ps_err_name(code),
            m->env ? ps_body_name(m->env->body_case) : "undecoded",
            m->env ? m->env->sender : 0, (unsigned long long)m->request_id,
            text, (unsigned long long)suppressed);
}

static void on_data(ps_zsock_t *zs, ps_msg_t *m, int status, const char *reason,
                    void *arg) {
  ps_server_t *s = arg;
  uint64_t t0 = ps_now_ns();
  int body = m->env ? (int)m->env->body_case : 0;
  if (body < 0 || body >= PS_SERVER_NBODY) body = 0;
  s->stats.requests[body]++;
  size_t in = m->env ? ps__envelope__get_packed_size(m->env) : 0;
  for (int i = 0; i < m->npayload; i++) in += zmq_msg_size(&m->payload[i]);
  s->stats.bytes_in += in;
  s->stats.bytes_in_by[body] += in;

  if (s->stopping) {
    ps__server_refuse(s, m, PS_ERR_SHUTDOWN, "server %u is shutting down",
                      s->node_id);
  } else if (status != PS_OK) {
    s->stats.bad_messages++;
    ps__server_refuse(s, m, status, "%s", reason);
  } else if (!m->has_route || m->env == NULL) {
    /* ps_msg_recv on a ROUTER gives both whenever it returns PS_OK. */
    count_error(s, PS_ERR_PROTO);
  } else {
    ps__server_dispatch(s, m);
  }
  ps_msg_close(m);
  ps_hist_observe(&s->hist_request[ps__server_op(body)], ps_now_ns() - t0);
}

/* With CURVE, what a connection may send follows from its key's role
 * (common/keys.h), on top of the node identity of requests.c: pushes and
 * pulls only from worker keys, replication only from server keys. Returns
 * 0 after refusing m. */
static int role_allowed(ps_server_t *s, ps_msg_t *m) {
  if (s->keys == NULL) return 1;
  ps_key_role_t need;
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
    case PS__ENVELOPE__BODY_PULL:
    case PS__ENVELOPE__BODY_PUSH_PULL:
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      need = PS_KEY_ROLE_WORKER;
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT:
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      need = PS_KEY_ROLE_SERVER;
      break;
    default:
      return 1;
  }
  ps_key_role_t role = ps_keys_peer(m->user_id, NULL);
  if (role == need) return 1;
  ps__server_refuse(s, m, PS_ERR_PERMISSION_DENIED,
                    "a %s key may not send %s (needs a %s key)",
                    ps_key_role_name(role), ps_body_name(m->env->body_case),
                    ps_key_role_name(need));
  return 0;
}

void ps__server_dispatch(ps_server_t *s, ps_msg_t *m) {
  if (!role_allowed(s, m)) return;
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      ps__server_handle_push(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
      ps__server_handle_replicate(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT:
      ps__server_handle_snapshot(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      ps__server_handle_chunk(s, m);
      break;
    case PS__ENVELOPE__BODY_PULL:
      ps__server_handle_pull(s, m);
      break;
    case PS__ENVELOPE__BODY_PUSH_PULL:
      ps__server_handle_pushpull(s, m);
      break;
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      ps__server_handle_sparse_push(s, m);
      break;
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      ps__server_handle_sparse_pull(s, m);
      break;
    case PS__ENVELOPE__BODY_ERROR:
      /* Never answer an Error with an Error: two confused peers would
       * bounce them forever. */
      count_error(s, PS_ERR_UNSUPPORTED);
      break;
    default:
      ps__server_refuse(s, m, PS_ERR_UNSUPPORTED, "a server does not serve %s",
                        ps_body_name(m->env->body_case));
      break;
  }
}

/* ---- stopping ---- */

static void handle_close_cb(uv_handle_t *h) {
  (void)h;
}

/* Closes every handle of the server; the loop then runs out and
 * ps_server_run returns. */
static void teardown(ps_server_t *s) {
  if (s->torn_down) return;
  s->torn_down = 1;
  for (size_t i = 0; i < s->nranges; i++)
    ps__server_fail_parked(s, &s->ranges[i], PS_ERR_SHUTDOWN,
                           "the server stops");
  ps_repl_destroy(&s->repl);
  if (s->zap) ps_zap_set_cap(s->zap, NULL, 0);
  ps_sockmon_destroy(&s->data_mon);
  ps_zsock_destroy(&s->data);
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  s->reserve_fd = -1;
  ps_zap_destroy(&s->zap);
  ps_member_destroy(&s->member);
  ps_exporter_destroy(&s->exporter);
  if (s->signals_open) {
    s->signals_open = 0;
    uv_close((uv_handle_t *)&s->sigterm, handle_close_cb);
    uv_close((uv_handle_t *)&s->sigint, handle_close_cb);
  }
  if (s->stop_timer_open) {
    s->stop_timer_open = 0;
    uv_close((uv_handle_t *)&s->stop_timer, handle_close_cb);
  }
  if (s->notify_timer_open) {
    s->notify_timer_open = 0;
    uv_close((uv_handle_t *)&s->notify_timer, handle_close_cb);
  }
  if (s->warn_limit.flush_open) {
    ratelimit_flush_cb(&s->warn_limit.flush_timer);
    s->warn_limit.flush_open = 0;
    uv_close((uv_handle_t *)&s->warn_limit.flush_timer, handle_close_cb);
  }
}

static void stop_timer_cb(uv_timer_t *t) {
  teardown(t->data);
}

/* Block applies that wrote a fresh version because a pull reply still held
 * the current one, over every shard; with peak, the most block versions
 * (current, held by replies, spare) there were at once. */
static unsigned long long cow_applies(const ps_server_t *s,
                                      unsigned long long *peak) {
  unsigned long long n = 0;
  *peak = 0;
  for (size_t i = 0; i < s->nranges; i++) {
    ps_shard_stats_t st;
    if (s->ranges[i].shard == NULL) continue;
    ps_shard_stats(s->ranges[i].shard, &st);
    n += st.cow_applies;
    *peak += st.versions_peak;
  }
  return n;
}

void ps_server_stop(ps_server_t *s, int status, const char *reason, int leave) {
  if (s->stopping || s->torn_down) return;
  s->stopping = 1;
  s->exit_status = status;
  ps_notify_stopping("stopping: %.200s", reason);
  if (status != PS_OK) snprintf(s->errmsg, sizeof(s->errmsg), "%s", reason);
  PS_LOG(status == PS_OK ? PS_LOG_INFO : PS_LOG_ERROR, "shutdown",
         "reason=\"%s\" status=%s leave=%d", reason, ps_err_name(status),
         leave);
  const ps_server_stats_t *st = &s->stats;
  unsigned long long versions_peak = 0;
  unsigned long long cow = cow_applies(s, &versions_peak);
  uint64_t errors = 0;
  for (int i = 0; i < PS_SERVER_NERR; i++) errors += st->errors[i];
  uint64_t fwd_pushes = 0, fwd_msgs = 0;
  if (s->repl) ps_repl_push_stats(s->repl, &fwd_pushes, &fwd_msgs);
  PS_INFO("server_stats",
          "push=%llu pull=%llu applies=%llu errors=%llu bad_messages=%llu "
          "bytes_in=%llu bytes_out=%llu pulls_parked=%llu "
          "unaligned_payloads=%llu send_failures=%llu "
          "pull_bytes_zero_copy=%llu pull_bytes_copied=%llu cow_applies=%llu "
          "versions_peak=%llu forwarded_pushes=%llu forward_messages=%llu",
          (unsigned long long)st->requests[PS__ENVELOPE__BODY_PUSH],
          (unsigned long long)st->requests[PS__ENVELOPE__BODY_PULL],
          (unsigned long long)st->applies, (unsigned long long)errors,
          (unsigned long long)st->bad_messages,
          (unsigned long long)st->bytes_in, (unsigned long long)st->bytes_out,
          (unsigned long long)st->pulls_parked,
          (unsigned long long)st->unaligned_payloads,
          (unsigned long long)st->send_failures,
          (unsigned long long)st->pull_bytes_zero_copy,
          (unsigned long long)st->pull_bytes_copied, cow, versions_peak,
          (unsigned long long)fwd_pushes, (unsigned long long)fwd_msgs);
  /* Workers waiting on a step hear it now instead of timing out, and no
   * new request is served while the server goes. */
  for (size_t i = 0; i < s->nranges; i++)
    ps__server_fail_parked(s, &s->ranges[i], PS_ERR_SHUTDOWN,
                           "the server stops");
  if (s->zap) ps_zap_set_cap(s->zap, NULL, 0);
  ps_sockmon_destroy(&s->data_mon);
  ps_zsock_destroy(&s->data);
  /* The member lingers (up to 1 s) on a farewell when it is closed, so the
   * Leave reaches the scheduler well within the 5 s a service manager
   * grants after SIGTERM. */
  if (leave && s->member) ps_member_send_leave(s->member, reason);
  /* The member is closed from a timer, never from inside its own callback
   * (Shutdown arrives through one). */
  uv_timer_start(&s->stop_timer, stop_timer_cb, 0, 0);
}

static void signal_cb(uv_signal_t *h, int signum) {
  ps_server_t *s = h->data;
  char reason[64];
  snprintf(reason, sizeof(reason), "signal %s",
           signum == SIGTERM ? "SIGTERM" : "SIGINT");
  ps_server_stop(s, PS_OK, reason, 1);
}

/* systemd (Type=notify): ready once bound, registered and holding a view;
 * the status says what it holds. Nothing without NOTIFY_SOCKET. */
static void notify_serving(ps_server_t *s) {
  ps_notify_ready("serving %zu ranges, epoch %llu, on %s", s->nranges,
                  (unsigned long long)s->view->epoch, s->endpoint);
}

/* ---- membership ---- */

static void on_registered(ps_member_t *m, uint32_t node_id, uint32_t rank,
                          uint32_t num_workers, void *arg) {
  ps_server_t *s = arg;
  /* The member logs the registered event and sets the log's node id. */
  s->node_id = node_id;
}

static void on_shutdown(ps_member_t *m, int status, const char *reason,
                        void *arg) {
  ps_server_t *s = arg;
  /* The scheduler ending the job is a clean stop; a refused registration or
   * a scheduler silent past the timeout is a failure. */
  int st = (status == PS_OK || status == PS_ERR_SHUTDOWN) ? PS_OK : status;
  ps_server_stop(s, st, reason && reason[0] ? reason : ps_strerror(status), 0);
}

static int same_model(const ps_view_t *a, const ps_view_t *b) {
  return a->mode == b->mode && a->staleness == b->staleness &&
         ps_model_equal(&a->model, &b->model);
}

/* ---- checkpoints (issue #4) ---- */

static void saver_reply_cb(ps_saver_t *sv, Ps__CheckpointReply *r, void *arg) {
  ps_server_t *s = arg;
  if (r->written) {
    s->stats.ckpt_writes++;
    s->stats.ckpt_write_us += r->write_us;
    for (size_t i = 0; i < r->n_shards; i++) {
      s->stats.ckpt_bytes += r->shards[i]->bytes;
      if (r->shards[i]->clock > s->stats.ckpt_last_step)
        s->stats.ckpt_last_step = r->shards[i]->clock;
    }
  } else if (r->code != PS_OK && !r->late) {
    s->stats.ckpt_failures++;
  }
  if (s->member == NULL) return;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_REPLY;
  env.checkpoint_reply = r;
  int rc = ps_member_send(s->member, &env);
  if (rc != PS_OK)
    PS_WARN("checkpoint_reply_failed", "id=%llu err=%s",
            (unsigned long long)r->id, ps_err_name(rc));
}

static void handle_checkpoint_request(ps_server_t *s,
                                      const Ps__CheckpointRequest *req) {
  if (s->view == NULL || s->restoring) {
    Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
    r.id = req->id;
    r.code = PS_ERR_NOT_READY;
    r.message = (char *)(s->restoring ? "the server is still restoring"
                                      : "the server has no view yet");
    saver_reply_cb(s->saver, &r, s);
    return;
  }
  ps_shard_t **shards = calloc(s->nranges + 1, sizeof(*shards));
  ps_sparse_table_t ***sparse = calloc(s->nranges + 1, sizeof(*sparse));
  if (shards == NULL || sparse == NULL) {
    free(shards);
    free(sparse);
    Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
    r.id = req->id;
    r.code = PS_ERR_NOMEM;
    r.message = (char *)"server out of memory";
    saver_reply_cb(s->saver, &r, s);
    return;
  }
  /* The primaries write; the backups hold the same bits. */
  size_t nshards = 0;
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].primary && s->ranges[i].shard) {
      sparse[nshards] = s->ranges[i].sparse;
      shards[nshards++] = s->ranges[i].shard;
    }
  ps_saver_ctx_t ctx = {
      .shards = shards,
      .nshards = nshards,
      .sparse = (ps_sparse_table_t *const *const *)sparse,
      .nsparse = s->view->model.nsparse,
      .fingerprint = ps_checkpoint_fingerprint(&s->view->model),
      .view_epoch = s->view->epoch,
      .node_id = s->node_id,
  };
  ps_saver_request(s->saver, req, &ctx);
  free(shards);
  free(sparse);
}

static void on_member_message(ps_member_t *m, const Ps__Envelope *env,
                              void *arg) {
  ps_server_t *s = arg;
  if (s->stopping) return;
  if (env->body_case == PS__ENVELOPE__BODY_CHECKPOINT_REQUEST) {
    handle_checkpoint_request(s, env->checkpoint_request);
    return;
  }
  if (env->body_case == PS__ENVELOPE__BODY_HANDOVER) {
    ps__server_handle_handover(s, env->handover);
    return;
  }
  PS_WARN("unexpected_message", "from=scheduler body=%s",
          ps_body_name(env->body_case));
}

/* The first view of a restored job came and its ranges are loaded (or
 * could not be): adopt the newest view and put the weights in place. */
static void saver_restored_cb(ps_saver_t *sv, int status, const char *reason,
                              const ps_saver_range_t *loaded, size_t nloaded,
                              void *arg) {
  ps_server_t *s = arg;
  /* s->restoring stays set until the loaded state is in place: adopting
   * the view serves the replication messages held meanwhile, and a
   * primary's change must not reach a range still at its initial state. */
  ps_view_t *view = s->restore_view;
  s->restore_view = NULL;
  if (s->stopping || view == NULL) {
    s->restoring = 0;
    ps_view_destroy(&view);
    return;
  }
  char err[512];
  if (status != PS_OK) {
    s->restoring = 0;
    /* Nothing was loaded: a server must never serve guessed weights. */
    ps_view_destroy(&view);
    snprintf(err, sizeof(err), "restore refused: %s", reason);
    PS_ERROR("restore_failed", "err=%s reason=\"%s\"", ps_err_name(status),
             reason);
    ps_server_stop(s, status, err, 1);
    return;
  }
  int rc = ps__server_adopt_view(s, view, err, sizeof(err));
  if (rc != PS_OK) {
    s->restoring = 0;
    if (s->view != view) ps_view_destroy(&view);
    ps_server_stop(s, rc, err, 1);
    return;
  }
  for (size_t i = 0; i < s->nranges && rc == PS_OK; i++) {
    ps_shard_t *sh = s->ranges[i].shard;
    if (sh == NULL) continue; /* a backup waiting for its snapshot */
    const ps_saver_range_t *l = NULL;
    for (size_t j = 0; j < nloaded; j++)
      if (loaded[j].begin == ps_shard_begin(sh) &&
          loaded[j].end == ps_shard_end(sh))
        l = &loaded[j];
    if (l == NULL) {
      /* Only a view that moved this server's ranges during the restore
       * gets here; failover does not exist yet. */
      rc = PS_ERR_INVAL;
      snprintf(err, sizeof(err),
               "restore refused: range [%llu,%llu) of view epoch %llu was "
               "not loaded",
               (unsigned long long)ps_shard_begin(sh),
               (unsigned long long)ps_shard_end(sh),
               (unsigned long long)s->view->epoch);
      break;
    }
    rc = ps_shard_load(sh, l->weights, l->state, l->tensor_steps, l->clock);
    owned_range_t *r = &s->ranges[i];
    r->repl_clock = l->clock; /* every copy loads the same step */
    for (size_t t = 0; rc == PS_OK && l->sparse && r->sparse &&
                       t < l->nsparse && t < r->nsparse;
         t++) {
      rc = ps_sparse_table_put(r->sparse[t], l->sparse[t].ids,
                               (size_t)l->sparse[t].nrows, l->sparse[t].rows);
      /* The admission counts go on where the checkpoint left them (a
       * server started without --sparse-admit-after keeps none). */
      size_t cells = ps_sparse_table_sketch_cells(r->sparse[t]);
      if (rc == PS_OK && l->sparse[t].sketch && cells > 0) {
        if (cells == l->sparse[t].sketch_cells)
          rc = ps_sparse_table_put_sketch(r->sparse[t], l->sparse[t].sketch,
                                          cells);
        else
          PS_WARN("sketch_not_restored",
                  "table=%zu cells=%zu checkpoint_cells=%zu: admission "
                  "counts start again",
                  t, cells, l->sparse[t].sketch_cells);
      }
    }
    if (rc != PS_OK)
      snprintf(err, sizeof(err), "restore refused: loading [%llu,%llu): %s",
               (unsigned long long)l->begin, (unsigned long long)l->end,
               ps_strerror(rc));
  }
  s->restoring = 0;
  if (rc != PS_OK) {
    PS_ERROR("restore_failed", "err=%s reason=\"%s\"", ps_err_name(rc), err);
    ps_server_stop(s, rc, err, 1);
    return;
  }
  ps__server_report_clock(s);
  ps__server_serve_deferred(s);
  char owned[256];
  PS_INFO("restored",
          "dir=%s step=%llu epoch=%llu mode=%s live_workers=%u ranges=%s",
          s->view->restore_dir ? s->view->restore_dir : "-",
          (unsigned long long)s->view->start_clock,
          (unsigned long long)s->view->epoch,
          ps__server_mode_name(s->view->mode), s->view->live_workers,
          ps__server_format_ranges(s, owned, sizeof(owned)));
  notify_serving(s);
}

/* Loads this server's ranges of view from the checkpoint the view names,
 * on the thread pool; the view is adopted when they are in. */
static void start_restore(ps_server_t *s, ps_view_t *view) {
  size_t n = 0, nparts = 0;
  ps_range_t *mine = calloc(view->nranges + 1, sizeof(*mine));
  ps_range_t *parts = calloc(view->nsparse_parts + 1, sizeof(*parts));
  if (mine == NULL || parts == NULL) {
    free(mine);
    free(parts);
    ps_view_destroy(&view);
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory starting the restore", 1);
    return;
  }
  for (size_t i = 0; i < view->nranges; i++)
    if ((view->ranges[i].server_id == s->node_id ||
         ps_range_has_backup(&view->ranges[i], s->node_id)) &&
        view->ranges[i].begin < view->ranges[i].end)
      mine[n++] = view->ranges[i];
  PS_INFO("restore_start", "dir=%s step=%llu ranges=%zu epoch=%llu",
          view->restore_dir, (unsigned long long)view->start_clock, n,
          (unsigned long long)view->epoch);
  for (size_t i = 0; i < view->nsparse_parts; i++)
    parts[nparts++] = view->ranges[view->sparse_parts[i]];
  int rc = ps_saver_restore(s->saver, view->restore_dir, &view->model,
                            view->start_clock, mine, n, parts, nparts);
  free(mine);
  free(parts);
  if (rc != PS_OK) {
    ps_view_destroy(&view);
    ps_server_stop(s, rc, "cannot start the restore", 1);
    return;
  }
  s->restoring = 1;
  s->restore_view = view;
}

static void on_view(ps_member_t *m, ps_view_t *view, void *arg) {
  ps_server_t *s = arg;
  s->stats.views++;
  if (s->stopping) {
    ps_view_destroy(&view);
    return;
  }
  if (s->node_id == 0) s->node_id = ps_member_node_id(m);
  ps__server_frame_limit(s, view);
  if (s->stopping) {
    ps_view_destroy(&view);
    return;
  }
  if (s->restoring) {
    /* The newest view is the one to adopt once the weights are in. */
    ps_view_destroy(&s->restore_view);
    s->restore_view = view;
    return;
  }
  if (view->restore_dir != NULL && s->view == NULL && s->nranges == 0 &&
      s->saver != NULL) {
    start_restore(s, view);
    return;
  }
  if (s->nranges > 0 && !same_model(s->view, view)) {
    /* The model and the mode are fixed for a job; weights built for one
     * cannot serve another. */
    char reason[160];
    snprintf(reason, sizeof(reason),
             "view epoch %llu changes the model or the consistency mode of "
             "the job",
             (unsigned long long)view->epoch);
    ps_view_destroy(&view);
    ps_server_stop(s, PS_ERR_PROTO, reason, 1);
    return;
  }
  char err[256];
  int rc = ps__server_adopt_view(s, view, err, sizeof(err));
  if (rc != PS_OK) {
    if (s->view != view) ps_view_destroy(&view); /* else the server owns it */
    ps_server_stop(s, rc, err, 1);
    return;
  }
  uint64_t keys = 0;
  for (size_t i = 0; i < s->nranges; i++)
    keys += s->ranges[i].end - s->ranges[i].begin;
  char owned[256];
  PS_INFO("view_adopted",
          "epoch=%llu mode=%s live_workers=%u nodes=%zu ranges=%s keys=%llu "
          "model_keys=%llu",
          (unsigned long long)s->view->epoch,
          ps__server_mode_name(s->view->mode), s->view->live_workers,
          s->view->nnodes, ps__server_format_ranges(s, owned, sizeof(owned)),
          (unsigned long long)keys, (unsigned long long)s->view->model.total);
  notify_serving(s);
}

/* ---- life cycle ---- */

/* Reserves the address of a tcp:// bind endpoint whose host is an address
 * (or *): a plain socket bound to it, not listening, holds the port (an
 * ephemeral one for port *) until ZeroMQ binds it. Writes the endpoint
 * ZeroMQ will bind to out. Returns 1 with *fd set, or 0 when ep is
 * something else (a host name, ipc://, inproc://) or cannot be reserved:
 * ZeroMQ binds it at once, and reports what is wrong with it. */
static int reserve_tcp(const char *ep, char *out, size_t len, int *fd) {
  if (strncmp(ep, "tcp://", 6) != 0) return 0;
  const char *hp = ep + 6;
  const char *colon = strrchr(hp, ':');
  if (colon == NULL || colon == hp) return 0;
  char host[256], port[16];
  size_t hlen = (size_t)(colon - hp);
  if (hlen >= sizeof(host) || strlen(colon + 1) >= sizeof(port)) return 0;
  memcpy(host, hp, hlen);
  host[hlen] = '\0';
  snprintf(port, sizeof(port), "%s", colon + 1);
  if (strcmp(port, "*") == 0) snprintf(port, sizeof(port), "0");
  char *h = host;
  if (h[0] == '[' && hlen > 2 && h[hlen - 1] == ']') {
    h[hlen - 1] = '\0';
    h++;
  }
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  int any = strcmp(h, "*") == 0;
  /* ZeroMQ binds * as 0.0.0.0 (IPv4) unless told ZMQ_IPV6. */
  hints.ai_family = any ? AF_INET : AF_UNSPEC;
  if (getaddrinfo(any ? NULL : h, port, &hints, &ai) != 0) return 0;
  int sfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  struct sockaddr_storage sa;
  socklen_t salen = sizeof(sa);
  char numeric[INET6_ADDRSTRLEN];
  int ok = sfd >= 0 &&
           setsockopt(sfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
           bind(sfd, ai->ai_addr, ai->ai_addrlen) == 0 &&
           getsockname(sfd, (struct sockaddr *)&sa, &salen) == 0 &&
           getnameinfo((struct sockaddr *)&sa, salen, numeric, sizeof(numeric),
                       NULL, 0, NI_NUMERICHOST) == 0;
  int is6 = ai->ai_family == AF_INET6;
  freeaddrinfo(ai);
  if (!ok) {
    if (sfd >= 0) close(sfd);
    return 0;
  }
  unsigned p = ntohs(is6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                         : ((struct sockaddr_in *)&sa)->sin_port);
  int w = snprintf(out, len, is6 ? "tcp://[%s]:%u" : "tcp://%s:%u", numeric, p);
  if (w < 0 || (size_t)w >= len) {
    close(sfd);
    return 0;
  }
  *fd = sfd;
  return 1;
}

/* The largest frame anyone may legally send this server, from what the
 * job's first view says it may hold: a push or pull of a whole range (a
 * request never spans two; libps-client cuts them smaller still), a sparse
 * request of max_sparse_keys rows, a 1 MiB block of a snapshot; at most the
 * configured --max-message-bytes. It is the data socket's ZMQ_MAXMSGSIZE,
 * so ZeroMQ drops a bigger frame (and its connection) when it reads the
 * frame's length, before allocating it.
 *
 * ZeroMQ copies a socket's options into a listener when it binds, so the
 * limit must be set before: a TCP address is only reserved at start
 * (reserve_tcp) and bound here, at the first view; clients that come
 * first are refused and ZeroMQ retries their connection (every 100 ms).
 * Ranges and the model are fixed for the job: later views change
 * nothing. */
void ps__server_frame_limit(ps_server_t *s, const ps_view_t *v) {
  if (s->data == NULL || s->frame_limit_set) return;
  s->frame_limit_set = 1;
  if (s->reserve_fd < 0) {
    PS_INFO("frame_limit",
            "bytes=%zu endpoint=%s reason=\"bound at start: "
            "the configured --max-message-bytes\"",
            s->limits.max_payload_bytes + s->limits.max_header_bytes,
            s->endpoint);
    return;
  }
  uint64_t bytes = (uint64_t)PS_SHARD_BLOCK_KEYS * sizeof(float);
  for (size_t i = 0; i < v->nranges; i++) {
    uint64_t b = (v->ranges[i].end - v->ranges[i].begin) * sizeof(float);
    if (b > bytes) bytes = b;
  }
  for (size_t i = 0; i < v->model.nsparse; i++) {
    uint64_t row = (uint64_t)v->model.sparse[i].dim * sizeof(float);
    if (row < sizeof(uint64_t)) row = sizeof(uint64_t);
    uint64_t b = s->max_sparse_keys * row;
    if (b > bytes) bytes = b;
  }
  if (bytes > s->limits.max_payload_bytes) bytes = s->limits.max_payload_bytes;
  int64_t max = (int64_t)(bytes + s->limits.max_header_bytes);
  void *sock = ps_zsock_socket(s->data);
  int rc = zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof(max));
  close(s->reserve_fd);
  s->reserve_fd = -1;
  if (rc == 0) rc = ps_zmq_bind(sock, s->endpoint);
  if (rc != 0) {
    char reason[PS_ADDR_MAX + 96];
    snprintf(reason, sizeof(reason), "cannot bind %s: %s", s->endpoint,
             zmq_strerror(zmq_errno()));
    ps_server_stop(s, PS_ERR_ZMQ, reason, 1);
    return;
  }
  PS_INFO("frame_limit", "bytes=%lld endpoint=%s epoch=%llu", (long long)max,
          s->endpoint, (unsigned long long)v->epoch);
}

void ps_server_opts_init(ps_server_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->scheduler = PS_DEFAULT_SCHEDULER;
  o->bind = "tcp://127.0.0.1:*";
  o->advertise = NULL;
  o->heartbeat_ms = 100;
  o->scheduler_timeout_ms = PS_SERVER_SCHEDULER_TIMEOUT_MS;
  o->limits = ps_frame_default_limits;
  o->max_sparse_keys = PS_SERVER_MAX_SPARSE_KEYS;
  o->max_inflight_per_peer = PS_SERVER_MAX_INFLIGHT_PER_PEER;
  o->handle_signals = 1;
}

static char *dup_or_null(const char *str) {
  return str ? strdup(str) : NULL;
}

ps_server_t *ps_server_new(const ps_server_opts_t *o, int *err, char *errbuf,
                           size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  ps_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  s->limits = o->limits;
  s->nonfinite = o->nonfinite;
  s->sparse_max_bytes = o->sparse_max_bytes;
  s->sparse_admit_after = o->sparse_admit_after;
  s->max_sparse_keys =
      o->max_sparse_keys ? o->max_sparse_keys : PS_SERVER_MAX_SPARSE_KEYS;
  s->max_inflight_per_peer = o->max_inflight_per_peer
                                 ? o->max_inflight_per_peer
                                 : PS_SERVER_MAX_INFLIGHT_PER_PEER;
  ps__server_metrics_init(s);
  s->scheduler = dup_or_null(o->scheduler);
  s->advertise = dup_or_null(o->advertise);
  if (s->scheduler == NULL || (o->advertise && s->advertise == NULL)) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }
  int rc = uv_loop_init(&s->loop);
  if (rc != 0) {
    *err = PS_ERR_IO;
    snprintf(errbuf, errlen, "uv_loop_init: %s", uv_strerror(rc));
    goto fail;
  }
  s->loop_ready = 1;
  ps_saver_cbs_t scbs = {
      .reply_cb = saver_reply_cb,
      .restored_cb = saver_restored_cb,
      .arg = s,
  };
  s->saver = ps_saver_new(&s->loop, &scbs);
  if (s->saver == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }
  uv_timer_init(&s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  s->stop_timer_open = 1;
  uv_timer_init(&s->loop, &s->warn_limit.flush_timer);
  s->warn_limit.flush_timer.data = &s->warn_limit;
  s->warn_limit.flush_open = 1;
  s->zctx = zmq_ctx_new();
  if (s->zctx == NULL) {
    *err = PS_ERR_ZMQ;
    snprintf(errbuf, errlen, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    goto fail;
  }
  s->deferred_tail = &s->deferred;
  ps_repl_cbs_t rcbs = {.push_done = ps__server_repl_push_done,
                        .synced = ps__server_repl_synced,
                        .progress = ps__server_handover_progress};
  s->repl = ps_repl_new(&s->loop, s->zctx, &s->limits, &rcbs, s);
  if (s->repl == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }

  /* CURVE: the ZAP handler before the socket that needs it binds. */
  s->keys = o->keys;
  if (s->keys) {
    s->zap = ps_zap_new(&s->loop, s->zctx, s->keys, err, errbuf, errlen);
    if (s->zap == NULL) goto fail;
    ps_repl_set_keys(s->repl, s->keys);
  }
  /* A TCP address is reserved now and bound by ZeroMQ at the first view,
   * with the frame limit the view implies (ps__server_frame_limit); any
   * other endpoint is bound at once, with the configured limit. */
  s->reserve_fd = -1;
  int reserved =
      reserve_tcp(o->bind, s->endpoint, sizeof(s->endpoint), &s->reserve_fd);
  ps_zsock_opts_t zo = {.limits = &s->limits, .keys = s->keys};
  s->data =
      ps_zsock_new(&s->loop, s->zctx, ZMQ_ROUTER, reserved ? NULL : o->bind,
                   NULL, &zo, on_data, s, err, errbuf, errlen);
  if (s->data == NULL) goto fail;
  /* Out of descriptors, ZeroMQ drops new workers without a word. */
  s->data_mon =
      ps_sockmon_new(&s->loop, s->zctx, ps_zsock_socket(s->data), "data", NULL);
  if (s->zap) ps_zap_set_cap(s->zap, s->data_mon, o->max_connections);
  if (!reserved)
    snprintf(s->endpoint, sizeof(s->endpoint), "%s",
             ps_zsock_endpoint(s->data));
  const char *advertise =
      s->advertise && s->advertise[0] ? s->advertise : s->endpoint;
  PS_INFO("start", "bind=%s endpoint=%s advertise=%s scheduler=%s", o->bind,
          s->endpoint, advertise, s->scheduler);
  if (strstr(advertise, "0.0.0.0") || strstr(advertise, "*"))
    PS_WARN("advertise_unroutable",
            "advertise=%s hint=\"workers cannot connect to a wildcard "
            "address: set --advertise\"",
            advertise);

  if (o->handle_signals) {
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    s->sigterm.data = s;
    s->sigint.data = s;
    s->signals_open = 1;
    uv_signal_start(&s->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&s->sigint, signal_cb, SIGINT);
  }

  ps_member_opts_t mo = {
      .scheduler = s->scheduler,
      .role = PS__ROLE__ROLE_SERVER,
      .address = advertise,
      .model = NULL,
      .rank = -1,
      .join = o->join,
      .heartbeat_ms = o->heartbeat_ms,
      .scheduler_timeout_ms = o->scheduler_timeout_ms,
      .keys = s->keys,
  };
  ps_member_cbs_t cbs = {
      .registered_cb = on_registered,
      .view_cb = on_view,
      .shutdown_cb = on_shutdown,
      .arg = s,
  };
  s->member = ps_member_new(&s->loop, s->zctx, &mo, &cbs, err);
  if (s->member == NULL) {
    snprintf(errbuf, errlen, "cannot start the scheduler link to %s: %s",
             s->scheduler, ps_strerror(*err));
    goto fail;
  }
  ps_member_set_message_cb(s->member, on_member_message, s);
  ps_repl_set_token(s->repl, ps_member_token(s->member));
  if (o->metrics_bind && o->metrics_bind[0] &&
      ps__server_metrics_start(s, o->metrics_bind, errbuf, errlen) != PS_OK) {
    *err = PS_ERR_CONFIG;
    goto fail;
  }
  s->notify_timer_open =
      ps_notify_timer_start(&s->loop, &s->notify_timer, NULL, NULL);
  *err = PS_OK;
  return s;

fail:
  ps_server_destroy(&s);
  return NULL;
}

int ps_server_run(ps_server_t *s) {
  if (!s->torn_down) uv_run(&s->loop, UV_RUN_DEFAULT);
  return s->exit_status;
}

const char *ps_server_endpoint(const ps_server_t *s) {
  return s->endpoint;
}

const ps_server_stats_t *ps_server_stats(const ps_server_t *s) {
  return &s->stats;
}

const char *ps_server_errmsg(const ps_server_t *s) {
  return s->errmsg;
}

void ps_server_destroy(ps_server_t **s_p) {
  ps_server_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  /* Work still on the thread pool finishes without calling back. */
  ps_saver_destroy(&s->saver);
  if (s->loop_ready) {
    teardown(s);
    /* Runs the close callbacks, after which the zsock and member memory is
     * freed and the loop holds nothing. */
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
  }
  if (s->zctx) zmq_ctx_term(s->zctx);
  ps_view_destroy(&s->restore_view);
  for (size_t i = 0; i < s->nranges; i++) {
    ps_shard_destroy(&s->ranges[i].shard);
    ps_dedup_destroy(&s->ranges[i].dedup);
    ps__server_sparse_free_tables(&s->ranges[i].sparse, s->ranges[i].nsparse);
    ps__server_snap_in_free(&s->ranges[i].incoming);
  }
  free(s->ranges);
  ps__server_deferred_free(s);
  free(s->scratch);
  free(s->decoded);
  free(s->inflight);
  ps__server_pushpull_free(s);
  ps__server_sparse_free(s);
  ps_view_destroy(&s->view);
  free(s->scheduler);
  free(s->advertise);
  free(s);
}
