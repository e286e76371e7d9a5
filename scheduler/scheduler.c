#include "scheduler/scheduler.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/* ZeroMQ routing identities are at most 255 bytes. */
#define SCHED_ROUTE_MAX 256
#define SCHED_BARRIER_NAME_MAX 128
/* How long the Shutdown broadcast may take to leave once the socket is
 * closed; bounded so a stuck peer cannot keep the scheduler from exiting. */
#define SCHED_LINGER_MS 2000
#define SCHED_RANK_ANY 0xffffffffu
/* The state file: a framed SchedulerState (common/checkpoint.h). */
static const char SCHED_STATE_MAGIC[8] = {'P', 'S', 'S', 'C',
                                          'H', 'S', 'T', 'A'};
#define SCHED_STATE_VERSION 1
#define SCHED_CKPT_TIMEOUT_MS 120000
/* After a failed periodic checkpoint, the next waits this long, so a full
 * disk does not turn into a request storm. */
#define SCHED_CKPT_BACKOFF_MS 5000
/* psctl calls waiting for the checkpoint in progress. */
#define SCHED_CKPT_WAITERS 16
#define SCHED_REPLICATION_DEFAULT 2
/* A death is noticed at most this long after the timeout. */
#define SCHED_CHECK_MAX_MS 50
/* A worker joining a running BSP job starts this far ahead of the servers'
 * clocks (in time at their step rate, and at least in steps), so that the
 * view reaches every server before its step comes. */
#define SCHED_JOIN_MARGIN_MS 1000
#define SCHED_JOIN_MIN_STEPS 2
/* Servers that have not confirmed a join by then are asked again (a later
 * step): a reply lost with a restarted scheduler must not stall it. */
#define SCHED_JOIN_RETRY_MS 2000

typedef struct {
  uint32_t id;
  int role;  /* PS__ROLE__* */
  int state; /* PS__NODE_STATE__* */
  uint32_t rank;
  char address[PS_ADDR_MAX];
  /* The ROUTER identity of the node's membership link (from its Register
   * and heartbeats): where views and Shutdown go. A node may send requests
   * on other connections too (libps-client's barriers come from the caller's
   * thread), so replies always go back on the request's own route. */
  uint8_t route[SCHED_ROUTE_MAX];
  size_t route_len;
  uint64_t last_seen_ms;
  uint64_t clock;
  char *barrier; /* the barrier the worker waits in, or NULL */
  uint64_t barrier_request_id;
  uint8_t barrier_route[SCHED_ROUTE_MAX]; /* where its release goes */
  size_t barrier_route_len;
  uint64_t dead_epoch; /* the view epoch that declared it dead; 0: alive */
  int fence_logged;
  /* A worker joining a running BSP job: it contributes from join_clock on,
   * once every server holding a replica confirmed (JoinReply) that it is
   * not past that step; joining until then. */
  uint64_t join_clock;
  int joining;
  uint64_t join_started_ms; /* registration, for the log's duration */
  uint64_t join_asked_ms;   /* when the current join_clock went out */
  uint32_t *join_ok;        /* servers that confirmed join_clock */
  size_t njoin_ok;
} sched_node_t;

struct ps_sched_s {
  uv_loop_t *loop;
  ps_zsock_t *zs;
  uv_timer_t check_timer;
  uv_signal_t sigterm;
  uv_signal_t sigint;
  int open_handles; /* close callbacks still to run */
  int closing;
  int destroy_requested;
  int finished;
  ps_sched_opts_t opts;
  char endpoint[PS_ADDR_MAX];
  uint64_t start_ms;

  uint64_t epoch; /* 0 until the first view is published */
  int published;
  sched_node_t *nodes; /* node id i is nodes[i - 1]: ids are never reused */
  size_t nnodes, cap;

  int has_model;
  uint32_t model_node; /* the worker whose spec became the job's model; 0:
                          the checkpoint the job was restored from */
  ps_model_t model;
  ps_range_t *ranges;
  size_t nranges;
  uint32_t replication; /* copies per range: the option capped by servers */

  /* Checkpoints and restore (issue #4). */
  ps_coord_t *coord;
  char *ckpt_base;        /* --checkpoint-dir made absolute; NULL: none */
  uint64_t ckpt_last_ms;  /* when the last one ended (every_s counts from) */
  uint64_t ckpt_retry_ms; /* no periodic checkpoint before this */
  int has_last;
  Ps__CheckpointInfo last; /* the latest complete one; strings below */
  char last_dir[PS_CHECKPOINT_PATH_MAX];
  char last_reason[32];
  uint64_t last_done_ms; /* monotonic, for its age */
  struct {
    uint8_t route[SCHED_ROUTE_MAX];
    size_t route_len;
    uint64_t request_id;
  } waiters[SCHED_CKPT_WAITERS];
  size_t nwaiters;
  uint64_t start_clock; /* the step the job starts from */
  char *restore_dir;    /* the checkpoint the job was restored from */
  int ending;           /* the job is over; a checkpoint is being finished */
  char end_reason[256];
  char *state_file;
  int state_failed; /* the last save failed (logged once per failure run) */
  /* The servers' step rate, from their heartbeat clocks: how far ahead of
   * a step boundary a periodic checkpoint must be asked for. */
  uint64_t rate_clock, rate_ms;
  double steps_per_ms;
};

static const char *role_name(int role) {
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

static const char *state_name(int state) {
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

static const char *mode_name(int mode) {
  return mode == PS__CONSISTENCY_MODE__MODE_ASP ? "asp" : "bsp";
}

/* A log-friendly address: key=value lines have no empty values. */
static const char *addr_or_dash(const char *a) {
  return a[0] ? a : "-";
}

static void *sched_socket(ps_sched_t *s) {
  return s->zs ? ps_zsock_socket(s->zs) : NULL;
}

static sched_node_t *node_by_id(ps_sched_t *s, uint32_t id) {
  if (id == 0 || id > s->nnodes) return NULL;
  return &s->nodes[id - 1];
}

/* A node that is dead or left no longer holds its slot or its rank. */
static int node_holds_slot(const sched_node_t *n) {
  return n->state == PS__NODE_STATE__NODE_STATE_ALIVE ||
         n->state == PS__NODE_STATE__NODE_STATE_DONE;
}

static uint32_t count_nodes(const ps_sched_t *s, int role, int state) {
  uint32_t c = 0;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == role && s->nodes[i].state == state) c++;
  return c;
}

static uint32_t count_slots(const ps_sched_t *s, int role) {
  uint32_t c = 0;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == role && node_holds_slot(&s->nodes[i])) c++;
  return c;
}

static uint32_t live_workers(const ps_sched_t *s) {
  return count_nodes(s, PS__ROLE__ROLE_WORKER,
                     PS__NODE_STATE__NODE_STATE_ALIVE);
}

/* ---- sending -------------------------------------------------------- */

static void envelope_init(const ps_sched_t *s, Ps__Envelope *env,
                          uint64_t request_id) {
  ps__envelope__init(env);
  env->request_id = request_id;
  env->sender = 0; /* the scheduler is not a numbered node */
  env->epoch = s->epoch;
}

