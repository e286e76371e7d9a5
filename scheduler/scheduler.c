#include "scheduler/scheduler.h"

#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"

/* How long the Shutdown broadcast may take to leave once the socket is
 * closed; bounded so a stuck peer cannot keep the scheduler from exiting. */
#define SCHED_LINGER_MS 2000
#define SCHED_REPLICATION_DEFAULT 2
/* A death is noticed at most this long after the timeout. */
#define SCHED_CHECK_MAX_MS 50

/* ---- names for logs and refusals ------------------------------------ */

const char *ps__sched_role_name(int role) {
  switch (role) {
    case PS__ROLE__ROLE_SCHEDULER:
      return "scheduler";
    case PS__ROLE__ROLE_SERVER:
      return "server";
    case PS__ROLE__ROLE_WORKER:
      return "worker";
    case PS__ROLE__ROLE_ADMIN:
      return "admin";
    default:
      return "unknown";
  }
}

const char *ps__sched_state_name(int state) {
  switch (state) {
    case PS__NODE_STATE__NODE_STATE_ALIVE:
      return "alive";
    case PS__NODE_STATE__NODE_STATE_DEAD:
      return "dead";
    case PS__NODE_STATE__NODE_STATE_DONE:
      return "done";
    case PS__NODE_STATE__NODE_STATE_LEFT:
      return "left";
    default:
      return "unknown";
  }
}

const char *ps__sched_mode_name(int mode) {
  return mode == PS__CONSISTENCY_MODE__MODE_ASP   ? "asp"
         : mode == PS__CONSISTENCY_MODE__MODE_SSP ? "ssp"
                                                  : "bsp";
}

/* A log-friendly address: key=value lines have no empty values. */
const char *ps__sched_addr_or_dash(const char *a) {
  return a[0] ? a : "-";
}

void *ps__sched_socket(ps_sched_t *s) {
  return s->zs ? ps_zsock_socket(s->zs) : NULL;
}

/* ---- sending -------------------------------------------------------- */

void ps__sched_envelope_init(const ps_sched_t *s, Ps__Envelope *env,
                             uint64_t request_id) {
  ps__envelope__init(env);
  env->request_id = request_id;
  env->sender = 0; /* the scheduler is not a numbered node */
  env->epoch = s->epoch;
}

void ps__sched_send_to_route(ps_sched_t *s, const uint8_t *id, size_t id_len,
                             uint32_t node_id, Ps__Envelope *env) {
  void *sock = ps__sched_socket(s);
  if (sock == NULL || id_len == 0) return;
  zmq_msg_t route;
  if (zmq_msg_init_size(&route, id_len) != 0) return;
  memcpy(zmq_msg_data(&route), id, id_len);
  int rc = ps_msg_send(sock, &route, env, NULL, 0);
  zmq_msg_close(&route);
  /* ROUTER_MANDATORY: a peer whose connection is gone is refused here
   * (EHOSTUNREACH). That is expected for dead nodes, so not a warning. */
  if (rc != PS_OK)
    PS_DEBUG("send_failed", "id=%u body=%s err=%s zmq=\"%s\"", node_id,
             ps_body_name(env->body_case), ps_err_name(rc),
             zmq_strerror(zmq_errno()));
}

void ps__sched_send_to_node(ps_sched_t *s, sched_node_t *n, Ps__Envelope *env) {
  ps__sched_send_to_route(s, n->route, n->route_len, n->id, env);
}

void ps__sched_send_packed_to_node(ps_sched_t *s, sched_node_t *n,
                                   zmq_msg_t *header, int body) {
  void *sock = ps__sched_socket(s);
  if (sock == NULL || n->route_len == 0) return;
  zmq_msg_t route;
  if (zmq_msg_init_size(&route, n->route_len) != 0) return;
  memcpy(zmq_msg_data(&route), n->route, n->route_len);
  int rc = ps_msg_send_packed(sock, &route, header);
  zmq_msg_close(&route);
  if (rc != PS_OK)
    PS_DEBUG("send_failed", "id=%u body=%s err=%s zmq=\"%s\"", n->id,
             ps_body_name((Ps__Envelope__BodyCase)body), ps_err_name(rc),
             zmq_strerror(zmq_errno()));
}

