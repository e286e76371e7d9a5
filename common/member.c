#include "member.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "beat.h"
#include "err.h"
#include "frame.h"
#include "log.h"
#include "sockmon.h"
#include "time.h"
#include "transport.h"

/* The scheduler may start after the node: Register goes out again this often
 * until one is answered. */
#define MEMBER_REGISTER_RETRY_MS 1000
/* Done and Shutdown are fire and forget, but must not die with the socket
 * when the owner destroys the member right after sending them. */
#define MEMBER_LINGER_MS 1000
#define MEMBER_RANK_ANY 0xffffffffu
/* While the scheduler is silent the member says so this often (or 4 times
 * per timeout when that is shorter), so a wait is never silent. */
#define MEMBER_SILENCE_WARN_MS 5000
/* Heartbeats over UDP (common/beat.h) count as answered while an ack came
 * within this long; otherwise they go on the membership link as well. */
#define MEMBER_BEAT_UNANSWERED_MS (2 * PS_MEMBER_ACK_EVERY_MS + 100)

struct ps_member_s {
  uv_loop_t *loop;
  ps_zsock_t *zs;
  /* Handshakes the scheduler refused (a CURVE key it does not admit, a
   * mechanism it does not speak): the reason, reported by the heartbeat
   * timer as the end of the link ("" while none). */
  ps_sockmon_t *zs_mon;
  char refused[320];
  ps_auth_token_t token; /* this node's (common/auth.h) */
  uv_timer_t register_timer;
  uv_timer_t heartbeat_timer;
  int open_handles;
  int destroyed;

  ps_member_cbs_t cbs;
  char *scheduler;
  int role;
  char *address;
  int has_model;
  ps_model_t model;
  int64_t rank;
  int join;
  int heartbeat_ms;
  int scheduler_timeout_ms;
  const ps_keys_t *keys;
  int join_new_rank; /* issue #16 */

  int registered;
  uint32_t node_id;
  uint64_t epoch;
  /* A copy of the last view handed to view_cb: the base the next delta
   * applies to (View.base_epoch). NULL before the first. */
  ps_view_t *held;
  uint64_t clock;
  char metrics_address[PS_ADDR_MAX]; /* "" when none */
  uint64_t last_heard_ms;
  uint64_t last_beat_ms; /* the last heartbeat sent */
  int metrics_dirty;     /* metrics_address not yet sent on the link */
  /* Heartbeats over UDP, when the RegisterReply named a port: resolving
   * the scheduler's host, then a UDP socket bound to any address.
   * beat_ack_ms is the last ack taken (0: none yet); while it is recent
   * the heartbeats go as datagrams only. */
  uint8_t beat_key[PS_BEAT_KEY_BYTES];
  uint16_t beat_port;
  uv_getaddrinfo_t beat_resolve;
  uv_udp_t beat_udp;
  struct sockaddr_storage beat_addr; /* the scheduler's heartbeat port */
  int beat_ready;         /* beat_udp is open (bound to any address) */
  int beat_answered;      /* the last state logged: acks coming */
  uint64_t beat_start_ms; /* when the socket opened (0: not yet) */
  uint64_t beat_seq, beat_acked_seq, beat_ack_ms;
  uint8_t beat_in[2 * PS_BEAT_BYTES];
  uint64_t last_warned_ms; /* the last scheduler_silent warning */
  uint64_t next_request_id;
  uint64_t done_request_id;     /* 0: no Done in flight */
  uint64_t farewell_request_id; /* the last Done or Shutdown sent */
  int sent_farewell;            /* a Done or Shutdown that must still leave */
  int farewell_acked;           /* the scheduler acked farewell_request_id */
  int stopped;                  /* shutdown_cb has run: report nothing more */
  ps_member_message_cb message_cb;
  void *message_arg;
};

static uint64_t next_request_id(ps_member_t *m) {
  return ++m->next_request_id;
}

static void envelope_init(ps_member_t *m, Ps__Envelope *env,
                          uint64_t request_id) {
  ps__envelope__init(env);
  env->request_id = request_id;
  env->sender = m->node_id;
  env->epoch = m->epoch;
}