static void send_to_route(ps_sched_t *s, const uint8_t *id, size_t id_len,
                          uint32_t node_id, Ps__Envelope *env) {
  void *sock = sched_socket(s);
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

static void send_to_node(ps_sched_t *s, sched_node_t *n, Ps__Envelope *env) {
  send_to_route(s, n->route, n->route_len, n->id, env);
}

static void reply(ps_sched_t *s, ps_msg_t *m, Ps__Envelope *env) {
  void *sock = sched_socket(s);
  if (sock == NULL || !m->has_route) return;
  int rc = ps_msg_send(sock, &m->route, env, NULL, 0);
  if (rc != PS_OK)
    PS_DEBUG("send_failed", "body=%s err=%s zmq=\"%s\"",
             ps_body_name(env->body_case), ps_err_name(rc),
             zmq_strerror(zmq_errno()));
}

static void reply_error(ps_sched_t *s, ps_msg_t *m, int code, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

/* Every refusal is logged with the same text the peer receives, so the two
 * sides of a failed exchange can be matched up. */
static void reply_error(ps_sched_t *s, ps_msg_t *m, int code, const char *fmt,
                        ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  const Ps__Envelope *env = m->env;
  PS_WARN("request_refused", "body=%s sender=%u err=%s reason=\"%s\"",
          env ? ps_body_name(env->body_case) : "none", env ? env->sender : 0u,
          ps_err_name(code), text);
  void *sock = sched_socket(s);
  if (sock && m->has_route)
    ps_msg_reply_error(sock, m, s->epoch, 0, code, "%s", text);
}

static void reply_ack(ps_sched_t *s, ps_msg_t *m, uint64_t clock) {
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = clock;
  Ps__Envelope env;
  envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  reply(s, m, &env);
}

/* ---- the view on the wire ------------------------------------------- */

/* Ps__View that points into the scheduler's state plus the arrays it needs;
 * valid until the state changes, so build, send, free in one go. */
typedef struct {
  Ps__View view;
  Ps__NodeInfo *infos;
  Ps__NodeInfo **info_ptrs;
  Ps__KeyRange *krs;
  Ps__KeyRange **kr_ptrs;
  uint32_t *syncing; /* PS_MAX_REPLICAS - 1 per range */
  Ps__ModelSpec model;
  Ps__TensorSpec *tensors;
  Ps__TensorSpec **tensor_ptrs;
  Ps__SparseTableSpec *sparse;
  Ps__SparseTableSpec **sparse_ptrs;
} view_pb_t;

static void view_pb_free(view_pb_t *v) {
  free(v->infos);
  free(v->info_ptrs);
  free(v->krs);
  free(v->kr_ptrs);
  free(v->syncing);
  free(v->tensors);
  free(v->tensor_ptrs);
  free(v->sparse);
  free(v->sparse_ptrs);
  memset(v, 0, sizeof(*v));
}

static int view_pb_build(ps_sched_t *s, view_pb_t *v) {
  memset(v, 0, sizeof(*v));
  ps__view__init(&v->view);
  uint64_t now = ps_now_ms();
  v->view.epoch = s->epoch;
  v->view.mode = (Ps__ConsistencyMode)s->opts.mode;
  v->view.live_workers = live_workers(s);
  v->view.start_clock = s->start_clock;
  v->view.restore_dir = s->restore_dir ? s->restore_dir : "";
  v->view.replication = s->replication;

  /* calloc(0) may return NULL; one spare entry keeps NULL meaning failure. */
  v->infos = calloc(s->nnodes + 1, sizeof(*v->infos));
  v->info_ptrs = calloc(s->nnodes + 1, sizeof(*v->info_ptrs));
  v->krs = calloc(s->nranges + 1, sizeof(*v->krs));
  v->kr_ptrs = calloc(s->nranges + 1, sizeof(*v->kr_ptrs));
  v->syncing =
      calloc((s->nranges + 1) * (PS_MAX_REPLICAS - 1), sizeof(*v->syncing));
  size_t nt = s->has_model ? s->model.ntensors : 0;
  v->tensors = calloc(nt + 1, sizeof(*v->tensors));
  v->tensor_ptrs = calloc(nt + 1, sizeof(*v->tensor_ptrs));
  size_t nsp = s->has_model ? s->model.nsparse : 0;
  v->sparse = calloc(nsp + 1, sizeof(*v->sparse));
  v->sparse_ptrs = calloc(nsp + 1, sizeof(*v->sparse_ptrs));
  if (!v->infos || !v->info_ptrs || !v->krs || !v->kr_ptrs || !v->syncing ||
      !v->tensors || !v->tensor_ptrs || !v->sparse || !v->sparse_ptrs) {
    view_pb_free(v);
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    Ps__NodeInfo *ni = &v->infos[i];
    ps__node_info__init(ni);
    ni->id = n->id;
    ni->role = (Ps__Role)n->role;
    ni->address = n->address;
    ni->state = (Ps__NodeState)n->state;
    ni->last_heartbeat_ms = now > n->last_seen_ms ? now - n->last_seen_ms : 0;
    ni->clock = n->clock;
    ni->rank = n->role == PS__ROLE__ROLE_WORKER ? n->rank : 0;
    ni->join_clock = n->join_clock;
    ni->joining = n->joining;
    v->info_ptrs[i] = ni;
  }
  v->view.n_nodes = s->nnodes;
  v->view.nodes = v->info_ptrs;
  for (size_t i = 0; i < s->nranges; i++) {
    Ps__KeyRange *kr = &v->krs[i];
    ps__key_range__init(kr);
    kr->begin = s->ranges[i].begin;
    kr->end = s->ranges[i].end;
    kr->server_id = s->ranges[i].server_id;
    /* Points into the scheduler's range, like the rest of the view. */
    kr->backups = s->ranges[i].backups;
    kr->n_backups = s->ranges[i].nbackups;
    kr->syncing = &v->syncing[i * (PS_MAX_REPLICAS - 1)];
    for (uint32_t k = 0; k < s->ranges[i].nbackups; k++)
      if ((s->ranges[i].syncing_mask >> k) & 1u)
        kr->syncing[kr->n_syncing++] = s->ranges[i].backups[k];
    v->kr_ptrs[i] = kr;
  }
  v->view.n_ranges = s->nranges;
  v->view.ranges = v->kr_ptrs;
  if (s->has_model) {
    ps__model_spec__init(&v->model);
    ps_model_to_pb(&s->model, &v->model, v->tensors, v->tensor_ptrs);
    ps_model_sparse_to_pb(&s->model, &v->model, v->sparse, v->sparse_ptrs);
    v->view.model = &v->model;
  }
  return PS_OK;
}

static void send_view(ps_sched_t *s, sched_node_t *only) {
  view_pb_t v;
  if (view_pb_build(s, &v) != PS_OK) {
    PS_ERROR("view_send_failed", "epoch=%" PRIu64 " err=%s", s->epoch,
             ps_err_name(PS_ERR_NOMEM));
    return;
  }
  Ps__Envelope env;
  envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &v.view;
  if (only) {
    send_to_node(s, only, &env);
  } else {
    /* Dead and departed nodes are left out: nobody would read it. */
    for (size_t i = 0; i < s->nnodes; i++)
      if (node_holds_slot(&s->nodes[i])) send_to_node(s, &s->nodes[i], &env);
  }
  view_pb_free(&v);
}

/* ---- persistence (ARCHITECTURE "Failure semantics" 4) --------------- */

static uint64_t unix_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writes the state file, crash safe. Called after every change of what it
 * holds and before the change is announced (a view goes out only once it is
 * on disk), so a restarted scheduler never knows less than its nodes. The
 * file is small (the view); it is written on the loop because the order
 * matters more than the milliseconds. */
static void state_save(ps_sched_t *s) {
  if (s->state_file == NULL) return;
  uint64_t t0 = ps_now_ns();
  view_pb_t v;
  char err[1200];
  int rc = view_pb_build(s, &v);
  if (rc != PS_OK) {
    PS_ERROR("state_save_failed", "file=%s err=%s", s->state_file,
             ps_err_name(rc));
    s->state_failed = 1;
    return;
  }
  Ps__SchedulerState st = PS__SCHEDULER_STATE__INIT;
  st.format_version = SCHED_STATE_VERSION;
  st.view = &v.view;
  st.published = s->published;
  st.finished = s->finished;
  st.expected_servers = s->opts.servers;
  st.expected_workers = s->opts.workers;
  st.model_node = s->model_node;
  /* A checkpoint in progress may still take ids for its retries. */
  st.next_checkpoint_id =
      ps_coord_next_id(s->coord) +
      (ps_coord_active(s->coord) ? PS_COORD_MAX_ATTEMPTS : 0);
  Ps__CheckpointInfo last = s->last;
  last.dir = s->last_dir;
  last.reason = s->last_reason;
  last.age_ms = 0;
  if (s->has_last) st.last_checkpoint = &last;
  st.replication = s->opts.replication;
  uint64_t *dead = calloc(s->nnodes + 1, sizeof(*dead));
  if (dead) {
    for (size_t i = 0; i < s->nnodes; i++) dead[i] = s->nodes[i].dead_epoch;
    st.dead_epochs = dead;
    st.n_dead_epochs = s->nnodes;
  }
  size_t len = ps__scheduler_state__get_packed_size(&st);
  uint8_t *buf = dead ? malloc(len ? len : 1) : NULL;
  if (buf == NULL) {
    rc = PS_ERR_NOMEM;
    snprintf(err, sizeof(err), "out of memory");
  } else {
    ps__scheduler_state__pack(&st, buf);
    rc = ps_checkpoint_write_framed(s->state_file, SCHED_STATE_MAGIC,
                                    SCHED_STATE_VERSION, buf, len, err,
                                    sizeof(err));
  }
  free(buf);
  free(dead);
  view_pb_free(&v);
  if (rc != PS_OK) {
    /* The job goes on: losing the scheduler's memory of it is a risk for
     * later, stopping the job now would be a certain loss. */
    PS_ERROR("state_save_failed", "file=%s err=%s reason=\"%s\"", s->state_file,
             ps_err_name(rc), err);
    s->state_failed = 1;
    return;
  }
  if (s->state_failed)
    PS_INFO("state_save_recovered", "file=%s", s->state_file);
  s->state_failed = 0;
  PS_DEBUG("state_saved", "file=%s epoch=%" PRIu64 " bytes=%zu ms=%.2f",
           s->state_file, s->epoch, len, (double)(ps_now_ns() - t0) / 1e6);
}

/* Takes over the job in the state file. Returns 1 when a running job was
 * loaded, 0 when there is none (no file, or its job finished), or a
 * failure with err: a state file that cannot be read is not silently
 * replaced by a new job. */
static int state_load(ps_sched_t *s, char *err, size_t errlen) {
  uint8_t *body;
  size_t len;
  char why[1200];
  int rc = ps_checkpoint_read_framed(s->state_file, SCHED_STATE_MAGIC,
                                     SCHED_STATE_VERSION, &body, &len, why,
                                     sizeof(why));
  if (rc == PS_ERR_IO && errno == ENOENT) return 0;
  if (rc != PS_OK) {
    snprintf(err, errlen, "state file %s (move it away to start a new job)",
             why);
    return rc;
  }
  Ps__SchedulerState *st = ps__scheduler_state__unpack(NULL, len, body);
  free(body);
  if (st == NULL || st->view == NULL ||
      st->format_version != SCHED_STATE_VERSION) {
    snprintf(err, errlen, "state file %s: not a scheduler state of version %d",
             s->state_file, SCHED_STATE_VERSION);
    if (st) ps__scheduler_state__free_unpacked(st, NULL);
    return PS_ERR_FORMAT;
  }
  const Ps__View *pv = st->view;
  if (st->finished) {
    PS_INFO("state_job_finished",
            "file=%s epoch=%" PRIu64
            " hint=\"the previous job ended; starting a new one\"",
            s->state_file, pv->epoch);
    ps__scheduler_state__free_unpacked(st, NULL);
    return 0;
  }
  /* A state file of a job from before replication has none recorded. */
  uint32_t replication = st->replication ? st->replication : 1;
  if (st->expected_servers != s->opts.servers ||
      st->expected_workers != s->opts.workers ||
      (int)pv->mode != s->opts.mode || replication != s->opts.replication) {
    snprintf(err, errlen,
             "state file %s is of a job with --servers=%u --workers=%u "
             "--mode=%s --replication=%u; this scheduler was given "
             "--servers=%u --workers=%u --mode=%s --replication=%u",
             s->state_file, st->expected_servers, st->expected_workers,
             mode_name((int)pv->mode), replication, s->opts.servers,
             s->opts.workers, mode_name(s->opts.mode), s->opts.replication);
    rc = PS_ERR_CONFIG;
    goto out;
  }
  ps_view_t *valid = NULL;
  if (st->published) {
    /* The same checks a node makes: ranges tile the model, owners exist. */
    valid = ps_view_from_pb(pv, why, sizeof(why));
    if (valid == NULL) {
      snprintf(err, errlen, "state file %s: bad view: %s", s->state_file, why);
      rc = PS_ERR_FORMAT;
      goto out;
    }
  }
  s->nodes = calloc(pv->n_nodes + 8, sizeof(*s->nodes));
  s->cap = pv->n_nodes + 8;
  if (s->nodes == NULL) {
    ps_view_destroy(&valid);
    snprintf(err, errlen, "out of memory");
    rc = PS_ERR_NOMEM;
    goto out;
  }
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < pv->n_nodes; i++) {
    const Ps__NodeInfo *ni = pv->nodes[i];
    const char *addr = ni->address ? ni->address : "";
    /* Node id i is nodes[i - 1]: ids are dense and never reused. */
    if (ni->id != i + 1 || strlen(addr) >= PS_ADDR_MAX) {
      snprintf(err, errlen,
               "state file %s: node %zu has id %u or a bad address",
               s->state_file, i, ni->id);
      ps_view_destroy(&valid);
      rc = PS_ERR_FORMAT;
      goto out;
    }
    sched_node_t *n = &s->nodes[i];
    n->id = ni->id;
    n->role = ni->role;
    n->state = ni->state;
    n->rank = ni->rank;
    n->clock = ni->clock;
    n->join_clock = ni->join_clock;
    n->joining = ni->joining;
    /* The servers' confirmations died with the old scheduler: they are
     * asked again (a later step) after SCHED_JOIN_RETRY_MS. */
    n->join_started_ms = n->join_asked_ms = now;
    if (i < st->n_dead_epochs) n->dead_epoch = st->dead_epochs[i];
    snprintf(n->address, sizeof(n->address), "%s", addr);
    /* Routes are learned again from the first heartbeat; a node that does
     * not send one within the timeout is declared dead as usual. */
    n->last_seen_ms = now;
    s->nnodes = i + 1;
  }
  if (pv->model && pv->model->n_tensors > 0) {
    if (ps_model_from_pb(pv->model, &s->model, why, sizeof(why)) != PS_OK) {
      snprintf(err, errlen, "state file %s: bad model: %s", s->state_file, why);
      ps_view_destroy(&valid);
      rc = PS_ERR_FORMAT;
      goto out;
    }
    s->has_model = 1;
    s->model_node = st->model_node;
  }
  if (valid) {
    s->ranges = calloc(valid->nranges + 1, sizeof(*s->ranges));
    if (s->ranges == NULL) {
      ps_view_destroy(&valid);
      snprintf(err, errlen, "out of memory");
      rc = PS_ERR_NOMEM;
      goto out;
    }
    memcpy(s->ranges, valid->ranges, valid->nranges * sizeof(*s->ranges));
    s->nranges = valid->nranges;
    ps_view_destroy(&valid);
  }
  s->epoch = pv->epoch;
  if (pv->replication) s->replication = pv->replication;
  s->published = st->published;
  s->start_clock = pv->start_clock;
  if (pv->restore_dir && pv->restore_dir[0])
    s->restore_dir = strdup(pv->restore_dir);
  ps_coord_set_next_id(s->coord, st->next_checkpoint_id);
  if (st->last_checkpoint) {
    const Ps__CheckpointInfo *ci = st->last_checkpoint;
    s->has_last = 1;
    s->last = *ci;
    snprintf(s->last_dir, sizeof(s->last_dir), "%s", ci->dir ? ci->dir : "");
    snprintf(s->last_reason, sizeof(s->last_reason), "%s",
             ci->reason ? ci->reason : "");
    s->last.dir = s->last_dir;
    s->last.reason = s->last_reason;
    /* Its age carries on from the wall clock. */
    uint64_t wall = unix_now_ms();
    uint64_t age = wall > ci->created_unix_ms ? wall - ci->created_unix_ms : 0;
    s->last_done_ms = now > age ? now - age : 0;
  }
  PS_INFO("state_restored",
          "file=%s epoch=%" PRIu64
          " published=%d nodes=%zu start_clock=%" PRIu64
          " last_checkpoint_step=%" PRIu64 " last_checkpoint=%s",
          s->state_file, s->epoch, s->published, s->nnodes, s->start_clock,
          s->has_last ? s->last.step : 0,
          s->has_last && s->last_dir[0] ? s->last_dir : "-");
  rc = 1;
out:
  ps__scheduler_state__free_unpacked(st, NULL);
  return rc;
}

/* ---- shutdown ------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h);

static void sched_free(ps_sched_t *s) {
  for (size_t i = 0; i < s->nnodes; i++) {
    free(s->nodes[i].barrier);
    free(s->nodes[i].join_ok);
  }
  free(s->nodes);
  free(s->ranges);
  if (s->has_model) ps_model_clear(&s->model);
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

static void close_handles(ps_sched_t *s, int linger_ms) {
  if (s->closing) return;
  s->closing = 1;
  if (s->zs) {
    /* The socket was made with linger 0; what was just queued (the Shutdown
     * broadcast) must still leave while the context terminates. */
    zmq_setsockopt(ps_zsock_socket(s->zs), ZMQ_LINGER, &linger_ms,
                   sizeof(linger_ms));
    ps_zsock_destroy(&s->zs);
  }
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
  state_save(s);
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = (char *)reason;
  Ps__Envelope env;
  envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  /* Dead nodes too: "dead" may only mean slow or cut off, and such a node
   * should learn that the job is over if it can still hear us. */
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].state != PS__NODE_STATE__NODE_STATE_LEFT)
      send_to_node(s, &s->nodes[i], &env);
  close_handles(s, SCHED_LINGER_MS);
}