void ps__sched_reply(ps_sched_t *s, ps_msg_t *m, Ps__Envelope *env) {
  void *sock = ps__sched_socket(s);
  if (sock == NULL || !m->has_route) return;
  int rc = ps_msg_send(sock, &m->route, env, NULL, 0);
  if (rc != PS_OK)
    PS_DEBUG("send_failed", "body=%s err=%s zmq=\"%s\"",
             ps_body_name(env->body_case), ps_err_name(rc),
             zmq_strerror(zmq_errno()));
}

/* Every refusal is logged with the same text the peer receives, so the two
 * sides of a failed exchange can be matched up. */
void ps__sched_reply_error(ps_sched_t *s, ps_msg_t *m, int code,
                           const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  const Ps__Envelope *env = m->env;
  PS_WARN("request_refused", "body=%s sender=%u err=%s reason=\"%s\"",
          env ? ps_body_name(env->body_case) : "none", env ? env->sender : 0u,
          ps_err_name(code), text);
  void *sock = ps__sched_socket(s);
  if (sock && m->has_route)
    ps_msg_reply_error(sock, m, s->epoch, 0, code, "%s", text);
}

void ps__sched_reply_ack(ps_sched_t *s, ps_msg_t *m, uint64_t clock) {
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = clock;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  ps__sched_reply(s, m, &env);
}

/* ---- shutdown ------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h);

static void sched_free(ps_sched_t *s) {
  for (size_t i = 0; i < s->nnodes; i++) {
    free(s->nodes[i].barrier);
    free(s->nodes[i].join_ok);
  }
  free(s->nodes);
  ps__sched_view_wire_drop(s);
  free(s->shown_ranges);
  free(s->shown_range_epoch);
  free(s->ranges);
  if (s->has_model) ps_model_clear(&s->model);
  ps_exporter_destroy(&s->exporter);
  ps_coord_destroy(&s->coord);
  free(s->ckpt_base);
  free(s->restore_dir);
  free(s->state_file);
  free(s);
}

static void on_handle_closed(uv_handle_t *h) {
  ps_sched_t *s = h->data;
  if (--s->open_handles == 0 && s->destroy_requested) sched_free(s);
}

void ps__sched_handle_released(ps_sched_t *s) {
  if (--s->open_handles == 0 && s->destroy_requested) sched_free(s);
}

static void close_handles(ps_sched_t *s, int linger_ms) {
  if (s->closing) return;
  s->closing = 1;
  if (s->zap) ps_zap_set_cap(s->zap, NULL, 0);
  ps_sockmon_destroy(&s->zs_mon);
  ps_zap_destroy(&s->zap);
  if (s->zs) {
    /* The socket was made with linger 0; what was just queued (the Shutdown
     * broadcast) must still leave while the context terminates. */
    zmq_setsockopt(ps_zsock_socket(s->zs), ZMQ_LINGER, &linger_ms,
                   sizeof(linger_ms));
    ps_zsock_destroy(&s->zs);
  }
  ps_exporter_destroy(&s->exporter);
  ps__sched_beats_close(s);
  uv_timer_stop(&s->check_timer);
  uv_close((uv_handle_t *)&s->check_timer, on_handle_closed);
  if (s->opts.handle_signals) {
    uv_signal_stop(&s->sigterm);
    uv_signal_stop(&s->sigint);
    uv_close((uv_handle_t *)&s->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigint, on_handle_closed);
  }
}

void ps_sched_stop(ps_sched_t *s, const char *reason) {
  if (s->finished) return;
  s->finished = 1;
  PS_INFO("cluster_shutdown", "reason=\"%s\" epoch=%" PRIu64 " nodes=%zu",
          reason, s->epoch, s->nnodes);
  /* psctl calls waiting on a checkpoint hear why it will not come. */
  if (s->coord && ps_coord_active(s->coord))
    ps_coord_fail(s->coord, PS_ERR_SHUTDOWN, "the cluster is shutting down");
  /* A deliberate end: a restart with this state file starts a new job. */
  ps__sched_state_save(s);
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = (char *)reason;
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  /* Dead nodes too: "dead" may only mean slow or cut off, and such a node
   * should learn that the job is over if it can still hear us. */
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].state != PS__NODE_STATE__NODE_STATE_LEFT)
      ps__sched_send_to_node(s, &s->nodes[i], &env);
  close_handles(s, SCHED_LINGER_MS);
}

