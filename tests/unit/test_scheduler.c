/* The scheduler module for real: it runs on its own loop in a thread, bound
 * to a free loopback port, and the tests talk to it over DEALER sockets with
 * real Envelopes, the way servers, workers and psctl do. ps_member (the node
 * side) is tested against it too. Every wait has a deadline (zmq_poll with a
 * timeout, pthread_timedjoin_np, a uv timer); nothing sleeps and hopes. */
#define _GNU_SOURCE
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include <zmq.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/scheduler.h"
#include "tests/check_run.h"

#define RANK_ANY 0xffffffffu
#define SERVER PS__ROLE__ROLE_SERVER
#define WORKER PS__ROLE__ROLE_WORKER
/* Long enough that nobody dies by accident on a loaded CI machine. */
#define NO_DEATH_MS 60000

/* ---- the scheduler on its own thread -------------------------------- */

static struct {
  void *ctx;
  uv_loop_t loop;
  uv_async_t stop_async;
  ps_sched_t *sched;
  pthread_t thread;
  int started, joined;
  char endpoint[256];
} H;

static void *loop_thread(void *arg) {
  uv_run(&H.loop, UV_RUN_DEFAULT);
  return NULL;
}

static void on_stop_async(uv_async_t *a) {
  ps_sched_stop(H.sched, "test teardown");
}

static void sched_start_at(const char *bind, uint32_t servers, uint32_t workers,
                           int heartbeat_timeout_ms) {
  if (H.ctx == NULL) H.ctx = zmq_ctx_new();
  ck_assert_int_eq(uv_loop_init(&H.loop), 0);
  ps_sched_opts_t o = {
      .bind = bind,
      .servers = servers,
      .workers = workers,
      .mode = PS__CONSISTENCY_MODE__MODE_BSP,
      .heartbeat_timeout_ms = heartbeat_timeout_ms,
      .handle_signals = 0,
  };
  char why[256] = "";
  int err = 0;
  H.sched = ps_sched_new(&H.loop, H.ctx, &o, &err, why, sizeof(why));
  ck_assert_msg(H.sched != NULL, "ps_sched_new: %s", why);
  snprintf(H.endpoint, sizeof(H.endpoint), "%s", ps_sched_endpoint(H.sched));
  ck_assert_msg(strncmp(H.endpoint, "tcp://127.0.0.1:", 16) == 0 &&
                    strcmp(H.endpoint, "tcp://127.0.0.1:*") != 0,
                "endpoint %s", H.endpoint);
  /* Unreferenced: the loop must still run dry when the scheduler ends the
   * job by itself, which is how the tests see it exit. */
  uv_async_init(&H.loop, &H.stop_async, on_stop_async);
  uv_unref((uv_handle_t *)&H.stop_async);
  ck_assert_int_eq(pthread_create(&H.thread, NULL, loop_thread, NULL), 0);
  H.started = 1;
  H.joined = 0;
}

static void sched_start(uint32_t servers, uint32_t workers,
                        int heartbeat_timeout_ms) {
  sched_start_at("tcp://127.0.0.1:*", servers, workers, heartbeat_timeout_ms);
}

/* 1 if the scheduler's loop ended (it shut the job down) within ms. */
static int sched_exits_within(int ms) {
  if (H.joined) return 1;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  if (pthread_timedjoin_np(H.thread, NULL, &ts) != 0) return 0;
  H.joined = 1;
  return 1;
}

/* ---- clients: DEALER sockets that speak the protocol ---------------- */

typedef struct {
  void *sock;
  uint32_t id;
  uint64_t epoch; /* latest view seen, sent in every envelope */
  uint64_t next_rid;
  uint32_t live_workers; /* of that view */
} client_t;

#define MAX_CLIENTS 16
static client_t *all_clients[MAX_CLIENTS];
static int nclients;

static client_t *client_new(void) {
  client_t *c = calloc(1, sizeof(*c));
  ck_assert_ptr_nonnull(c);
  c->sock = zmq_socket(H.ctx, ZMQ_DEALER);
  ck_assert_ptr_nonnull(c->sock);
  int zero = 0;
  zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero));
  ck_assert_int_eq(zmq_connect(c->sock, H.endpoint), 0);
  ck_assert_int_lt(nclients, MAX_CLIENTS);
  all_clients[nclients++] = c;
  return c;
}

static void teardown_all(void) {
  for (int i = 0; i < nclients; i++) {
    zmq_close(all_clients[i]->sock);
    free(all_clients[i]);
  }
  nclients = 0;
  if (H.started) {
    if (!H.joined) {
      uv_async_send(&H.stop_async);
      pthread_join(H.thread, NULL);
      H.joined = 1;
    }
    ps_sched_destroy(&H.sched);
    uv_close((uv_handle_t *)&H.stop_async, NULL);
    uv_run(&H.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&H.loop), 0);
    H.started = 0;
  }
  if (H.ctx) zmq_ctx_term(H.ctx);
  H.ctx = NULL;
}

