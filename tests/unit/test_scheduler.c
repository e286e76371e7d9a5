/* The scheduler module for real: it runs on its own loop in a thread, bound
 * to a free loopback port, and the tests talk to it over DEALER sockets with
 * real Envelopes, the way servers, workers and psctl do. ps_member (the node
 * side) is tested against it too. Every wait has a deadline (zmq_poll with a
 * timeout, pthread_timedjoin_np, a uv timer); nothing sleeps and hopes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/beat.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"
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
  uv_async_t crash_async;
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
  if (H.sched) ps_sched_stop(H.sched, "test teardown");
}

/* A crash, as far as the state file can tell: no Shutdown, no final save. */
static void on_crash_async(uv_async_t *a) {
  ps_sched_destroy(&H.sched);
}

/* Starts a scheduler with o on its own thread. The port of a scheduler
 * that just went away may take a moment to be free again. */
static void sched_start_opts(const ps_sched_opts_t *o) {
  if (H.ctx == NULL) H.ctx = zmq_ctx_new();
  ck_assert_int_eq(uv_loop_init(&H.loop), 0);
  char why[1024] = "";
  int err = 0;
  for (int attempt = 0; attempt < 100; attempt++) {
    H.sched = ps_sched_new(&H.loop, H.ctx, o, &err, why, sizeof(why));
    if (H.sched != NULL || err != PS_ERR_ZMQ) break;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  ck_assert_msg(H.sched != NULL, "ps_sched_new: %s", why);
  snprintf(H.endpoint, sizeof(H.endpoint), "%s", ps_sched_endpoint(H.sched));
  ck_assert_msg(strncmp(H.endpoint, "tcp://127.0.0.1:", 16) == 0 &&
                    strcmp(H.endpoint, "tcp://127.0.0.1:*") != 0,
                "endpoint %s", H.endpoint);
  /* Unreferenced: the loop must still run dry when the scheduler ends the
   * job by itself, which is how the tests see it exit. */
  uv_async_init(&H.loop, &H.stop_async, on_stop_async);
  uv_unref((uv_handle_t *)&H.stop_async);
  uv_async_init(&H.loop, &H.crash_async, on_crash_async);
  uv_unref((uv_handle_t *)&H.crash_async);
  ck_assert_int_eq(pthread_create(&H.thread, NULL, loop_thread, NULL), 0);
  H.started = 1;
  H.joined = 0;
}

static ps_sched_opts_t sched_opts(const char *bind, uint32_t servers,
                                  uint32_t workers, int heartbeat_timeout_ms) {
  ps_sched_opts_t o = {
      .bind = bind,
      .servers = servers,
      .workers = workers,
      .mode = PS__CONSISTENCY_MODE__MODE_BSP,
      .heartbeat_timeout_ms = heartbeat_timeout_ms,
      /* Batched reads, as the daemon's default --read-batch-ms. */
      .read_batch_ms = 2,
      .handle_signals = 0,
  };
  return o;
}

static void sched_start_at(const char *bind, uint32_t servers, uint32_t workers,
                           int heartbeat_timeout_ms) {
  ps_sched_opts_t o = sched_opts(bind, servers, workers, heartbeat_timeout_ms);
  sched_start_opts(&o);
}

static void loop_close(void) {
  uv_close((uv_handle_t *)&H.stop_async, NULL);
  uv_close((uv_handle_t *)&H.crash_async, NULL);
  uv_run(&H.loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&H.loop), 0);
  H.started = 0;
}

/* Kills the scheduler without a word to anyone, as SIGKILL would. */
static void sched_crash(void) {
  uv_async_send(&H.crash_async);
  ck_assert_int_eq(pthread_join(H.thread, NULL), 0);
  H.joined = 1;
  ck_assert_ptr_null(H.sched);
  loop_close();
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

/* ---- clients: DEALER sockets that speak the protocol ---------------- */

typedef struct {
  void *sock;
  uint32_t id;
  uint64_t epoch; /* latest view seen, sent in every envelope */
  uint64_t next_rid;
  uint32_t live_workers; /* of that view */
  uint64_t clock;        /* sent with pumped heartbeats */
  /* That view whole, as a member keeps it (deltas applied); NULL before
   * the first or after a delta without its base. */
  ps_view_t *held;
} client_t;

#define MAX_CLIENTS 16
static client_t *all_clients[MAX_CLIENTS];
static int nclients;

/* A fake node: a DEALER with a token in its routing id, as ps_member
 * makes one (common/auth.h), unless token is NULL. */
static client_t *client_new_token(const ps_auth_token_t *token) {
  client_t *c = calloc(1, sizeof(*c));
  ck_assert_ptr_nonnull(c);
  c->sock = zmq_socket(H.ctx, ZMQ_DEALER);
  ck_assert_ptr_nonnull(c->sock);
  int zero = 0;
  zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero));
  char why[128];
  if (token)
    ck_assert_int_eq(ps_auth_set_routing_id(c->sock, token, PS_AUTH_USE_MEMBER,
                                            why, sizeof(why)),
                     PS_OK);
  ck_assert_int_eq(zmq_connect(c->sock, H.endpoint), 0);
  ck_assert_int_lt(nclients, MAX_CLIENTS);
  all_clients[nclients++] = c;
  return c;
}

static client_t *client_new(void) {
  ps_auth_token_t t;
  ck_assert_int_eq(ps_auth_token_new(&t), PS_OK);
  return client_new_token(&t);
}