static void send_env(ps_member_t *m, Ps__Envelope *env) {
  if (m->zs == NULL) return;
  int rc = ps_msg_send(ps_zsock_socket(m->zs), NULL, env, NULL, 0);
  if (rc != PS_OK)
    PS_WARN("scheduler_send_failed", "body=%s err=%s zmq=\"%s\"",
            ps_body_name(env->body_case), ps_err_name(rc),
            zmq_strerror(zmq_errno()));
}

/* Reports the end of the link once; the owner decides what to do (usually
 * stop its loop and exit). */
static void report_shutdown(ps_member_t *m, int status, const char *reason) {
  if (m->stopped) return;
  m->stopped = 1;
  uv_timer_stop(&m->register_timer);
  uv_timer_stop(&m->heartbeat_timer);
  if (m->cbs.shutdown_cb) m->cbs.shutdown_cb(m, status, reason, m->cbs.arg);
}

static void send_register(ps_member_t *m) {
  Ps__Register reg = PS__REGISTER__INIT;
  Ps__ModelSpec spec;
  Ps__TensorSpec *tensors = NULL;
  Ps__TensorSpec **ptrs = NULL;
  Ps__SparseTableSpec *sparse = NULL;
  Ps__SparseTableSpec **sparse_ptrs = NULL;
  Ps__OptimizerSpec *opts = NULL;
  reg.role = (Ps__Role)m->role;
  reg.address = m->address;
  reg.rank = m->rank < 0 ? MEMBER_RANK_ANY : (uint32_t)m->rank;
  reg.join = m->join != 0;
  if (m->keys) reg.curve_key = (char *)ps_keys_public(m->keys);
  reg.join_new_rank = m->join_new_rank != 0;
  if (m->has_model) {
    size_t n = m->model.ntensors;
    tensors = calloc(n + 1, sizeof(*tensors));
    ptrs = calloc(n + 1, sizeof(*ptrs));
    sparse = calloc(m->model.nsparse + 1, sizeof(*sparse));
    sparse_ptrs = calloc(m->model.nsparse + 1, sizeof(*sparse_ptrs));
    opts = calloc(n + m->model.nsparse + 1, sizeof(*opts));
    if (tensors == NULL || ptrs == NULL || sparse == NULL ||
        sparse_ptrs == NULL || opts == NULL) {
      /* The retry timer tries again; memory may come back. */
      PS_ERROR("register_failed", "err=%s", ps_err_name(PS_ERR_NOMEM));
      free(tensors);
      free(ptrs);
      free(sparse);
      free(sparse_ptrs);
      free(opts);
      return;
    }
    ps_model_to_pb(&m->model, &spec, tensors, ptrs, opts);
    ps_model_sparse_to_pb(&m->model, &spec, sparse, sparse_ptrs, opts + n);
    reg.model = &spec;
  }
  Ps__Envelope env;
  envelope_init(m, &env, next_request_id(m));
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &reg;
  send_env(m, &env);
  free(tensors);
  free(ptrs);
  free(sparse);
  free(sparse_ptrs);
  free(opts);
}

static void send_link_heartbeat(ps_member_t *m) {
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  hb.clock = m->clock;
  hb.metrics_address = m->metrics_address;
  Ps__Envelope env;
  envelope_init(m, &env, next_request_id(m));
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  send_env(m, &env);
  m->metrics_dirty = 0;
}

static void send_beat(ps_member_t *m) {
  ps_beat_t b = {.type = PS_BEAT_BEAT,
                 .node_id = m->node_id,
                 .seq = ++m->beat_seq,
                 .epoch = m->epoch,
                 .clock = m->clock};
  uint8_t out[PS_BEAT_BYTES];
  ps_beat_pack(&b, m->beat_key, out);
  uv_buf_t buf = uv_buf_init((char *)out, sizeof(out));
  /* A failed send goes unanswered like a lost one. */
  (void)uv_udp_try_send(&m->beat_udp, &buf, 1,
                        (const struct sockaddr *)&m->beat_addr);
}

/* A heartbeat: a datagram when the scheduler takes them (and on the link
 * too while those go unanswered, or when the link has news), else on the
 * link. */