/* The job is over once no worker is left training and at least one
 * finished; a job whose workers all died stays up for the operator. */
static int check_job_finished(ps_sched_t *s) {
  if (!s->published || s->finished) return s->finished;
  uint32_t done =
      count_nodes(s, PS__ROLE__ROLE_WORKER, PS__NODE_STATE__NODE_STATE_DONE);
  if (live_workers(s) > 0 || done == 0) return 0;
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

/* ---- barriers ------------------------------------------------------- */

static void barrier_leave(sched_node_t *n) {
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
  PS_INFO("barrier_released", "name=%s workers=%u epoch=%" PRIu64, name, in,
          s->epoch);
  Ps__Ack ack = PS__ACK__INIT;
  Ps__Envelope env;
  envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->barrier == NULL || strcmp(n->barrier, name) != 0) continue;
    env.request_id = n->barrier_request_id;
    send_to_route(s, n->barrier_route, n->barrier_route_len, n->id, &env);
    barrier_leave(n);
  }
  return 1;
}

/* After a membership change a barrier may be complete without anyone new
 * entering it. */
static void barrier_check_all(ps_sched_t *s) {
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

/* ---- membership changes --------------------------------------------- */

static int range_primary_alive(const ps_sched_t *s, const ps_range_t *r) {
  return r->server_id >= 1 && r->server_id <= s->nnodes &&
         s->nodes[r->server_id - 1].state == PS__NODE_STATE__NODE_STATE_ALIVE;
}

static void publish(ps_sched_t *s, const char *why) {
  s->epoch++;
  uint32_t by_state[PS_PLACE_UNAVAILABLE + 1] = {0};
  for (size_t i = 0; i < s->nranges; i++) {
    const ps_range_t *r = &s->ranges[i];
    by_state[ps_place_state(range_primary_alive(s, r), r->nbackups,
                            ps_place_nsyncing(r), s->replication)]++;
  }
  PS_INFO(
      "view_published",
      "epoch=%" PRIu64 " servers=%u workers=%u live_workers=%u keys=%" PRIu64
      " mode=%s replication=%u ranges_ok=%u syncing=%u degraded=%u "
      "unavailable=%u why=%s",
      s->epoch,
      count_nodes(s, PS__ROLE__ROLE_SERVER, PS__NODE_STATE__NODE_STATE_ALIVE),
      count_slots(s, PS__ROLE__ROLE_WORKER), live_workers(s), s->model.total,
      mode_name(s->opts.mode), s->replication, by_state[PS_PLACE_OK],
      by_state[PS_PLACE_SYNCING], by_state[PS_PLACE_DEGRADED],
      by_state[PS_PLACE_UNAVAILABLE], why);
  state_save(s); /* on disk before any node hears of it */
  send_view(s, NULL);
}

static void ckpt_periodic(ps_sched_t *s, uint64_t now);

/* The first view: once every expected node is in, cut the key space, one
 * range per server in id order, each backed by the next servers in ring
 * order. */
static void maybe_publish_first(ps_sched_t *s) {
  if (s->published || !s->has_model) return;
  if (count_slots(s, PS__ROLE__ROLE_SERVER) != s->opts.servers ||
      count_slots(s, PS__ROLE__ROLE_WORKER) != s->opts.workers)
    return;
  uint32_t nserv = s->opts.servers;
  uint64_t *begins = calloc((size_t)nserv + 1, sizeof(*begins));
  /* servers >= 1 is checked at start; the spare entry only keeps static
   * analysis from seeing a zero-size calloc. */
  ps_range_t *ranges = calloc((size_t)nserv + 1, sizeof(*ranges));
  int rc = begins && ranges ? ps_range_split(s->model.total, nserv, begins)
                            : PS_ERR_NOMEM;
  if (rc != PS_OK) {
    /* Retried on the next registration change; nothing else can be done. */
    PS_ERROR("range_split_failed", "servers=%u keys=%" PRIu64 " err=%s", nserv,
             s->model.total, ps_err_name(rc));
    free(begins);
    free(ranges);
    return;
  }
  uint32_t *ids = calloc((size_t)nserv + 1, sizeof(*ids));
  if (ids == NULL) {
    PS_ERROR("range_split_failed", "servers=%u err=%s", nserv,
             ps_err_name(PS_ERR_NOMEM));
    free(begins);
    free(ranges);
    return;
  }
  uint32_t r = 0;
  for (size_t i = 0; i < s->nnodes && r < nserv; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->role != PS__ROLE__ROLE_SERVER || !node_holds_slot(n)) continue;
    ranges[r].begin = begins[r];
    ranges[r].end = begins[r + 1];
    ids[r++] = n->id;
  }
  ps_place_first(ranges, nserv, ids, nserv, s->replication);
  free(ids);
  free(begins);
  s->ranges = ranges;
  s->nranges = nserv;
  s->published = 1;
  publish(s, "all_registered");
  barrier_check_all(s);
  /* A periodic checkpoint's first step may come within a heartbeat. */
  s->ckpt_last_ms = ps_now_ms();
  ckpt_periodic(s, s->ckpt_last_ms);
}

/* ---- replication, failover, joins (issue #4) ------------------------ */

static const sched_node_t *node_by_id_const(const ps_sched_t *s, uint32_t id) {
  if (id == 0 || id > s->nnodes) return NULL;
  return &s->nodes[id - 1];
}

static int server_alive(const ps_sched_t *s, uint32_t id) {
  const sched_node_t *n = node_by_id_const(s, id);
  return n != NULL && n->role == PS__ROLE__ROLE_SERVER &&
         n->state == PS__NODE_STATE__NODE_STATE_ALIVE;
}

/* 1 if server id is the primary or a backup of some range. */
static int holds_replica(const ps_sched_t *s, uint32_t id) {
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].server_id == id || ps_range_has_backup(&s->ranges[i], id))
      return 1;
  return 0;
}