/* The job is over once no worker is left training and at least one
 * finished; a job whose workers all died stays up for the operator. */
int ps__sched_check_job_finished(ps_sched_t *s) {
  if (!s->published || s->finished) return s->finished;
  uint32_t done = ps__sched_count_nodes(s, PS__ROLE__ROLE_WORKER,
                                        PS__NODE_STATE__NODE_STATE_DONE);
  if (ps__sched_live_workers(s) > 0 || done == 0) return 0;
  if (s->ending) return 1;
  PS_INFO("job_finished", "workers_done=%u epoch=%" PRIu64, done, s->epoch);
  if (s->coord && ps_coord_active(s->coord)) {
    /* A checkpoint whose shards are being written completes first; one
     * whose step will never come fails now (the coordinator tells the
     * servers); either way its callback ends the job. */
    s->ending = 1;
    snprintf(s->end_reason, sizeof(s->end_reason), "job finished");
    PS_INFO("job_end_waits_for_checkpoint", "step=%" PRIu64 " dir=%s",
            ps_coord_step(s->coord), ps_coord_dir(s->coord));
    ps_coord_job_finished(s->coord);
    return 1;
  }
  ps_sched_stop(s, "job finished");
  return 1;
}

/* ---- dispatch ------------------------------------------------------- */

/* psctl stop, with an admin key (role_allowed checked it): the job ends
 * as if a node had left. */
static void stop_by_admin(ps_sched_t *s, ps_msg_t *m) {
  const char *why = m->env->shutdown->reason ? m->env->shutdown->reason : "";
  char reason[512];
  snprintf(reason, sizeof(reason), "stopped by an admin: %s",
           why[0] ? why : "no reason given");
  ps__sched_reply_ack(s, m, 0);
  ps_sched_stop(s, reason);
}

/* A message in a node's name must come on a connection with that node's
 * token (common/auth.h): nobody leaves, finishes, heartbeats or reports in
 * another node's name. Registration makes the binding; psctl's requests
 * are in no node's name. Returns 0 after refusing m. */
static int sender_verified(ps_sched_t *s, ps_msg_t *m) {
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER:
    case PS__ENVELOPE__BODY_STATUS_REQUEST:
    case PS__ENVELOPE__BODY_CHECKPOINT_COMMAND:
    case PS__ENVELOPE__BODY_DRAIN_COMMAND:
    case PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND:
      return 1;
    default:
      break;
  }
  const sched_node_t *n = ps__sched_node_by_id_const(s, m->env->sender);
  if (n == NULL || n->token[0] == '\0') return 1; /* the handler refuses */
  if (m->has_route && ps_auth_route_is(&m->route, n->token)) return 1;
  s->stats.impersonations++;
  uint64_t now = ps_now_ms();
  if (now - s->impersonation_logged_ms >= 5000) {
    s->impersonation_logged_ms = now;
    PS_WARN("impersonation_refused",
            "body=%s sender=%u count=%" PRIu64
            " reason=\"not the connection node %u registered on\"",
            ps_body_name(m->env->body_case), m->env->sender,
            s->stats.impersonations, m->env->sender);
  }
  void *sock = ps__sched_socket(s);
  if (sock && m->has_route)
    ps_msg_reply_error(sock, m, s->epoch, 0, PS_ERR_PERMISSION_DENIED,
                       "node %u did not register on this connection",
                       m->env->sender);
  return 0;
}

/* With CURVE, what a connection may send follows from its key's role
 * (common/keys.h), on top of the node identity above: a server key
 * registers servers, a worker key workers, only an admin key checkpoints,
 * drains or stops the cluster (a Shutdown that is not a node's own
 * leave), and a server's Register names the key it connects with, which
 * goes into the view. Returns 0 after refusing m. */