static void send_heartbeat(ps_member_t *m) {
  uint64_t now = ps_now_ms();
  int link = 1;
  if (m->beat_ready) {
    send_beat(m);
    int answered =
        m->beat_ack_ms != 0 && now - m->beat_ack_ms < MEMBER_BEAT_UNANSWERED_MS;
    /* Never answered: said once, a few ack periods after the start (the
     * port may be closed by a firewall; the link carries on). */
    int never = m->beat_ack_ms == 0 && m->beat_start_ms != 0 &&
                now - m->beat_start_ms >= 3 * MEMBER_BEAT_UNANSWERED_MS;
    if (!answered && (m->beat_answered || never)) {
      uint64_t since = m->beat_ack_ms ? m->beat_ack_ms : m->beat_start_ms;
      PS_WARN("beats_unanswered",
              "scheduler=%s udp_port=%u silent_ms=%" PRIu64
              " ever_answered=%d fallback=membership_link",
              m->scheduler, m->beat_port, now - since, m->beat_ack_ms != 0);
      m->beat_answered = 0;
      m->beat_start_ms = 0;
    }
    link = !answered || m->metrics_dirty;
  }
  if (link) send_link_heartbeat(m);
  m->last_beat_ms = now;
}

static void on_beat_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  ps_member_t *m = h->data;
  *buf = uv_buf_init((char *)m->beat_in, sizeof(m->beat_in));
}

static void on_beat_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                         const struct sockaddr *addr, unsigned flags) {
  (void)addr;
  ps_member_t *m = h->data;
  ps_beat_t b;
  if (nread <= 0 || (flags & UV_UDP_PARTIAL) || m->stopped) return;
  if (ps_beat_open((const uint8_t *)buf->base, (size_t)nread, m->beat_key,
                   &b) != PS_OK ||
      b.type != PS_BEAT_ACK || b.node_id != m->node_id ||
      b.seq <= m->beat_acked_seq || b.seq > m->beat_seq)
    return; /* not the scheduler's, or a replay */
  m->beat_acked_seq = b.seq;
  m->beat_ack_ms = m->last_heard_ms = ps_now_ms();
  if (m->last_warned_ms != 0) {
    m->last_warned_ms = 0;
    PS_INFO("scheduler_back", "scheduler=%s", m->scheduler);
  }
  if (!m->beat_answered) {
    m->beat_answered = 1;
    PS_INFO("beats_answered", "scheduler=%s udp_port=%u", m->scheduler,
            m->beat_port);
  }
}

static void on_close(uv_handle_t *h);
static void free_member(ps_member_t *m);

static void on_beat_resolved(uv_getaddrinfo_t *req, int status,
                             struct addrinfo *res) {
  ps_member_t *m = req->data;
  if (m->destroyed || m->stopped || status != 0 || res == NULL) {
    if (!m->destroyed && !m->stopped)
      PS_WARN("beats_unusable", "scheduler=%s reason=\"%s\"", m->scheduler,
              uv_strerror(status));
    uv_freeaddrinfo(res);
    if (--m->open_handles == 0) free_member(m);
    return;
  }
  /* Not connected: an ack may come from another of the scheduler's
   * addresses than the one the datagrams go to (a host with several, a
   * NAT); the tag says whose it is. */
  memcpy(&m->beat_addr, res->ai_addr, res->ai_addrlen);
  struct sockaddr_storage any;
  memset(&any, 0, sizeof(any));
  any.ss_family = (sa_family_t)res->ai_family;
  int rc = uv_udp_init_ex(m->loop, &m->beat_udp, (unsigned)res->ai_family);
  if (rc == 0) {
    m->beat_udp.data = m;
    rc = uv_udp_bind(&m->beat_udp, (const struct sockaddr *)&any, 0);
    if (rc == 0)
      rc = uv_udp_recv_start(&m->beat_udp, on_beat_alloc, on_beat_recv);
    if (rc == 0) {
      m->beat_ready = 1; /* the handle is counted: the resolve's count */
      m->beat_start_ms = ps_now_ms();
    } else {
      uv_close((uv_handle_t *)&m->beat_udp, on_close);
    }
  } else {
    --m->open_handles;
  }
  if (rc != 0)
    PS_WARN("beats_unusable", "scheduler=%s reason=\"%s\"", m->scheduler,
            uv_strerror(rc));
  uv_freeaddrinfo(res);
}