static void teardown_all(void) {
  for (int i = 0; i < nclients; i++) {
    zmq_close(all_clients[i]->sock);
    ps_view_destroy(&all_clients[i]->held);
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
    loop_close();
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
        send_heartbeat(pump[i], pump[i]->clock, pump[i]->epoch);
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
      ps_view_t *v = ps_view_from_pb_base(m.env->view, c->held, NULL, 0);
      ps_view_destroy(&c->held);
      c->held = v;
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

START_TEST(test_schedule_or_optimizer_mismatch_refused) {
  /* Issue #14: the schedule and the optimizers are the model's; a worker
   * that declares other ones is refused like one with another shape. */
  sched_start(1, 2, NO_DEATH_MS);
  model_pb_t a, epochs, adam, warm;
  model_init(&a, 0.1f, 400);
  model_init(&epochs, 0.1f, 400);
  model_init(&adam, 0.1f, 400);
  model_init(&warm, 0.1f, 400);
  Ps__ModelSpec *all[4] = {&a.spec, &epochs.spec, &adam.spec, &warm.spec};
  for (int i = 0; i < 4; i++) {
    all[i]->lr_schedule = PS__LR_SCHEDULE__LR_COSINE;
    all[i]->lr_epochs = 10;
    all[i]->lr_examples_per_epoch = 6400;
    all[i]->lr_worker_batch = 32;
  }
  epochs.spec.lr_epochs = 11; /* another --epochs: another horizon */
  Ps__OptimizerSpec bias_adam = PS__OPTIMIZER_SPEC__INIT;
  bias_adam.kind = PS__OPTIMIZER__OPT_ADAM;
  bias_adam.learning_rate = 0.001f;
  bias_adam.beta1 = 0.9f;
  bias_adam.beta2 = 0.999f;
  bias_adam.epsilon = 1e-8f;
  adam.t[1].optimizer = &bias_adam;
  warm.spec.lr_warmup_steps = 5000; /* longer than the 1000 steps */
  client_t *w1 = client_new(), *w2 = client_new(), *w3 = client_new(),
           *w4 = client_new(), *w5 = client_new();
  join(w1, WORKER, "", RANK_ANY, &a.spec);

  char why[512];
  join_refused(w2, WORKER, "", &epochs.spec, PS_ERR_REFUSED, why, sizeof(why));
  /* 11 epochs of floor(6400 / (2 x 32)) steps against the job's 10. */
  ck_assert_msg(strstr(why, "model differs") && strstr(why, "schedule") &&
                    strstr(why, "1100") && strstr(why, "1000"),
                "reason: %s", why);
  join_refused(w3, WORKER, "", &adam.spec, PS_ERR_REFUSED, why, sizeof(why));
  ck_assert_msg(strstr(why, "fc1.bias") && strstr(why, "adam"), "reason: %s",
                why);
  join_refused(w4, WORKER, "", &warm.spec, PS_ERR_INVAL, why, sizeof(why));
  ck_assert_msg(strstr(why, "warm-up"), "reason: %s", why);
  /* The job's own schedule is still welcome. */
  join(w5, WORKER, "", RANK_ANY, &a.spec);
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
  /* Behind just after the view went out: acked, and no second copy while
   * the first may still be on its way (a heartbeat sent before it came
   * asks for it; a thousand of them held up a publish)... */
  uint64_t rid = send_heartbeat(s, 5, 0);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_ACK, 3000, &m));
  ck_assert_uint_eq(m.request_id, rid);
  ck_assert_uint_eq(m.env->ack->clock, 5);
  ps_msg_close(&m);
  ck_assert(!wait_for(s, PS__ENVELOPE__BODY_VIEW, 300, &m));
  /* ... but a node still behind a second later gets it again. */
  int got = 0;
  for (int i = 0; i < 50 && !got; i++) {
    send_heartbeat(s, 5, 0);
    got = wait_for(s, PS__ENVELOPE__BODY_VIEW, 100, &m);
  }
  ck_assert_msg(got, "no view for a node behind within 5 s");
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

  /* A dead node that speaks up is fenced, with the epoch that declared it
   * dead (it may also have been told unprompted, at once). */
  send_heartbeat(w[1], 0, 1);
  ck_assert(wait_for(w[1], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_FENCED);
  ck_assert_str_eq(m.env->error->message, "fenced: declared dead at epoch 2");
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

/* Views as deltas (View.base_epoch, issue #16): the first view is whole;
 * when a worker dies, the members sent epoch 1 get epoch 2 as a delta that
 * lists that worker only, and it applies to their epoch-1 view; a member
 * whose heartbeats say it holds an older view gets the whole one again.
 * With full_views (ps-scheduler --view-deltas=false) every view is whole. */
static void check_deltas(int full_views) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 1, 2, 300);
  o.full_views = full_views;
  sched_start_opts(&o);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *s = client_new(), *w0 = client_new(), *w1 = client_new();
  join(s, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  join(w0, WORKER, "", 0, &mp.spec);
  join(w1, WORKER, "", 1, &mp.spec);
  client_t *alive[] = {s, w0};
  ps_msg_t m;
  ps_view_t *first = NULL;
  char why[256] = "";
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ck_assert_uint_eq(m.env->view->epoch, 1);
  ck_assert_uint_eq(m.env->view->base_epoch, 0);
  ck_assert_uint_eq(m.env->view->n_nodes, 3);
  first = ps_view_from_pb(m.env->view, why, sizeof(why));
  ck_assert_msg(first != NULL, "%s", why);
  ps_msg_close(&m);
  ck_assert(wait_for(w0, PS__ENVELOPE__BODY_VIEW, 3000, &m));
  ps_msg_close(&m);
  send_heartbeat(w1, 0, 1); /* its last word */

  ck_assert(wait_pumping(s, PS__ENVELOPE__BODY_VIEW, 5000, alive, 2, &m));
  const Ps__View *v = m.env->view;
  ck_assert_uint_eq(v->epoch, 2);
  if (full_views) {
    ck_assert_uint_eq(v->base_epoch, 0);
    ck_assert_uint_eq(v->n_nodes, 3);
  } else {
    ck_assert_uint_eq(v->base_epoch, 1);
    ck_assert_uint_eq(v->n_nodes, 1);
    ck_assert_uint_eq(v->nodes[0]->id, w1->id);
    /* A worker's death moves no range: none is sent. */
    ck_assert(v->ranges_delta);
    ck_assert_uint_eq(v->n_ranges, 0);
    /* Servers' deltas carry the tokens of the nodes they list. */
    ck_assert_uint_eq(strlen(v->nodes[0]->token), PS_AUTH_TOKEN_HEX);
  }
  ps_view_t *second = ps_view_from_pb_base(v, first, why, sizeof(why));
  ck_assert_msg(second != NULL, "%s", why);
  ck_assert_uint_eq(second->nnodes, 3);
  ck_assert_int_eq(ps_view_node(second, w1->id)->state,
                   PS__NODE_STATE__NODE_STATE_DEAD);
  ck_assert_int_eq(ps_view_node(second, w0->id)->state,
                   PS__NODE_STATE__NODE_STATE_ALIVE);
  ck_assert_str_eq(ps_view_node(second, s->id)->address,
                   "tcp://127.0.0.1:9001");
  ck_assert_str_eq(ps_view_node(second, w0->id)->token,
                   ps_view_node(first, w0->id)->token);
  ck_assert_uint_eq(second->live_workers, 1);
  ck_assert_uint_eq(second->nranges, 1);
  ck_assert(ps_range_equal(&second->ranges[0], &first->ranges[0]));
  ps_msg_close(&m);
  ck_assert(wait_pumping(w0, PS__ENVELOPE__BODY_VIEW, 3000, alive, 2, &m));
  ck_assert_uint_eq(m.env->view->epoch, 2);
  ck_assert_uint_eq(m.env->view->base_epoch, full_views ? 0 : 1);
  /* Workers' views carry no tokens, deltas neither. */
  for (size_t i = 0; i < m.env->view->n_nodes; i++)
    ck_assert_str_eq(m.env->view->nodes[i]->token, "");
  ps_msg_close(&m);

  /* The server says it holds epoch 1 (as if epoch 2 were lost): it gets
   * epoch 2 again, whole, once the resend is due. */
  s->epoch = 1;
  ck_assert(wait_pumping(s, PS__ENVELOPE__BODY_VIEW, 5000, alive, 2, &m));
  ck_assert_uint_eq(m.env->view->epoch, 2);
  ck_assert_uint_eq(m.env->view->base_epoch, 0);
  ck_assert_uint_eq(m.env->view->n_nodes, 3);
  ps_msg_close(&m);
  ps_view_destroy(&first);
  ps_view_destroy(&second);
  teardown_all();
}

START_TEST(test_view_deltas) {
  check_deltas(0);
}
END_TEST

START_TEST(test_full_views) {
  check_deltas(1);
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

/* A node's identity is the connection it registered on (common/auth.h):
 * another connection that names it as the sender of a Shutdown, a Done or
 * a heartbeat is refused, and nothing changes; a connection without a
 * token cannot register. */
START_TEST(test_impersonation_refused) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *s, *w[1];
  form_cluster(&s, w, 1);
  client_t *evil = client_new();
  ps_msg_t m;
  /* Shutdown (leave) in the server's name. */
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = "spoofed";
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  evil->id = s->id;
  send_env(evil, &env, 1);
  ck_assert(wait_for(evil, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_PERMISSION_DENIED);
  ps_msg_close(&m);
  /* Done in the worker's name, a heartbeat in the server's. */
  evil->id = w[0]->id;
  send_done(evil, 1);
  ck_assert(wait_for(evil, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_PERMISSION_DENIED);
  ps_msg_close(&m);
  evil->id = s->id;
  send_heartbeat(evil, 0, 1);
  ck_assert(wait_for(evil, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_PERMISSION_DENIED);
  ps_msg_close(&m);
  /* Nothing changed: both still alive, the job runs, the real nodes are
   * heard. */
  send_status_request(evil, 0);
  ck_assert(wait_for(evil, PS__ENVELOPE__BODY_STATUS, 3000, &m));
  for (size_t i = 0; i < m.env->status->view->n_nodes; i++)
    ck_assert_int_eq(m.env->status->view->nodes[i]->state,
                     PS__NODE_STATE__NODE_STATE_ALIVE);
  /* psctl's view of the cluster carries no token. */
  for (size_t i = 0; i < m.env->status->view->n_nodes; i++)
    ck_assert_str_eq(m.env->status->view->nodes[i]->token, "");
  ps_msg_close(&m);
  send_heartbeat(s, 0, 1);
  ck_assert(wait_for(s, PS__ENVELOPE__BODY_ACK, 3000, &m));
  ps_msg_close(&m);
  /* No token in the routing id: no registration. */
  client_t *anon = client_new_token(NULL);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  Ps__Register r = PS__REGISTER__INIT;
  r.role = PS__ROLE__ROLE_WORKER;
  r.model = &mp.spec;
  r.rank = RANK_ANY;
  Ps__Envelope renv = PS__ENVELOPE__INIT;
  renv.body_case = PS__ENVELOPE__BODY_REGISTER;
  renv.register_ = &r;
  send_env(anon, &renv, 0);
  ck_assert(wait_for(anon, PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_PERMISSION_DENIED);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

/* psctl checkpoint --dir stays inside --checkpoint-dir. */
START_TEST(test_checkpoint_dir_confined) {
  char out[256], why[128];
  ck_assert_int_eq(
      ps__sched_ckpt_confine("/a/b", "", out, sizeof(out), why, sizeof(why)),
      PS_OK);
  ck_assert_str_eq(out, "/a/b");
  ck_assert_int_eq(ps__sched_ckpt_confine("/a/b/", "x/y", out, sizeof(out), why,
                                          sizeof(why)),
                   PS_OK);
  ck_assert_str_eq(out, "/a/b/x/y");
  ck_assert_int_eq(ps__sched_ckpt_confine("/a/b", "/a/b/x", out, sizeof(out),
                                          why, sizeof(why)),
                   PS_OK);
  ck_assert_str_eq(out, "/a/b/x");
  const char *bad[] = {"/a/bc",     "/etc",      "/a", "../x",
                       "x/../../y", "/a/b/../c", "..", "x/.."};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(
        ps__sched_ckpt_confine("/a/b", bad[i], out, sizeof(out), why,
                               sizeof(why)) == PS_ERR_PERMISSION_DENIED,
        "%s was let out of /a/b", bad[i]);
}
END_TEST

/* ---- placement (pure) ------------------------------------------------ */

/* r's chain as "primary|backup backup*" (* = syncing). */
static const char *place_chain(const ps_range_t *r, char *buf, size_t len) {
  int n = snprintf(buf, len, "%u|", r->server_id);
  for (uint32_t k = 0; k < r->nbackups; k++)
    n += snprintf(buf + n, len - (size_t)n, "%s%u%s", k ? " " : "",
                  r->backups[k], (r->syncing_mask >> k) & 1u ? "*" : "");
  return buf;
}

static void expect_placed(const ps_range_t *r, size_t n,
                          const char *const *want) {
  char buf[64];
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(strcmp(place_chain(&r[i], buf, sizeof(buf)), want[i]) == 0,
                  "range %zu: %s, expected %s", i, buf, want[i]);
}

/* Ranges from chains in the notation above. */
static void set_chains(ps_range_t *r, size_t n, const char *const *chains) {
  for (size_t i = 0; i < n; i++) {
    memset(&r[i], 0, sizeof(r[i]));
    r[i].begin = i * 100;
    r[i].end = (i + 1) * 100;
    const char *p = chains[i];
    char *end;
    r[i].server_id = (uint32_t)strtoul(p, &end, 10);
    p = end + 1; /* '|' */
    while (*p) {
      uint32_t id = (uint32_t)strtoul(p, &end, 10);
      p = end;
      if (*p == '*') {
        r[i].syncing_mask |= 1u << r[i].nbackups;
        p++;
      }
      r[i].backups[r[i].nbackups++] = id;
      if (*p == ' ') p++;
    }
  }
}

START_TEST(test_place_first) {
  ps_range_t r[4];
  uint32_t ids[4] = {1, 2, 3, 7};
  ps_place_first(r, 4, ids, 4, 2);
  const char *want2[] = {"1|2", "2|3", "3|7", "7|1"};
  expect_placed(r, 4, want2);
  ps_place_first(r, 4, ids, 4, 3);
  const char *want3[] = {"1|2 3", "2|3 7", "3|7 1", "7|1 2"};
  expect_placed(r, 4, want3);
  /* More copies than servers, or than PS_MAX_REPLICAS: capped. */
  ps_place_first(r, 2, ids, 2, 9);
  const char *capped[] = {"1|2", "2|1"};
  expect_placed(r, 2, capped);
  ck_assert_uint_eq(ps_place_copies(9, 100), PS_MAX_REPLICAS);
  ck_assert_uint_eq(ps_place_copies(3, 2), 2);
  ck_assert_uint_eq(ps_place_copies(0, 5), 1);
  ps_place_first(r, 1, ids, 1, 2);
  const char *one[] = {"1|"};
  expect_placed(r, 1, one);
}
END_TEST

START_TEST(test_place_promotes_first_synced_backup) {
  /* Range 0's first backup is still syncing: the second is promoted, and
   * the first stays syncing (now towards the new primary). */
  ps_range_t r[4];
  const char *before[] = {"1|2* 3 4", "2|3 4 1", "3|4 1 2", "4|1 2 3"};
  set_chains(r, 4, before);
  ps_place_server_t sv[] = {
      {1, 0, 0, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}, {4, 1, 0, 0}, {5, 1, 0, 0}};
  ck_assert_uint_eq(ps_place_repair(r, 4, sv, 5, 4), 4);
  /* Every chain lost 1 and is topped up from 5, the only server outside
   * them all; the promoted range's others resync. */
  const char *after[] = {"3|2* 4* 5*", "2|3 4 5*", "3|4 2 5*", "4|2 3 5*"};
  expect_placed(r, 4, after);
  /* Nothing more to do: no change, no churn. */
  ck_assert_uint_eq(ps_place_repair(r, 4, sv, 5, 4), 0);
  expect_placed(r, 4, after);
}
END_TEST

START_TEST(test_place_top_up_fewest_first) {
  /* 1 dies. Range 0 promotes 2; ranges 0 and 2 need a backup. Server 4
   * holds nothing, so both take it before anyone else. */
  ps_range_t r[3];
  const char *before[] = {"1|2", "2|3", "3|1"};
  set_chains(r, 3, before);
  ps_place_server_t sv[] = {
      {1, 0, 0, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}, {4, 1, 0, 0}};
  ck_assert_uint_eq(ps_place_repair(r, 3, sv, 4, 2), 2);
  const char *after[] = {"2|4*", "2|3", "3|4*"};
  expect_placed(r, 3, after);
  /* Without a spare, ties go in ring order after the primary. */
  set_chains(r, 3, before);
  ps_place_server_t three[] = {{1, 0, 0, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}};
  ps_place_repair(r, 3, three, 3, 2);
  const char *ring[] = {"2|3*", "2|3", "3|2*"};
  expect_placed(r, 3, ring);
}
END_TEST

START_TEST(test_place_unavailable) {
  /* Its only backup is syncing: nobody holds every acked update, so the
   * dead primary stays and nothing is topped up; the other range goes on. */
  ps_range_t r[2];
  const char *before[] = {"1|2*", "2|1"};
  set_chains(r, 2, before);
  ps_place_server_t sv[] = {{1, 0, 0, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}};
  ck_assert_uint_eq(ps_place_repair(r, 2, sv, 3, 2), 1);
  const char *after[] = {"1|2*", "2|3*"};
  expect_placed(r, 2, after);
  ck_assert_int_eq(ps_place_state(0, 1, 1, 2), PS_PLACE_UNAVAILABLE);
  /* Every server dead: nothing moves, nothing breaks. */
  ps_place_server_t none[] = {{1, 0, 0, 0}, {2, 0, 0, 0}, {3, 0, 0, 0}};
  ps_place_repair(r, 2, none, 3, 2);
  const char *dead[] = {"1|", "2|"};
  expect_placed(r, 2, dead);
}
END_TEST

START_TEST(test_place_spare_and_synced) {
  /* Degraded ranges (alone after deaths) take a new spare as a syncing
   * backup; ids not in the list count as dead. */
  ps_range_t r[3];
  const char *before[] = {"3|", "3|2", "3|"};
  set_chains(r, 3, before);
  ps_place_server_t sv[] = {{3, 1, 0, 0}, {5, 1, 0, 0}};
  ck_assert_uint_eq(ps_place_repair(r, 3, sv, 2, 2), 3);
  const char *after[] = {"3|5*", "3|5*", "3|5*"};
  expect_placed(r, 3, after);
  ck_assert_int_eq(ps_place_state(1, 1, 1, 2), PS_PLACE_SYNCING);
  ck_assert(ps_place_synced(&r[1], 5));
  ck_assert(!ps_place_synced(&r[1], 5)); /* a repeat */
  ck_assert(!ps_place_synced(&r[1], 4)); /* not a backup */
  ck_assert_uint_eq(ps_place_nsyncing(&r[1]), 0);
  ck_assert_int_eq(ps_place_state(1, 1, 0, 2), PS_PLACE_OK);
  ck_assert_int_eq(ps_place_state(1, 0, 0, 2), PS_PLACE_DEGRADED);
  ck_assert_str_eq(ps_place_state_name(PS_PLACE_DEGRADED), "degraded");

  /* Removing a backup from the middle keeps the others' syncing bits. */
  const char *mid[] = {"1|2* 3 4*"};
  set_chains(r, 1, mid);
  ps_place_server_t sv2[] = {
      {1, 1, 0, 0}, {2, 1, 0, 0}, {3, 0, 0, 0}, {4, 1, 0, 0}};
  ps_place_repair(r, 1, sv2, 4, 3);
  const char *kept[] = {"1|2* 4*"};
  expect_placed(r, 1, kept);
}
END_TEST

START_TEST(test_place_handover) {
  ps_range_t r[1];
  const char *before[] = {"1|2 3* 4"};
  set_chains(r, 1, before);
  /* Not a backup, or a syncing one: refused, nothing changes. */
  ck_assert_int_eq(ps_place_handover(&r[0], 9), 0);
  ck_assert_int_eq(ps_place_handover(&r[0], 3), 0);
  expect_placed(r, 1, before);
  /* The old primary takes the new one's place, in step; others stay. */
  ck_assert_int_eq(ps_place_handover(&r[0], 4), 1);
  const char *after[] = {"4|2 3* 1"};
  expect_placed(r, 1, after);
}
END_TEST

START_TEST(test_place_rebalance_after_rejoin) {
  /* Item: after 1 died, 2 promoted for range 0; 4 (1's restart) holds
   * synced backups of everything but leads nothing. */
  ps_range_t r[3];
  const char *lopsided[] = {"2|4", "2|4", "3|4"};
  set_chains(r, 3, lopsided);
  ps_place_server_t sv[] = {{2, 1, 0, 0}, {3, 1, 0, 0}, {4, 1, 0, 0}};
  size_t j = 99;
  uint32_t to = 0;
  /* Without rebalance there is nothing to do. */
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 0, &j, &to), 0);
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 1, &j, &to), 1);
  ck_assert_uint_eq(j, 0);
  ck_assert_uint_eq(to, 4);
  ck_assert(ps_place_handover(&r[j], to));
  /* 2, 3 and 4 lead one range each now: balanced, no further move. */
  ck_assert_uint_eq(ps_place_primaries(r, 3, 2), 1);
  ck_assert_uint_eq(ps_place_primaries(r, 3, 4), 1);
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 1, &j, &to), 0);
  /* A gap of one is not worth a move; a syncing chain never moves; nor
   * to a dead server. */
  const char *near[] = {"2|3", "2|3", "3|2"};
  set_chains(r, 3, near);
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 1, &j, &to), 0);
  const char *syncing[] = {"2|4*", "2|4*", "3|4"};
  set_chains(r, 3, syncing);
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 1, &j, &to), 0);
  set_chains(r, 3, lopsided);
  ps_place_server_t dead4[] = {{2, 1, 0, 0}, {3, 1, 0, 0}, {4, 0, 0, 0}};
  ck_assert_int_eq(ps_place_next_move(r, 3, dead4, 3, 1, &j, &to), 0);
}
END_TEST