static uint64_t send_env(client_t *c, Ps__Envelope *env, uint64_t epoch) {
  env->request_id = ++c->next_rid;
  env->sender = c->id;
  env->epoch = epoch;
  ck_assert_int_eq(ps_msg_send(c->sock, NULL, env, NULL, 0), PS_OK);
  return env->request_id;
}

static uint64_t send_heartbeat(client_t *c, uint64_t clock, uint64_t epoch) {
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  hb.clock = clock;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  return send_env(c, &env, epoch);
}

static uint64_t send_barrier(client_t *c, const char *name, uint64_t epoch) {
  Ps__Barrier b = PS__BARRIER__INIT;
  b.name = (char *)name;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_BARRIER;
  env.barrier = &b;
  return send_env(c, &env, epoch);
}

static uint64_t send_done(client_t *c, uint64_t epoch) {
  Ps__Done d = PS__DONE__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_DONE;
  env.done = &d;
  return send_env(c, &env, epoch);
}

static uint64_t send_status_request(client_t *c, uint64_t epoch) {
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_STATUS_REQUEST;
  env.status_request = &sr;
  return send_env(c, &env, epoch);
}

/* Waits for the next message of kind want on c, skipping others (acks of
 * heartbeats, views: a view's epoch is remembered). While waiting, every
 * client in pump heartbeats every 50 ms so that only the silent die.
 * Returns 1 with *out filled (caller ps_msg_close), 0 at the deadline. */
static int wait_pumping(client_t *c, int want, int timeout_ms, client_t **pump,
                        int npump, ps_msg_t *out) {
  uint64_t deadline = ps_now_ms() + (uint64_t)timeout_ms;
  uint64_t next_beat = 0;
  for (;;) {
    uint64_t now = ps_now_ms();
    if (npump > 0 && now >= next_beat) {
      for (int i = 0; i < npump; i++)
        send_heartbeat(pump[i], 0, pump[i]->epoch);
      next_beat = now + 50;
    }
    if (now >= deadline) return 0;
    long wait = (long)(deadline - now);
    if (npump > 0 && (long)(next_beat - now) < wait)
      wait = (long)(next_beat - now);
    zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&item, 1, wait);
    ck_assert_int_ge(n, 0);
    if (n == 0) continue;
    ps_msg_t m;
    char why[256];
    int rc = ps_msg_recv(c->sock, 0, NULL, &m, why, sizeof(why));
    if (rc == PS_ERR_TIMEOUT) continue;
    ck_assert_msg(rc == PS_OK, "bad message from the scheduler: %s", why);
    int got = m.env->body_case;
    if (got == PS__ENVELOPE__BODY_VIEW && m.env->view->epoch > c->epoch) {
      c->epoch = m.env->view->epoch;
      c->live_workers = m.env->view->live_workers;
    }
    if (got == want) {
      *out = m;
      return 1;
    }
    ps_msg_close(&m);
  }
}

static int wait_for(client_t *c, int want, int timeout_ms, ps_msg_t *out) {
  return wait_pumping(c, want, timeout_ms, NULL, 0, out);
}

/* A view of the test model: two tensors, 600 + 400 keys. */
typedef struct {
  Ps__ModelSpec spec;
  Ps__TensorSpec t[2];
  Ps__TensorSpec *p[2];
} model_pb_t;

static void model_init(model_pb_t *m, float lr, uint64_t bias_len) {
  ps__model_spec__init(&m->spec);
  ps__tensor_spec__init(&m->t[0]);
  ps__tensor_spec__init(&m->t[1]);
  m->t[0].name = "fc1.weight";
  m->t[0].offset = 0;
  m->t[0].length = 600;
  m->t[0].init = PS__INIT__INIT_UNIFORM;
  m->t[0].init_scale = 0.05f;
  m->t[1].name = "fc1.bias";
  m->t[1].offset = 600;
  m->t[1].length = bias_len;
  m->p[0] = &m->t[0];
  m->p[1] = &m->t[1];
  m->spec.n_tensors = 2;
  m->spec.tensors = m->p;
  m->spec.learning_rate = lr;
  m->spec.seed = 42;
}