/* The RegisterReply named a UDP port: resolve the scheduler's host (that of
 * its endpoint, "tcp://HOST:PORT") and open the socket heartbeats go on. */
static void beats_start(ps_member_t *m, const Ps__RegisterReply *rr) {
  if (rr->beat_port == 0 || rr->beat_port > 65535 ||
      rr->beat_key.len != PS_BEAT_KEY_BYTES)
    return;
  const char *p =
      strncmp(m->scheduler, "tcp://", 6) == 0 ? m->scheduler + 6 : NULL;
  const char *colon = p ? strrchr(p, ':') : NULL;
  char host[PS_ADDR_MAX];
  size_t hl = colon ? (size_t)(colon - p) : 0;
  if (hl >= 2 && p[0] == '[' && p[hl - 1] == ']') {
    p++;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof(host)) {
    PS_WARN("beats_unusable", "scheduler=%s reason=\"not a tcp endpoint\"",
            m->scheduler);
    return;
  }
  memcpy(host, p, hl);
  host[hl] = '\0';
  char port[8];
  snprintf(port, sizeof(port), "%u", rr->beat_port);
  memcpy(m->beat_key, rr->beat_key.data, PS_BEAT_KEY_BYTES);
  m->beat_port = (uint16_t)rr->beat_port;
  /* As ZeroMQ resolves the endpoint (IPv4 unless the address is IPv6). */
  struct addrinfo hints = {.ai_family = strchr(host, ':') ? AF_INET6 : AF_INET,
                           .ai_socktype = SOCK_DGRAM};
  m->beat_resolve.data = m;
  int rc = uv_getaddrinfo(m->loop, &m->beat_resolve, on_beat_resolved, host,
                          port, &hints);
  if (rc != 0) {
    PS_WARN("beats_unusable", "scheduler=%s reason=\"%s\"", m->scheduler,
            uv_strerror(rc));
    return;
  }
  m->open_handles++;
}

static void send_done(ps_member_t *m) {
  Ps__Done done = PS__DONE__INIT;
  Ps__Envelope env;
  m->done_request_id = next_request_id(m);
  m->farewell_request_id = m->done_request_id;
  envelope_init(m, &env, m->done_request_id);
  env.body_case = PS__ENVELOPE__BODY_DONE;
  env.done = &done;
  m->sent_farewell = 1;
  send_env(m, &env);
}

static uint64_t silence_warn_ms(const ps_member_t *m) {
  uint64_t every = MEMBER_SILENCE_WARN_MS;
  if (m->scheduler_timeout_ms > 0 &&
      (uint64_t)m->scheduler_timeout_ms / 4 < every)
    every = (uint64_t)m->scheduler_timeout_ms / 4;
  if (every < (uint64_t)m->heartbeat_ms) every = (uint64_t)m->heartbeat_ms;
  if (every < 2 * PS_MEMBER_ACK_EVERY_MS) every = 2 * PS_MEMBER_ACK_EVERY_MS;
  return every;
}

/* Silence is measured from the last message of any kind: the scheduler acks
 * a heartbeat every PS_MEMBER_ACK_EVERY_MS, so a healthy scheduler is never
 * silent for long. */
static int check_silence(ps_member_t *m) {
  uint64_t now = ps_now_ms();
  uint64_t silent = now - m->last_heard_ms;
  uint64_t every = silence_warn_ms(m);
  if (silent >= every && now - m->last_warned_ms >= every &&
      (m->scheduler_timeout_ms <= 0 ||
       silent < (uint64_t)m->scheduler_timeout_ms)) {
    m->last_warned_ms = now;
    if (m->scheduler_timeout_ms > 0)
      PS_WARN("scheduler_silent",
              "scheduler=%s silent_ms=%" PRIu64
              " registered=%d "
              "give_up_in_ms=%" PRIu64,
              m->scheduler, silent, m->registered,
              (uint64_t)m->scheduler_timeout_ms - silent);
    else
      PS_WARN("scheduler_silent",
              "scheduler=%s silent_ms=%" PRIu64
              " registered=%d "
              "give_up_in_ms=never",
              m->scheduler, silent, m->registered);
  }
  if (m->scheduler_timeout_ms <= 0) return 0;
  if (silent < (uint64_t)m->scheduler_timeout_ms) return 0;
  char reason[160];
  snprintf(reason, sizeof(reason),
           "scheduler %s silent for %" PRIu64 " ms (timeout %d ms)",
           m->scheduler, silent, m->scheduler_timeout_ms);
  PS_ERROR("scheduler_lost", "scheduler=%s silent_ms=%" PRIu64, m->scheduler,
           silent);
  report_shutdown(m, PS_ERR_PEER, reason);
  return 1;
}