START_TEST(test_place_drain) {
  /* 1 leaves: its ranges go to their least loaded usable backup, one at a
   * time, even with rebalance off; then nothing is left to move. */
  ps_range_t r[3];
  const char *before[] = {"1|2 3", "2|3 1", "3|1 2"};
  set_chains(r, 3, before);
  ps_place_server_t sv[] = {{1, 1, 1, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}};
  size_t j = 99;
  uint32_t to = 0;
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 0, &j, &to), 1);
  ck_assert_uint_eq(j, 0);
  ck_assert_uint_eq(to, 2); /* 2 and 3 lead one each: the first */
  ck_assert(ps_place_handover(&r[j], to));
  ck_assert_uint_eq(ps_place_primaries(r, 3, 1), 0);
  ck_assert_int_eq(ps_place_next_move(r, 3, sv, 3, 0, &j, &to), 0);
  /* Then repair drops nothing while 1 is alive, and gives it nothing new
   * when a chain needs a backup: 4 takes it. */
  const char *short_chain[] = {"2|", "2|3", "3|2"};
  set_chains(r, 3, short_chain);
  ps_place_server_t sv4[] = {
      {1, 1, 1, 0}, {2, 1, 0, 0}, {3, 1, 0, 0}, {4, 1, 0, 0}};
  ck_assert_uint_eq(ps_place_repair(r, 3, sv4, 4, 2), 1);
  const char *topped[] = {"2|4*", "2|3", "3|2"};
  expect_placed(r, 3, topped);
  /* A range whose only synced backup is leaving promotes it rather than
   * losing the range. */
  const char *last[] = {"5|1"};
  set_chains(r, 1, last);
  ps_place_server_t sv5[] = {{1, 1, 1, 0}, {5, 0, 0, 0}};
  ps_place_repair(r, 1, sv5, 2, 2);
  const char *kept[] = {"1|"};
  expect_placed(r, 1, kept);
}
END_TEST

/* Runs elastic re-sharding to its end the way the scheduler does: a step
 * at a time, an added backup synced before the next, primaries evened out
 * (ps_place_next_move) once the copies are. Checks at every step that no
 * range has fewer copies than it needs or more than one extra, and that
 * it ends within bound steps. Returns the steps taken. */
static int reshard(ps_range_t *r, size_t n, const ps_place_server_t *sv,
                   size_t nsv, uint32_t need, int bound) {
  int steps = 0;
  for (;;) {
    ck_assert_int_lt(steps, bound);
    ps_place_step_t st;
    size_t j = 0;
    uint32_t to = 0;
    if (ps_place_next_step(r, n, sv, nsv, 2, &st)) {
      if (st.kind == PS_PLACE_STEP_MOVE) {
        ck_assert(ps_place_handover(&r[st.range], st.server));
      } else {
        ck_assert(ps_place_apply(&r[st.range], &st));
        if (st.kind == PS_PLACE_STEP_ADD)
          ck_assert(ps_place_synced(&r[st.range], st.server));
      }
    } else if (ps_place_next_move(r, n, sv, nsv, 1, &j, &to)) {
      ck_assert(ps_place_handover(&r[j], to));
    } else {
      return steps;
    }
    steps++;
    for (size_t i = 0; i < n; i++) {
      ck_assert_uint_ge(r[i].nbackups + 1, need);
      ck_assert_uint_le(r[i].nbackups + 1, need + 1);
    }
  }
}

START_TEST(test_place_elastic_grow_and_shrink) {
  /* Twelve ranges on 1 and 2, two copies each. */
  ps_range_t r[12];
  uint32_t ids[] = {1, 2};
  ps_place_first(r, 12, ids, 2, 2);
  ps_place_server_t sv[] = {
      {1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 1}, {4, 1, 0, 1}};
  /* 3 and 4 join: each of the four ends with 6 copies and 3 primaries. */
  int grow = reshard(r, 12, sv, 4, 2, 100);
  ck_assert_int_gt(grow, 0);
  for (uint32_t id = 1; id <= 4; id++) {
    ck_assert_uint_eq(ps_place_held(r, 12, id), 6);
    ck_assert_uint_eq(ps_place_primaries(r, 12, id), 3);
  }
  /* Each copy that moved cost an ADD and a DROP (and perhaps a MOVE first):
   * 12 copies move to 3 and 4, so no more than 3 x 12 + the primaries'. */
  ck_assert_int_le(grow, 3 * 12 + 12);
  /* 2 leaves: it ends with no copy, the three others hold 8 each and
   * lead 4 each, and nothing is left to do. */
  sv[1].leaving = 1;
  reshard(r, 12, sv, 4, 2, 100);
  ck_assert_uint_eq(ps_place_held(r, 12, 2), 0);
  for (uint32_t id = 1; id <= 4; id++) {
    if (id == 2) continue;
    ck_assert_uint_eq(ps_place_held(r, 12, id), 8);
    ck_assert_uint_eq(ps_place_primaries(r, 12, id), 4);
  }
}
END_TEST

START_TEST(test_place_elastic_steps) {
  ps_range_t r[2];
  ps_place_step_t st;
  /* A spare (not active) is not given a share... */
  const char *two[] = {"1|2", "2|1"};
  set_chains(r, 2, two);
  ps_place_server_t spare[] = {{1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 0}};
  ck_assert_int_eq(ps_place_next_step(r, 2, spare, 3, 2, &st), 0);
  ck_assert_int_eq(st.kind, PS_PLACE_STEP_NONE);
  /* ...but takes the copies of a leaving server when no active one can. */
  spare[1].leaving = 1;
  ck_assert_int_eq(ps_place_next_step(r, 2, spare, 3, 2, &st), 1);
  ck_assert_int_eq(st.kind, PS_PLACE_STEP_ADD);
  ck_assert_uint_eq(st.range, 0);
  ck_assert_uint_eq(st.server, 3);
  /* A syncing range is left alone; the extra copy that synced goes from
   * the leaving server. */
  ck_assert(ps_place_apply(&r[0], &st));
  ck_assert_int_eq(ps_place_next_step(r, 1, spare, 3, 2, &st), 0);
  ck_assert(ps_place_synced(&r[0], 3));
  ck_assert_int_eq(ps_place_next_step(r, 2, spare, 3, 2, &st), 1);
  ck_assert_int_eq(st.kind, PS_PLACE_STEP_DROP);
  ck_assert_uint_eq(st.server, 2);
  /* An extra copy whose most loaded holder is the primary: the primary
   * hands the range over first. */
  const char *heavy[] = {"1|2 3", "1|2"};
  set_chains(r, 2, heavy);
  ps_place_server_t all[] = {{1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 1}};
  ck_assert_int_eq(ps_place_next_step(r, 2, all, 3, 2, &st), 1);
  ck_assert_int_eq(st.kind, PS_PLACE_STEP_DROP);
  ck_assert_uint_eq(st.server, 2); /* 1 and 2 hold two each: the backup */
  const char *lead[] = {"1|3 2", "1|4"};
  set_chains(r, 2, lead);
  ps_place_server_t four[] = {
      {1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 1}, {4, 1, 0, 1}};
  ck_assert_int_eq(ps_place_next_step(r, 2, four, 4, 2, &st), 1);
  ck_assert_int_eq(st.kind, PS_PLACE_STEP_MOVE);
  ck_assert_uint_eq(st.range, 0);
  ck_assert_uint_eq(st.server, 3);
  /* No room for a copy more (PS_MAX_REPLICAS): nothing to add. */
  const char *full[] = {"1|2 3 4", "1|2 3 4"};
  set_chains(r, 2, full);
  ps_place_server_t five[] = {
      {1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 1}, {4, 1, 0, 1}, {5, 1, 0, 1}};
  ck_assert_int_eq(ps_place_next_step(r, 2, five, 5, 4, &st), 0);
}
END_TEST

/* ---- replication, failover, joins ----------------------------------- */

/* A range's chain as "primary|backup backup*": * marks a syncing backup. */
static const char *chain(const Ps__KeyRange *r, char *buf, size_t len) {
  int n = snprintf(buf, len, "%u|", r->server_id);
  for (size_t k = 0; k < r->n_backups; k++) {
    int syncing = 0;
    for (size_t j = 0; j < r->n_syncing; j++)
      syncing |= r->syncing[j] == r->backups[k];
    n += snprintf(buf + n, len - (size_t)n, "%s%u%s", k ? " " : "",
                  r->backups[k], syncing ? "*" : "");
  }
  return buf;
}

/* The same for the view c holds (deltas applied). */
static void expect_held_chains(const client_t *c, const char *const *want,
                               size_t n) {
  ck_assert_msg(c->held != NULL, "no whole view at epoch %llu",
                (unsigned long long)c->epoch);
  const ps_view_t *v = c->held;
  ck_assert_uint_eq(v->nranges, n);
  for (size_t i = 0; i < n; i++) {
    const ps_range_t *r = &v->ranges[i];
    char buf[64];
    int len = snprintf(buf, sizeof(buf), "%u|", r->server_id);
    for (uint32_t k = 0; k < r->nbackups; k++)
      len +=
          snprintf(buf + len, sizeof(buf) - (size_t)len, "%s%u%s", k ? " " : "",
                   r->backups[k], (r->syncing_mask >> k) & 1u ? "*" : "");
    ck_assert_msg(strcmp(buf, want[i]) == 0,
                  "epoch %llu range %zu: chain %s, expected %s",
                  (unsigned long long)v->epoch, i, buf, want[i]);
  }
}