static uint64_t silent_ms(const sched_node_t *n, uint64_t now) {
  return n != NULL && now > n->last_seen_ms ? now - n->last_seen_ms : 0;
}

/* Logs what changed in one range's chain: before -> r, published as
 * epoch. A primary that just died is one whose dead_epoch is epoch. */
static void log_chain_change(const ps_sched_t *s, const ps_range_t *before,
                             const ps_range_t *r, uint64_t epoch,
                             uint64_t now) {
  unsigned long long b = (unsigned long long)r->begin;
  unsigned long long e = (unsigned long long)r->end;
  const sched_node_t *old = node_by_id_const(s, before->server_id);
  if (r->server_id != before->server_id) {
    PS_WARN("failover",
            "range=[%llu,%llu) old=%u new=%u silent_ms=%" PRIu64
            " backups=%u syncing=%u epoch=%" PRIu64,
            b, e, before->server_id, r->server_id, silent_ms(old, now),
            r->nbackups, ps_place_nsyncing(r), epoch);
  } else if (!server_alive(s, r->server_id) && old != NULL &&
             old->dead_epoch == epoch) {
    PS_ERROR("range_unavailable",
             "range=[%llu,%llu) primary=%u silent_ms=%" PRIu64 " epoch=%" PRIu64
             " reason=\"no live synced replica is left; requests for these "
             "keys fail with PS_ERR_UNAVAILABLE\"",
             b, e, r->server_id, silent_ms(old, now), epoch);
  }
  for (uint32_t k = 0; k < before->nbackups; k++) {
    uint32_t id = before->backups[k];
    if (id != r->server_id && !ps_range_has_backup(r, id))
      PS_INFO("replica_dropped",
              "range=[%llu,%llu) backup=%u primary=%u epoch=%" PRIu64, b, e, id,
              r->server_id, epoch);
  }
  for (uint32_t k = 0; k < r->nbackups; k++) {
    uint32_t id = r->backups[k];
    if (!ps_range_has_backup(before, id) && id != before->server_id)
      PS_INFO("replica_assigned",
              "range=[%llu,%llu) backup=%u primary=%u syncing=%d "
              "epoch=%" PRIu64,
              b, e, id, r->server_id, (int)((r->syncing_mask >> k) & 1u),
              epoch);
  }
}

/* Re-places the ranges after servers died or joined (scheduler/placement.h)
 * and logs every change for the view about to go out as epoch. Returns 1 if
 * a range changed. */
static int replan(ps_sched_t *s, uint64_t epoch) {
  if (s->nranges == 0) return 0;
  ps_place_server_t *servers = calloc(s->nnodes + 1, sizeof(*servers));
  ps_range_t *before = calloc(s->nranges, sizeof(*before));
  if (servers == NULL || before == NULL) {
    /* The ranges stay as they were: clients time out on a dead primary
     * until the next change tries again. */
    PS_ERROR("replan_failed", "err=%s", ps_err_name(PS_ERR_NOMEM));
    free(servers);
    free(before);
    return 0;
  }
  size_t n = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *nd = &s->nodes[i];
    if (nd->role != PS__ROLE__ROLE_SERVER) continue;
    servers[n].id = nd->id;
    servers[n].alive = nd->state == PS__NODE_STATE__NODE_STATE_ALIVE;
    n++;
  }
  memcpy(before, s->ranges, s->nranges * sizeof(*before));
  size_t changed =
      ps_place_repair(s->ranges, s->nranges, servers, n, s->replication);
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < s->nranges; i++)
    log_chain_change(s, &before[i], &s->ranges[i], epoch, now);
  free(servers);
  free(before);
  return changed > 0;
}

/* Tells node n, declared dead, that it is out: on the route of message m,
 * or unprompted on its membership link (m NULL). An Error, not a Shutdown,
 * because only an Error carries a code: ps_member reports it to its owner
 * as PS_ERR_FENCED, and a server exits non-zero (a supervisor restarts it
 * clean and it registers as a new node). */
static void fence(ps_sched_t *s, sched_node_t *n, ps_msg_t *m) {
  char reason[96];
  snprintf(reason, sizeof(reason), "fenced: declared dead at epoch %" PRIu64,
           n->dead_epoch);
  if (m != NULL && !n->fence_logged) {
    /* Once per node: it may speak a few more times before it exits. */
    n->fence_logged = 1;
    PS_WARN("node_fenced",
            "id=%u role=%s address=%s dead_epoch=%" PRIu64 " epoch=%" PRIu64
            " body=%s",
            n->id, role_name(n->role), addr_or_dash(n->address), n->dead_epoch,
            s->epoch, ps_body_name(m->env->body_case));
  }
  Ps__Error e = PS__ERROR__INIT;
  e.code = PS_ERR_FENCED;
  e.message = reason;
  Ps__Envelope env;
  envelope_init(s, &env, m ? m->request_id : 0);
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  if (m != NULL)
    reply(s, m, &env);
  else
    send_to_node(s, n, &env);
}

static void join_forget(sched_node_t *w) {
  free(w->join_ok);
  w->join_ok = NULL;
  w->njoin_ok = 0;
}

/* The step a joining worker starts at: past the furthest clock the servers
 * reported (or floor, a clock a server just told of) by a margin of about
 * SCHED_JOIN_MARGIN_MS of steps at their measured rate. With no other live
 * worker the clock stands still: it joins at the servers' clock, so no
 * step goes without a worker (the servers skip steps no one computes). */
static void join_pick(ps_sched_t *s, sched_node_t *w, uint64_t floor) {
  uint64_t base = s->start_clock > floor ? s->start_clock : floor;
  int others = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    if (n->role == PS__ROLE__ROLE_WORKER && n != w) others = 1;
    if (n->role == PS__ROLE__ROLE_SERVER && n->clock > base) base = n->clock;
  }
  uint64_t margin = (uint64_t)(s->steps_per_ms * SCHED_JOIN_MARGIN_MS) + 1;
  if (margin < SCHED_JOIN_MIN_STEPS) margin = SCHED_JOIN_MIN_STEPS;
  if (!others) margin = 0;
  w->join_clock = base + margin;
  w->join_asked_ms = ps_now_ms();
  join_forget(w);
}

/* 1 once every alive server that holds a replica confirmed w's step. */
static int join_confirmed(const ps_sched_t *s, const sched_node_t *w) {
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->role != PS__ROLE__ROLE_SERVER ||
        n->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        !holds_replica(s, n->id))
      continue;
    int ok = 0;
    for (size_t k = 0; k < w->njoin_ok && !ok; k++) ok = w->join_ok[k] == n->id;
    if (!ok) return 0;
  }
  return 1;
}

/* Ends every join the servers confirmed (one that was waiting on a server
 * that died may be complete now). Returns how many ended; the caller
 * publishes. */
static int join_check_all(ps_sched_t *s) {
  int ended = 0;
  uint64_t now = ps_now_ms();
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *w = &s->nodes[i];
    if (!w->joining || w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        !join_confirmed(s, w))
      continue;
    w->joining = 0;
    join_forget(w);
    ended++;
    PS_INFO(
        "worker_joined",
        "id=%u rank=%u join_clock=%" PRIu64 " ms=%" PRIu64 " epoch=%" PRIu64,
        w->id, w->rank, w->join_clock, now - w->join_started_ms, s->epoch + 1);
  }
  return ended;
}

/* Joins the servers left unanswered for SCHED_JOIN_RETRY_MS get a later
 * step. Returns how many; the caller publishes. */
static int join_retry_due(ps_sched_t *s, uint64_t now) {
  int retried = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *w = &s->nodes[i];
    if (!w->joining || w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
        now - w->join_asked_ms < SCHED_JOIN_RETRY_MS)
      continue;
    uint64_t old = w->join_clock;
    size_t confirmed = w->njoin_ok;
    join_pick(s, w, 0);
    retried++;
    PS_WARN("join_retry",
            "id=%u rank=%u old_join_clock=%" PRIu64 " join_clock=%" PRIu64
            " confirmed=%zu reason=\"not every server answered within %d ms\"",
            w->id, w->rank, old, w->join_clock, confirmed, SCHED_JOIN_RETRY_MS);
  }
  return retried;
}

/* A node registered while the job runs. A server is a spare: it takes the
 * backups ranges lack. A worker took a dead one's slot: in BSP it joins at
 * a step ahead of the servers (joining until they confirm), in ASP at
 * once. Publishes the view with it. */
static void node_joined(ps_sched_t *s, sched_node_t *n) {
  if (n->role == PS__ROLE__ROLE_SERVER) {
    int assigned = replan(s, s->epoch + 1);
    PS_INFO("spare_joined", "id=%u address=%s assigned=%d epoch=%" PRIu64,
            n->id, addr_or_dash(n->address), assigned, s->epoch + 1);
    publish(s, "server_joined");
    return;
  }
  n->join_started_ms = ps_now_ms();
  if (s->opts.mode == PS__CONSISTENCY_MODE__MODE_BSP) {
    join_pick(s, n, 0);
    n->joining = !join_confirmed(s, n);
  }
  PS_INFO("worker_joining",
          "id=%u rank=%u join_clock=%" PRIu64
          " joining=%d steps_per_s=%.1f "
          "epoch=%" PRIu64,
          n->id, n->rank, n->join_clock, n->joining, s->steps_per_ms * 1e3,
          s->epoch + 1);
  publish(s, n->joining ? "worker_joining" : "worker_joined");
}

/* Node n missed heartbeats for silent ms. */
static void declare_dead(ps_sched_t *s, sched_node_t *n, uint64_t silent) {
  n->state = PS__NODE_STATE__NODE_STATE_DEAD;
  /* The view that says so is the next one (none before the first). */
  n->dead_epoch = s->published ? s->epoch + 1 : s->epoch;
  barrier_leave(n);
  n->joining = 0;
  join_forget(n);
  PS_WARN("node_dead",
          "id=%u role=%s address=%s silent_ms=%" PRIu64 " epoch=%" PRIu64,
          n->id, role_name(n->role), addr_or_dash(n->address), silent,
          n->dead_epoch);
  /* A node that is only paused or cut off hears it first thing when it
   * comes back, before it can act on its old view for long. */
  fence(s, n, NULL);
  if (n->role == PS__ROLE__ROLE_SERVER) ps_coord_server_lost(s->coord, n->id);
}

/* ---- request handlers ----------------------------------------------- */