static void on_register_timer(uv_timer_t *t) {
  ps_member_t *m = t->data;
  if (m->registered || m->stopped) return;
  if (check_silence(m)) return;
  PS_DEBUG("register_retry", "scheduler=%s", m->scheduler);
  send_register(m);
}

static void on_heartbeat_timer(uv_timer_t *t) {
  ps_member_t *m = t->data;
  if (m->stopped) return;
  if (m->refused[0]) {
    report_shutdown(m, PS_ERR_PERMISSION_DENIED, m->refused);
    return;
  }
  if (check_silence(m)) return;
  /* Before registration the timer only watches for silence: there is no
   * node id to heartbeat with. */
  if (m->registered) send_heartbeat(m);
}

/* The scheduler's end of the link refused the handshake: nothing this node
 * sends will ever be read, so it says why at once instead of waiting for
 * its deadline in silence. */
static void on_handshake_failed(void *arg, int event, uint32_t value) {
  ps_member_t *m = arg;
  if (m->refused[0] || m->stopped) return;
  if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
    snprintf(m->refused, sizeof(m->refused),
             "the scheduler %s refused this node's CURVE key (ZAP status "
             "%u): its --keys-dir must hold this node's .pub",
             m->scheduler, value);
  else if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    snprintf(m->refused, sizeof(m->refused),
             "the scheduler %s speaks another security mechanism: one side "
             "runs with --keys-dir (CURVE), the other without (--insecure)",
             m->scheduler);
  else
    snprintf(
        m->refused, sizeof(m->refused),
        "the handshake with the scheduler %s failed (ZeroMQ protocol "
        "error 0x%x)%s",
        m->scheduler, value,
        m->keys ? ": is this node's scheduler.pub the scheduler's key?" : "");
  PS_ERROR("scheduler_handshake_refused", "scheduler=%s reason=\"%s\"",
           m->scheduler, m->refused);
}

static void handle_register_reply(ps_member_t *m, const Ps__Envelope *env) {
  const Ps__RegisterReply *rr = env->register_reply;
  /* Retries may be answered more than once; the first answer stands. */
  if (m->registered) return;
  m->registered = 1;
  m->node_id = rr->node_id;
  ps_log_set_node(rr->node_id);
  uv_timer_stop(&m->register_timer);
  PS_INFO("registered", "id=%u rank=%u num_workers=%u scheduler=%s",
          rr->node_id, rr->rank, rr->num_workers, m->scheduler);
  beats_start(m, rr);
  if (m->cbs.registered_cb)
    m->cbs.registered_cb(m, rr->node_id, rr->rank, rr->num_workers, m->cbs.arg);
}