/* A whole view's chains (psctl status's; a delta's are partial). */
static void expect_chains(const Ps__View *v, const char *const *want,
                          size_t n) {
  char buf[64];
  ck_assert_uint_eq(v->base_epoch, 0);
  ck_assert_uint_eq(v->n_ranges, n);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(strcmp(chain(v->ranges[i], buf, sizeof(buf)), want[i]) == 0,
                  "epoch %llu range %zu: chain %s, expected %s",
                  (unsigned long long)v->epoch, i, buf, want[i]);
}

static const Ps__NodeInfo *view_node(const Ps__View *v, uint32_t id) {
  for (size_t i = 0; i < v->n_nodes; i++)
    if (v->nodes[i]->id == id) return v->nodes[i];
  return NULL;
}

/* The next view on c of at least epoch, heartbeating for pump meanwhile. */
static ps_msg_t wait_view(client_t *c, uint64_t epoch, client_t **pump,
                          int npump) {
  ps_msg_t m;
  for (;;) {
    ck_assert_msg(
        wait_pumping(c, PS__ENVELOPE__BODY_VIEW, 5000, pump, npump, &m),
        "no view of epoch %llu", (unsigned long long)epoch);
    if (m.env->view->epoch >= epoch) return m;
    ps_msg_close(&m);
  }
}

/* The scheduler's Status, asked on c's own connection, so that it comes
 * after whatever c sent before. Asked again if unanswered: a request sent
 * while the connection is being re-established is lost. */
static ps_msg_t status_on(client_t *c, client_t **pump, int npump) {
  ps_msg_t m;
  for (int attempt = 0; attempt < 10; attempt++) {
    uint64_t rid = send_status_request(c, 0);
    while (wait_pumping(c, PS__ENVELOPE__BODY_STATUS, 500, pump, npump, &m)) {
      if (m.request_id == rid) return m;
      ps_msg_close(&m);
    }
  }
  ck_abort_msg("no Status within 5 s");
  return m;
}

static void send_replica_synced(client_t *c, const Ps__KeyRange *r,
                                uint32_t backup) {
  Ps__ReplicaSynced rs = PS__REPLICA_SYNCED__INIT;
  rs.range_begin = r->begin;
  rs.range_end = r->end;
  rs.backup = backup;
  rs.bytes = (r->end - r->begin) * 4;
  rs.duration_ms = 3;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SYNCED;
  env.replica_synced = &rs;
  send_env(c, &env, c->epoch);
}

static void send_join_reply(client_t *c, uint32_t node, uint64_t join_clock,
                            int ok, uint64_t clock) {
  Ps__JoinReply jr = PS__JOIN_REPLY__INIT;
  jr.node = node;
  jr.join_clock = join_clock;
  jr.ok = ok;
  jr.clock = clock;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_JOIN_REPLY;
  env.join_reply = &jr;
  send_env(c, &env, c->epoch);
}

/* nservers servers on ports 9001.. and one worker, all holding view 1. */
static void form_replicated(client_t **srv, int nservers, client_t **w) {
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  for (int i = 0; i < nservers; i++) {
    char addr[64];
    snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%d", 9001 + i);
    srv[i] = client_new();
    join(srv[i], SERVER, addr, RANK_ANY, NULL);
  }
  *w = client_new();
  join(*w, WORKER, "", RANK_ANY, &mp.spec);
  for (int i = 0; i <= nservers; i++) {
    client_t *c = i < nservers ? srv[i] : *w;
    ps_msg_t m = wait_view(c, 1, NULL, 0);
    ps_msg_close(&m);
  }
}

START_TEST(test_first_view_replicated) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 3, 1, NO_DEATH_MS);
  o.replication = 3;
  sched_start_opts(&o);
  client_t *srv[3], *w;
  form_replicated(srv, 3, &w);
  ps_msg_t m = status_on(w, NULL, 0);
  const Ps__View *v = m.env->status->view;
  ck_assert_uint_eq(v->replication, 3);
  /* Backups are the next servers in ring order; nobody syncs. */
  const char *want[] = {"1|2 3", "2|3 1", "3|1 2"};
  expect_chains(v, want, 3);
  char why[256];
  ps_view_t *pv = ps_view_from_pb(v, why, sizeof(why));
  ck_assert_msg(pv != NULL, "%s", why);
  ck_assert_uint_eq(pv->ranges[2].nbackups, 2);
  ck_assert_uint_eq(pv->ranges[2].syncing_mask, 0);
  ps_view_destroy(&pv);
  ps_msg_close(&m);
  teardown_all();

  /* The default, 2, is capped by a single server. */
  sched_start(1, 1, NO_DEATH_MS);
  form_replicated(srv, 1, &w);
  m = status_on(w, NULL, 0);
  ck_assert_uint_eq(m.env->status->view->replication, 1);
  const char *one[] = {"1|"};
  expect_chains(m.env->status->view, one, 1);
  ps_msg_close(&m);
  teardown_all();

  o.replication = PS_MAX_REPLICAS + 1;
  int err = 0;
  char why2[256] = "";
  H.ctx = zmq_ctx_new();
  uv_loop_t loop;
  uv_loop_init(&loop);
  ck_assert_ptr_null(ps_sched_new(&loop, H.ctx, &o, &err, why2, sizeof(why2)));
  ck_assert_msg(strstr(why2, "replication") != NULL, "%s", why2);
  o.replication = 2;
  o.read_batch_ms = -1;
  ck_assert_ptr_null(ps_sched_new(&loop, H.ctx, &o, &err, why2, sizeof(why2)));
  ck_assert_msg(strstr(why2, "read-batch-ms -1") != NULL, "%s", why2);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

START_TEST(test_failover_spares_and_fencing) {
  sched_start(3, 1, 300);
  client_t *srv[3], *w;
  form_replicated(srv, 3, &w);
  const char *first[] = {"1|2", "2|3", "3|1"};
  ps_msg_t m = status_on(w, NULL, 0);
  expect_chains(m.env->status->view, first, 3);
  ps_msg_close(&m);

  /* Server 1 goes silent: its range fails over to its backup, and both
   * chains it was in are topped up (fewest replicas first). */
  client_t *alive[] = {srv[1], srv[2], w};
  m = wait_view(srv[1], 2, alive, 3);
  /* A delta: the changed ranges and the dead node (applied to the epoch-1
   * view srv[1] holds). */
  ck_assert_uint_eq(m.env->view->base_epoch, 1);
  ck_assert(m.env->view->ranges_delta);
  const char *after1[] = {"2|3*", "2|3", "3|2*"};
  expect_held_chains(srv[1], after1, 3);
  ck_assert_int_eq(ps_view_node(srv[1]->held, 1)->state,
                   PS__NODE_STATE__NODE_STATE_DEAD);
  Ps__KeyRange r0 = PS__KEY_RANGE__INIT;
  r0.begin = srv[1]->held->ranges[0].begin;
  r0.end = srv[1]->held->ranges[0].end;
  ps_msg_close(&m);

  /* Only the range's primary can say a backup is synced. */
  send_replica_synced(srv[2], &r0, 3);
  send_replica_synced(srv[1], &r0, 3);
  m = status_on(srv[1], alive, 3);
  const char *synced[] = {"2|3", "2|3", "3|2*"};
  expect_chains(m.env->status->view, synced, 3);
  ck_assert_uint_eq(m.env->status->view->epoch, 2); /* no new view for it */
  ps_msg_close(&m);

  /* Server 1 comes back from a pause: fenced, with the epoch. */
  send_heartbeat(srv[0], 0, 1);
  ck_assert(wait_for(srv[0], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_FENCED);
  ck_assert_str_eq(m.env->error->message, "fenced: declared dead at epoch 2");
  ps_msg_close(&m);

  /* Server 2 dies too: 3 holds everything; its synced copy of range 0 is
   * promoted, range 2 loses its syncing backup. */
  client_t *alive2[] = {srv[2], w};
  m = wait_view(srv[2], 3, alive2, 2);
  const char *after2[] = {"3|", "3|", "3|"};
  expect_held_chains(srv[2], after2, 3);
  ck_assert_uint_eq(m.env->view->replication, 2);
  ps_msg_close(&m);

  /* A restarted server at a dead one's address is a spare: it backs every
   * range at once. */
  client_t *spare = client_new();
  join(spare, SERVER, "tcp://127.0.0.1:9001", RANK_ANY, NULL);
  ck_assert_uint_eq(spare->id, 5);
  client_t *alive3[] = {srv[2], w, spare};
  m = wait_view(srv[2], 4, alive3, 3);
  const char *spared[] = {"3|5*", "3|5*", "3|5*"};
  expect_held_chains(srv[2], spared, 3);
  ps_msg_close(&m);
  /* A third alive server is welcome (nothing to back), a fourth is not. */
  client_t *extra = client_new(), *too_many = client_new();
  join(extra, SERVER, "tcp://127.0.0.1:9011", RANK_ANY, NULL);
  m = wait_view(srv[2], 5, alive3, 3);
  expect_held_chains(srv[2], spared, 3);
  ck_assert_int_eq(ps_view_node(srv[2]->held, extra->id)->state,
                   PS__NODE_STATE__NODE_STATE_ALIVE);
  ps_msg_close(&m);
  char why[512];
  join_refused(too_many, SERVER, "tcp://127.0.0.1:9012", NULL, PS_ERR_REFUSED,
               why, sizeof(why));
  ck_assert_msg(strstr(why, "expected servers") != NULL, "%s", why);
  teardown_all();
}
END_TEST

START_TEST(test_range_unavailable) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 2, 1, 300);
  o.replication = 1;
  o.checkpoint_dir = "/nonexistent-ps-test-dir"; /* never reached */
  sched_start_opts(&o);
  client_t *srv[2], *w;
  form_replicated(srv, 2, &w);
  client_t *alive[] = {srv[1], w};
  ps_msg_t m = wait_view(srv[1], 2, alive, 2);
  /* Nobody else has range 0: it stays with its dead primary. */
  const char *want[] = {"1|", "2|"};
  expect_held_chains(srv[1], want, 2);
  ck_assert_int_eq(ps_view_node(srv[1]->held, 1)->state,
                   PS__NODE_STATE__NODE_STATE_DEAD);
  ps_msg_close(&m);

  /* A checkpoint cannot cover it. */
  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  cc.dir = "";
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_COMMAND;
  env.checkpoint_command = &cc;
  client_t *admin = client_new();
  send_env(admin, &env, 0);
  ck_assert(wait_pumping(admin, PS__ENVELOPE__BODY_ERROR, 3000, alive, 2, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_UNAVAILABLE);
  ck_assert_msg(strstr(m.env->error->message, "server 1") != NULL, "%s",
                m.env->error->message);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

START_TEST(test_worker_rejoins_bsp) {
  sched_start(1, 2, 300);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  s->clock = 10;
  client_t *alive[] = {s, w[0]};
  ps_msg_t m = wait_view(s, 2, alive, 2);
  ck_assert_uint_eq(m.env->view->live_workers, 1);
  ps_msg_close(&m);

  /* A restarted worker takes the dead one's slot and rank; it joins two
   * steps (no step rate known yet) past the server's clock. */
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *back = client_new();
  ck_assert_uint_eq(join(back, WORKER, "", RANK_ANY, &mp.spec), 1);
  client_t *alive2[] = {s, w[0], back};
  m = wait_view(s, 3, alive2, 3);
  const Ps__NodeInfo *ni = view_node(m.env->view, back->id);
  ck_assert_ptr_nonnull(ni);
  ck_assert(ni->joining);
  /* At least 2 steps ahead; more at the rate the clock's jump suggests. */
  uint64_t j1 = ni->join_clock;
  ck_assert_uint_ge(j1, 12);
  ck_assert_uint_eq(ni->rank, 1);
  ck_assert_uint_eq(m.env->view->live_workers, 2);
  ps_msg_close(&m);

  /* The server is already past it: a later step. */
  send_join_reply(s, back->id, j1, 0, j1 + 30);
  m = wait_view(s, 4, alive2, 3);
  ni = view_node(m.env->view, back->id);
  ck_assert(ni->joining);
  uint64_t j2 = ni->join_clock;
  ck_assert_uint_ge(j2, j1 + 32);
  ps_msg_close(&m);
  /* A confirmation of the old step counts for nothing. */
  send_join_reply(s, back->id, j1, 1, j1);
  uint64_t until = ps_now_ms() + 300;
  /* Views may come again (a heartbeat at the old epoch asks for it), but
   * no newer one. */
  while (ps_now_ms() < until &&
         wait_pumping(s, PS__ENVELOPE__BODY_VIEW, 100, alive2, 3, &m)) {
    ck_assert_uint_eq(m.env->view->epoch, 4);
    ps_msg_close(&m);
  }
  send_join_reply(s, back->id, j2, 1, j1 + 31);
  m = wait_view(s, 5, alive2, 3);
  ni = view_node(m.env->view, back->id);
  ck_assert(!ni->joining);
  ck_assert_uint_eq(ni->join_clock, j2);
  ps_msg_close(&m);

  /* Both slots are taken again. */
  char why[512];
  client_t *third = client_new();
  join_refused(third, WORKER, "", &mp.spec, PS_ERR_REFUSED, why, sizeof(why));
  ck_assert_msg(strstr(why, "expected workers") != NULL, "%s", why);
  teardown_all();
}
END_TEST

START_TEST(test_worker_rejoins_asp) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 1, 2, 300);
  o.mode = PS__CONSISTENCY_MODE__MODE_ASP;
  sched_start_opts(&o);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  s->clock = 10;
  client_t *alive[] = {s, w[0]};
  ps_msg_t m = wait_view(s, 2, alive, 2);
  ps_msg_close(&m);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *back = client_new();
  ck_assert_uint_eq(join(back, WORKER, "", 1, &mp.spec), 1);
  client_t *alive2[] = {s, w[0], back};
  m = wait_view(s, 3, alive2, 3);
  const Ps__NodeInfo *ni = view_node(m.env->view, back->id);
  ck_assert(!ni->joining);
  ck_assert_uint_eq(ni->join_clock, 0);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