/* Says how b differs from the job's model a, for the refusal. */
static void model_diff(const ps_model_t *a, const ps_model_t *b, char *out,
                       size_t len) {
  if (a->ntensors != b->ntensors) {
    snprintf(out, len, "%zu tensors, the job's model has %zu", b->ntensors,
             a->ntensors);
    return;
  }
  for (size_t i = 0; i < a->ntensors; i++) {
    const ps_tensor_spec_t *x = &a->tensors[i], *y = &b->tensors[i];
    if (strcmp(x->name, y->name) != 0 || x->length != y->length ||
        x->offset != y->offset) {
      snprintf(out, len,
               "tensor %zu is \"%s\" of %" PRIu64 " keys at %" PRIu64
               ", the job's is \"%s\" of %" PRIu64 " keys at %" PRIu64,
               i, y->name, y->length, y->offset, x->name, x->length, x->offset);
      return;
    }
    if (x->init != y->init || x->init_scale != y->init_scale) {
      snprintf(out, len,
               "tensor \"%s\" init %d scale %g, the job's is init %d scale %g",
               y->name, y->init, (double)y->init_scale, x->init,
               (double)x->init_scale);
      return;
    }
  }
  if (a->optimizer != b->optimizer)
    snprintf(out, len, "optimizer %d, the job's is %d", b->optimizer,
             a->optimizer);
  else if (a->learning_rate != b->learning_rate)
    snprintf(out, len, "learning_rate %g, the job's is %g",
             (double)b->learning_rate, (double)a->learning_rate);
  else if (a->momentum != b->momentum)
    snprintf(out, len, "momentum %g, the job's is %g", (double)b->momentum,
             (double)a->momentum);
  else if (a->seed != b->seed)
    snprintf(out, len, "seed %" PRIu64 ", the job's is %" PRIu64, b->seed,
             a->seed);
  else
    snprintf(out, len, "the model specs differ");
}

/* Where the job's model came from, for a refusal. */
static const char *model_source(const ps_sched_t *s, char *buf, size_t len) {
  if (s->model_node == 0 && s->restore_dir)
    snprintf(buf, len, "from checkpoint %s", s->restore_dir);
  else
    snprintf(buf, len, "declared by node %u", s->model_node);
  return buf;
}

static int route_equal(const sched_node_t *n, ps_msg_t *m) {
  return m->has_route && zmq_msg_size(&m->route) == n->route_len &&
         memcmp(zmq_msg_data(&m->route), n->route, n->route_len) == 0;
}

static void node_touch(sched_node_t *n, ps_msg_t *m, int membership_link) {
  n->last_seen_ms = ps_now_ms();
  if (!membership_link || !m->has_route) return;
  size_t len = zmq_msg_size(&m->route);
  if (len == 0 || len > sizeof(n->route)) return;
  memcpy(n->route, zmq_msg_data(&m->route), len);
  n->route_len = len;
}

static void reply_registered(ps_sched_t *s, ps_msg_t *m,
                             const sched_node_t *n) {
  Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
  rr.node_id = n->id;
  rr.rank = n->role == PS__ROLE__ROLE_WORKER ? n->rank : 0;
  rr.num_workers = s->opts.workers;
  Ps__Envelope env;
  envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_REGISTER_REPLY;
  env.register_reply = &rr;
  reply(s, m, &env);
}

static int rank_taken(const ps_sched_t *s, uint32_t rank) {
  for (size_t i = 0; i < s->nnodes; i++) {
    const sched_node_t *n = &s->nodes[i];
    if (n->role == PS__ROLE__ROLE_WORKER && node_holds_slot(n) &&
        n->rank == rank)
      return 1;
  }
  return 0;
}

static void handle_register(ps_sched_t *s, ps_msg_t *m) {
  const Ps__Register *r = m->env->register_;
  int role = r->role;
  const char *addr = r->address ? r->address : "";
  if (role != PS__ROLE__ROLE_SERVER && role != PS__ROLE__ROLE_WORKER) {
    reply_error(s, m, PS_ERR_INVAL,
                "only servers and workers register, not role %d (%s)", role,
                role_name(role));
    return;
  }
  if (strlen(addr) >= PS_ADDR_MAX) {
    reply_error(s, m, PS_ERR_INVAL, "address of %zu bytes, the limit is %d",
                strlen(addr), PS_ADDR_MAX - 1);
    return;
  }
  /* A node retries Register until it hears back, so the same connection
   * may ask twice: answer with what it already got. */
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (node_holds_slot(n) && n->role == role && route_equal(n, m) &&
        strcmp(n->address, addr) == 0) {
      node_touch(n, m, 1);
      reply_registered(s, m, n);
      return;
    }
  }
  /* A worker whose model is not the job's is told so first: that is the
   * mistake to fix, whatever else is wrong with its registration. */
  if (role == PS__ROLE__ROLE_WORKER && s->has_model && r->model != NULL) {
    ps_model_t declared;
    char why[256];
    memset(&declared, 0, sizeof(declared));
    if (ps_model_from_pb(r->model, &declared, why, sizeof(why)) != PS_OK) {
      reply_error(s, m, PS_ERR_INVAL, "bad model spec: %s", why);
      return;
    }
    char src[PS_CHECKPOINT_PATH_MAX + 32];
    int same = ps_model_equal(&s->model, &declared);
    if (!same) {
      model_diff(&s->model, &declared, why, sizeof(why));
      reply_error(s, m, PS_ERR_REFUSED, "model differs from the job's (%s): %s",
                  model_source(s, src, sizeof(src)), why);
    }
    ps_model_clear(&declared);
    if (!same) return;
  }
  if (s->ending) {
    reply_error(s, m, PS_ERR_SHUTDOWN, "the job is over (%s)", s->end_reason);
    return;
  }
  if (role == PS__ROLE__ROLE_SERVER && addr[0] == '\0') {
    reply_error(s, m, PS_ERR_INVAL,
                "a server must advertise the address it serves on");
    return;
  }
  if (addr[0] != '\0') {
    for (size_t i = 0; i < s->nnodes; i++) {
      sched_node_t *n = &s->nodes[i];
      if (node_holds_slot(n) && n->role == role &&
          strcmp(n->address, addr) == 0) {
        reply_error(s, m, PS_ERR_REFUSED,
                    "%s address %s is already registered as node %u; a "
                    "restarted node may register once the old one is "
                    "declared dead",
                    role_name(role), addr, n->id);
        return;
      }
    }
  }
  /* While the job runs, a dead node's slot (and a worker's rank) is free
   * for its replacement. */
  uint32_t expected =
      role == PS__ROLE__ROLE_SERVER ? s->opts.servers : s->opts.workers;
  if (count_slots(s, role) >= expected) {
    reply_error(s, m, PS_ERR_REFUSED,
                "all %u expected %ss are registered and %s (--%ss=%u)",
                expected, role_name(role),
                role == PS__ROLE__ROLE_SERVER ? "alive" : "alive or done",
                role_name(role), expected);
    return;
  }

  ps_model_t model;
  memset(&model, 0, sizeof(model));
  uint32_t rank = 0;
  if (role == PS__ROLE__ROLE_WORKER) {
    char why[256];
    if (r->model == NULL) {
      reply_error(s, m, PS_ERR_INVAL, "a worker must declare its model");
      return;
    }
    if (ps_model_from_pb(r->model, &model, why, sizeof(why)) != PS_OK) {
      reply_error(s, m, PS_ERR_INVAL, "bad model spec: %s", why);
      return;
    }
    if (s->has_model && !ps_model_equal(&s->model, &model)) {
      char src[PS_CHECKPOINT_PATH_MAX + 32];
      model_diff(&s->model, &model, why, sizeof(why));
      reply_error(s, m, PS_ERR_REFUSED, "model differs from the job's (%s): %s",
                  model_source(s, src, sizeof(src)), why);
      ps_model_clear(&model);
      return;
    }
    if (r->rank != SCHED_RANK_ANY && r->rank < s->opts.workers &&
        !rank_taken(s, r->rank)) {
      rank = r->rank;
    } else {
      /* The slot count above guarantees a free rank. */
      while (rank < s->opts.workers && rank_taken(s, rank)) rank++;
      if (r->rank != SCHED_RANK_ANY)
        PS_INFO("rank_reassigned", "requested=%u assigned=%u", r->rank, rank);
    }
  }

  if (s->nnodes == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    sched_node_t *nodes = realloc(s->nodes, cap * sizeof(*nodes));
    if (nodes == NULL) {
      ps_model_clear(&model);
      reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
      return;
    }
    s->nodes = nodes;
    s->cap = cap;
  }
  sched_node_t *n = &s->nodes[s->nnodes];
  memset(n, 0, sizeof(*n));
  n->id = (uint32_t)++s->nnodes;
  n->role = role;
  n->state = PS__NODE_STATE__NODE_STATE_ALIVE;
  n->rank = rank;
  snprintf(n->address, sizeof(n->address), "%s", addr);
  node_touch(n, m, 1);
  if (role == PS__ROLE__ROLE_WORKER) {
    if (s->has_model) {
      ps_model_clear(&model);
    } else {
      s->model = model; /* takes the tensors */
      s->has_model = 1;
      s->model_node = n->id;
    }
  }
  PS_INFO("node_registered",
          "id=%u role=%s address=%s rank=%u servers=%u/%u "
          "workers=%u/%u running=%d",
          n->id, role_name(role), addr_or_dash(n->address), rank,
          count_slots(s, PS__ROLE__ROLE_SERVER), s->opts.servers,
          count_slots(s, PS__ROLE__ROLE_WORKER), s->opts.workers, s->published);
  state_save(s);
  reply_registered(s, m, n);
  if (s->published)
    node_joined(s, n);
  else
    maybe_publish_first(s);
}

/* The node a message claims to come from, with its last-seen time (and, for
 * messages of its membership link, its route) refreshed; NULL (and an Error
 * sent) if there is no such node or it was declared dead (fenced). */
static sched_node_t *sender_node(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = node_by_id(s, m->env->sender);
  if (n == NULL) {
    reply_error(s, m, PS_ERR_REFUSED, "unknown node id %u: register first",
                m->env->sender);
    return NULL;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    /* The cluster moved on without it: its ranges have new primaries. */
    fence(s, n, m);
    return NULL;
  }
  node_touch(n, m,
             m->env->body_case == PS__ENVELOPE__BODY_HEARTBEAT ||
                 m->env->body_case == PS__ENVELOPE__BODY_REGISTER);
  return n;
}