static void handle_view(ps_member_t *m, const Ps__Envelope *env) {
  const Ps__View *pb = env->view;
  /* Views are resent on request and may cross: only a newer one counts. */
  if (pb->epoch <= m->epoch) return;
  if (pb->base_epoch != 0 &&
      (m->held == NULL || m->held->epoch != pb->base_epoch)) {
    /* A delta against a view this node never got (lost with a
     * connection): the heartbeats, still at m->epoch, get the whole view
     * from the scheduler. */
    PS_INFO("view_delta_skipped",
            "epoch=%" PRIu64 " base_epoch=%" PRIu64 " held_epoch=%" PRIu64,
            pb->epoch, pb->base_epoch, m->held ? m->held->epoch : 0);
    return;
  }
  char why[256];
  ps_view_t *view = ps_view_from_pb_base(pb, m->held, why, sizeof(why));
  if (view == NULL) {
    PS_WARN("view_refused", "epoch=%" PRIu64 " reason=\"%s\"", pb->epoch, why);
    return;
  }
  ps_view_t *held = ps_view_copy(view);
  if (held == NULL) {
    /* Without a base the next delta is skipped and the whole view comes
     * again: slower, never wrong. */
    PS_WARN("view_copy_failed", "epoch=%" PRIu64 " err=%s", view->epoch,
            ps_err_name(PS_ERR_NOMEM));
  }
  ps_view_destroy(&m->held);
  m->held = held;
  m->epoch = view->epoch;
  PS_INFO("view",
          "epoch=%" PRIu64
          " nodes=%zu ranges=%zu live_workers=%u "
          "base_epoch=%" PRIu64 " nodes_sent=%zu",
          view->epoch, view->nnodes, view->nranges, view->live_workers,
          pb->base_epoch, pb->n_nodes);
  if (m->cbs.view_cb)
    m->cbs.view_cb(m, view, m->cbs.arg);
  else
    ps_view_destroy(&view);
}

static void handle_error(ps_member_t *m, const Ps__Envelope *env) {
  const Ps__Error *e = env->error;
  const char *text = e->message ? e->message : "";
  if (!m->registered) {
    /* Only Register was sent, so this is its refusal. */
    PS_ERROR("register_refused", "err=%s reason=\"%s\"", ps_err_name(e->code),
             text);
    report_shutdown(m, e->code < 0 ? e->code : PS_ERR_REFUSED, text);
    return;
  }
  if (e->code == PS_ERR_STALE_EPOCH && m->done_request_id != 0 &&
      env->request_id == m->done_request_id) {
    /* Another worker's Done moved the view on while ours was in flight; the
     * new view came first on this socket, so resend at its epoch. */
    PS_INFO("done_resent", "epoch=%" PRIu64, m->epoch);
    send_done(m);
    return;
  }
  if (e->code == PS_ERR_FENCED) {
    /* Declared dead (paused, cut off, too slow): others hold this node's
     * ranges now, so anything it did under its old view would fork them. */
    PS_ERROR("fenced", "reason=\"%s\"", text);
    report_shutdown(m, PS_ERR_FENCED, text);
    return;
  }
  if (e->code == PS_ERR_REFUSED) {
    /* The scheduler no longer counts this node (it left, or the scheduler
     * does not know the id): going on would split the cluster. */
    PS_ERROR("membership_lost", "reason=\"%s\"", text);
    report_shutdown(m, PS_ERR_REFUSED, text);
    return;
  }
  PS_WARN("scheduler_error", "err=%s request_id=%" PRIu64 " reason=\"%s\"",
          ps_err_name(e->code), env->request_id, text);
}

static void on_message(ps_zsock_t *zs, ps_msg_t *msg, int status,
                       const char *reason, void *arg) {
  ps_member_t *m = arg;
  if (status != PS_OK) {
    PS_WARN("bad_message", "from=scheduler err=%s reason=\"%s\"",
            ps_err_name(status), reason);
    ps_msg_close(msg);
    return;
  }
  m->last_heard_ms = ps_now_ms();
  if (m->last_warned_ms != 0) {
    m->last_warned_ms = 0;
    PS_INFO("scheduler_back", "scheduler=%s", m->scheduler);
  }
  if (m->stopped || m->destroyed) {
    ps_msg_close(msg);
    return;
  }
  const Ps__Envelope *env = msg->env;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER_REPLY:
      handle_register_reply(m, env);
      break;
    case PS__ENVELOPE__BODY_VIEW:
      handle_view(m, env);
      break;
    case PS__ENVELOPE__BODY_ERROR:
      handle_error(m, env);
      break;
    case PS__ENVELOPE__BODY_SHUTDOWN:
      PS_INFO("shutdown_received", "reason=\"%s\"",
              env->shutdown->reason ? env->shutdown->reason : "");
      report_shutdown(m, PS_OK,
                      env->shutdown->reason ? env->shutdown->reason : "");
      break;
    case PS__ENVELOPE__BODY_ACK:
      /* Heartbeat acks say nothing more than that the scheduler is there. */
      if (m->sent_farewell && env->request_id == m->farewell_request_id)
        m->farewell_acked = 1;
      break;
    default:
      if (m->message_cb) {
        m->message_cb(m, env, m->message_arg);
        break;
      }
      PS_WARN("unexpected_message", "from=scheduler body=%s",
              ps_body_name(env->body_case));
      break;
  }
  ps_msg_close(msg);
}