/* Sends Register and returns the reply (RegisterReply or Error). */
static ps_msg_t register_as(client_t *c, int role, const char *addr,
                            uint32_t rank, Ps__ModelSpec *model) {
  Ps__Register r = PS__REGISTER__INIT;
  r.role = role;
  r.address = (char *)addr;
  r.rank = rank;
  r.model = model;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &r;
  uint64_t rid = send_env(c, &env, 0);
  ps_msg_t m;
  uint64_t deadline = ps_now_ms() + 3000;
  for (;;) {
    uint64_t now = ps_now_ms();
    ck_assert_msg(now < deadline, "no answer to Register");
    zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, (long)(deadline - now)) <= 0) continue;
    char why[256];
    int rc = ps_msg_recv(c->sock, 0, NULL, &m, why, sizeof(why));
    if (rc == PS_ERR_TIMEOUT) continue;
    ck_assert_msg(rc == PS_OK, "%s", why);
    int kind = m.env->body_case;
    if (m.request_id == rid && (kind == PS__ENVELOPE__BODY_REGISTER_REPLY ||
                                kind == PS__ENVELOPE__BODY_ERROR))
      return m;
    ps_msg_close(&m);
  }
}

/* Registers and asserts success; returns the rank. */
static uint32_t join(client_t *c, int role, const char *addr, uint32_t rank,
                     Ps__ModelSpec *model) {
  ps_msg_t m = register_as(c, role, addr, rank, model);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_REGISTER_REPLY,
                "Register refused: %s",
                m.env->body_case == PS__ENVELOPE__BODY_ERROR
                    ? m.env->error->message
                    : "?");
  c->id = m.env->register_reply->node_id;
  uint32_t r = m.env->register_reply->rank;
  ps_msg_close(&m);
  return r;
}

/* Registers and asserts a refusal with code; copies the reason out. */
static void join_refused(client_t *c, int role, const char *addr,
                         Ps__ModelSpec *model, int code, char *reason,
                         size_t len) {
  ps_msg_t m = register_as(c, role, addr, RANK_ANY, model);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ERROR);
  ck_assert_int_eq(m.env->error->code, code);
  snprintf(reason, len, "%s", m.env->error->message);
  ps_msg_close(&m);
}

/* Everyone registered (1 server at srv_addr, nworkers workers) and holding
 * the first view. */