static int epoch_current(ps_sched_t *s, ps_msg_t *m) {
  uint64_t e = m->env->epoch;
  if (e == 0 || e == s->epoch) return 1;
  reply_error(s, m, PS_ERR_STALE_EPOCH,
              "%s at epoch %" PRIu64 ", the current view is epoch %" PRIu64,
              ps_body_name(m->env->body_case), e, s->epoch);
  return 0;
}

static int require_state(ps_sched_t *s, ps_msg_t *m, sched_node_t *n,
                         int role) {
  if (n->role != role) {
    reply_error(s, m, PS_ERR_REFUSED, "%s from node %u, a %s: only %ss send it",
                ps_body_name(m->env->body_case), n->id, role_name(n->role),
                role_name(role));
    return 0;
  }
  if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
    reply_error(s, m, PS_ERR_REFUSED, "%s from node %u, which is %s",
                ps_body_name(m->env->body_case), n->id, state_name(n->state));
    return 0;
  }
  return 1;
}

static void handle_heartbeat(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = sender_node(s, m);
  if (n == NULL) return;
  if (!node_holds_slot(n)) {
    /* A node that left (dead ones are fenced above) is done with. */
    reply_error(s, m, PS_ERR_REFUSED,
                "node %u is %s; restart it to join a new job", n->id,
                state_name(n->state));
    return;
  }
  n->clock = m->env->heartbeat->clock;
  if (m->env->epoch > s->epoch) {
    reply_error(s, m, PS_ERR_STALE_EPOCH,
                "heartbeat at epoch %" PRIu64
                " is ahead of the scheduler's epoch %" PRIu64,
                m->env->epoch, s->epoch);
    return;
  }
  /* The Ack is how the node knows the scheduler is still there. */
  reply_ack(s, m, n->clock);
  if (s->published && m->env->epoch < s->epoch) send_view(s, n);
}

static void handle_barrier(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = sender_node(s, m);
  if (n == NULL || !epoch_current(s, m) ||
      !require_state(s, m, n, PS__ROLE__ROLE_WORKER))
    return;
  const char *name = m->env->barrier->name ? m->env->barrier->name : "";
  size_t len = strlen(name);
  if (len == 0 || len > SCHED_BARRIER_NAME_MAX) {
    reply_error(s, m, PS_ERR_INVAL,
                "barrier name of %zu bytes, expected 1 to %d", len,
                SCHED_BARRIER_NAME_MAX);
    return;
  }
  char *copy = strdup(name);
  if (copy == NULL) {
    reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
    return;
  }
  barrier_leave(n); /* a worker waits in one barrier at a time */
  n->barrier = copy;
  n->barrier_request_id = m->request_id;
  n->barrier_route_len = 0;
  if (m->has_route && zmq_msg_size(&m->route) <= sizeof(n->barrier_route)) {
    n->barrier_route_len = zmq_msg_size(&m->route);
    memcpy(n->barrier_route, zmq_msg_data(&m->route), n->barrier_route_len);
  }
  PS_DEBUG("barrier_enter", "id=%u name=%s", n->id, name);
  barrier_check(s, copy);
}

static void handle_done(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = sender_node(s, m);
  if (n == NULL || !epoch_current(s, m)) return;
  if (n->role == PS__ROLE__ROLE_WORKER &&
      n->state == PS__NODE_STATE__NODE_STATE_DONE) {
    reply_ack(s, m, n->clock); /* a resent Done */
    return;
  }
  if (!require_state(s, m, n, PS__ROLE__ROLE_WORKER)) return;
  if (!s->published) {
    reply_error(s, m, PS_ERR_NOT_READY,
                "done before the job started: the view is not published");
    return;
  }
  n->state = PS__NODE_STATE__NODE_STATE_DONE;
  barrier_leave(n);
  PS_INFO("worker_done", "id=%u rank=%u clock=%" PRIu64 " live_workers=%u",
          n->id, n->rank, n->clock, live_workers(s));
  reply_ack(s, m, n->clock);
  if (check_job_finished(s)) return;
  publish(s, "worker_done");
  barrier_check_all(s);
}

static void handle_leave(ps_sched_t *s, ps_msg_t *m) {
  sched_node_t *n = sender_node(s, m);
  if (n == NULL) return;
  const char *why = m->env->shutdown->reason ? m->env->shutdown->reason : "";
  n->state = PS__NODE_STATE__NODE_STATE_LEFT;
  barrier_leave(n);
  PS_INFO("node_left", "id=%u role=%s address=%s reason=\"%s\"", n->id,
          role_name(n->role), addr_or_dash(n->address), why);
  char reason[512];
  snprintf(reason, sizeof(reason), "node %u left: %s", n->id,
           why[0] ? why : "no reason given");
  ps_sched_stop(s, reason);
}

static void handle_status(ps_sched_t *s, ps_msg_t *m) {
  if (!epoch_current(s, m)) return;
  view_pb_t v;
  if (view_pb_build(s, &v) != PS_OK) {
    reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
    return;
  }
  Ps__Status st = PS__STATUS__INIT;
  st.view = &v.view;
  st.uptime_ms = ps_now_ms() - s->start_ms;
  st.expected_servers = s->opts.servers;
  st.expected_workers = s->opts.workers;
  uint64_t now = ps_now_ms();
  Ps__CheckpointInfo last, cur;
  if (s->has_last) {
    last = s->last;
    last.dir = s->last_dir;
    last.reason = s->last_reason;
    last.age_ms = now > s->last_done_ms ? now - s->last_done_ms : 0;
    st.last_checkpoint = &last;
  }
  if (ps_coord_active(s->coord)) {
    ps__checkpoint_info__init(&cur);
    cur.step = ps_coord_step(s->coord);
    cur.dir = (char *)ps_coord_dir(s->coord);
    cur.reason = (char *)ps_coord_reason(s->coord);
    cur.age_ms = now - ps_coord_started_ms(s->coord);
    st.checkpoint = &cur;
  }
  Ps__Envelope env;
  envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_STATUS;
  env.status = &st;
  reply(s, m, &env);
  view_pb_free(&v);
}

/* ---- checkpoints (issue #4) ----------------------------------------- */

static void waiters_answer(ps_sched_t *s, int status, const char *reason,
                           Ps__CheckpointInfo *info) {
  void *sock = sched_socket(s);
  for (size_t i = 0; i < s->nwaiters && sock; i++) {
    zmq_msg_t route;
    if (zmq_msg_init_size(&route, s->waiters[i].route_len) != 0) continue;
    memcpy(zmq_msg_data(&route), s->waiters[i].route, s->waiters[i].route_len);
    Ps__Envelope env;
    envelope_init(s, &env, s->waiters[i].request_id);
    Ps__Error e = PS__ERROR__INIT;
    if (status == PS_OK) {
      env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_INFO;
      env.checkpoint_info = info;
    } else {
      e.code = status;
      e.message = (char *)reason;
      env.body_case = PS__ENVELOPE__BODY_ERROR;
      env.error = &e;
    }
    ps_msg_send(sock, &route, &env, NULL, 0);
    zmq_msg_close(&route);
  }
  s->nwaiters = 0;
}

static void coord_send_cb(ps_coord_t *c, uint32_t node_id,
                          Ps__CheckpointRequest *req, void *arg) {
  ps_sched_t *s = arg;
  sched_node_t *n = node_by_id(s, node_id);
  if (n == NULL) return;
  Ps__Envelope env;
  envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_REQUEST;
  env.checkpoint_request = req;
  send_to_node(s, n, &env);
}

static void coord_done_cb(ps_coord_t *c, int status, const char *reason,
                          const ps_coord_result_t *res, void *arg) {
  ps_sched_t *s = arg;
  uint64_t now = ps_now_ms();
  s->ckpt_last_ms = now;
  if (status == PS_OK) {
    s->has_last = 1;
    ps__checkpoint_info__init(&s->last);
    s->last.id = res->id;
    s->last.step = res->step;
    s->last.bytes = res->bytes;
    s->last.duration_ms = res->duration_ms;
    s->last.write_ms = res->write_ms;
    s->last.shards = res->shards;
    s->last.created_unix_ms = res->created_unix_ms;
    snprintf(s->last_dir, sizeof(s->last_dir), "%s", res->dir);
    snprintf(s->last_reason, sizeof(s->last_reason), "%s",
             res->reason ? res->reason : "");
    s->last.dir = s->last_dir;
    s->last.reason = s->last_reason;
    s->last_done_ms = now;
    /* ms: from the request to the MANIFEST, waiting for the step included;
     * write_ms: the slowest server's copy-to-durable time, which the rate
     * is over (the servers write in parallel). */
    double secs = (double)(res->write_ms ? res->write_ms : 1) / 1e3;
    PS_INFO("checkpoint_written",
            "id=%" PRIu64 " step=%" PRIu64 " dir=%s shards=%u bytes=%" PRIu64
            " ms=%" PRIu64 " write_ms=%" PRIu64
            " mbps=%.1f attempts=%d reason=%s",
            res->id, res->step, res->dir, res->shards, res->bytes,
            res->duration_ms, res->write_ms, (double)res->bytes / 1e6 / secs,
            res->attempts, s->last_reason);
    state_save(s);
    Ps__CheckpointInfo info = s->last;
    info.age_ms = 0;
    waiters_answer(s, PS_OK, "", &info);
    /* The next periodic one is asked for now, well before its step. */
    if (!s->ending && !s->finished) ckpt_periodic(s, now);
  } else {
    /* At the end of a job, a step that never came is no failure. */
    if (s->ending || s->finished)
      PS_INFO("checkpoint_cancelled", "err=%s reason=\"%s\"",
              ps_err_name(status), reason);
    else
      PS_ERROR("checkpoint_failed", "err=%s reason=\"%s\"", ps_err_name(status),
               reason);
    s->ckpt_retry_ms = now + SCHED_CKPT_BACKOFF_MS;
    waiters_answer(s, status, reason, NULL);
  }
  if (s->ending && !s->finished) ps_sched_stop(s, s->end_reason);
}

/* Starts a checkpoint into base. Every server of the view must be alive:
 * a checkpoint that misses a range is no checkpoint. */