static int role_allowed(ps_sched_t *s, ps_msg_t *m) {
  if (s->opts.keys == NULL) return 1;
  char key[PS_KEY_Z85_LEN + 1];
  ps_key_role_t role = ps_keys_peer(m->user_id, key);
  const char *why = NULL;
  char text[256];
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER: {
      const Ps__Register *r = m->env->register_;
      ps_key_role_t need = r->role == PS__ROLE__ROLE_SERVER ? PS_KEY_ROLE_SERVER
                           : r->role == PS__ROLE__ROLE_WORKER
                               ? PS_KEY_ROLE_WORKER
                               : PS_KEY_ROLE_NONE;
      if (need != PS_KEY_ROLE_NONE && role != need) {
        snprintf(text, sizeof(text), "a %s key may not register as a %s",
                 ps_key_role_name(role), ps_key_role_name(need));
        why = text;
      } else if (need == PS_KEY_ROLE_SERVER &&
                 (r->curve_key == NULL || strcmp(r->curve_key, key) != 0)) {
        why = "a server registers with the public key it connects with";
      }
      break;
    }
    case PS__ENVELOPE__BODY_CHECKPOINT_COMMAND:
      if (role != PS_KEY_ROLE_ADMIN) why = "only an admin key may checkpoint";
      break;
    case PS__ENVELOPE__BODY_DRAIN_COMMAND:
      if (role != PS_KEY_ROLE_ADMIN) why = "only an admin key may drain";
      break;
    case PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND:
      if (role != PS_KEY_ROLE_ADMIN)
        why = "only an admin key may remove a worker";
      break;
    case PS__ENVELOPE__BODY_SHUTDOWN:
      /* A node's own leave passed sender_verified: it is its connection. */
      if (role != PS_KEY_ROLE_ADMIN &&
          (ps__sched_node_by_id_const(s, m->env->sender) == NULL ||
           role == PS_KEY_ROLE_NONE))
        why = "only an admin key may stop the cluster";
      break;
    default:
      /* Admitted by the ZAP handler: any key of the table. */
      if (role == PS_KEY_ROLE_NONE) why = "no CURVE key";
      break;
  }
  if (why == NULL) return 1;
  s->stats.role_refusals++;
  char fp[PS_KEY_FINGERPRINT_LEN + 1] = "-";
  if (key[0]) ps_keys_fingerprint(key, NULL, fp);
  uint64_t now = ps_now_ms();
  if (now - s->role_refusal_logged_ms >= 5000) {
    s->role_refusal_logged_ms = now;
    PS_WARN("permission_denied",
            "body=%s role=%s fingerprint=%s count=%" PRIu64 " reason=\"%s\"",
            ps_body_name(m->env->body_case), ps_key_role_name(role), fp,
            s->stats.role_refusals, why);
  }
  void *sock = ps__sched_socket(s);
  if (sock && m->has_route)
    ps_msg_reply_error(sock, m, s->epoch, 0, PS_ERR_PERMISSION_DENIED, "%s",
                       why);
  return 0;
}