/* ---- workers joining with new ranks and leaving (issue #16) ---- */

/* The answer (RegisterReply, Ack or Error) to request rid on c. */
static ps_msg_t answer_to(client_t *c, uint64_t rid) {
  ps_msg_t m;
  uint64_t deadline = ps_now_ms() + 3000;
  for (;;) {
    uint64_t now = ps_now_ms();
    ck_assert_msg(now < deadline, "no answer to request %llu",
                  (unsigned long long)rid);
    zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, (long)(deadline - now)) <= 0) continue;
    char why[256];
    int rc = ps_msg_recv(c->sock, 0, NULL, &m, why, sizeof(why));
    if (rc == PS_ERR_TIMEOUT) continue;
    ck_assert_msg(rc == PS_OK, "%s", why);
    int kind = m.env->body_case;
    if (m.request_id == rid &&
        (kind == PS__ENVELOPE__BODY_REGISTER_REPLY ||
         kind == PS__ENVELOPE__BODY_ACK || kind == PS__ENVELOPE__BODY_ERROR))
      return m;
    ps_msg_close(&m);
  }
}

/* Register with join_new_rank (ps-worker --join): the reply. */
static ps_msg_t register_grow(client_t *c, Ps__ModelSpec *model) {
  Ps__Register r = PS__REGISTER__INIT;
  r.role = WORKER;
  r.address = "";
  r.rank = RANK_ANY;
  r.model = model;
  r.join_new_rank = 1;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &r;
  return answer_to(c, send_env(c, &env, 0));
}

/* psctl remove-worker: the Ack's clock, or 0 with the Error's code in
 * *code. */
static uint64_t remove_worker(client_t *admin, uint32_t id, int *code) {
  Ps__RemoveWorkerCommand rw = PS__REMOVE_WORKER_COMMAND__INIT;
  rw.worker = id;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND;
  env.remove_worker_command = &rw;
  ps_msg_t m = answer_to(admin, send_env(admin, &env, 0));
  uint64_t clock = 0;
  *code = 0;
  if (m.env->body_case == PS__ENVELOPE__BODY_ACK)
    clock = m.env->ack->clock;
  else if (m.env->body_case == PS__ENVELOPE__BODY_ERROR)
    *code = m.env->error->code;
  else
    ck_abort_msg("RemoveWorker answered with body %d", m.env->body_case);
  ps_msg_close(&m);
  return clock;
}

/* The n nodes of alive report clock in a heartbeat each, acked: the
 * scheduler knows their clocks. */
static void clocks_at(client_t **alive, int n, uint64_t clock) {
  for (int i = 0; i < n; i++) {
    alive[i]->clock = clock;
    uint64_t hb = send_heartbeat(alive[i], clock, 1);
    ps_msg_t ack;
    do {
      ck_assert(wait_for(alive[i], PS__ENVELOPE__BODY_ACK, 3000, &ack));
      int mine = ack.request_id == hb;
      ps_msg_close(&ack);
      if (mine) break;
    } while (1);
  }
}

/* --workers 2 --max-workers 3: a third worker with join_new_rank takes
 * rank 2 and joins at a step the server confirms; a fourth is refused.
 * remove-worker: refused for a server and for the last worker that is not
 * leaving; a leave step ahead of every clock, the same when asked again,
 * in the view; the worker's Done makes it LEFT and the job goes on; its
 * rank is the next joiner's. */
START_TEST(test_workers_grow_and_leave) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 1, 2, NO_DEATH_MS);
  o.max_workers = 3;
  sched_start_opts(&o);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  client_t *alive[] = {s, w[0], w[1]};
  clocks_at(alive, 3, 40); /* the scheduler learns clocks from heartbeats */
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);

  client_t *w2 = client_new();
  ps_msg_t m = register_grow(w2, &mp.spec);
  ck_assert_uint_eq(m.env->register_reply->rank, 2);
  ck_assert_uint_eq(m.env->register_reply->num_workers, 2);
  w2->id = m.env->register_reply->node_id;
  ps_msg_close(&m);
  m = wait_view(s, 2, alive, 3);
  const Ps__NodeInfo *ni = view_node(m.env->view, w2->id);
  ck_assert_ptr_nonnull(ni);
  ck_assert(ni->joining);
  ck_assert_uint_ge(ni->join_clock, 42);
  ck_assert_uint_eq(ni->rank, 2);
  uint64_t join_clock = ni->join_clock;
  ps_msg_close(&m);
  send_join_reply(s, w2->id, join_clock, 1, 40);
  client_t *alive4[] = {s, w[0], w[1], w2};
  m = wait_view(s, 3, alive4, 4);
  ck_assert(!view_node(m.env->view, w2->id)->joining);
  ck_assert_uint_eq(m.env->view->live_workers, 3);
  ps_msg_close(&m);

  char why[256];
  client_t *w3 = client_new();
  m = register_as(w3, WORKER, "", RANK_ANY, &mp.spec);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ERROR);
  ps_msg_close(&m);
  m = register_grow(w3, &mp.spec);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ERROR);
  ck_assert_int_eq(m.env->error->code, PS_ERR_REFUSED);
  snprintf(why, sizeof(why), "%s", m.env->error->message);
  ps_msg_close(&m);
  ck_assert_msg(strstr(why, "--max-workers=3"), "reason: %s", why);

  client_t *admin = client_new();
  int code;
  ck_assert_uint_eq(remove_worker(admin, s->id, &code), 0);
  ck_assert_int_eq(code, PS_ERR_INVAL);
  uint64_t leave = remove_worker(admin, w[1]->id, &code);
  ck_assert_int_eq(code, 0);
  ck_assert_uint_ge(leave, 42);
  ck_assert_uint_eq(remove_worker(admin, w[1]->id, &code), leave);
  m = wait_view(s, 4, alive4, 4);
  ck_assert_uint_eq(view_node(m.env->view, w[1]->id)->leave_clock, leave);
  /* A delta against epoch 3: w[0] did not change, so it is not listed. */
  ck_assert_uint_eq(m.env->view->base_epoch, 3);
  ck_assert_ptr_null(view_node(m.env->view, w[0]->id));
  ps_msg_close(&m);

  /* The worker stops before its step and says Done: LEFT, not DONE, and
   * the job goes on with the other two. */
  m = answer_to(w[1], send_done(w[1], 0));
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ACK);
  ps_msg_close(&m);
  client_t *alive3[] = {s, w[0], w2};
  m = wait_view(s, 5, alive3, 3);
  ck_assert_int_eq(view_node(m.env->view, w[1]->id)->state,
                   PS__NODE_STATE__NODE_STATE_LEFT);
  ck_assert_uint_eq(m.env->view->live_workers, 2);
  ps_msg_close(&m);
  ck_assert_msg(!sched_exits_within(100), "the job ended with workers left");

  /* w[0] may leave too, but not the last worker that is not leaving. */
  ck_assert_uint_gt(remove_worker(admin, w[0]->id, &code), 0);
  ck_assert_uint_eq(remove_worker(admin, w2->id, &code), 0);
  ck_assert_int_eq(code, PS_ERR_REFUSED);

  /* The freed rank 1 goes to the next joiner. */
  client_t *w4 = client_new();
  m = register_grow(w4, &mp.spec);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_REGISTER_REPLY);
  ck_assert_uint_eq(m.env->register_reply->rank, 1);
  ps_msg_close(&m);
  teardown_all();
}
END_TEST

/* The same in ASP: the joiner's step is ahead of every clock as in BSP,
 * but it is not joining (no server confirms anything: ASP servers wait for
 * no step), and a leave step is given as in BSP. */
START_TEST(test_workers_grow_and_leave_asp) {
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 1, 2, NO_DEATH_MS);
  o.mode = PS__CONSISTENCY_MODE__MODE_ASP;
  o.max_workers = 3;
  sched_start_opts(&o);
  client_t *s, *w[2];
  form_cluster(&s, w, 2);
  client_t *alive[] = {s, w[0], w[1]};
  clocks_at(alive, 3, 40); /* the scheduler learns clocks from heartbeats */
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *w2 = client_new();
  ps_msg_t m = register_grow(w2, &mp.spec);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_REGISTER_REPLY);
  ck_assert_uint_eq(m.env->register_reply->rank, 2);
  w2->id = m.env->register_reply->node_id;
  ps_msg_close(&m);
  client_t *alive4[] = {s, w[0], w[1], w2};
  m = wait_view(s, 2, alive4, 4);
  const Ps__NodeInfo *ni = view_node(m.env->view, w2->id);
  ck_assert_ptr_nonnull(ni);
  ck_assert(!ni->joining);
  ck_assert_uint_ge(ni->join_clock, 42);
  ck_assert_uint_eq(m.env->view->live_workers, 3);
  ps_msg_close(&m);

  client_t *admin = client_new();
  int code;
  uint64_t leave = remove_worker(admin, w[1]->id, &code);
  ck_assert_int_eq(code, 0);
  ck_assert_uint_ge(leave, 42);
  m = wait_view(s, 3, alive4, 4);
  ck_assert_uint_eq(view_node(m.env->view, w[1]->id)->leave_clock, leave);
  ps_msg_close(&m);
  m = answer_to(w[1], send_done(w[1], 0));
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ACK);
  ps_msg_close(&m);
  client_t *alive3[] = {s, w[0], w2};
  m = wait_view(s, 4, alive3, 3);
  ck_assert_int_eq(view_node(m.env->view, w[1]->id)->state,
                   PS__NODE_STATE__NODE_STATE_LEFT);
  ps_msg_close(&m);
  ck_assert_msg(!sched_exits_within(100), "the job ended with workers left");
  teardown_all();
}
END_TEST

/* A DrainCommand's Error code (0: it was not refused, an Ack or nothing
 * within the wait), its message into why. */
static int server_action(client_t *admin, uint32_t id, int action, char *why,
                         size_t len) {
  Ps__DrainCommand dc = PS__DRAIN_COMMAND__INIT;
  dc.server = id;
  dc.action = (Ps__ServerAction)action;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_DRAIN_COMMAND;
  env.drain_command = &dc;
  ps_msg_t m = answer_to(admin, send_env(admin, &env, 0));
  int code = 0;
  why[0] = '\0';
  if (m.env->body_case == PS__ENVELOPE__BODY_ERROR) {
    code = m.env->error->code;
    snprintf(why, len, "%s", m.env->error->message);
  }
  ps_msg_close(&m);
  return code;
}

/* psctl add-server / remove-server's refusals (issue #16): an action the
 * scheduler does not know, a node that is not a server, a server that
 * takes its share already (one of the first view). */