static int ckpt_start(ps_sched_t *s, const char *base, const char *reason,
                      uint64_t every_steps, char *err, size_t errlen) {
  uint32_t *ids = calloc(s->nnodes + 1, sizeof(*ids));
  if (ids == NULL) {
    snprintf(err, errlen, "scheduler out of memory");
    return PS_ERR_NOMEM;
  }
  size_t n = 0;
  uint64_t max_clock = s->start_clock;
  /* The primaries write the ranges; backups hold the same bytes. */
  for (size_t r = 0; r < s->nranges; r++) {
    const ps_range_t *rg = &s->ranges[r];
    const sched_node_t *nd = node_by_id(s, rg->server_id);
    int listed = 0;
    for (size_t k = 0; k < n && !listed; k++) listed = ids[k] == rg->server_id;
    if (listed) continue;
    if (nd == NULL || nd->state != PS__NODE_STATE__NODE_STATE_ALIVE) {
      snprintf(err, errlen,
               "range [%" PRIu64 ", %" PRIu64
               ") cannot be written: its primary, server %u, is %s and no "
               "synced replica is left",
               rg->begin, rg->end, rg->server_id,
               nd ? state_name(nd->state) : "unknown");
      free(ids);
      return PS_ERR_UNAVAILABLE;
    }
    if (nd->route_len == 0) {
      /* A restarted scheduler learns routes from heartbeats. */
      snprintf(err, errlen,
               "server %u has not been heard from since the scheduler "
               "started; try again in a moment",
               nd->id);
      free(ids);
      return PS_ERR_NOT_READY;
    }
    ids[n++] = nd->id;
    if (nd->clock > max_clock) max_clock = nd->clock;
  }
  /* The next one comes after the last, whatever stale clocks say. */
  if (s->has_last && s->last.step > max_clock) max_clock = s->last.step;
  ps_coord_start_t st = {
      .base = base,
      .reason = reason,
      .every_steps = every_steps,
      .servers = ids,
      .nservers = n,
      .max_clock = max_clock,
      .model = &s->model,
      .mode = s->opts.mode,
      .view_epoch = s->epoch,
      .timeout_ms = s->opts.checkpoint_timeout_ms > 0
                        ? s->opts.checkpoint_timeout_ms
                        : SCHED_CKPT_TIMEOUT_MS,
  };
  int rc = ps_coord_start(s->coord, &st, ps_now_ms(), err, errlen);
  free(ids);
  /* The ids it took are on disk before a server sees one, so a restarted
   * scheduler never hands out an id a server may still hold. */
  if (rc == PS_OK) state_save(s);
  return rc;
}

static void add_waiter(ps_sched_t *s, ps_msg_t *m) {
  if (!m->has_route || zmq_msg_size(&m->route) > SCHED_ROUTE_MAX) return;
  if (s->nwaiters == SCHED_CKPT_WAITERS) {
    reply_error(s, m, PS_ERR_REFUSED,
                "%d psctl calls already wait for this checkpoint",
                SCHED_CKPT_WAITERS);
    return;
  }
  size_t len = zmq_msg_size(&m->route);
  memcpy(s->waiters[s->nwaiters].route, zmq_msg_data(&m->route), len);
  s->waiters[s->nwaiters].route_len = len;
  s->waiters[s->nwaiters].request_id = m->request_id;
  s->nwaiters++;
}

/* psctl checkpoint: answered once the MANIFEST is durable, or with why
 * not. */
static void handle_checkpoint_command(ps_sched_t *s, ps_msg_t *m) {
  const char *dir =
      m->env->checkpoint_command->dir ? m->env->checkpoint_command->dir : "";
  if (!s->published || !s->has_model) {
    reply_error(s, m, PS_ERR_NOT_READY,
                "the job has not started: no view published yet");
    return;
  }
  if (s->ending) {
    reply_error(s, m, PS_ERR_SHUTDOWN, "the job is over");
    return;
  }
  const char *base = dir[0] ? dir : s->ckpt_base;
  if (base == NULL) {
    reply_error(s, m, PS_ERR_INVAL,
                "no checkpoint directory: give psctl checkpoint --dir DIR or "
                "start ps-scheduler with --checkpoint-dir");
    return;
  }
  if (base[0] != '/') {
    reply_error(s, m, PS_ERR_INVAL,
                "checkpoint directory \"%s\" is not an absolute path", base);
    return;
  }
  if (ps_coord_active(s->coord)) {
    if (strcmp(base, ps_coord_base(s->coord)) != 0) {
      reply_error(s, m, PS_ERR_REFUSED,
                  "a checkpoint of step %" PRIu64 " into %s is in progress",
                  ps_coord_step(s->coord), ps_coord_dir(s->coord));
      return;
    }
    add_waiter(s, m); /* the one in progress is as good */
    return;
  }
  char err[1200];
  int rc = ckpt_start(s, base, "psctl", 0, err, sizeof(err));
  if (rc != PS_OK) {
    reply_error(s, m, rc, "%s", err);
    return;
  }
  add_waiter(s, m);
}

static void handle_checkpoint_reply(ps_sched_t *s, ps_msg_t *m) {
  /* Never an Error back: a member takes REFUSED as the loss of its
   * membership, and a reply to a request of a previous scheduler life is
   * merely stale. */
  sched_node_t *n = node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG("checkpoint_reply_ignored", "sender=%u", m->env->sender);
    return;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    fence(s, n, m);
    return;
  }
  node_touch(n, m, 1);
  /* Fresher than the last heartbeat's. */
  if (m->env->checkpoint_reply->clock > n->clock)
    n->clock = m->env->checkpoint_reply->clock;
  ps_coord_on_reply(s->coord, n->id, m->env->checkpoint_reply, ps_now_ms());
}

/* ---- servers' reports on replication and joins (issue #4) ---------- */

/* Like CheckpointReply, these come on a server's membership link and are
 * never answered with an Error (ps_member takes REFUSED as the loss of its
 * membership), except the fence for a server declared dead. */

static void handle_replica_synced(ps_sched_t *s, ps_msg_t *m) {
  const Ps__ReplicaSynced *rs = m->env->replica_synced;
  sched_node_t *n = node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG("replica_synced_ignored", "sender=%u", m->env->sender);
    return;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    fence(s, n, m);
    return;
  }
  node_touch(n, m, 1);
  ps_range_t *r = NULL;
  for (size_t i = 0; i < s->nranges && r == NULL; i++)
    if (s->ranges[i].begin == rs->range_begin &&
        s->ranges[i].end == rs->range_end)
      r = &s->ranges[i];
  /* Ids are never reused and a backup leaves a chain only when it dies, so
   * the current primary's word about a backup still syncing is never
   * stale. Anything else is (a primary replaced since, a repeat). */
  if (r == NULL || r->server_id != n->id || !ps_place_synced(r, rs->backup)) {
    PS_DEBUG("replica_synced_ignored",
             "sender=%u range=[%" PRIu64 ",%" PRIu64 ") backup=%u", n->id,
             rs->range_begin, rs->range_end, rs->backup);
    return;
  }
  PS_INFO(
      "re_replicated",
      "range=[%" PRIu64 ",%" PRIu64 ") primary=%u backup=%u bytes=%" PRIu64
      " ms=%" PRIu64 " mbps=%.1f syncing_left=%u epoch=%" PRIu64,
      rs->range_begin, rs->range_end, n->id, rs->backup, rs->bytes,
      rs->duration_ms,
      (double)rs->bytes / 1e3 / (double)(rs->duration_ms ? rs->duration_ms : 1),
      ps_place_nsyncing(r), s->epoch);
  /* No new view: promotion is the scheduler's decision and reads this
   * state; the next view carries it to the nodes. */
  state_save(s);
}

static void handle_join_reply(ps_sched_t *s, ps_msg_t *m) {
  const Ps__JoinReply *jr = m->env->join_reply;
  sched_node_t *n = node_by_id(s, m->env->sender);
  if (n == NULL || n->role != PS__ROLE__ROLE_SERVER) {
    PS_DEBUG("join_reply_ignored", "sender=%u", m->env->sender);
    return;
  }
  if (n->state == PS__NODE_STATE__NODE_STATE_DEAD) {
    fence(s, n, m);
    return;
  }
  node_touch(n, m, 1);
  if (jr->clock > n->clock) n->clock = jr->clock;
  sched_node_t *w = node_by_id(s, jr->node);
  /* Replies to an earlier join_clock of the same join are stale. */
  if (w == NULL || !w->joining ||
      w->state != PS__NODE_STATE__NODE_STATE_ALIVE ||
      jr->join_clock != w->join_clock) {
    PS_DEBUG("join_reply_ignored",
             "sender=%u node=%u join_clock=%" PRIu64 " ok=%d", n->id, jr->node,
             jr->join_clock, jr->ok);
    return;
  }
  if (!jr->ok) {
    join_pick(s, w, jr->clock);
    PS_INFO("join_late",
            "id=%u server=%u join_clock=%" PRIu64 " server_clock=%" PRIu64
            " new_join_clock=%" PRIu64,
            w->id, n->id, jr->join_clock, jr->clock, w->join_clock);
    publish(s, "join_retry");
    return;
  }
  for (size_t k = 0; k < w->njoin_ok; k++)
    if (w->join_ok[k] == n->id) return; /* a repeat */
  uint32_t *ok = realloc(w->join_ok, (w->njoin_ok + 1) * sizeof(*ok));
  if (ok == NULL) {
    /* The retry timer asks again. */
    PS_ERROR("join_reply_dropped", "err=%s", ps_err_name(PS_ERR_NOMEM));
    return;
  }
  w->join_ok = ok;
  w->join_ok[w->njoin_ok++] = n->id;
  if (join_check_all(s) > 0) publish(s, "worker_joined");
}

/* Periodic checkpoints. Every-N-steps asks for the next multiple once the
 * servers are within a few seconds of it (by their step rate), so that a
 * request is never late for lack of notice and every-S-seconds has room in
 * between. */