void ps__sched_dispatch(ps_sched_t *s, ps_msg_t *m, int status,
                        const char *reason) {
  if (s->finished) return;
  if (status != PS_OK) {
    PS_WARN("bad_message", "err=%s reason=\"%s\"", ps_err_name(status), reason);
    void *sock = ps__sched_socket(s);
    if (sock && m->has_route)
      ps_msg_reply_error(sock, m, s->epoch, 0, status, "%s", reason);
    return;
  }
  /* The caller closes m. */
  if (!sender_verified(s, m) || !role_allowed(s, m)) return;
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER:
      ps__sched_handle_register(s, m);
      break;
    case PS__ENVELOPE__BODY_HEARTBEAT:
      ps__sched_handle_heartbeat(s, m);
      ps__sched_note_metrics_address(s, m);
      break;
    case PS__ENVELOPE__BODY_BARRIER:
      ps__sched_handle_barrier(s, m);
      break;
    case PS__ENVELOPE__BODY_DONE:
      ps__sched_handle_done(s, m);
      break;
    case PS__ENVELOPE__BODY_SHUTDOWN:
      /* role_allowed let through only a node's own leave or an admin. */
      if (ps__sched_node_by_id_const(s, m->env->sender) == NULL &&
          s->opts.keys && ps_keys_peer(m->user_id, NULL) == PS_KEY_ROLE_ADMIN)
        stop_by_admin(s, m);
      else
        ps__sched_handle_leave(s, m);
      break;
    case PS__ENVELOPE__BODY_STATUS_REQUEST:
      ps__sched_handle_status(s, m);
      break;
    case PS__ENVELOPE__BODY_CHECKPOINT_COMMAND:
      ps__sched_handle_checkpoint_command(s, m);
      break;
    case PS__ENVELOPE__BODY_CHECKPOINT_REPLY:
      ps__sched_handle_checkpoint_reply(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICA_SYNCED:
      ps__sched_handle_replica_synced(s, m);
      break;
    case PS__ENVELOPE__BODY_JOIN_REPLY:
      ps__sched_handle_join_reply(s, m);
      break;
    case PS__ENVELOPE__BODY_HANDOVER_READY:
      ps__sched_handle_handover_ready(s, m);
      break;
    case PS__ENVELOPE__BODY_DRAIN_COMMAND:
      ps__sched_handle_drain(s, m);
      break;
    case PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND:
      ps__sched_handle_remove_worker(s, m);
      break;
    default:
      ps__sched_reply_error(s, m, PS_ERR_UNSUPPORTED,
                            "the scheduler does not take %s",
                            ps_body_name(m->env->body_case));
      break;
  }
}

static void on_message(ps_zsock_t *zs, ps_msg_t *m, int status,
                       const char *reason, void *arg) {
  ps__sched_dispatch(arg, m, status, reason);
  ps_msg_close(m);
}

/* ---- timers and signals --------------------------------------------- */

void ps__sched_check(ps_sched_t *s, uint64_t now) {
  uint64_t limit = (uint64_t)s->opts.heartbeat_timeout_ms;
  int changed = 0, servers_lost = 0;
  /* Timers run before the loop reads its sockets: after a stall of this
   * process (no CPU for it, a long callback), the heartbeats that came
   * meanwhile are still unread, and every node would look silent. Such a
   * late check declares no one dead, and every node has a whole timeout
   * from its end: the backlog is read by then, and heartbeat datagrams lost
   * past the socket's buffer during the stall are followed by new ones. */
  uint64_t late =
      s->last_check_ms && now > s->last_check_ms ? now - s->last_check_ms : 0;
  s->last_check_ms = now;
  if (late > 2 * s->check_every_ms + limit / 4) {
    PS_WARN("scheduler_stalled", "ms=%" PRIu64 " check_ms=%" PRIu64, late,
            s->check_every_ms);
    limit = UINT64_MAX;
    s->stall_end_ms = now;
  }
  if (s->republish_syncing) {
    s->republish_syncing = 0;
    ps__sched_publish(s, "restart_with_syncing_backups");
  }
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    /* Done workers may stop heartbeating: only the living can die. */
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    uint64_t seen =
        n->last_seen_ms > s->stall_end_ms ? n->last_seen_ms : s->stall_end_ms;
    uint64_t silent = now > seen ? now - seen : 0;
    if (silent < limit) continue;
    ps__sched_declare_dead(s, n, silent);
    changed = 1;
    if (n->role == PS__ROLE__ROLE_SERVER) servers_lost = 1;
  }
  ps_coord_tick(s->coord, now);
  if (!changed) ps__sched_ckpt_periodic(s, now);
  /* Before the first view a dead node only frees its slot, so that its
   * restart (or a replacement) can register. */
  if (changed && !s->published) ps__sched_state_save(s);
  if (!s->published || s->finished) return;
  if (changed && ps__sched_check_job_finished(s)) return;
  const char *why = changed ? "node_dead" : NULL;
  if (servers_lost && ps__sched_replan(s, s->epoch + 1)) why = "failover";
  /* A join may have waited on a server that just died. */
  if (ps__sched_join_check_all(s) > 0 && why == NULL) why = "worker_joined";
  if (ps__sched_join_retry_due(s, now) > 0 && why == NULL) why = "join_retry";
  if (why != NULL) {
    ps__sched_publish(s, why);
    ps__sched_barrier_check_all(s);
  }
  ps__sched_handover_tick(s, now);
}