static void free_member(ps_member_t *m) {
  ps_view_destroy(&m->held);
  free(m->scheduler);
  free(m->address);
  ps_model_clear(&m->model);
  free(m);
}

const ps_auth_token_t *ps_member_token(const ps_member_t *m) {
  return &m->token;
}

ps_member_t *ps_member_new(uv_loop_t *loop, void *zmq_ctx,
                           const ps_member_opts_t *opts,
                           const ps_member_cbs_t *cbs, int *err) {
  int dummy;
  if (err == NULL) err = &dummy;
  *err = PS_ERR_INVAL;
  if (opts->scheduler == NULL || opts->scheduler[0] == '\0') {
    PS_ERROR("member_failed", "reason=\"no scheduler endpoint\"");
    return NULL;
  }
  if (opts->role != PS__ROLE__ROLE_SERVER &&
      opts->role != PS__ROLE__ROLE_WORKER) {
    PS_ERROR("member_failed",
             "reason=\"role %d is neither server nor "
             "worker\"",
             opts->role);
    return NULL;
  }
  if (opts->role == PS__ROLE__ROLE_WORKER && opts->model == NULL) {
    PS_ERROR("member_failed", "reason=\"a worker must declare its model\"");
    return NULL;
  }
  if (opts->heartbeat_ms < 0) {
    PS_ERROR("member_failed", "reason=\"heartbeat_ms %d must be >= 0\"",
             opts->heartbeat_ms);
    return NULL;
  }
  ps_member_t *m = calloc(1, sizeof(*m));
  if (m == NULL) {
    *err = PS_ERR_NOMEM;
    return NULL;
  }
  m->loop = loop;
  m->cbs = *cbs;
  m->role = opts->role;
  m->rank = opts->rank;
  m->join = opts->join;
  m->heartbeat_ms =
      opts->heartbeat_ms ? opts->heartbeat_ms : PS_MEMBER_HEARTBEAT_MS;
  m->scheduler_timeout_ms = opts->scheduler_timeout_ms;
  m->keys = opts->keys;
  m->join_new_rank = opts->join_new_rank;
  m->scheduler = strdup(opts->scheduler);
  m->address = strdup(opts->address ? opts->address : "");
  if (m->scheduler == NULL || m->address == NULL) {
    *err = PS_ERR_NOMEM;
    free_member(m);
    return NULL;
  }
  if (opts->model) {
    /* A deep copy: the owner's model may go away before the member does. */
    if (ps_model_copy(&m->model, opts->model) != PS_OK) {
      *err = PS_ERR_NOMEM;
      free_member(m);
      return NULL;
    }
    m->has_model = 1;
  }

  char why[256];
  if (ps_auth_token_new(&m->token) != PS_OK) {
    *err = PS_ERR_IO;
    PS_ERROR("member_failed", "reason=\"getrandom failed: %s\"",
             strerror(errno));
    free_member(m);
    return NULL;
  }
  ps_zsock_opts_t zo = {
      .token = &m->token,
      .token_use = PS_AUTH_USE_MEMBER,
      .keys = opts->keys,
      .peer_key = opts->keys ? ps_keys_scheduler_key(opts->keys) : NULL};
  m->zs = ps_zsock_new(loop, zmq_ctx, ZMQ_DEALER, NULL, opts->scheduler, &zo,
                       on_message, m, err, why, sizeof(why));
  if (m->zs == NULL) {
    PS_ERROR("member_failed", "scheduler=%s reason=\"%s\"", opts->scheduler,
             why);
    free_member(m);
    return NULL;
  }
  /* Without it a refused handshake is silence until the deadline. */
  m->zs_mon =
      ps_sockmon_new_handshakes(loop, zmq_ctx, ps_zsock_socket(m->zs),
                                "scheduler", on_handshake_failed, m, NULL);
  uv_timer_init(loop, &m->register_timer);
  uv_timer_init(loop, &m->heartbeat_timer);
  m->register_timer.data = m;
  m->heartbeat_timer.data = m;
  m->open_handles = 2;
  m->last_heard_ms = ps_now_ms();
  send_register(m);
  uv_timer_start(&m->register_timer, on_register_timer,
                 MEMBER_REGISTER_RETRY_MS, MEMBER_REGISTER_RETRY_MS);
  uv_timer_start(&m->heartbeat_timer, on_heartbeat_timer,
                 (uint64_t)m->heartbeat_ms, (uint64_t)m->heartbeat_ms);
  PS_INFO("member_started", "scheduler=%s role=%s address=%s", opts->scheduler,
          opts->role == PS__ROLE__ROLE_SERVER ? "server" : "worker",
          m->address[0] ? m->address : "-");
  *err = PS_OK;
  return m;
}