static void ckpt_periodic(ps_sched_t *s, uint64_t now) {
  uint64_t max_clock = s->start_clock;
  for (size_t i = 0; i < s->nnodes; i++)
    if (s->nodes[i].role == PS__ROLE__ROLE_SERVER &&
        s->nodes[i].clock > max_clock)
      max_clock = s->nodes[i].clock;
  if (max_clock > s->rate_clock && s->rate_ms > 0 && now > s->rate_ms) {
    double r = (double)(max_clock - s->rate_clock) / (double)(now - s->rate_ms);
    s->steps_per_ms = s->steps_per_ms > 0 ? 0.5 * s->steps_per_ms + 0.5 * r : r;
  }
  if (max_clock != s->rate_clock || s->rate_ms == 0) {
    s->rate_clock = max_clock;
    s->rate_ms = now;
  }
  if (!s->published || s->finished || s->ending || s->ckpt_base == NULL ||
      !s->has_model || ps_coord_active(s->coord) || now < s->ckpt_retry_ms ||
      live_workers(s) == 0)
    return;
  const char *reason = NULL;
  uint64_t every = s->opts.checkpoint_every_steps;
  if (every > 0) {
    uint64_t next = (max_clock / every + 1) * every;
    /* No rate yet: ask at once; waiting costs nothing. */
    double lead = s->steps_per_ms > 0 ? s->steps_per_ms * 3000.0 + 2 : 1e18;
    if ((double)(next - max_clock) <= lead) reason = "every_steps";
  }
  if (reason == NULL && s->opts.checkpoint_every_s > 0 &&
      (double)(now - s->ckpt_last_ms) >= s->opts.checkpoint_every_s * 1e3) {
    reason = "every_s";
    every = 0;
  }
  if (reason == NULL) return;
  char err[1200];
  int rc = ckpt_start(s, s->ckpt_base, reason, every, err, sizeof(err));
  if (rc != PS_OK) {
    PS_WARN("checkpoint_not_started", "reason=%s err=%s why=\"%s\"", reason,
            ps_err_name(rc), err);
    s->ckpt_retry_ms = now + SCHED_CKPT_BACKOFF_MS;
  }
}

static void on_message(ps_zsock_t *zs, ps_msg_t *m, int status,
                       const char *reason, void *arg) {
  ps_sched_t *s = arg;
  if (s->finished) {
    ps_msg_close(m);
    return;
  }
  if (status != PS_OK) {
    PS_WARN("bad_message", "err=%s reason=\"%s\"", ps_err_name(status), reason);
    void *sock = sched_socket(s);
    if (sock && m->has_route)
      ps_msg_reply_error(sock, m, s->epoch, 0, status, "%s", reason);
    ps_msg_close(m);
    return;
  }
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_REGISTER:
      handle_register(s, m);
      break;
    case PS__ENVELOPE__BODY_HEARTBEAT:
      handle_heartbeat(s, m);
      break;
    case PS__ENVELOPE__BODY_BARRIER:
      handle_barrier(s, m);
      break;
    case PS__ENVELOPE__BODY_DONE:
      handle_done(s, m);
      break;
    case PS__ENVELOPE__BODY_SHUTDOWN:
      handle_leave(s, m);
      break;
    case PS__ENVELOPE__BODY_STATUS_REQUEST:
      handle_status(s, m);
      break;
    case PS__ENVELOPE__BODY_CHECKPOINT_COMMAND:
      handle_checkpoint_command(s, m);
      break;
    case PS__ENVELOPE__BODY_CHECKPOINT_REPLY:
      handle_checkpoint_reply(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICA_SYNCED:
      handle_replica_synced(s, m);
      break;
    case PS__ENVELOPE__BODY_JOIN_REPLY:
      handle_join_reply(s, m);
      break;
    default:
      reply_error(s, m, PS_ERR_UNSUPPORTED, "the scheduler does not take %s",
                  ps_body_name(m->env->body_case));
      break;
  }
  ps_msg_close(m);
}

/* ---- timers and signals --------------------------------------------- */

static void on_check(uv_timer_t *t) {
  ps_sched_t *s = t->data;
  uint64_t now = ps_now_ms();
  uint64_t limit = (uint64_t)s->opts.heartbeat_timeout_ms;
  int changed = 0, servers_lost = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    /* Done workers may stop heartbeating: only the living can die. */
    if (n->state != PS__NODE_STATE__NODE_STATE_ALIVE) continue;
    uint64_t silent = now > n->last_seen_ms ? now - n->last_seen_ms : 0;
    if (silent < limit) continue;
    declare_dead(s, n, silent);
    changed = 1;
    if (n->role == PS__ROLE__ROLE_SERVER) servers_lost = 1;
  }
  ps_coord_tick(s->coord, now);
  if (!changed) ckpt_periodic(s, now);
  /* Before the first view a dead node only frees its slot, so that its
   * restart (or a replacement) can register. */
  if (changed && !s->published) state_save(s);
  if (!s->published || s->finished) return;
  if (changed && check_job_finished(s)) return;
  const char *why = changed ? "node_dead" : NULL;
  if (servers_lost && replan(s, s->epoch + 1)) why = "failover";
  /* A join may have waited on a server that just died. */
  if (join_check_all(s) > 0 && why == NULL) why = "worker_joined";
  if (join_retry_due(s, now) > 0 && why == NULL) why = "join_retry";
  if (why == NULL) return;
  publish(s, why);
  barrier_check_all(s);
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
static int abs_path(const char *in, char *out, size_t len) {
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

/* --restore: the checkpoint is read and checked in full before the job
 * exists, so a damaged one stops the scheduler at start, and the job takes
 * its model and step from it. */
static int restore_prepare(ps_sched_t *s, const char *path, char *err,
                           size_t errlen) {
  char in[PS_CHECKPOINT_PATH_MAX], dir[PS_CHECKPOINT_PATH_MAX];
  if (abs_path(path, in, sizeof(in)) != 0) {
    snprintf(err, errlen, "restore %s: path too long", path);
    return PS_ERR_CONFIG;
  }
  int rc = ps_checkpoint_resolve(in, dir, sizeof(dir), err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t t0 = ps_now_ns();
  ps_checkpoint_manifest_t m;
  rc = ps_checkpoint_manifest_read(dir, &m, err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t bytes = 0;
  rc = ps_checkpoint_verify(dir, &m, &bytes, err, errlen);
  if (rc != PS_OK) {
    ps_checkpoint_manifest_clear(&m);
    return rc;
  }
  double ms = (double)(ps_now_ns() - t0) / 1e6;
  s->restore_dir = strdup(dir);
  if (s->restore_dir == NULL) {
    ps_checkpoint_manifest_clear(&m);
    snprintf(err, errlen, "out of memory");
    return PS_ERR_NOMEM;
  }
  if (m.mode != s->opts.mode)
    PS_WARN("restore_mode_changed", "checkpoint_mode=%s mode=%s",
            mode_name(m.mode), mode_name(s->opts.mode));
  s->model = m.model; /* takes the tensors */
  m.model.tensors = NULL;
  s->has_model = 1;
  s->model_node = 0;
  s->start_clock = m.step;
  s->has_last = 1;
  ps__checkpoint_info__init(&s->last);
  s->last.id = m.id;
  s->last.step = m.step;
  s->last.bytes = bytes;
  s->last.shards = (uint32_t)m.nshards;
  s->last.created_unix_ms = m.created_unix_ms;
  snprintf(s->last_dir, sizeof(s->last_dir), "%s", dir);
  snprintf(s->last_reason, sizeof(s->last_reason), "restored");
  s->last.dir = s->last_dir;
  s->last.reason = s->last_reason;
  uint64_t wall = unix_now_ms(), now = ps_now_ms();
  uint64_t age = wall > m.created_unix_ms ? wall - m.created_unix_ms : 0;
  s->last_done_ms = now > age ? now - age : 0;
  ps_coord_set_next_id(s->coord, m.id + 1);
  PS_INFO("restore_verified",
          "dir=%s step=%" PRIu64 " id=%" PRIu64
          " servers_then=%u servers_now=%u shards=%zu bytes=%" PRIu64
          " ms=%.1f mbps=%.1f",
          dir, m.step, m.id, m.num_servers, s->opts.servers, m.nshards, bytes,
          ms, ms > 0 ? (double)bytes / 1e6 / (ms / 1e3) : 0.0);
  ps_checkpoint_manifest_clear(&m);
  return PS_OK;
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
  ps_coord_cbs_t ccbs = {coord_send_cb, coord_done_cb, s};
  s->coord = ps_coord_new(&ccbs, 1);
  if (s->coord == NULL) {
    snprintf(err, errlen, "out of memory");
    return PS_ERR_NOMEM;
  }
  if (has_dir) {
    if (abs_path(opts->checkpoint_dir, path, sizeof(path) - 64) != 0 ||
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
    if (abs_path(opts->state_file, path, sizeof(path)) != 0 ||
        (s->state_file = strdup(path)) == NULL) {
      snprintf(err, errlen, "state-file %s: path too long", opts->state_file);
      return PS_ERR_CONFIG;
    }
    loaded = state_load(s, err, errlen);
    if (loaded < 0) return loaded;
  }
  if (opts->restore && opts->restore[0]) {
    if (loaded)
      PS_WARN("restore_ignored",
              "restore=%s reason=\"the job of the state file goes on\"",
              opts->restore);
    else
      return restore_prepare(s, opts->restore, err, errlen);
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
  if (opts->mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      opts->mode != PS__CONSISTENCY_MODE__MODE_ASP) {
    snprintf(errbuf, errlen, "mode %d is neither bsp nor asp", opts->mode);
    return NULL;
  }
  if (opts->heartbeat_timeout_ms <= 0) {
    snprintf(errbuf, errlen, "heartbeat-timeout-ms %d: must be > 0",
             opts->heartbeat_timeout_ms);
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
  s->zs = ps_zsock_new(loop, zmq_ctx, ZMQ_ROUTER, opts->bind, NULL, NULL,
                       on_message, s, err, errbuf, errlen);
  if (s->zs == NULL) {
    sched_free(s);
    return NULL;
  }
  snprintf(s->endpoint, sizeof(s->endpoint), "%s", ps_zsock_endpoint(s->zs));

  /* Checking several times per timeout bounds how late a death is noticed:
   * failover time is the timeout plus at most one period. */
  uint64_t every = (uint64_t)opts->heartbeat_timeout_ms / 8;
  if (every < 5) every = 5;
  if (every > SCHED_CHECK_MAX_MS) every = SCHED_CHECK_MAX_MS;
  uv_timer_init(loop, &s->check_timer);
  s->check_timer.data = s;
  s->open_handles++;
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
  PS_INFO("listening",
          "endpoint=%s servers=%u workers=%u mode=%s replication=%u "
          "heartbeat_timeout_ms=%d check_ms=%" PRIu64
          " checkpoint_dir=%s state_file=%s start_clock=%" PRIu64,
          s->endpoint, opts->servers, opts->workers, mode_name(opts->mode),
          s->replication, opts->heartbeat_timeout_ms, every,
          s->ckpt_base ? s->ckpt_base : "-",
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

void ps_sched_destroy(ps_sched_t **s_p) {
  ps_sched_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  s->destroy_requested = 1;
  close_handles(s, 0);
  if (s->open_handles == 0) sched_free(s);
}