START_TEST(test_server_actions_refused) {
  sched_start(1, 1, NO_DEATH_MS);
  client_t *s, *w[1];
  form_cluster(&s, w, 1);
  client_t *admin = client_new();
  char why[256];
  ck_assert_int_eq(server_action(admin, s->id, 9, why, sizeof(why)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(why, "unknown server action 9"), "reason: %s", why);
  ck_assert_int_eq(server_action(admin, w[0]->id, PS__SERVER_ACTION__SERVER_ADD,
                                 why, sizeof(why)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(why, "is not a server"), "reason: %s", why);
  ck_assert_int_eq(server_action(admin, s->id, PS__SERVER_ACTION__SERVER_ADD,
                                 why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_msg(strstr(why, "takes its share already"), "reason: %s", why);
  /* The only server may not be removed. */
  ck_assert_int_eq(server_action(admin, s->id, PS__SERVER_ACTION__SERVER_REMOVE,
                                 why, sizeof(why)),
                   PS_ERR_REFUSED);
  ck_assert_msg(strstr(why, "the last one"), "reason: %s", why);
  teardown_all();
}
END_TEST

/* The state file keeps the chains, the syncing backups, the replication
 * and the epochs nodes died at: a restarted scheduler fences with the
 * same epoch and promotes only synced backups. */
START_TEST(test_state_keeps_replication) {
  char dir[] = "/tmp/ps-test-sched-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char state[128];
  snprintf(state, sizeof(state), "%s/state", dir);
  H.ctx = zmq_ctx_new();
  char ep[256];
  free_endpoint(H.ctx, ep, sizeof(ep));
  ps_sched_opts_t o = sched_opts(ep, 3, 1, 300);
  o.state_file = state;
  sched_start_opts(&o);
  client_t *srv[3], *w;
  form_replicated(srv, 3, &w);
  client_t *alive[] = {srv[1], srv[2], w};
  ps_msg_t m = wait_view(srv[1], 2, alive, 3);
  Ps__KeyRange r0 = *m.env->view->ranges[0];
  ps_msg_close(&m);
  send_replica_synced(srv[1], &r0, 3);
  m = status_on(srv[1], alive, 3); /* the report is in */
  ps_msg_close(&m);
  /* The fence it got when it was declared dead, so that the one below
   * comes from the restarted scheduler. */
  ck_assert(wait_for(srv[0], PS__ENVELOPE__BODY_ERROR, 3000, &m));
  ck_assert_int_eq(m.env->error->code, PS_ERR_FENCED);
  ps_msg_close(&m);
  sched_crash();

  /* Another replication factor is another job. */
  o.replication = 3;
  o.heartbeat_timeout_ms = NO_DEATH_MS;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char why[1024] = "";
  int err = 0;
  ck_assert_ptr_null(ps_sched_new(&loop, H.ctx, &o, &err, why, sizeof(why)));
  ck_assert_int_eq(err, PS_ERR_CONFIG);
  ck_assert_msg(strstr(why, "--replication=2") != NULL, "%s", why);
  ck_assert_int_eq(uv_loop_close(&loop), 0);

  o.replication = 2;
  sched_start_opts(&o);
  /* Range 2's backup was still syncing when the scheduler died: its
   * primary may have reported it meanwhile, so the restarted scheduler
   * publishes a view (epoch 3) at its first check, for the primary to
   * report again. */
  uint64_t epoch = 0;
  for (int attempt = 0; attempt < 100 && epoch != 3; attempt++) {
    m = status_on(srv[1], NULL, 0);
    epoch = m.env->status->view->epoch;
    if (epoch != 3) {
      ps_msg_close(&m);
      usleep(10000);
    }
  }
  ck_assert_uint_eq(epoch, 3);
  const Ps__View *v = m.env->status->view;
  ck_assert_uint_eq(v->replication, 2);
  const char *want[] = {"2|3", "2|3", "3|2*"};
  expect_chains(v, want, 3);
  ck_assert_int_eq(view_node(v, 1)->state, PS__NODE_STATE__NODE_STATE_DEAD);
  Ps__KeyRange r2 = *v->ranges[2];
  ps_msg_close(&m);
  send_replica_synced(srv[2], &r2, 2);
  const char *synced[] = {"2|3", "2|3", "3|2"};
  int done = 0;
  for (int attempt = 0; attempt < 100 && !done; attempt++) {
    m = status_on(srv[1], NULL, 0);
    char buf[64];
    done = strcmp(chain(m.env->status->view->ranges[2], buf, sizeof(buf)),
                  "3|2") == 0;
    if (done) expect_chains(m.env->status->view, synced, 3);
    ps_msg_close(&m);
    if (!done) usleep(10000);
  }
  ck_assert_msg(done, "range 2's backup still syncing after ReplicaSynced");
  int fenced = 0;
  for (int attempt = 0; attempt < 10 && !fenced; attempt++) {
    send_heartbeat(srv[0], 0, 1);
    fenced = wait_for(srv[0], PS__ENVELOPE__BODY_ERROR, 500, &m);
  }
  ck_assert(fenced);
  ck_assert_int_eq(m.env->error->code, PS_ERR_FENCED);
  ck_assert_str_eq(m.env->error->message, "fenced: declared dead at epoch 2");
  ps_msg_close(&m);
  teardown_all();
  unlink(state);
  rmdir(dir);
}
END_TEST

/* ---- ps_member against the scheduler -------------------------------- */

typedef struct {
  int registered;
  uint32_t node_id, rank, num_workers;
  uint64_t view_epoch;
  size_t view_nodes;
  size_t view_dead; /* nodes DEAD in the last view */
  int view_gap;     /* a view whose epoch was not the last one's + 1 */
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
  if (s->view_epoch != 0 && view->epoch != s->view_epoch + 1) s->view_gap = 1;
  s->view_epoch = view->epoch;
  s->view_nodes = view->nnodes;
  s->view_dead = 0;
  for (size_t i = 0; i < view->nnodes; i++)
    s->view_dead += view->nodes[i].state == PS__NODE_STATE__NODE_STATE_DEAD;
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

/* A server (at 127.0.0.1:9101) that is a real member of the scheduler at
 * ep, reporting to seen_s (cleared), never giving up on the scheduler. */
static ps_member_t *server_member_new(uv_loop_t *loop, const char *ep,
                                      int heartbeat_ms) {
  memset(&seen_s, 0, sizeof(seen_s));
  ps_member_opts_t so = {.scheduler = ep,
                         .role = SERVER,
                         .address = "tcp://127.0.0.1:9101",
                         .rank = -1,
                         .heartbeat_ms = heartbeat_ms,
                         .scheduler_timeout_ms = 0};
  ps_member_cbs_t scb = {m_registered, m_view, m_shutdown, &seen_s};
  int err = 0;
  ps_member_t *ms = ps_member_new(loop, H.ctx, &so, &scb, &err);
  ck_assert_ptr_nonnull(ms);
  return ms;
}

/* A server (at 127.0.0.1:9101) and a worker (the test model, any rank)
 * that are real members of the scheduler at ep, heartbeating every 50 ms
 * and never giving up on it; seen_s and seen_w cleared for them. */
static void members_new(uv_loop_t *loop, const char *ep, ps_member_t **ms,
                        ps_member_t **mw) {
  *ms = server_member_new(loop, ep, 50);
  memset(&seen_w, 0, sizeof(seen_w));
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
                         .scheduler_timeout_ms = 0};
  ps_member_cbs_t wcb = {m_registered, m_view, m_shutdown, &seen_w};
  int err = 0;
  *mw = ps_member_new(loop, H.ctx, &wo, &wcb, &err);
  ck_assert_ptr_nonnull(*mw);
  ps_model_clear(&model); /* the member keeps its own copy */
}

START_TEST(test_member_registers_late_scheduler_and_finishes) {
  H.ctx = zmq_ctx_new();
  char ep[256];
  free_endpoint(H.ctx, ep, sizeof(ep));
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms, *mw;
  members_new(&loop, ep, &ms, &mw);

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

static int server_shut(void *arg) {
  return seen_s.shut;
}
static int server_viewed(void *arg) {
  return seen_s.view_epoch >= 1;
}
static int server_at_epoch_2(void *arg) {
  return seen_s.view_epoch >= 2;
}

/* A member declared dead (its heartbeats are far apart) hears it and
 * reports PS_ERR_FENCED: its owner must stop and exit with a failure. */
START_TEST(test_member_fenced) {
  sched_start(1, 1, 300);
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms = server_member_new(&loop, H.endpoint, 5000);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *w = client_new();
  join(w, WORKER, "", RANK_ANY, &mp.spec);
  ck_assert_msg(run_until(&loop, server_shut, NULL, 5000),
                "the member was not fenced");
  ck_assert_int_eq(seen_s.shut_status, PS_ERR_FENCED);
  ck_assert_msg(
      strncmp(seen_s.shut_reason, "fenced: declared dead at epoch ", 31) == 0,
      "reason: %s", seen_s.shut_reason);
  ps_member_destroy(&ms);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

/* ps_member applies deltas: a server and a worker that are real members
 * and a fake worker that dies; the members' callbacks get the whole view of
 * epoch 2 (3 nodes, one dead) from a delta of one node. */
static int both_at_epoch_2(void *arg) {
  return seen_s.view_epoch >= 2 && seen_w.view_epoch >= 2;
}
static int both_registered(void *arg) {
  return seen_s.registered && seen_w.registered;
}

START_TEST(test_member_applies_deltas) {
  sched_start(1, 2, 300);
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms, *mw;
  members_new(&loop, H.endpoint, &ms, &mw);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *gone = client_new();
  ck_assert_msg(run_until(&loop, both_registered, NULL, 5000),
                "members did not register");
  join(gone, WORKER, "", 1, &mp.spec); /* then never heard of again */
  ck_assert_msg(run_until(&loop, both_at_epoch_2, NULL, 5000),
                "no view after the silent worker died");
  /* Epoch 1 came whole, epoch 2 as a delta; no view was skipped. */
  ck_assert_uint_eq(seen_s.view_epoch, 2);
  ck_assert_uint_eq(seen_w.view_epoch, 2);
  ck_assert_int_eq(seen_s.view_gap + seen_w.view_gap, 0);
  ck_assert_uint_eq(seen_s.view_nodes, 3);
  ck_assert_uint_eq(seen_w.view_nodes, 3);
  ck_assert_uint_eq(seen_s.view_dead, 1);
  ck_assert_uint_eq(seen_w.view_dead, 1);
  ps_member_destroy(&ms);
  ps_member_destroy(&mw);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  /* With the scheduler's loop ended its counters can be read: epoch 1
   * whole to the three nodes, epoch 2 as a delta to the two members, and
   * nothing whole again (a member that refused a delta would have asked). */
  uv_async_send(&H.stop_async);
  ck_assert_int_eq(pthread_join(H.thread, NULL), 0);
  H.joined = 1;
  ck_assert_uint_eq(H.sched->stats.views_whole, 3);
  ck_assert_uint_eq(H.sched->stats.views_delta, 2);
  teardown_all();
}
END_TEST

/* ps_member_keepalive: a server whose loop is busy (filling ranges) stays
 * alive while it calls it, and is declared dead (fenced) when it does not.
 * The loop is not run during either busy spell; a fake worker heartbeats
 * meanwhile so that only the server can die. */
static void busy_spell(ps_member_t *ms, client_t *w, int keepalive, int ms_) {
  uint64_t end = ps_now_ms() + (uint64_t)ms_, next_w = 0;
  while (ps_now_ms() < end) {
    if (keepalive) ps_member_keepalive(ms);
    if (ps_now_ms() >= next_w) {
      send_heartbeat(w, 0, 1);
      next_w = ps_now_ms() + 50;
    }
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

START_TEST(test_member_keepalive) {
  sched_start(1, 1, 300);
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms = server_member_new(&loop, H.endpoint, 50);
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  client_t *w = client_new();
  join(w, WORKER, "", RANK_ANY, &mp.spec);
  ck_assert_msg(run_until(&loop, server_viewed, NULL, 5000), "no first view");
  /* Three timeouts without a turn of the loop, heartbeating from within. */
  busy_spell(ms, w, 1, 900);
  run_until(&loop, never, NULL, 100);
  ck_assert_int_eq(seen_s.shut, 0);
  ck_assert_uint_eq(seen_s.view_epoch, 1);
  /* The same without: declared dead, and told so once the loop runs. */
  busy_spell(ms, w, 0, 900);
  ck_assert_msg(run_until(&loop, server_shut, NULL, 5000),
                "a server silent for 3 timeouts was not fenced");
  ck_assert_int_eq(seen_s.shut_status, PS_ERR_FENCED);
  ps_member_destroy(&ms);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

/* A ROUTER bound on loopback, playing the scheduler; its endpoint into ep. */
static void *fake_scheduler_new(char *ep, size_t eplen) {
  H.ctx = zmq_ctx_new();
  void *router = zmq_socket(H.ctx, ZMQ_ROUTER);
  int zero = 0;
  zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof(zero));
  ck_assert_int_eq(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
  zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen);
  return router;
}

static ps_msg_t fake_recv(void *router);

/* The fake scheduler takes the member's Register and answers rr; the
 * member's route into route (the caller closes it). */
static void fake_register(void *router, Ps__RegisterReply *rr,
                          zmq_msg_t *route) {
  ps_msg_t m = fake_recv(router);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_REGISTER);
  zmq_msg_init(route);
  zmq_msg_copy(route, &m.route);
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m.request_id;
  env.body_case = PS__ENVELOPE__BODY_REGISTER_REPLY;
  env.register_reply = rr;
  ck_assert_int_eq(ps_msg_send(router, route, &env, NULL, 0), PS_OK);
  ps_msg_close(&m);
}

/* A UDP socket bound on loopback, its port into *port. */
static int udp_loopback(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in at = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&at, sizeof(at)), 0);
  socklen_t al = sizeof(at);
  getsockname(fd, (struct sockaddr *)&at, &al);
  *port = ntohs(at.sin_port);
  return fd;
}

/* A view from a fake scheduler to the member at route: nodes 1 (the
 * member, a server) and 2 (a worker, alive or dead), one range; a delta
 * against base (listing node 2 only) unless base is 0. */
static void fake_view(void *router, zmq_msg_t *route, uint64_t epoch,
                      uint64_t base, int worker_dead) {
  model_pb_t mp;
  model_init(&mp, 0.1f, 400);
  Ps__NodeInfo nodes[2];
  Ps__NodeInfo *ptrs[2];
  for (int i = 0; i < 2; i++) {
    ps__node_info__init(&nodes[i]);
    nodes[i].id = (uint32_t)i + 1;
    nodes[i].state = PS__NODE_STATE__NODE_STATE_ALIVE;
  }
  nodes[0].role = SERVER;
  nodes[0].address = "tcp://127.0.0.1:9101";
  nodes[1].role = WORKER;
  if (worker_dead) nodes[1].state = PS__NODE_STATE__NODE_STATE_DEAD;
  Ps__KeyRange kr = PS__KEY_RANGE__INIT;
  kr.end = 1000;
  kr.server_id = 1;
  Ps__KeyRange *krs[] = {&kr};
  Ps__View v = PS__VIEW__INIT;
  v.epoch = epoch;
  v.base_epoch = base;
  ptrs[0] = &nodes[0];
  ptrs[1] = &nodes[1];
  v.nodes = base ? &ptrs[1] : ptrs;
  v.n_nodes = base ? 1 : 2;
  v.ranges = krs;
  v.n_ranges = 1;
  v.model = &mp.spec;
  v.live_workers = worker_dead ? 0 : 1;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.epoch = epoch;
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &v;
  ck_assert_int_eq(ps_msg_send(router, route, &env, NULL, 0), PS_OK);
}

/* The fake scheduler's next message from the member, within 3 s. */
static ps_msg_t fake_recv(void *router) {
  zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&item, 1, 3000), 1);
  ps_msg_t m;
  char why[256];
  ck_assert_int_eq(ps_msg_recv(router, 1, NULL, &m, why, sizeof(why)), PS_OK);
  return m;
}

/* A delta against a view the member does not hold is dropped, and its
 * heartbeats stay at the epoch it holds (so the scheduler sends the whole
 * view); a delta against the view it holds is applied. */
START_TEST(test_member_skips_delta_without_base) {
  char ep[256];
  void *router = fake_scheduler_new(ep, sizeof(ep));
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms = server_member_new(&loop, ep, 50);
  Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
  rr.node_id = 1;
  zmq_msg_t route;
  fake_register(router, &rr, &route);
  fake_view(router, &route, 1, 0, 0);
  ck_assert_msg(run_until(&loop, server_viewed, NULL, 5000), "no view 1");

  fake_view(router, &route, 3, 2, 1); /* epoch 2 never came */
  run_until(&loop, never, NULL, 300);
  ck_assert_uint_eq(seen_s.view_epoch, 1);
  ck_assert_uint_eq(ps_member_epoch(ms), 1);
  int beats = 0;
  zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
  while (zmq_poll(&item, 1, 0) == 1) {
    ps_msg_t m = fake_recv(router);
    if (m.env->body_case == PS__ENVELOPE__BODY_HEARTBEAT) {
      ck_assert_uint_eq(m.env->epoch, 1);
      beats++;
    }
    ps_msg_close(&m);
  }
  ck_assert_int_gt(beats, 0);

  fake_view(router, &route, 2, 1, 1);
  ck_assert_msg(run_until(&loop, server_at_epoch_2, NULL, 5000),
                "the delta against epoch 1 was not applied");
  ck_assert_uint_eq(seen_s.view_nodes, 2);
  ck_assert_uint_eq(seen_s.view_dead, 1);
  ck_assert_int_eq(seen_s.view_gap, 0);
  ps_member_destroy(&ms);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  zmq_msg_close(&route);
  zmq_close(router);
  teardown_all();
}
END_TEST

/* ---- heartbeats over UDP (--heartbeat-udp, common/beat.h) ----------- */

START_TEST(test_beat_datagram) {
  uint8_t key[PS_BEAT_KEY_BYTES], other[PS_BEAT_KEY_BYTES];
  ck_assert_int_eq(ps_beat_key_new(key), PS_OK);
  ck_assert_int_eq(ps_beat_key_new(other), PS_OK);
  ck_assert(memcmp(key, other, sizeof(key)) != 0);
  ps_beat_t b = {.type = PS_BEAT_BEAT,
                 .node_id = 0x01020304u,
                 .seq = 0x1122334455667788ull,
                 .epoch = 7,
                 .clock = 1ull << 40};
  uint8_t d[PS_BEAT_BYTES];
  ps_beat_pack(&b, key, d);
  int type;
  uint32_t id;
  ck_assert_int_eq(ps_beat_peek(d, sizeof(d), &type, &id), PS_OK);
  ck_assert_int_eq(type, PS_BEAT_BEAT);
  ck_assert_uint_eq(id, 0x01020304u);
  ck_assert_uint_eq(d[8], 0x04); /* little-endian on the wire */
  ps_beat_t got;
  ck_assert_int_eq(ps_beat_open(d, sizeof(d), key, &got), PS_OK);
  ck_assert_uint_eq(got.seq, b.seq);
  ck_assert_uint_eq(got.epoch, 7);
  ck_assert_uint_eq(got.clock, 1ull << 40);
  /* Another key, any flipped bit: refused. */
  ck_assert_int_eq(ps_beat_open(d, sizeof(d), other, &got),
                   PS_ERR_PERMISSION_DENIED);
  for (size_t i = 16; i < sizeof(d); i++) {
    d[i] ^= 0x20;
    ck_assert_int_eq(ps_beat_open(d, sizeof(d), key, &got),
                     PS_ERR_PERMISSION_DENIED);
    d[i] ^= 0x20;
  }
  /* Not a beat datagram at all. */
  ck_assert_int_eq(ps_beat_open(d, sizeof(d) - 1, key, &got), PS_ERR_INVAL);
  d[0] = 'X';
  ck_assert_int_eq(ps_beat_peek(d, sizeof(d), &type, &id), PS_ERR_INVAL);
  d[0] = 'P';
  d[4] = 9;
  ck_assert_int_eq(ps_beat_peek(d, sizeof(d), &type, &id), PS_ERR_INVAL);
}
END_TEST

/* A datagram to the scheduler's heartbeat port on 127.0.0.1. */
static void beat_send_raw(uint16_t port, const void *d, size_t len) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in to = {.sin_family = AF_INET,
                           .sin_port = htons(port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(sendto(fd, d, len, 0, (struct sockaddr *)&to, sizeof(to)),
                   (ssize_t)len);
  close(fd);
}

static uint16_t endpoint_port(const char *ep) {
  return (uint16_t)atoi(strrchr(ep, ':') + 1);
}

/* Real members of a scheduler with heartbeat_udp: after the first ack
 * their heartbeats are datagrams only, and they stay alive through five
 * timeouts on them; datagrams that are not theirs (garbage, another key,
 * a replayed sequence number) are refused and keep nobody alive. */
START_TEST(test_beats_keep_members_alive) {
  /* The UDP port of the scheduler's number is taken: it takes another,
   * which the members learn when they register. */
  uint16_t taken;
  int blocker = udp_loopback(&taken);
  char bind_ep[64];
  snprintf(bind_ep, sizeof(bind_ep), "tcp://127.0.0.1:%u", taken);
  ps_sched_opts_t o = sched_opts(bind_ep, 1, 1, 300);
  o.heartbeat_udp = 1;
  sched_start_opts(&o);
  ck_assert_uint_eq(endpoint_port(H.endpoint), taken);
  uint16_t port = ps__sched_beats_port(H.sched);
  ck_assert_uint_ne(port, 0);
  ck_assert_uint_ne(port, taken);
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms, *mw;
  members_new(&loop, H.endpoint, &ms, &mw);
  ck_assert_msg(run_until(&loop, both_viewed, NULL, 5000), "no first view");
  run_until(&loop, never, NULL, 1500);
  ck_assert_uint_eq(seen_s.view_epoch, 1); /* nobody died */
  ck_assert_uint_eq(seen_w.view_epoch, 1);
  ck_assert_int_eq(seen_s.shut + seen_w.shut, 0);

  /* The server's key, set when it registered (read once the scheduler's
   * thread is past it: the member holds its view). */
  uint32_t sid = ps_member_node_id(ms);
  uint8_t key[PS_BEAT_KEY_BYTES];
  memcpy(key, H.sched->nodes[sid - 1].beat_key, sizeof(key));
  ck_assert(H.sched->nodes[sid - 1].beat_keyed);
  uint8_t wrong[PS_BEAT_KEY_BYTES];
  ck_assert_int_eq(ps_beat_key_new(wrong), PS_OK);
  beat_send_raw(port, "not a heartbeat", 15);
  ps_beat_t b = {.type = PS_BEAT_BEAT, .node_id = sid, .seq = 1u << 30};
  uint8_t d[PS_BEAT_BYTES];
  ps_beat_pack(&b, wrong, d);
  beat_send_raw(port, d, sizeof(d));
  b.seq = 1; /* the member's first: taken long ago */
  ps_beat_pack(&b, key, d);
  beat_send_raw(port, d, sizeof(d));
  run_until(&loop, never, NULL, 200);

  ps_member_destroy(&ms);
  ps_member_destroy(&mw);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  uv_async_send(&H.stop_async);
  ck_assert_int_eq(pthread_join(H.thread, NULL), 0);
  H.joined = 1;
  /* 2 members x 1.7 s at 50 ms: about 68 beats; on the links only those
   * sent before each member's first ack. */
  ck_assert_uint_ge(H.sched->stats.beats, 40);
  ck_assert_uint_le(H.sched->stats.heartbeats_link, 10);
  ck_assert_uint_eq(H.sched->stats.beats_refused, 3);
  ck_assert_uint_ge(H.sched->stats.beat_acks, 4);
  ck_assert_uint_eq(
      H.sched->stats.timeouts[SERVER] + H.sched->stats.timeouts[WORKER], 0);
  teardown_all();
  close(blocker);
}
END_TEST

/* After a stall (a check that comes late) every node has a whole timeout
 * from the stall's end: what it sent meanwhile may be lost (datagrams past
 * the socket's buffer), not only unread. A scheduler and its members on
 * one loop in this thread, whose checks are called with made-up times. */
static int both_viewed_loop(void *arg) {
  return seen_s.view_epoch >= 1 && seen_w.view_epoch >= 1;
}

START_TEST(test_stall_gives_a_timeout) {
  H.ctx = zmq_ctx_new();
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_sched_opts_t o = sched_opts("tcp://127.0.0.1:*", 1, 1, 300);
  o.heartbeat_udp = 1;
  char why[256];
  int err;
  ps_sched_t *s = ps_sched_new(&loop, H.ctx, &o, &err, why, sizeof(why));
  ck_assert_msg(s != NULL, "%s", why);
  ps_member_t *ms, *mw;
  members_new(&loop, ps_sched_endpoint(s), &ms, &mw);
  ck_assert_msg(run_until(&loop, both_viewed_loop, NULL, 5000), "no view");
  uint64_t now = ps_now_ms();
  ps__sched_check(s, now);
  /* A second without the loop: the check comes late, no one dies. */
  ps__sched_check(s, now + 1000);
  ck_assert_uint_eq(ps_sched_epoch(s), 1);
  /* Checks every 30 ms after it: the nodes' last heartbeats are over a
   * second old, but the stall ended less than a timeout ago: no one
   * dies... */
  uint64_t t = now + 1000;
  for (; t + 30 < now + 1000 + 300; t += 30) {
    ps__sched_check(s, t + 30);
    ck_assert_uint_eq(s->stats.timeouts[SERVER] + s->stats.timeouts[WORKER], 0);
  }
  ck_assert_uint_eq(ps_sched_epoch(s), 1);
  /* ...until a whole timeout after it without a word. */
  ps__sched_check(s, now + 1000 + 301);
  ck_assert_uint_eq(s->stats.timeouts[SERVER] + s->stats.timeouts[WORKER], 2);
  ps_member_destroy(&ms);
  ps_member_destroy(&mw);
  ps_sched_destroy(&s);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  teardown_all();
}
END_TEST

/* The member's side against a fake scheduler that owns the UDP port: it
 * heartbeats on its link and by datagram until a datagram is acked, then
 * by datagram only; when acks stop (or only forged and replayed ones come)
 * its heartbeats go on the link again. */
static int link_beats(void *router) {
  int beats = 0;
  zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
  while (zmq_poll(&item, 1, 0) == 1) {
    ps_msg_t m = fake_recv(router);
    if (m.env->body_case == PS__ENVELOPE__BODY_HEARTBEAT) beats++;
    ps_msg_close(&m);
  }
  return beats;
}

/* Reads the member's datagrams on udp for ms while running loop, acking
 * each with key (no ack when key is NULL); returns how many came. */
static int serve_beats(uv_loop_t *loop, int udp, const uint8_t *key,
                       uint32_t node, int ms, uint64_t *last_seq) {
  int got = 0;
  uint64_t end = ps_now_ms() + (uint64_t)ms;
  while (ps_now_ms() < end) {
    uv_run(loop, UV_RUN_NOWAIT);
    uint8_t d[128];
    struct sockaddr_storage from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(udp, d, sizeof(d), MSG_DONTWAIT,
                         (struct sockaddr *)&from, &fl);
    if (n < 0) {
      struct timespec ts = {0, 2 * 1000000L};
      nanosleep(&ts, NULL);
      continue;
    }
    ps_beat_t b;
    uint8_t k[PS_BEAT_KEY_BYTES];
    memset(k, 7, sizeof(k));
    ck_assert_int_eq(ps_beat_open(d, (size_t)n, k, &b), PS_OK);
    ck_assert_int_eq(b.type, PS_BEAT_BEAT);
    ck_assert_uint_eq(b.node_id, node);
    ck_assert_uint_gt(b.seq, *last_seq);
    *last_seq = b.seq;
    got++;
    if (key == NULL) continue;
    ps_beat_t ack = {.type = PS_BEAT_ACK, .node_id = node, .seq = b.seq};
    uint8_t out[PS_BEAT_BYTES];
    ps_beat_pack(&ack, key, out);
    ck_assert_int_eq(
        sendto(udp, out, sizeof(out), 0, (struct sockaddr *)&from, fl),
        (ssize_t)sizeof(out));
  }
  return got;
}

START_TEST(test_member_beats_and_falls_back) {
  char ep[256];
  void *router = fake_scheduler_new(ep, sizeof(ep));
  uint16_t port;
  int udp = udp_loopback(&port);
  uint8_t key[PS_BEAT_KEY_BYTES], wrong[PS_BEAT_KEY_BYTES];
  memset(key, 7, sizeof(key));
  memset(wrong, 8, sizeof(wrong));

  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_member_t *ms = server_member_new(&loop, ep, 50);
  Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
  rr.node_id = 1;
  rr.beat_port = port;
  rr.beat_key.data = key;
  rr.beat_key.len = sizeof(key);
  zmq_msg_t route;
  fake_register(router, &rr, &route);

  /* Unanswered datagrams: the link carries the heartbeats too. */
  uint64_t seq = 0;
  ck_assert_int_ge(serve_beats(&loop, udp, NULL, 1, 400, &seq), 4);
  ck_assert_int_ge(link_beats(router), 4);
  /* Answered: datagrams only (the first ack may cross a link beat). */
  ck_assert_int_ge(serve_beats(&loop, udp, key, 1, 300, &seq), 3);
  link_beats(router);
  ck_assert_int_ge(serve_beats(&loop, udp, key, 1, 600, &seq), 8);
  ck_assert_int_eq(link_beats(router), 0);
  /* Acks stop: within MEMBER_BEAT_UNANSWERED_MS the link takes them up. */
  ck_assert_int_ge(serve_beats(&loop, udp, NULL, 1, 1500, &seq), 20);
  int fell_back = link_beats(router);
  ck_assert_msg(fell_back >= 4, "%d heartbeats on the link", fell_back);
  /* Forged and replayed acks do not count as answers. */
  struct sockaddr_storage member_at;
  socklen_t ml = sizeof(member_at);
  uint8_t d[128];
  for (;;) { /* where the member's datagrams come from */
    uv_run(&loop, UV_RUN_NOWAIT);
    ssize_t n = recvfrom(udp, d, sizeof(d), MSG_DONTWAIT,
                         (struct sockaddr *)&member_at, &ml);
    if (n > 0) break;
    struct timespec ts = {0, 2 * 1000000L};
    nanosleep(&ts, NULL);
  }
  ps_beat_t forged = {.type = PS_BEAT_ACK, .node_id = 1, .seq = seq};
  uint8_t out[PS_BEAT_BYTES];
  ps_beat_pack(&forged, wrong, out);
  sendto(udp, out, sizeof(out), 0, (struct sockaddr *)&member_at, ml);
  forged.seq = 2; /* acked long ago */
  ps_beat_pack(&forged, key, out);
  sendto(udp, out, sizeof(out), 0, (struct sockaddr *)&member_at, ml);
  seq++; /* the datagram read above */
  serve_beats(&loop, udp, NULL, 1, 300, &seq);
  link_beats(router);
  serve_beats(&loop, udp, NULL, 1, 300, &seq);
  ck_assert_int_ge(link_beats(router), 3);

  ps_member_destroy(&ms);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  close(udp);
  zmq_msg_close(&route);
  zmq_close(router);
  teardown_all();
}
END_TEST

/* ---- the checkpoint coordinator ------------------------------------- */

static void coord_done_count(ps_coord_t *c, int status, const char *reason,
                             const ps_coord_result_t *res, void *arg) {
  (*(int *)arg)++;
}

START_TEST(test_coord_copies_the_model) {
  /* The coordinator keeps a model of its own: a checkpoint that ends
   * (here, fails) leaves the caller's, sparse tables included, whole.
   * fuzz_scheduler found the sparse array freed with the checkpoint, then
   * again with the scheduler. */
  char base[] = "/tmp/ps-test-coord-XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(base));
  ps_tensor_spec_t t = {
      .name = "w", .offset = 0, .length = 16, .init = PS_INIT_ZERO};
  ps_sparse_spec_t sp = {.name = "emb", .dim = 4, .init = PS_INIT_ZERO};
  ps_model_t src = {
      .ntensors = 1, .tensors = &t, .total = 16, .nsparse = 1, .sparse = &sp};
  ps_model_t model;
  ck_assert_int_eq(ps_model_copy(&model, &src), PS_OK);
  int done = 0;
  ps_coord_cbs_t cbs = {NULL, coord_done_count, &done};
  ps_coord_t *c = ps_coord_new(&cbs, 1);
  ck_assert_ptr_nonnull(c);
  uint32_t servers[1] = {1};
  ps_coord_start_t st = {.base = base,
                         .reason = "test",
                         .servers = servers,
                         .nservers = 1,
                         .model = &model,
                         .mode = PS__CONSISTENCY_MODE__MODE_BSP,
                         .view_epoch = 1,
                         .timeout_ms = 1000};
  char err[512];
  ck_assert_int_eq(ps_coord_start(c, &st, 0, err, sizeof(err)), PS_OK);
  ps_coord_fail(c, PS_ERR_PEER, "test");
  ck_assert_int_eq(done, 1);
  ck_assert_uint_eq(model.nsparse, 1);
  ck_assert_str_eq(model.sparse[0].name, "emb");
  ck_assert_uint_eq(model.sparse[0].dim, 4);
  ps_coord_destroy(&c);
  ps_model_clear(&model);
  ck_assert_int_eq(rmdir(base), 0); /* the failed attempt left nothing */
}
END_TEST

static Suite *scheduler_suite(void) {
  Suite *s = suite_create("scheduler");
  TCase *tc = tcase_create("protocol");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_register_ids_and_ranks);
  tcase_add_test(tc, test_model_mismatch_refused);
  tcase_add_test(tc, test_schedule_or_optimizer_mismatch_refused);
  tcase_add_test(tc, test_extra_node_refused);
  tcase_add_test(tc, test_view_published_when_all_registered);
  tcase_add_test(tc, test_barrier_waits_for_all_workers);
  tcase_add_test(tc, test_barrier_releases_all_when_first_enters_last);
  tcase_add_test(tc, test_wrong_epoch_refused_then_served);
  tcase_add_test(tc, test_heartbeat_epochs);
  tcase_add_test(tc, test_garbage_gets_error);
  tcase_add_test(tc, test_status_before_view);
  tcase_add_test(tc, test_silent_worker_declared_dead);
  tcase_add_test(tc, test_view_deltas);
  tcase_add_test(tc, test_full_views);
  tcase_add_test(tc, test_all_done_shuts_down);
  tcase_add_test(tc, test_node_leaving_ends_job);
  tcase_add_test(tc, test_impersonation_refused);
  tcase_add_test(tc, test_beat_datagram);
  tcase_add_test(tc, test_beats_keep_members_alive);
  tcase_add_test(tc, test_member_beats_and_falls_back);
  tcase_add_test(tc, test_stall_gives_a_timeout);
  suite_add_tcase(s, tc);
  TCase *tp = tcase_create("placement");
  tcase_add_test(tp, test_place_first);
  tcase_add_test(tp, test_checkpoint_dir_confined);
  tcase_add_test(tp, test_place_promotes_first_synced_backup);
  tcase_add_test(tp, test_place_top_up_fewest_first);
  tcase_add_test(tp, test_place_unavailable);
  tcase_add_test(tp, test_place_spare_and_synced);
  tcase_add_test(tp, test_place_handover);
  tcase_add_test(tp, test_place_rebalance_after_rejoin);
  tcase_add_test(tp, test_place_drain);
  tcase_add_test(tp, test_place_elastic_grow_and_shrink);
  tcase_add_test(tp, test_place_elastic_steps);
  suite_add_tcase(s, tp);
  TCase *tk = tcase_create("coordinator");
  tcase_add_test(tk, test_coord_copies_the_model);
  suite_add_tcase(s, tk);
  TCase *tr = tcase_create("replication");
  tcase_set_timeout(tr, 60);
  tcase_add_test(tr, test_first_view_replicated);
  tcase_add_test(tr, test_failover_spares_and_fencing);
  tcase_add_test(tr, test_range_unavailable);
  tcase_add_test(tr, test_worker_rejoins_bsp);
  tcase_add_test(tr, test_worker_rejoins_asp);
  tcase_add_test(tr, test_workers_grow_and_leave);
  tcase_add_test(tr, test_workers_grow_and_leave_asp);
  tcase_add_test(tr, test_state_keeps_replication);
  tcase_add_test(tr, test_server_actions_refused);
  suite_add_tcase(s, tr);
  TCase *tm = tcase_create("member");
  tcase_set_timeout(tm, 60);
  tcase_add_test(tm, test_member_registers_late_scheduler_and_finishes);
  tcase_add_test(tm, test_member_refused_and_silence);
  tcase_add_test(tm, test_member_fenced);
  tcase_add_test(tm, test_member_applies_deltas);
  tcase_add_test(tm, test_member_keepalive);
  tcase_add_test(tm, test_member_skips_delta_without_base);
  suite_add_tcase(s, tm);
  return s;
}

int main(void) {
  /* Warnings and errors only: refusals are the point of several tests. */
  ps_log_init("test", PS_LOG_ERROR);
  return ps_check_run(scheduler_suite());
}