void ps_member_set_clock(ps_member_t *m, uint64_t clock) {
  m->clock = clock;
}

int ps_member_set_metrics_address(ps_member_t *m, const char *address) {
  const char *a = address ? address : "";
  if (strlen(a) >= sizeof(m->metrics_address)) return PS_ERR_INVAL;
  if (strcmp(m->metrics_address, a) != 0) m->metrics_dirty = 1;
  snprintf(m->metrics_address, sizeof(m->metrics_address), "%s", a);
  return PS_OK;
}

void ps_member_keepalive(ps_member_t *m) {
  if (m == NULL || !m->registered || m->stopped || m->destroyed) return;
  if (ps_now_ms() - m->last_beat_ms >= (uint64_t)m->heartbeat_ms)
    send_heartbeat(m);
}

void ps_member_send_done(ps_member_t *m) {
  send_done(m);
}

void ps_member_send_leave(ps_member_t *m, const char *reason) {
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = (char *)(reason ? reason : "");
  Ps__Envelope env;
  m->farewell_request_id = next_request_id(m);
  envelope_init(m, &env, m->farewell_request_id);
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  m->sent_farewell = 1;
  send_env(m, &env);
}

void ps_member_set_message_cb(ps_member_t *m, ps_member_message_cb cb,
                              void *arg) {
  m->message_cb = cb;
  m->message_arg = arg;
}

int ps_member_send(ps_member_t *m, Ps__Envelope *env) {
  if (m->zs == NULL) return PS_ERR_SHUTDOWN;
  env->sender = m->node_id;
  env->epoch = m->epoch;
  if (env->request_id == 0) env->request_id = next_request_id(m);
  return ps_msg_send(ps_zsock_socket(m->zs), NULL, env, NULL, 0);
}

int ps_member_farewell_acked(const ps_member_t *m) {
  return m->farewell_acked;
}

uint32_t ps_member_node_id(const ps_member_t *m) {
  return m->node_id;
}

uint64_t ps_member_epoch(const ps_member_t *m) {
  return m->epoch;
}

static void on_close(uv_handle_t *h) {
  ps_member_t *m = h->data;
  if (--m->open_handles == 0) free_member(m);
}

void ps_member_destroy(ps_member_t **m_p) {
  ps_member_t *m = *m_p;
  if (m == NULL) return;
  *m_p = NULL;
  m->destroyed = 1;
  ps_sockmon_destroy(&m->zs_mon);
  if (m->zs) {
    if (m->sent_farewell) {
      int linger = MEMBER_LINGER_MS;
      zmq_setsockopt(ps_zsock_socket(m->zs), ZMQ_LINGER, &linger,
                     sizeof(linger));
    }
    ps_zsock_destroy(&m->zs);
  }
  uv_timer_stop(&m->register_timer);
  uv_timer_stop(&m->heartbeat_timer);
  uv_close((uv_handle_t *)&m->register_timer, on_close);
  uv_close((uv_handle_t *)&m->heartbeat_timer, on_close);
  if (m->beat_ready) {
    m->beat_ready = 0;
    uv_udp_recv_stop(&m->beat_udp);
    uv_close((uv_handle_t *)&m->beat_udp, on_close);
  }
  /* A resolve in flight ends in on_beat_resolved, which sees destroyed. */
}