static void form_cluster(client_t **srv, client_t **w, int nworkers) {
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  *srv = client_new();
  join(*srv, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  for (int i = 0; i < nworkers; i++) {
    w[i] = client_new();
    join(w[i], WORKER, "", (uint32_t)i, &mp.spec);
  }
  ps_msg_t m;
  ck_assert(wait_for(*srv, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ps_msg_close(&m);
  for (int i = 0; i < nworkers; i++) {
    if (w[i]->epoch == 1) continue;
    ck_assert(wait_for(w[i], PS__ENVELOPE__BODY_VIEW, 3000, &m));
    ps_msg_close(&m);
  }
}

/* ---- tests ---------------------------------------------------------- */

START_TEST(test_register_ids_and_ranks) {
  sched_start(1, 3, NO_DEATH_MS);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *s = client_new(), *w1 = client_new(), *w2 = client_new(),
           *w3 = client_new();

  ps_msg_t m = register_as(s, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_REGISTER_REPLY);
  ck_assert_uint_eq(m.env->register_reply->node_id, 1);
  ck_assert_uint_eq(m.env->register_reply->num_workers, 3);
  ps_msg_close(&m);

  /* Requested rank when free, else the lowest free one. */
  ck_assert_uint_eq(join(w1, WORKER, "", 2, &mp.spec), 2);
  ck_assert_uint_eq(w1->id, 2);
  ck_assert_uint_eq(join(w2, WORKER, "", 2, &mp.spec), 0);
  ck_assert_uint_eq(w2->id, 3);
  ck_assert_uint_eq(join(w3, WORKER, "", 7, &mp.spec), 1);
  ck_assert_uint_eq(w3->id, 4);

  /* A retried Register on the same connection gets the same answer. */
  ck_assert_uint_eq(join(w1, WORKER, "", 2, &mp.spec), 2);
  ck_assert_uint_eq(w1->id, 2);

  ck_assert(wait_for(w3, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ck_assert_uint_eq(m.env->view->epoch, 1);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_model_mismatch_refused) {
  sched_start(1, 3, NO_DEATH_MS);
  model_pb_t a, lr, shape;
  model_init(&a, 0.1f, 400);
  model_init(&lr, 0.2f, 400);
  model_init(&shape, 0.1f, 401);
  client_t *w1 = client_new(), *w2 = client_new(), *w3 = client_new(),
           *w4 = client_new(), *w5 = client_new();
  join(w1, WORKER, "", RANK_ANY, &a.spec);

  char why[512];
  join_refused(w2, WORKER, "", &lr.spec, PS_ERR_REFUSED, why, sizeof(why));
  ck_assert_msg(strstr(why, "learning_rate") != NULL, "reason: %s", why);
  join_refused(w3, WORKER, "", &shape.spec, PS_ERR_REFUSED, why, sizeof(why));
  ck_assert_msg(strstr(why, "fc1.bias") != NULL && strstr(why, "401"),
                "reason: %s", why);
  join_refused(w4, WORKER, "", NULL, PS_ERR_INVAL, why, sizeof(why));
  ck_assert_msg(strstr(why, "model") != NULL, "reason: %s", why);

  /* A refusal takes no slot: the same model is still welcome. */
  join(w5, WORKER, "", RANK_ANY, &a.spec);
  ck_assert_uint_eq(w5->id, 2);
  teardown_all();
}
END_TEST

START_TEST(test_extra_node_refused) {
  sched_start(2, 1, NO_DEATH_MS);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *s1 = client_new(), *s2 = client_new(), *s3 = client_new(),
           *s4 = client_new(), *w1 = client_new(), *w2 = client_new();
  char why[512];
  join(s1, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  join_refused(s2, SERVER, "tcp://127.0.0.1:9001", NULL, PS_ERR_REFUSED, why,
               sizeof(why));
  ck_assert_msg(strstr(why, "already registered") != NULL, "reason: %s", why);
  join_refused(s2, SERVER, "", NULL, PS_ERR_INVAL, why, sizeof(why));
  join(s3, SERVER, "tcp://127.0.0.1:9002", RANK_ANY, NULL);
  join_refused(s4, SERVER, "tcp://127.0.0.1:9003", NULL, PS_ERR_REFUSED, why,
               sizeof(why));
  ck_assert_msg(strstr(why, "expected servers") != NULL, "reason: %s", why);

  join(w1, WORKER, "", RANK_ANY, &mp.spec);
  join_refused(w2, WORKER, "", &mp.spec, PS_ERR_REFUSED, why, sizeof(why));
  ck_assert_msg(strstr(why, "running") || strstr(why, "expected workers"),
                "reason: %s", why);
  teardown_all();
}
END_TEST

START_TEST(test_view_published_when_all_registered) {
  sched_start(2, 1, NO_DEATH_MS);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *s1 = client_new(), *s2 = client_new(), *w = client_new();
  join(s1, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  join(s2, SERVER, "tcp://127.0.0.1:9002", RANK_ANY, NULL);
  ps_msg_t m;
  ck_assert_msg(!wait_for(s1, PS__ENVELOPE__BODY_VIEW, 300, &m),
                "view published before the worker registered");
  join(w, WORKER, "", RANK_ANY, &mp.spec);

  client_t *each[] = {s1, s2, w};
  for (int i = 0; i < 3; i++) {
    ck_assert(wait_for(each[i], PS__ENVELOPE__BODY_VIEW, 3000, &m));
    const Ps__View *v = m.env->view;
    ck_assert_uint_eq(v->epoch, 1);
    ck_assert_uint_eq(v->n_nodes, 3);
    ck_assert_uint_eq(v->live_workers, 1);
    ck_assert_int_eq(v->mode, PS__CONSISTENCY_MODE__MODE_BSP);
    for (size_t k = 0; k < v->n_nodes; k++)
      ck_assert_int_eq(v->nodes[k]->state, PS__NODE_STATE__NODE_STATE_ALIVE);
    /* One range per server, in id order, covering [0, 1000) exactly. */
    ck_assert_uint_eq(v->n_ranges, 2);
    ck_assert_uint_eq(v->ranges[0]->begin, 0);
    ck_assert_uint_eq(v->ranges[0]->end, v->ranges[1]->begin);
    ck_assert_uint_eq(v->ranges[1]->end, 1000);
    ck_assert_uint_eq(v->ranges[0]->server_id, s1->id);
    ck_assert_uint_eq(v->ranges[1]->server_id, s2->id);
    ck_assert_uint_eq(v->ranges[1]->begin % PS_RANGE_ALIGN, 0);
    char why[256];
    ps_view_t *pv = ps_view_from_pb(v, why, sizeof(why));
    ck_assert_msg(pv != NULL, "view refused: %s", why);
    ck_assert_uint_eq(pv->model.total, 1000);
    ck_assert_int_eq(ps_view_find_range(pv, 999), 1);
    ps_view_destroy(&pv);
    ps_msg_close(&m);
  }
  teardown_all();
}
END_TEST

START_TEST(test_barrier_waits_for_all_workers) {
  sched_start(1, 2, NO_DEATH_MS);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  ps_msg_t m;
  uint64_t r0 = send_barrier(w[0], "step-1", 1);
  ck_assert_msg(!wait_for(w[0], PS__ENVELOPE__BODY_ACK, 300, &m),
                "barrier released with one of two workers in it");
  /* Another name does not count towards step-1. */
  uint64_t other = send_barrier(w[1], "step-2", 1);
  ck_assert(!wait_for(w[0], PS__ENVELOPE__BODY_ACK, 200, &m));
  uint64_t r1 = send_barrier(w[1], "step-1", 1);
  ck_assert(other != r1);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, r0);
  ps_msg_close(&m);
  ck_assert(wait_for(w[1], PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, r1);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

/* The worker that completes a barrier is released first when it has the
 * lowest id; releasing it must not lose (or read freed memory for) the
 * others' releases. */
START_TEST(test_barrier_releases_all_when_first_enters_last) {
  sched_start(1, 3, NO_DEATH_MS);
  client_t *s, *w[3];
  form_cluster(&s, w, 3);
  ps_msg_t m;
  uint64_t r2 = send_barrier(w[2], "sync", 1);
  uint64_t r1 = send_barrier(w[1], "sync", 1);
  ck_assert(!wait_for(w[1], PS__ENVELOPE__BODY_ACK, 200, &m));
  uint64_t r0 = send_barrier(w[0], "sync", 1);
  uint64_t want[3] = {r0, r1, r2};
  for (int i = 0; i < 3; i++) {
    ck_assert_msg(wait_for(w[i], PS__ENVELOPE__BODY_ACK, 3000, &m),
                  "worker %d not released", i);
    ck_assert_uint_eq(m.request_id, want[i]);
    ps_msg_close(&m);
  }
  teardown_all();
}
END_TEST

START_TEST(test_wrong_epoch_refused_then_served) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *s, *w[1];
  form_cluster(&s, w, 1);
  ps_msg_t m;
  uint64_t rid = send_barrier(w[0], "b", 7);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_int_eq(m.env->error->code, PS_ERR_STALE_EPOCH);
  ps_msg_close(&m);

  rid = send_done(w[0], 3);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_int_eq(m.env->error->code, PS_ERR_STALE_EPOCH);
  ps_msg_close(&m);

  rid = send_status_request(w[0], 2);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_int_eq(m.env->error->code, PS_ERR_STALE_EPOCH);
  ps_msg_close(&m);

  /* The next good requests are served. */
  rid = send_status_request(w[0], 1);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_STATUS, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_uint_eq(m.env->status->view->epoch, 1);
  ps_msg_close(&m);
  rid = send_barrier(w[0], "b", 1);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_heartbeat_epochs) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *s, *w[1];
  form_cluster(&s, w, 1);
  ps_msg_t m;
  /* Behind: acked, and the current view comes again. */
  uint64_t rid = send_heartbeat(s, 5, 0);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_uint_eq(m.env->ack->clock, 5);
  ps_msg_close(&m);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ck_assert_uint_eq(m.env->view->epoch, 1);
  ps_msg_close(&m);
  /* Ahead of the scheduler: an error. */
  rid = send_heartbeat(s, 6, 9);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_int_eq(m.env->error->code, PS_ERR_STALE_EPOCH);
  ps_msg_close(&m);
  /* The clock shows in the status. */
  client_t *admin = client_new();
  send_status_request(admin, 0);
  ck_assert(wait_for(admin, PS__ENVELOPE__BODY_STATUS, 3000, &m));
  const Ps__View *v = m.env->status->view;
  ck_assert_uint_eq(v->nodes[0]->id, s->id);
  ck_assert_uint_eq(v->nodes[0]->clock, 6);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_garbage_gets_error) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *c = client_new();
  ps_msg_t m;
  const char junk[] = "\xff\xfe garbage, not an envelope";
  ck_assert_int_ge(zmq_send(c->sock, junk, sizeof(junk), 0), 0);
  ck_assert(wait_for(c, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_PROTO);
  ps_msg_close(&m);

  /* A well-formed envelope of another protocol version. */
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION + 1;
  env.request_id = 77;
  env.body_case = PS__ENVELOPE__BODY_STATUS_REQUEST;
  env.status_request = &sr;
  uint8_t buf[64];
  size_t n = ps__envelope__pack(&env, buf);
  ck_assert_int_ge(zmq_send(c->sock, buf, n, 0), 0);
  ck_assert(wait_for(c, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_VERSION);
  ck_assert_uint_eq(m.request_id, 77);
  ps_msg_close(&m);

  /* Bodies the scheduler has no business with. */
  Ps__Ack ack = PS__ACK__INIT;
  Ps__Envelope e2 = PS__ENVELOPE__INIT;
  e2.body_case = PS__ENVELOPE__BODY_ACK;
  e2.ack = &ack;
  send_env(c, &e2, 0);
  ck_assert(wait_for(c, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_UNSUPPORTED);
  ps_msg_close(&m);
  /* An id nobody was given. */
  c->id = 42;
  send_heartbeat(c, 0, 0);
  ck_assert(wait_for(c, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_REFUSED);
  ps_msg_close(&m);
  c->id = 0;

  uint64_t rid = send_status_request(c, 0);
  ck_assert(wait_for(c, PS__ENVELOPE__BODY_STATUS, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_status_before_view) {
  sched_start(2, 2, NO_DEATH_MS);
  client_t *s = client_new(), *admin = client_new();
  join(s, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  ps_msg_t m;
  uint64_t rid = send_status_request(admin, 0);
  ck_assert(wait_for(admin, PS__ENVELOPE__BODY_STATUS, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  const Ps__Status *st = m.env->status;
  ck_assert_uint_eq(st->expected_servers, 2);
  ck_assert_uint_eq(st->expected_workers, 2);
  ck_assert_uint_eq(st->view->epoch, 0);
  ck_assert_uint_eq(st->view->n_ranges, 0);
  ck_assert_uint_eq(st->view->n_nodes, 1);
  ck_assert_uint_eq(st->view->nodes[0]->id, 1);
  ck_assert_int_eq(st->view->nodes[0]->role, SERVER);
  ck_assert_str_eq(st->view->nodes[0]->address, "tcp://127.0.0.1:9001");
  ck_assert_int_eq(st->view->nodes[0]->state, PS__NODE_STATE__NODE_STATE_ALIVE);
  ck_assert_uint_lt(st->view->nodes[0]->last_heartbeat_ms, 60000);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_silent_worker_declared_dead) {
  const int timeout_ms = 300;
  sched_start(1, 2, timeout_ms);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  /* w0 waits in a barrier that w1 will never enter: its death must
   * release it. */
  uint64_t rid = send_barrier(w[0], "step-1", 1);
  /* w1's last word: it cannot be declared dead before timeout_ms after. */
  uint64_t silent_since = ps_now_ms();
  send_heartbeat(w[1], 0, 1);
  client_t *alive[] = {s, w[0]};
  ps_msg_t m;
  ck_assert(wait_pumping(s, PS__ENVELOPE__BODY_VIEW, 5000, alive, 2, &m));
  uint64_t took = ps_now_ms() - silent_since;
  const Ps__View *v = m.env->view;
  ck_assert_uint_eq(v->epoch, 2);
  ck_assert_uint_eq(v->live_workers, 1);
  for (size_t i = 0; i < v->n_nodes; i++) {
    int want = v->nodes[i]->id == w[1]->id ? PS__NODE_STATE__NODE_STATE_DEAD
                                           : PS__NODE_STATE__NODE_STATE_ALIVE;
    ck_assert_int_eq(v->nodes[i]->state, want);
  }
  ps_msg_close(&m);
  ck_assert_uint_ge(took, (uint64_t)timeout_ms);

  ck_assert(wait_pumping(w[0], PS__ENVELOPE__BODY_ACK, 3000, alive, 2, &m));
  /* Heartbeat acks come on the same socket: find the barrier's. */
  while (m.request_id != rid) {
    ps_msg_close(&m);
    ck_assert(wait_pumping(w[0], PS__ENVELOPE__BODY_ACK, 3000, alive, 2, &m));
  }
  ps_msg_close(&m);
  ck_assert_uint_eq(w[0]->epoch, 2);

  /* A dead node that speaks up is told it is out. */
  send_heartbeat(w[1], 0, 1);
  ck_assert(wait_for(w[1], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_REFUSED);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_all_done_shuts_down) {
  sched_start(1, 2, NO_DEATH_MS);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  ps_msg_t m;
  uint64_t rid = send_done(w[0], 1);
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ps_msg_close(&m);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ck_assert_uint_eq(m.env->view->epoch, 2);
  ck_assert_uint_eq(m.env->view->live_workers, 1);
  ps_msg_close(&m);
  ck_assert_msg(!sched_exits_within(100), "exited with a worker still busy");

  ck_assert(wait_for(w[1], PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ps_msg_close(&m);
  send_done(w[1], w[1]->epoch);
  client_t *each[] = {s, w[0], w[1]};
  for (int i = 0; i < 3; i++) {
    ck_assert(wait_for(each[i], PS__ENVELOPE__BODY_SHUTDOWN, 3000, &m));
    ck_assert_str_eq(m.env->shutdown->reason, "job finished");
    ps_msg_close(&m);
  }
  ck_assert_msg(sched_exits_within(3000), "scheduler loop did not end");
  teardown_all();
}
END_TEST

START_TEST(test_node_leaving_ends_job) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *s, *w[1];
  form_cluster(&s, w, 1);
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = "SIGTERM";
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  send_env(s, &env, 1);
  ps_msg_t m;
  ck_assert(wait_for(w[0], PS__ENVELOPE__BODY_SHUTDOWN, 3000, &m));
  ck_assert_msg(strstr(m.env->shutdown->reason, "node 1 left: SIGTERM"),
                "reason: %s", m.env->shutdown->reason);
  ps_msg_close(&m);
  ck_assert(sched_exits_within(3000));
  teardown_all();
}
END_TEST

/* ---- ps_member against the scheduler -------------------------------- */

typedef struct {
  int registered;
  uint32_t node_id, rank, num_workers;
  uint64_t view_epoch;
  size_t view_nodes;
  int shut;
  int shut_status;
  char shut_reason[256];
} member_seen_t;

static void m_registered(ps_member_t *m, uint32_t id, uint32_t rank,
                         uint32_t num_workers, void *arg) {
  member_seen_t *s = arg;
  s->registered++;
  s->node_id = id;
  s->rank = rank;
  s->num_workers = num_workers;
}

static void m_view(ps_member_t *m, ps_view_t *view, void *arg) {
  member_seen_t *s = arg;
  s->view_epoch = view->epoch;
  s->view_nodes = view->nnodes;
  ps_view_destroy(&view);
}

static void m_shutdown(ps_member_t *m, int status, const char *reason,
                       void *arg) {
  member_seen_t *s = arg;
  s->shut++;
  s->shut_status = status;
  snprintf(s->shut_reason, sizeof(s->shut_reason), "%s", reason);
}

static void on_deadline(uv_timer_t *t) {
  *(int *)t->data = 1;
}

/* Runs loop until cond(arg) holds or ms pass; returns cond's last value. */
static int run_until(uv_loop_t *loop, int (*cond)(void *), void *arg, int ms) {
  int expired = 0;
  uv_timer_t deadline;
  uv_timer_init(loop, &deadline);
  deadline.data = &expired;
  uv_timer_start(&deadline, on_deadline, (uint64_t)ms, 0);
  while (!cond(arg) && !expired) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return cond(arg);
}

static member_seen_t seen_s, seen_w;
static int both_viewed(void *arg) {
  return seen_s.view_epoch >= 1 && seen_w.view_epoch >= 1;
}
static int both_shut(void *arg) {
  return seen_s.shut && seen_w.shut;
}
static int worker_shut(void *arg) {
  return seen_w.shut;
}
static int never(void *arg) {
  return 0;
}

/* A loopback port that is free now (bound then released). */
static void free_endpoint(void *ctx, char *out, size_t len) {
  void *probe = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0;
  zmq_setsockopt(probe, ZMQ_LINGER, &zero, sizeof(zero));
  ck_assert_int_eq(zmq_bind(probe, "tcp://127.0.0.1:*"), 0);
  size_t n = len;
  zmq_getsockopt(probe, ZMQ_LAST_ENDPOINT, out, &n);
  zmq_close(probe);
}

START_TEST(test_member_registers_late_scheduler_and_finishes) {
  H.ctx = zmq_ctx_new();
  char ep[256];
  free_endpoint(H.ctx, ep, sizeof(ep));
  uv_loop_t loop;
  uv_loop_init(&loop);
  memset(&seen_s, 0, sizeof(seen_s));
  memset(&seen_w, 0, sizeof(seen_w));

  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  ps_model_t model;
  char why[256];
  ck_assert_int_eq(ps_model_from_pb(&mp.spec, &model, why, sizeof(why)), PS_OK);
  ps_member_opts_t so = {.scheduler = ep,
                         .role = SERVER,
                         .address = "tcp://127.0.0.1:9101",
                         .rank = -1,
                         .heartbeat_ms = 50,
                         .scheduler_timeout_ms = 0};
  ps_member_opts_t wo = {.scheduler = ep,
                         .role = WORKER,
                         .address = "",
                         .model = &model,
                         .rank = -1,
                         .heartbeat_ms = 50,
                         .scheduler_timeout_ms = 0};
  ps_member_cbs_t scb = {m_registered, m_view, m_shutdown, &seen_s};
  ps_member_cbs_t wcb = {m_registered, m_view, m_shutdown, &seen_w};
  int err = 0;
  ps_member_t *ms = ps_member_new(&loop, H.ctx, &so, &scb, &err);
  ck_assert_ptr_nonnull(ms);
  ps_member_t *mw = ps_member_new(&loop, H.ctx, &wo, &wcb, &err);
  ck_assert_ptr_nonnull(mw);
  ps_model_clear(&model); /* the member keeps its own copy */

  /* Nobody there yet: the members wait, without giving up. */
  run_until(&loop, never, NULL, 300);
  ck_assert_int_eq(seen_s.registered + seen_w.registered, 0);
  ck_assert_int_eq(seen_s.shut + seen_w.shut, 0);

  sched_start_at(ep, 1, 1, 2000);
  ck_assert_msg(run_until(&loop, both_viewed, NULL, 5000),
                "members did not get the first view");
  ck_assert_int_eq(seen_s.registered, 1);
  ck_assert_int_eq(seen_w.registered, 1);
  ck_assert_uint_eq(seen_w.rank, 0);
  ck_assert_uint_eq(seen_w.num_workers, 1);
  ck_assert_uint_eq(seen_s.view_nodes, 2);
  ck_assert_uint_eq(ps_member_epoch(ms), 1);
  ck_assert_uint_ne(ps_member_node_id(ms), ps_member_node_id(mw));

  /* Heartbeats keep both alive well past the scheduler's timeout. */
  ps_member_set_clock(mw, 3);
  run_until(&loop, never, NULL, 2500);
  ck_assert_uint_eq(seen_s.view_epoch, 1);

  ps_member_send_done(mw);
  ck_assert_msg(run_until(&loop, both_shut, NULL, 5000),
                "members were not shut down");
  ck_assert_int_eq(seen_s.shut_status, PS_OK);
  ck_assert_str_eq(seen_s.shut_reason, "job finished");
  ck_assert_str_eq(seen_w.shut_reason, "job finished");
  ck_assert(sched_exits_within(3000));

  ps_member_destroy(&ms);
  ps_member_destroy(&mw);
  ck_assert_ptr_null(ms);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

START_TEST(test_member_refused_and_silence) {
  H.ctx = zmq_ctx_new();
  uv_loop_t loop;
  uv_loop_init(&loop);
  memset(&seen_w, 0, sizeof(seen_w));

  /* Nothing listens here: the member reports the silence, once. */
  char ep[256];
  free_endpoint(H.ctx, ep, sizeof(ep));
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  ps_model_t model;
  char why[256];
  ck_assert_int_eq(ps_model_from_pb(&mp.spec, &model, why, sizeof(why)), PS_OK);
  ps_member_opts_t wo = {.scheduler = ep,
                         .role = WORKER,
                         .address = "",
                         .model = &model,
                         .rank = -1,
                         .heartbeat_ms = 50,
                         .scheduler_timeout_ms = 300};
  ps_member_cbs_t wcb = {m_registered, m_view, m_shutdown, &seen_w};
  int err = 0;
  ps_member_t *mw = ps_member_new(&loop, H.ctx, &wo, &wcb, &err);
  ck_assert_ptr_nonnull(mw);
  uint64_t t0 = ps_now_ms();
  ck_assert(run_until(&loop, worker_shut, NULL, 3000));
  ck_assert_uint_ge(ps_now_ms() - t0, 250);
  ck_assert_int_eq(seen_w.shut_status, PS_ERR_PEER);
  ps_member_destroy(&mw);

  /* A scheduler that refuses: a second worker beyond the expected one. */
  sched_start(1, 1, NO_DEATH_MS);
  client_t *first = client_new();
  join(first, WORKER, "", RANK_ANY, &mp.spec);
  memset(&seen_w, 0, sizeof(seen_w));
  wo.scheduler = H.endpoint;
  wo.scheduler_timeout_ms = 0;
  mw = ps_member_new(&loop, H.ctx, &wo, &wcb, &err);
  ck_assert_ptr_nonnull(mw);
  ck_assert(run_until(&loop, worker_shut, NULL, 3000));
  ck_assert_int_eq(seen_w.shut_status, PS_ERR_REFUSED);
  ck_assert_msg(strstr(seen_w.shut_reason, "expected workers") != NULL,
                "reason: %s", seen_w.shut_reason);
  ck_assert_int_eq(seen_w.registered, 0);
  ps_member_destroy(&mw);
  ps_model_clear(&model);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

static Suite *scheduler_suite(void) {
  Suite *s = suite_create("scheduler");
  TCase *tc = tcase_create("protocol");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_register_ids_and_ranks);
  tcase_add_test(tc, test_model_mismatch_refused);
  tcase_add_test(tc, test_extra_node_refused);
  tcase_add_test(tc, test_view_published_when_all_registered);
  tcase_add_test(tc, test_barrier_waits_for_all_workers);
  tcase_add_test(tc, test_barrier_releases_all_when_first_enters_last);
  tcase_add_test(tc, test_wrong_epoch_refused_then_served);
  tcase_add_test(tc, test_heartbeat_epochs);
  tcase_add_test(tc, test_garbage_gets_error);
  tcase_add_test(tc, test_status_before_view);
  tcase_add_test(tc, test_silent_worker_declared_dead);
  tcase_add_test(tc, test_all_done_shuts_down);
  tcase_add_test(tc, test_node_leaving_ends_job);
  suite_add_tcase(s, tc);
  TCase *tm = tcase_create("member");
  tcase_set_timeout(tm, 60);
  tcase_add_test(tm, test_member_registers_late_scheduler_and_finishes);
  tcase_add_test(tm, test_member_refused_and_silence);
  suite_add_tcase(s, tm);
  return s;
}

int main(void) {
  /* Warnings and errors only: refusals are the point of several tests. */
  ps_log_init("test", PS_LOG_ERROR);
  return ps_check_run(scheduler_suite());
}