static void on_check(uv_timer_t *t) {
  ps__sched_check(t->data, ps_now_ms());
}

static void on_signal(uv_signal_t *h, int signum) {
  ps_sched_t *s = h->data;
  char reason[64];
  snprintf(reason, sizeof(reason), "scheduler received %s",
           signum == SIGINT ? "SIGINT" : "SIGTERM");
  ps_sched_stop(s, reason);
}

/* ---- life cycle ----------------------------------------------------- */

/* in made absolute against the working directory: the path goes to
 * servers that may have another one. */
int ps__sched_abs_path(const char *in, char *out, size_t len) {
  if (in[0] == '/') {
    if (strlen(in) >= len) return -1;
    snprintf(out, len, "%s", in);
    return 0;
  }
  char cwd[PS_CHECKPOINT_PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == NULL) return -1;
  int n = snprintf(out, len, "%s/%s", cwd, in);
  return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Checkpoint and persistence options: made absolute, state loaded, the
 * checkpoint to restore verified. */
static int setup_durability(ps_sched_t *s, const ps_sched_opts_t *opts,
                            char *err, size_t errlen) {
  char path[PS_CHECKPOINT_PATH_MAX];
  s->opts.checkpoint_dir = s->opts.state_file = s->opts.restore = NULL;
  if (opts->checkpoint_every_s < 0) {
    snprintf(err, errlen, "checkpoint-every-s %g: must be >= 0",
             opts->checkpoint_every_s);
    return PS_ERR_CONFIG;
  }
  int has_dir = opts->checkpoint_dir && opts->checkpoint_dir[0];
  if (!has_dir &&
      (opts->checkpoint_every_steps > 0 || opts->checkpoint_every_s > 0)) {
    snprintf(err, errlen,
             "periodic checkpoints (every-steps %" PRIu64
             ", every-s %g) need a checkpoint directory",
             opts->checkpoint_every_steps, opts->checkpoint_every_s);
    return PS_ERR_CONFIG;
  }
  ps_coord_cbs_t ccbs = {ps__sched_coord_send_cb, ps__sched_coord_done_cb, s};
  s->coord = ps_coord_new(&ccbs, 1);
  if (s->coord == NULL) {
    snprintf(err, errlen, "out of memory");
    return PS_ERR_NOMEM;
  }
  if (has_dir) {
    if (ps__sched_abs_path(opts->checkpoint_dir, path, sizeof(path) - 64) !=
            0 ||
        (s->ckpt_base = strdup(path)) == NULL) {
      snprintf(err, errlen, "checkpoint-dir %s: path too long",
               opts->checkpoint_dir);
      return PS_ERR_CONFIG;
    }
    int rc = ps_checkpoint_mkdirs(s->ckpt_base, err, errlen);
    if (rc != PS_OK) return rc;
  }
  int loaded = 0;
  if (opts->state_file && opts->state_file[0]) {
    if (ps__sched_abs_path(opts->state_file, path, sizeof(path)) != 0 ||
        (s->state_file = strdup(path)) == NULL) {
      snprintf(err, errlen, "state-file %s: path too long", opts->state_file);
      return PS_ERR_CONFIG;
    }
    loaded = ps__sched_state_load(s, err, errlen);
    if (loaded < 0) return loaded;
    for (size_t i = 0; loaded > 0 && s->published && i < s->nranges; i++)
      if (ps_place_nsyncing(&s->ranges[i]) > 0) s->republish_syncing = 1;
  }
  if (opts->restore && opts->restore[0]) {
    if (loaded)
      PS_WARN("restore_ignored",
              "restore=%s reason=\"the job of the state file goes on\"",
              opts->restore);
    else
      return ps__sched_restore_prepare(s, opts->restore, err, errlen);
  }
  return PS_OK;
}

ps_sched_t *ps_sched_new(uv_loop_t *loop, void *zmq_ctx,
                         const ps_sched_opts_t *opts, int *err, char *errbuf,
                         size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  char sink[8];
  if (errbuf == NULL || errlen == 0) {
    errbuf = sink;
    errlen = sizeof(sink);
  }
  *err = PS_ERR_INVAL;
  if (opts->bind == NULL || opts->bind[0] == '\0') {
    snprintf(errbuf, errlen, "bind: an endpoint is required");
    return NULL;
  }
  if (opts->servers < 1 || opts->workers < 1) {
    snprintf(errbuf, errlen, "servers=%u workers=%u: each must be >= 1",
             opts->servers, opts->workers);
    return NULL;
  }
  if (opts->ranges != 0 &&
      (opts->ranges < opts->servers || opts->ranges > SCHED_MAX_RANGES)) {
    snprintf(errbuf, errlen,
             "ranges=%u: at least one per server (%u) and at most %d",
             opts->ranges, opts->servers, SCHED_MAX_RANGES);
    return NULL;
  }
  if (opts->mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      opts->mode != PS__CONSISTENCY_MODE__MODE_ASP &&
      opts->mode != PS__CONSISTENCY_MODE__MODE_SSP) {
    snprintf(errbuf, errlen, "mode %d is neither bsp, asp nor ssp", opts->mode);
    return NULL;
  }
  if (opts->staleness > PS_SSP_STALENESS_MAX ||
      (opts->staleness > 0 && opts->mode != PS__CONSISTENCY_MODE__MODE_SSP)) {
    snprintf(errbuf, errlen, "staleness %u: only ssp has one, 0 to %d",
             opts->staleness, PS_SSP_STALENESS_MAX);
    return NULL;
  }
  if (opts->heartbeat_timeout_ms <= 0) {
    snprintf(errbuf, errlen, "heartbeat-timeout-ms %d: must be > 0",
             opts->heartbeat_timeout_ms);
    return NULL;
  }
  if (opts->read_batch_ms < 0 || opts->read_batch_ms > 100) {
    snprintf(errbuf, errlen, "read-batch-ms %d: must be 0 to 100",
             opts->read_batch_ms);
    return NULL;
  }
  if (opts->replication > PS_MAX_REPLICAS) {
    snprintf(errbuf, errlen, "replication %u: must be 1 to %d",
             opts->replication, PS_MAX_REPLICAS);
    return NULL;
  }
  ps_sched_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  s->loop = loop;
  s->opts = *opts;
  if (s->opts.max_workers < s->opts.workers)
    s->opts.max_workers = s->opts.workers;
  s->opts.bind = NULL; /* not kept: only the resolved endpoint is */
  if (s->opts.replication == 0) s->opts.replication = SCHED_REPLICATION_DEFAULT;
  s->replication = ps_place_copies(s->opts.replication, opts->servers);
  if (s->replication < s->opts.replication)
    PS_WARN("replication_capped", "replication=%u servers=%u copies=%u",
            s->opts.replication, opts->servers, s->replication);
  s->start_ms = ps_now_ms();
  s->ckpt_last_ms = s->start_ms;
  int rc = setup_durability(s, opts, errbuf, errlen);
  if (rc != PS_OK) {
    *err = rc;
    sched_free(s);
    return NULL;
  }
  /* No message to the scheduler carries a payload frame: ZeroMQ drops
   * anything bigger than a header before reading it. */
  static const ps_frame_limits_t headers_only = {
      .max_header_bytes = 1u << 20,
      .max_payload_bytes = 0,
  };
  /* The ZAP handler first: a handshake before it is bound would be let
   * through unchecked. */
  if (opts->keys && (s->zap = ps_zap_new(loop, zmq_ctx, opts->keys, err, errbuf,
                                         errlen)) == NULL) {
    sched_free(s);
    return NULL;
  }
  ps_zsock_opts_t zo = {.limits = &headers_only,
                        .keys = opts->keys,
                        .batch_ms = (unsigned)opts->read_batch_ms};
  s->zs = ps_zsock_new(loop, zmq_ctx, ZMQ_ROUTER, opts->bind, NULL, &zo,
                       on_message, s, err, errbuf, errlen);
  if (s->zs == NULL) {
    ps_zap_destroy(&s->zap);
    sched_free(s);
    return NULL;
  }
  snprintf(s->endpoint, sizeof(s->endpoint), "%s", ps_zsock_endpoint(s->zs));
  /* Out of descriptors, ZeroMQ drops new nodes without a word. */
  s->zs_mon =
      ps_sockmon_new(loop, zmq_ctx, ps_zsock_socket(s->zs), "scheduler", NULL);
  if (s->zap) ps_zap_set_cap(s->zap, s->zs_mon, opts->max_connections);
  if (opts->heartbeat_udp &&
      ps__sched_beats_start(s, errbuf, errlen) != PS_OK) {
    *err = PS_ERR_CONFIG;
    ps_sockmon_destroy(&s->zs_mon);
    ps_zsock_destroy(&s->zs);
    ps_zap_destroy(&s->zap);
    sched_free(s);
    return NULL;
  }
  if (opts->metrics_bind && opts->metrics_bind[0] &&
      ps__sched_metrics_start(s, opts->metrics_bind, errbuf, errlen) != PS_OK) {
    *err = PS_ERR_CONFIG;
    ps__sched_beats_close(s);
    ps_sockmon_destroy(&s->zs_mon);
    ps_zsock_destroy(&s->zs);
    ps_zap_destroy(&s->zap);
    sched_free(s);
    return NULL;
  }

  /* Checking several times per timeout bounds how late a death is noticed:
   * failover time is the timeout plus at most one period. */
  uint64_t every = (uint64_t)opts->heartbeat_timeout_ms / 8;
  if (every < 5) every = 5;
  if (every > SCHED_CHECK_MAX_MS) every = SCHED_CHECK_MAX_MS;
  uv_timer_init(loop, &s->check_timer);
  s->check_timer.data = s;
  s->open_handles++;
  s->check_every_ms = every;
  uv_timer_start(&s->check_timer, on_check, every, every);
  if (opts->handle_signals) {
    uv_signal_init(loop, &s->sigterm);
    uv_signal_init(loop, &s->sigint);
    s->sigterm.data = s;
    s->sigint.data = s;
    s->open_handles += 2;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
  }
  if (opts->keys)
    PS_INFO("curve", "keys_dir=%s keys=%zu", ps_keys_dir(opts->keys),
            ps_keys_count(opts->keys));
  PS_INFO("listening",
          "endpoint=%s servers=%u workers=%u mode=%s staleness=%u "
          "replication=%u heartbeat_timeout_ms=%d check_ms=%" PRIu64
          " checkpoint_dir=%s state_file=%s start_clock=%" PRIu64,
          s->endpoint, opts->servers, opts->workers,
          ps__sched_mode_name(opts->mode), opts->staleness, s->replication,
          opts->heartbeat_timeout_ms, every, s->ckpt_base ? s->ckpt_base : "-",
          s->state_file ? s->state_file : "-", s->start_clock);
  *err = PS_OK;
  return s;
}

const char *ps_sched_endpoint(const ps_sched_t *s) {
  return s->endpoint;
}

int ps_sched_finished(const ps_sched_t *s) {
  return s->finished;
}

uint64_t ps_sched_epoch(const ps_sched_t *s) {
  return s->epoch;
}

void ps_sched_describe(const ps_sched_t *s, char *buf, size_t len) {
  unsigned servers = 0, workers = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    if (n->role == PS__ROLE__ROLE_SERVER) servers++;
    if (n->role == PS__ROLE__ROLE_WORKER) workers++;
  }
  if (s->finished)
    snprintf(buf, len, "job over, shutting down (epoch %llu)",
             (unsigned long long)s->epoch);
  else if (!s->published)
    snprintf(buf, len,
             "waiting for nodes on %s: %u of %u servers, %u of %u workers",
             s->endpoint, servers, s->opts.servers, workers, s->opts.workers);
  else
    snprintf(buf, len, "epoch %llu: %u servers and %u workers alive on %s",
             (unsigned long long)s->epoch, servers, workers, s->endpoint);
}

void ps_sched_destroy(ps_sched_t **s_p) {
  ps_sched_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  s->destroy_requested = 1;
  close_handles(s, 0);
  if (s->open_handles == 0) sched_free(s);
}
