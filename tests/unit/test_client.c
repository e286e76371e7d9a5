/* libps-client against a fake cluster: a scheduler and two servers made of
 * raw ROUTER sockets driven by a thread of the test, speaking real
 * Envelopes over real ZeroMQ on loopback. The fake records every request
 * it gets, so the tests check what went on the wire, not just what the
 * client returned. Every wait has a deadline.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/codec.h"
#include "common/config.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/time.h"
#include "common/view.h"
#include "ps/client.h"
#include "tests/check_run.h"
#include "worker/client/client_defaults.h"

/* Servers 1 and 2 own the key space; server 3 is a spare that takes over
 * server 2's range in a failover. */
#define NSERVERS 3
#define TOTAL 64 /* keys: "w1" [0, 40), "w2" [40, 64) */
#define SPLIT 32 /* server 1 owns [0, 32), server 2 [32, 64) */
#define WORKER_ID 9
#define MAX_REQS 64

typedef enum {
  SRV_NORMAL,
  SRV_SILENT,     /* never answers */
  SRV_STALE_ONCE, /* refuses the first epoch-1 request as stale, then the
                     scheduler publishes epoch 2 */
  SRV_ERROR,      /* answers every request with UNKNOWN_KEY */
  SRV_BAD_RANGE,  /* answers pulls for the wrong keys */
  SRV_FAILOVER,   /* dies on the first request: the scheduler publishes
                     epoch 2, where server 3 owns its range */
} srv_mode_t;

typedef struct {
  int server; /* 0-based index */
  int body;
  uint32_t sender;
  uint64_t epoch, request_id, key_begin, count, clock, seq;
  float values[TOTAL];
  int codec;   /* a push's or a pull's */
  size_t nraw; /* a push's payload as it came */
  unsigned char raw[TOTAL * 8];
} req_t;

typedef struct {
  void *ctx;
  void *sched;
  void *srv[NSERVERS];
  char sched_ep[128];
  char srv_ep[NSERVERS][128];
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* guarded by mu */
  int stop;
  srv_mode_t mode[NSERVERS];
  int stale_sent;
  int failover;     /* the view gives server 2's range to server 3 */
  char refuse[128]; /* non-empty: refuse registrations with this */
  int registers, heartbeats, barriers, dones;
  char barrier_name[64];
  uint64_t barrier_epoch; /* of the last Barrier */
  int barrier_stale_once; /* refuse the first Barrier, publish epoch 2 */
  int send_shutdown;
  req_t reqs[MAX_REQS];
  int nreqs;
  /* fake thread only */
  int have_worker;
  zmq_msg_t worker_route;
  uint64_t epoch;
  ps_model_t model;
} fake_t;

static ps_tensor_spec_t model_tensors[2] = {
    {.name = "w1", .offset = 0, .length = 40},
    {.name = "w2", .offset = 40, .length = 24},
};

static ps_model_t test_model(void) {
  ps_model_t m = {.ntensors = 2,
                  .tensors = model_tensors,
                  .total = TOTAL,
                  .learning_rate = 0.1f};
  return m;
}

static float pull_value(uint64_t key) {
  return (float)key * 0.5f + 1.0f;
}

static void send_env(void *sock, zmq_msg_t *route, Ps__Envelope *env,
                     zmq_msg_t *payload, int npayload) {
  int rc = ps_msg_send(sock, route, env, payload, npayload);
  ck_assert_int_eq(rc, PS_OK);
}

static void fake_send_view(fake_t *f) {
  Ps__NodeInfo nodes[NSERVERS + 1];
  Ps__NodeInfo *node_ptrs[NSERVERS + 1];
  Ps__KeyRange ranges[2];
  Ps__KeyRange *range_ptrs[2];
  uint32_t owner2 = f->failover ? 3 : 2;
  size_t nnodes = 0;
  for (int i = 0; i < NSERVERS; i++) {
    uint32_t id = (uint32_t)i + 1;
    if (id != 1 && id != owner2) continue;
    Ps__NodeInfo *n = &nodes[nnodes];
    ps__node_info__init(n);
    n->id = id;
    n->role = PS__ROLE__ROLE_SERVER;
    n->state = PS__NODE_STATE__NODE_STATE_ALIVE;
    n->address = f->srv_ep[i];
    node_ptrs[nnodes++] = n;
  }
  ps__node_info__init(&nodes[nnodes]);
  nodes[nnodes].id = WORKER_ID;
  nodes[nnodes].role = PS__ROLE__ROLE_WORKER;
  nodes[nnodes].state = PS__NODE_STATE__NODE_STATE_ALIVE;
  node_ptrs[nnodes] = &nodes[nnodes];
  nnodes++;
  for (int i = 0; i < 2; i++) {
    ps__key_range__init(&ranges[i]);
    ranges[i].begin = i == 0 ? 0 : SPLIT;
    ranges[i].end = i == 0 ? SPLIT : TOTAL;
    ranges[i].server_id = i == 0 ? 1 : owner2;
    range_ptrs[i] = &ranges[i];
  }

  Ps__ModelSpec model;
  Ps__TensorSpec tensors[2];
  Ps__TensorSpec *tensor_ptrs[2];
  Ps__OptimizerSpec opts[2];
  ps_model_to_pb(&f->model, &model, tensors, tensor_ptrs, opts);

  Ps__View view = PS__VIEW__INIT;
  view.epoch = f->epoch;
  view.n_nodes = nnodes;
  view.nodes = node_ptrs;
  view.n_ranges = 2;
  view.ranges = range_ptrs;
  view.model = &model;
  view.mode = PS__CONSISTENCY_MODE__MODE_ASP;
  view.live_workers = 1;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.epoch = f->epoch;
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &view;
  send_env(f->sched, &f->worker_route, &env, NULL, 0);
}

static void fake_reply_ack(void *sock, ps_msg_t *m, uint64_t epoch) {
  Ps__Ack ack = PS__ACK__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m->request_id;
  env.epoch = epoch;
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  send_env(sock, &m->route, &env, NULL, 0);
}

static void fake_on_sched(fake_t *f, ps_msg_t *m) {
  Ps__Envelope *e = m->env;
  switch (e->body_case) {
    case PS__ENVELOPE__BODY_REGISTER: {
      f->registers++;
      if (f->refuse[0]) {
        ps_msg_reply_error(f->sched, m, 0, 0, PS_ERR_REFUSED, "%s", f->refuse);
        break;
      }
      if (f->have_worker) zmq_msg_close(&f->worker_route);
      zmq_msg_init(&f->worker_route);
      zmq_msg_copy(&f->worker_route, &m->route);
      f->have_worker = 1;
      Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
      rr.node_id = WORKER_ID;
      rr.rank = 0;
      rr.num_workers = 1;
      Ps__Envelope env = PS__ENVELOPE__INIT;
      env.request_id = m->request_id;
      env.body_case = PS__ENVELOPE__BODY_REGISTER_REPLY;
      env.register_reply = &rr;
      send_env(f->sched, &m->route, &env, NULL, 0);
      fake_send_view(f);
      break;
    }
    case PS__ENVELOPE__BODY_HEARTBEAT:
      f->heartbeats++;
      break;
    case PS__ENVELOPE__BODY_BARRIER:
      snprintf(f->barrier_name, sizeof(f->barrier_name), "%s",
               e->barrier->name);
      f->barriers++;
      f->barrier_epoch = e->epoch;
      if (f->barrier_stale_once) {
        f->barrier_stale_once = 0;
        f->epoch = 2;
        ps_msg_reply_error(f->sched, m, f->epoch, 0, PS_ERR_STALE_EPOCH,
                           "barrier at epoch %llu, the view is epoch 2",
                           (unsigned long long)e->epoch);
        fake_send_view(f);
        break;
      }
      fake_reply_ack(f->sched, m, f->epoch);
      break;
    case PS__ENVELOPE__BODY_DONE: {
      /* As the real scheduler does when its last worker is done: ack, and
       * end the job, which tells the client its Done was taken. */
      f->dones++;
      fake_reply_ack(f->sched, m, f->epoch);
      Ps__Shutdown sd = PS__SHUTDOWN__INIT;
      sd.reason = "job finished";
      Ps__Envelope env = PS__ENVELOPE__INIT;
      env.epoch = f->epoch;
      env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
      env.shutdown = &sd;
      send_env(f->sched, &m->route, &env, NULL, 0);
      break;
    }
    default:
      break;
  }
}

static void fake_on_server(fake_t *f, int i, ps_msg_t *m) {
  Ps__Envelope *e = m->env;
  if (e->body_case != PS__ENVELOPE__BODY_PUSH &&
      e->body_case != PS__ENVELOPE__BODY_PULL)
    return;
  int is_push = e->body_case == PS__ENVELOPE__BODY_PUSH;
  if (f->nreqs < MAX_REQS) {
    req_t *r = &f->reqs[f->nreqs++];
    memset(r, 0, sizeof(*r));
    r->server = i;
    r->body = e->body_case;
    r->sender = e->sender;
    r->epoch = e->epoch;
    r->request_id = e->request_id;
    r->key_begin = is_push ? e->push->key_begin : e->pull->key_begin;
    r->count = is_push ? e->push->count : e->pull->count;
    r->clock = is_push ? e->push->clock : e->pull->clock;
    r->seq = is_push ? e->push->seq : 0;
    r->codec = is_push ? (int)e->push->codec : (int)e->pull->codec;
    if (is_push) {
      r->nraw = zmq_msg_size(&m->payload[0]);
      if (r->nraw <= sizeof(r->raw))
        memcpy(r->raw, zmq_msg_data(&m->payload[0]), r->nraw);
    }
    if (is_push && r->count <= TOTAL && r->codec == PS_CODEC_NONE)
      memcpy(r->values, zmq_msg_data(&m->payload[0]), r->count * sizeof(float));
  }
  switch (f->mode[i]) {
    case SRV_SILENT:
      return;
    case SRV_FAILOVER:
      if (!f->failover) {
        f->failover = 1;
        f->epoch = 2;
        fake_send_view(f);
        return;
      }
      break;
    case SRV_ERROR:
      ps_msg_reply_error(
          f->srv[i], m, f->epoch, (uint32_t)i + 1, PS_ERR_UNKNOWN_KEY,
          "keys %llu+%llu not here",
          (unsigned long long)(is_push ? e->push->key_begin
                                       : e->pull->key_begin),
          (unsigned long long)(is_push ? e->push->count : e->pull->count));
      return;
    case SRV_STALE_ONCE:
      if (!f->stale_sent && e->epoch == 1) {
        f->stale_sent = 1;
        /* The server has already seen epoch 2; the worker learns it from
         * the scheduler a moment later. */
        f->epoch = 2;
        ps_msg_reply_error(f->srv[i], m, f->epoch, (uint32_t)i + 1,
                           PS_ERR_STALE_EPOCH, "epoch %llu, server at %llu",
                           (unsigned long long)e->epoch,
                           (unsigned long long)f->epoch);
        fake_send_view(f);
        return;
      }
      break;
    default:
      break;
  }
  if (is_push) {
    fake_reply_ack(f->srv[i], m, f->epoch);
    return;
  }
  Ps__PullReply pr = PS__PULL_REPLY__INIT;
  pr.key_begin = e->pull->key_begin;
  pr.count = e->pull->count;
  pr.clock = e->pull->clock;
  if (f->mode[i] == SRV_BAD_RANGE) pr.key_begin++;
  zmq_msg_t payload;
  float v[TOTAL];
  for (uint64_t k = 0; k < e->pull->count && k < TOTAL; k++)
    v[k] = pull_value(e->pull->key_begin + k);
  /* A pull in a codec gets its reply in it (issue #15). */
  int codec = (int)e->pull->codec;
  pr.codec = e->pull->codec;
  zmq_msg_init_size(&payload, ps_codec_encoded_bytes(codec, e->pull->count, 0));
  ps_codec_encode(codec, v, e->pull->count, 0, zmq_msg_data(&payload), NULL);
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m->request_id;
  env.epoch = f->epoch;
  env.body_case = PS__ENVELOPE__BODY_PULL_REPLY;
  env.pull_reply = &pr;
  send_env(f->srv[i], &m->route, &env, &payload, 1);
}

static void *fake_main(void *arg) {
  fake_t *f = arg;
  for (;;) {
    zmq_pollitem_t items[NSERVERS + 1];
    items[0] = (zmq_pollitem_t){.socket = f->sched, .events = ZMQ_POLLIN};
    for (int i = 0; i < NSERVERS; i++)
      items[i + 1] =
          (zmq_pollitem_t){.socket = f->srv[i], .events = ZMQ_POLLIN};
    zmq_poll(items, NSERVERS + 1, 10);
    pthread_mutex_lock(&f->mu);
    if (f->stop) {
      pthread_mutex_unlock(&f->mu);
      break;
    }
    if (f->send_shutdown && f->have_worker) {
      f->send_shutdown = 0;
      Ps__Shutdown sd = PS__SHUTDOWN__INIT;
      sd.reason = "job over";
      Ps__Envelope env = PS__ENVELOPE__INIT;
      env.epoch = f->epoch;
      env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
      env.shutdown = &sd;
      send_env(f->sched, &f->worker_route, &env, NULL, 0);
    }
    for (int s = 0; s < NSERVERS + 1; s++) {
      for (;;) {
        ps_msg_t m;
        char reason[256];
        int rc =
            ps_msg_recv(items[s].socket, 1, NULL, &m, reason, sizeof(reason));
        if (rc == PS_ERR_TIMEOUT) break;
        if (rc == PS_OK) {
          if (s == 0)
            fake_on_sched(f, &m);
          else
            fake_on_server(f, s - 1, &m);
        } else {
          fprintf(stderr, "fake: bad message: %s\n", reason);
        }
        ps_msg_close(&m);
      }
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
  }
  return NULL;
}

static void *bind_router(void *ctx, char *ep, size_t eplen) {
  void *s = zmq_socket(ctx, ZMQ_ROUTER);
  ck_assert_ptr_nonnull(s);
  int zero = 0;
  zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
  ck_assert_int_eq(zmq_bind(s, "tcp://127.0.0.1:*"), 0);
  size_t len = eplen;
  ck_assert_int_eq(zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len), 0);
  return s;
}

static fake_t *fake_start(void) {
  fake_t *f = calloc(1, sizeof(*f));
  ck_assert_ptr_nonnull(f);
  f->ctx = zmq_ctx_new();
  f->sched = bind_router(f->ctx, f->sched_ep, sizeof(f->sched_ep));
  for (int i = 0; i < NSERVERS; i++)
    f->srv[i] = bind_router(f->ctx, f->srv_ep[i], sizeof(f->srv_ep[i]));
  f->epoch = 1;
  f->model = test_model();
  pthread_mutex_init(&f->mu, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&f->cv, &attr);
  pthread_condattr_destroy(&attr);
  ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
  return f;
}

static void fake_stop(fake_t *f) {
  pthread_mutex_lock(&f->mu);
  f->stop = 1;
  pthread_mutex_unlock(&f->mu);
  pthread_join(f->thread, NULL);
  if (f->have_worker) zmq_msg_close(&f->worker_route);
  zmq_close(f->sched);
  for (int i = 0; i < NSERVERS; i++) zmq_close(f->srv[i]);
  zmq_ctx_term(f->ctx);
  pthread_cond_destroy(&f->cv);
  pthread_mutex_destroy(&f->mu);
  free(f);
}

static void fake_set_mode(fake_t *f, int server, srv_mode_t mode) {
  pthread_mutex_lock(&f->mu);
  f->mode[server] = mode;
  pthread_mutex_unlock(&f->mu);
}

/* Waits until *counter >= want (read under the fake's lock) or timeout_ms
 * passes; returns the last value seen. */
static int fake_wait(fake_t *f, const int *counter, int want, int timeout_ms) {
  uint64_t deadline = ps_now_ms() + (uint64_t)timeout_ms;
  pthread_mutex_lock(&f->mu);
  while (*counter < want && ps_now_ms() < deadline) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline / 1000);
    ts.tv_nsec = (long)(deadline % 1000) * 1000000L;
    pthread_cond_timedwait(&f->cv, &f->mu, &ts);
  }
  int v = *counter;
  pthread_mutex_unlock(&f->mu);
  return v;
}

/* Copies the recorded requests out (the fake keeps writing). */
static int fake_reqs(fake_t *f, req_t *out) {
  pthread_mutex_lock(&f->mu);
  int n = f->nreqs;
  memcpy(out, f->reqs, (size_t)n * sizeof(req_t));
  pthread_mutex_unlock(&f->mu);
  return n;
}

static void fake_clear_reqs(fake_t *f) {
  pthread_mutex_lock(&f->mu);
  f->nreqs = 0;
  pthread_mutex_unlock(&f->mu);
}

static ps_client_t *connect_client(fake_t *f, int timeout_ms) {
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = f->sched_ep;
  o.timeout_ms = timeout_ms;
  o.connect_timeout_ms = 5000;
  o.heartbeat_ms = 100;
  ps_model_t model = test_model();
  int err = 1;
  char msg[256] = "";
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  ck_assert_msg(c != NULL, "ps_client_new: %s: %s", ps_err_name(err), msg);
  ck_assert_int_eq(err, PS_OK);
  return c;
}

static const req_t *find_req(const req_t *reqs, int n, int server, int body) {
  for (int i = 0; i < n; i++)
    if (reqs[i].server == server && reqs[i].body == body) return &reqs[i];
  return NULL;
}

/* ---- options and start-up ------------------------------------------------ */

static void expect_inval(const ps_client_opts_t *o, const ps_model_t *m,
                         const char *needle) {
  int err = 0;
  char msg[256] = "";
  ps_client_t *c = ps_client_new(o, m, &err, msg, sizeof(msg));
  ck_assert_ptr_null(c);
  ck_assert_int_eq(err, PS_ERR_INVAL);
  ck_assert_msg(strstr(msg, needle) != NULL, "\"%s\" lacks \"%s\"", msg,
                needle);
}

/* ps-worker and ps-bench show these in --help: the same numbers. */
START_TEST(test_defaults_are_the_shared_ones) {
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  ck_assert_int_eq(o.timeout_ms, PS_CLIENT_DEFAULT_TIMEOUT_MS);
  ck_assert_int_eq(o.connect_timeout_ms, PS_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS);
  ck_assert_int_eq(o.heartbeat_ms, PS_CLIENT_DEFAULT_HEARTBEAT_MS);
  ck_assert_int_eq(o.resend_ms, PS_CLIENT_DEFAULT_RESEND_MS);
  ck_assert_int_eq(o.window, PS_CLIENT_DEFAULT_WINDOW);
  ck_assert_uint_eq(o.chunk_bytes, PS_CLIENT_DEFAULT_CHUNK_BYTES);
  ck_assert_str_eq(PS_OPT_DEF(PS_CLIENT_DEFAULT_TIMEOUT_MS), "30000");
}
END_TEST

START_TEST(test_bad_options) {
  ps_model_t model = test_model();
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  ck_assert_int_eq(o.timeout_ms, 30000);
  ck_assert_int_eq(o.connect_timeout_ms, 60000);
  ck_assert_int_eq(o.heartbeat_ms, 100);
  ck_assert_int_eq(o.rank, -1);
  ck_assert_int_eq(o.window, 8);
  ck_assert_uint_eq(o.chunk_bytes, 1u << 20);
  ck_assert_int_eq(o.resend_ms, 1000);
  expect_inval(NULL, &model, "options");
  expect_inval(&o, &model, "scheduler"); /* still NULL */
  o.scheduler = "tcp://127.0.0.1:1";
  o.timeout_ms = 0;
  expect_inval(&o, &model, "timeout_ms 0");
  o.timeout_ms = 1000;
  o.connect_timeout_ms = -5;
  expect_inval(&o, &model, "connect_timeout_ms -5");
  o.connect_timeout_ms = 1000;
  o.heartbeat_ms = 0;
  expect_inval(&o, &model, "heartbeat_ms 0");
  o.heartbeat_ms = 100;
  o.rank = -2;
  expect_inval(&o, &model, "rank -2");
  o.rank = -1;
  o.window = 0;
  expect_inval(&o, &model, "window 0");
  o.window = 8;
  o.resend_ms = -1;
  expect_inval(&o, &model, "resend_ms -1");
  o.resend_ms = 0;
  o.chunk_bytes = 6;
  expect_inval(&o, &model, "chunk_bytes 6");
  o.chunk_bytes = 0;
  expect_inval(&o, NULL, "model");
}
END_TEST

START_TEST(test_no_scheduler_times_out) {
  /* A port nothing listens on: bind one, note it, close it. */
  char ep[128];
  void *ctx = zmq_ctx_new();
  void *s = bind_router(ctx, ep, sizeof(ep));
  zmq_close(s);
  zmq_ctx_term(ctx);

  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = ep;
  o.connect_timeout_ms = 300;
  o.heartbeat_ms = 50;
  ps_model_t model = test_model();
  int err = 0;
  char msg[256] = "";
  uint64_t t0 = ps_now_ms();
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  uint64_t elapsed = ps_now_ms() - t0;
  ck_assert_ptr_null(c);
  ck_assert_int_eq(err, PS_ERR_TIMEOUT);
  ck_assert_msg(strstr(msg, ep) != NULL, "\"%s\" does not name %s", msg, ep);
  ck_assert_uint_ge(elapsed, 300);
  ck_assert_msg(elapsed < 300 + 1500, "took %llu ms",
                (unsigned long long)elapsed);
}
END_TEST

START_TEST(test_registration_refused) {
  fake_t *f = fake_start();
  pthread_mutex_lock(&f->mu);
  snprintf(f->refuse, sizeof(f->refuse), "model differs from worker 0's");
  pthread_mutex_unlock(&f->mu);
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = f->sched_ep;
  o.connect_timeout_ms = 5000;
  ps_model_t model = test_model();
  int err = 0;
  char msg[256] = "";
  uint64_t t0 = ps_now_ms();
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  ck_assert_ptr_null(c);
  ck_assert_int_eq(err, PS_ERR_REFUSED);
  ck_assert_msg(strstr(msg, "model differs from worker 0's") != NULL,
                "\"%s\" lacks the scheduler's reason", msg);
  /* Refused at once, not after the connect deadline. */
  ck_assert_uint_lt(ps_now_ms() - t0, 2000);
  fake_stop(f);
}
END_TEST

START_TEST(test_register_and_view) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 2000);
  ck_assert_uint_eq(ps_client_node_id(c), WORKER_ID);
  ck_assert_uint_eq(ps_client_rank(c), 0);
  ck_assert_uint_eq(ps_client_num_workers(c), 1);
  const ps_view_t *v = ps_client_view(c);
  ck_assert_uint_eq(v->epoch, 1);
  ck_assert_uint_eq(v->nranges, 2);
  ck_assert_str_eq(ps_client_errmsg(c), "");
  ck_assert_int_eq(ps_client_shutting_down(c), 0);
  /* Heartbeats go on from the background thread while we do nothing. */
  ck_assert_int_ge(fake_wait(f, &f->heartbeats, 2, 3000), 2);
  ps_client_destroy(&c);
  ck_assert_ptr_null(c);
  fake_stop(f);
}
END_TEST

/* ---- data plane -----------------------------------------------------------
 */

START_TEST(test_push_splits_across_servers) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 2000);
  float grad[TOTAL];
  for (int i = 0; i < TOTAL; i++) grad[i] = (float)i + 0.25f;

  /* Keys [16, 48): [16, 32) to server 1, [32, 48) to server 2. */
  ck_assert_int_eq(ps_client_push(c, 16, 32, grad + 16, 7), PS_OK);
  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 2);
  const req_t *a = find_req(reqs, n, 0, PS__ENVELOPE__BODY_PUSH);
  const req_t *b = find_req(reqs, n, 1, PS__ENVELOPE__BODY_PUSH);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(a->key_begin, 16);
  ck_assert_uint_eq(a->count, 16);
  ck_assert_uint_eq(b->key_begin, 32);
  ck_assert_uint_eq(b->count, 16);
  for (int i = 0; i < 16; i++) {
    ck_assert_float_eq(a->values[i], grad[16 + i]);
    ck_assert_float_eq(b->values[i], grad[32 + i]);
  }
  ck_assert_uint_eq(a->sender, WORKER_ID);
  ck_assert_uint_eq(a->epoch, 1);
  ck_assert_uint_eq(a->clock, 7);
  ck_assert_uint_eq(b->clock, 7);
  ck_assert_uint_ne(a->request_id, b->request_id);
  ck_assert_uint_ne(a->seq, 0);
  ck_assert_uint_ne(a->seq, b->seq);
  uint64_t last_seq = a->seq > b->seq ? a->seq : b->seq;

  /* A tensor is a key slice: "w2" is [40, 64), all on server 2. */
  fake_clear_reqs(f);
  ck_assert_int_eq(ps_client_push_tensor(c, "w2", grad + 40, 8), PS_OK);
  n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 1);
  ck_assert_int_eq(reqs[0].server, 1);
  ck_assert_uint_eq(reqs[0].key_begin, 40);
  ck_assert_uint_eq(reqs[0].count, 24);
  ck_assert_float_eq(reqs[0].values[23], grad[63]);
  ck_assert_uint_gt(reqs[0].seq, last_seq);

  ck_assert_int_eq(ps_client_push_tensor(c, "nope", grad, 8), PS_ERR_INVAL);
  ck_assert_ptr_nonnull(strstr(ps_client_errmsg(c), "\"nope\""));
  ck_assert_int_eq(ps_client_push(c, 60, 5, grad, 8), PS_ERR_INVAL);
  ck_assert_int_eq(ps_client_push(c, 0, 0, NULL, 8), PS_OK);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_pull_assembles_replies) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 2000);
  float out[TOTAL];
  for (int i = 0; i < TOTAL; i++) out[i] = -1.0f;
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 3), PS_OK);
  for (int i = 0; i < TOTAL; i++) ck_assert_float_eq(out[i], pull_value(i));
  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 2);
  const req_t *b = find_req(reqs, n, 1, PS__ENVELOPE__BODY_PULL);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(b->key_begin, SPLIT);
  ck_assert_uint_eq(b->count, TOTAL - SPLIT);
  ck_assert_uint_eq(b->clock, 3);

  float w1[40];
  memset(w1, 0, sizeof(w1));
  ck_assert_int_eq(ps_client_pull_tensor(c, "w1", w1, 3), PS_OK);
  for (int i = 0; i < 40; i++) ck_assert_float_eq(w1[i], pull_value(i));

  /* A reply for other keys than asked is refused, not copied. */
  fake_set_mode(f, 1, SRV_BAD_RANGE);
  for (int i = 0; i < TOTAL; i++) out[i] = -1.0f;
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 3), PS_ERR_PROTO);
  ck_assert_float_eq(out[SPLIT], -1.0f);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_silent_server_times_out) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 300);
  fake_set_mode(f, 1, SRV_SILENT);
  float grad[TOTAL] = {0};
  uint64_t t0 = ps_now_ms();
  int rc = ps_client_push(c, 0, TOTAL, grad, 1);
  uint64_t elapsed = ps_now_ms() - t0;
  ck_assert_int_eq(rc, PS_ERR_TIMEOUT);
  const char *msg = ps_client_errmsg(c);
  ck_assert_msg(strstr(msg, "server 2") && strstr(msg, f->srv_ep[1]),
                "\"%s\" does not name server 2 (%s)", msg, f->srv_ep[1]);
  ck_assert_uint_ge(elapsed, 300);
  ck_assert_msg(elapsed < 300 + 700, "took %llu ms",
                (unsigned long long)elapsed);

  float out[TOTAL];
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 1), PS_ERR_TIMEOUT);

  /* Once the server answers again, so does the client; the late replies
   * of the calls that timed out are not mistaken for new ones. */
  fake_set_mode(f, 1, SRV_NORMAL);
  ck_assert_int_eq(ps_client_push(c, 0, TOTAL, grad, 2), PS_OK);
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 2), PS_OK);
  ck_assert_float_eq(out[TOTAL - 1], pull_value(TOTAL - 1));
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_stale_epoch_resends_with_new_view) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 3000);
  fake_set_mode(f, 1, SRV_STALE_ONCE);
  float grad[TOTAL];
  for (int i = 0; i < TOTAL; i++) grad[i] = (float)i;
  ck_assert_int_eq(ps_client_push(c, 16, 32, grad + 16, 4), PS_OK);

  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 3);
  const req_t *first = NULL, *resend = NULL;
  for (int i = 0; i < n; i++) {
    if (reqs[i].server != 1) continue;
    if (first == NULL)
      first = &reqs[i];
    else
      resend = &reqs[i];
  }
  ck_assert_ptr_nonnull(first);
  ck_assert_ptr_nonnull(resend);
  ck_assert_uint_eq(first->epoch, 1);
  ck_assert_uint_eq(resend->epoch, 2);
  ck_assert_uint_eq(resend->key_begin, 32);
  ck_assert_uint_eq(resend->count, 16);
  ck_assert_float_eq(resend->values[15], grad[47]);
  /* Same seq: a server that did apply the first one drops the resend. */
  ck_assert_uint_eq(resend->seq, first->seq);
  ck_assert_uint_ne(resend->request_id, first->request_id);
  ck_assert_uint_eq(ps_client_view(c)->epoch, 2);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_server_error_is_reported) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 2000);
  fake_set_mode(f, 1, SRV_ERROR);
  float grad[TOTAL] = {0};
  ck_assert_int_eq(ps_client_push(c, 0, TOTAL, grad, 1), PS_ERR_UNKNOWN_KEY);
  char want[256];
  snprintf(want, sizeof(want), "server 2 (%s): ERR_UNKNOWN_KEY: keys 32+32",
           f->srv_ep[1]);
  ck_assert_msg(strstr(ps_client_errmsg(c), want) != NULL,
                "\"%s\" lacks \"%s\"", ps_client_errmsg(c), want);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_failover_resends_to_new_owner) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 3000);
  fake_set_mode(f, 1, SRV_FAILOVER);
  float grad[TOTAL];
  for (int i = 0; i < TOTAL; i++) grad[i] = (float)i;
  uint64_t t0 = ps_now_ms();
  ck_assert_int_eq(ps_client_push(c, 16, 32, grad + 16, 4), PS_OK);
  /* Resent as soon as the view came, not at the end of the deadline. */
  ck_assert_uint_lt(ps_now_ms() - t0, 1500);

  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 3);
  const req_t *lost = find_req(reqs, n, 1, PS__ENVELOPE__BODY_PUSH);
  const req_t *moved = find_req(reqs, n, 2, PS__ENVELOPE__BODY_PUSH);
  ck_assert_ptr_nonnull(lost);
  ck_assert_ptr_nonnull(moved);
  ck_assert_uint_eq(lost->epoch, 1);
  ck_assert_uint_eq(moved->epoch, 2);
  ck_assert_uint_eq(moved->key_begin, 32);
  ck_assert_uint_eq(moved->count, 16);
  ck_assert_uint_eq(moved->seq, lost->seq);
  ck_assert_float_eq(moved->values[0], grad[32]);
  ck_assert_uint_eq(ps_client_view(c)->epoch, 2);

  /* Later calls go to the new owner only. */
  fake_clear_reqs(f);
  float out[TOTAL];
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 4), PS_OK);
  ck_assert_float_eq(out[TOTAL - 1], pull_value(TOTAL - 1));
  n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 2);
  ck_assert_ptr_null(find_req(reqs, n, 1, PS__ENVELOPE__BODY_PULL));
  ck_assert_ptr_nonnull(find_req(reqs, n, 2, PS__ENVELOPE__BODY_PULL));
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

/* ---- chunks, windows and calls in flight --------------------------------
 */

static ps_client_t *connect_client_win(fake_t *f, int timeout_ms, int window,
                                       uint64_t chunk_bytes) {
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = f->sched_ep;
  o.timeout_ms = timeout_ms;
  o.connect_timeout_ms = 5000;
  o.heartbeat_ms = 100;
  o.window = window;
  o.chunk_bytes = chunk_bytes;
  ps_model_t model = test_model();
  int err = 1;
  char msg[256] = "";
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  ck_assert_msg(c != NULL, "ps_client_new: %s: %s", ps_err_name(err), msg);
  return c;
}

START_TEST(test_chunks_follow_range_begins) {
  fake_t *f = fake_start();
  /* 12 keys per request: chunks start at multiples of 12 from each
   * server's range begin (0 and 32), not from the call's first key. */
  ps_client_t *c = connect_client_win(f, 2000, 8, 12 * sizeof(float));
  float grad[TOTAL];
  for (int i = 0; i < TOTAL; i++) grad[i] = (float)i;
  ck_assert_int_eq(ps_client_push(c, 4, 46, grad + 4, 1), PS_OK);
  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  const uint64_t want[][3] = {
      {0, 4, 8}, {0, 12, 12}, {0, 24, 8}, {1, 32, 12}, {1, 44, 6}};
  ck_assert_int_eq(n, 5);
  for (int w = 0; w < 5; w++) {
    int found = 0;
    for (int i = 0; i < n; i++) {
      if (reqs[i].server != (int)want[w][0] || reqs[i].key_begin != want[w][1])
        continue;
      found = 1;
      ck_assert_uint_eq(reqs[i].count, want[w][2]);
      ck_assert_float_eq(reqs[i].values[0], grad[want[w][1]]);
    }
    ck_assert_msg(found, "no request for keys %llu",
                  (unsigned long long)want[w][1]);
  }
  /* Every chunk of one call has its own sequence number. */
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++) ck_assert_uint_ne(reqs[i].seq, reqs[j].seq);

  /* A pull is chunked the same way and assembled in place. */
  float out[TOTAL];
  for (int i = 0; i < TOTAL; i++) out[i] = -1.0f;
  fake_clear_reqs(f);
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 1), PS_OK);
  ck_assert_int_eq(fake_reqs(f, reqs), 6); /* 12,12,8 | 12,12,8 */
  for (int i = 0; i < TOTAL; i++) ck_assert_float_eq(out[i], pull_value(i));
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_window_limits_requests_in_flight) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client_win(f, 400, 2, 4 * sizeof(float));
  fake_set_mode(f, 1, SRV_SILENT);
  float grad[TOTAL] = {0};
  /* 8 chunks per server: server 1 answers and gets all of them, two at a
   * time; the silent server 2 never sees more than its window. */
  ck_assert_int_eq(ps_client_push(c, 0, TOTAL, grad, 1), PS_ERR_TIMEOUT);
  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs), to1 = 0, to2 = 0;
  for (int i = 0; i < n; i++) reqs[i].server == 0 ? to1++ : to2++;
  ck_assert_int_eq(to1, 8);
  ck_assert_int_eq(to2, 2);
  ck_assert_ptr_nonnull(strstr(ps_client_errmsg(c), "server 2"));
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_calls_in_flight_together) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client_win(f, 2000, 8, 0);
  float a[TOTAL], b[TOTAL], out[TOTAL];
  for (int i = 0; i < TOTAL; i++) a[i] = (float)i, b[i] = -(float)i;
  uint64_t ta, tp, tb;
  ck_assert_int_eq(ps_client_push_start(c, 0, TOTAL, a, 5, &ta), PS_OK);
  ck_assert_int_eq(ps_client_pull_start(c, 0, TOTAL, out, 5, &tp), PS_OK);
  ck_assert_int_eq(ps_client_push_start(c, 8, 40, b + 8, 6, &tb), PS_OK);
  ck_assert_uint_ne(ta, tp);
  /* Waited for in any order. */
  ck_assert_int_eq(ps_client_wait(c, tb), PS_OK);
  ck_assert_int_eq(ps_client_wait(c, tp), PS_OK);
  ck_assert_int_eq(ps_client_wait(c, ta), PS_OK);
  for (int i = 0; i < TOTAL; i++) ck_assert_float_eq(out[i], pull_value(i));
  ck_assert_int_eq(ps_client_wait(c, ta), PS_ERR_INVAL);
  ck_assert_ptr_nonnull(strstr(ps_client_errmsg(c), "no call is pending"));
  /* Each server saw them in the order they were started. */
  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 6);
  for (int s = 0; s < 2; s++) {
    int bodies[3], k = 0;
    for (int i = 0; i < n && k < 3; i++)
      if (reqs[i].server == s) bodies[k++] = reqs[i].body;
    ck_assert_int_eq(k, 3);
    ck_assert_int_eq(bodies[0], PS__ENVELOPE__BODY_PUSH);
    ck_assert_int_eq(bodies[1], PS__ENVELOPE__BODY_PULL);
    ck_assert_int_eq(bodies[2], PS__ENVELOPE__BODY_PUSH);
  }
  /* A bounded number may be pending. */
  static uint64_t t[PS_CLIENT_MAX_PENDING];
  for (int i = 0; i < PS_CLIENT_MAX_PENDING; i++)
    ck_assert_int_eq(ps_client_push_start(c, 0, 0, a, 7, &t[i]), PS_OK);
  uint64_t extra;
  ck_assert_int_eq(ps_client_push_start(c, 0, 0, a, 7, &extra), PS_ERR_REFUSED);
  for (int i = PS_CLIENT_MAX_PENDING - 1; i >= 0; i--)
    ck_assert_int_eq(ps_client_wait(c, t[i]), PS_OK);
  ck_assert_int_eq(ps_client_push_start(c, 0, TOTAL, a, 7, NULL), PS_ERR_INVAL);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

START_TEST(test_zero_copy_pull_spans) {
  fake_t *f = fake_start();
  /* Chunks of 12 keys: [4, 50) comes back as 5 replies in any order. */
  ps_client_t *c = connect_client_win(f, 2000, 8, 12 * sizeof(float));
  uint64_t t;
  ck_assert_int_eq(ps_client_pull_frames_start(c, 4, 46, 1, &t), PS_OK);
  const ps_client_span_t *spans = NULL;
  size_t n = 0;
  ck_assert_int_eq(ps_client_wait_frames(c, t, &spans, &n), PS_OK);
  ck_assert_uint_eq(n, 5);
  uint64_t key = 4;
  for (size_t i = 0; i < n; i++) {
    ck_assert_uint_eq(spans[i].key_begin, key);
    ck_assert_uint_eq((uintptr_t)spans[i].values % sizeof(float), 0);
    for (uint64_t k = 0; k < spans[i].count; k++)
      ck_assert_float_eq(spans[i].values[k], pull_value(key + k));
    key += spans[i].count;
  }
  ck_assert_uint_eq(key, 50);
  /* Held until released; a second wait is refused. */
  ck_assert_int_eq(ps_client_wait_frames(c, t, &spans, &n), PS_ERR_INVAL);
  ps_client_release(c, t);
  ps_client_release(c, t);
  ck_assert_int_eq(ps_client_wait_frames(c, t, &spans, &n), PS_ERR_INVAL);
  /* A failed zero-copy pull holds nothing and needs no release. */
  fake_set_mode(f, 1, SRV_ERROR);
  ck_assert_int_eq(ps_client_pull_frames_start(c, 0, TOTAL, 1, &t), PS_OK);
  ck_assert_int_eq(ps_client_wait_frames(c, t, &spans, &n), PS_ERR_UNKNOWN_KEY);
  /* Plain wait on one drops its buffers. */
  fake_set_mode(f, 1, SRV_NORMAL);
  ck_assert_int_eq(ps_client_pull_frames_start(c, 0, TOTAL, 1, &t), PS_OK);
  ck_assert_int_eq(ps_client_wait(c, t), PS_OK);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

/* ---- codecs (issue #15) ---------------------------------------------------
 */

/* Decodes a recorded coded push into out (count floats). */
static void req_decode(const req_t *r, float *out) {
  char err[200];
  ck_assert_int_eq(
      ps_codec_decode(r->codec, r->raw, r->nraw, r->count, out, err, 200),
      PS_OK);
}

/* w1 [0, 40) pushes top-k 25% and pulls fp16, w2 [40, 64) pushes int8 and
 * pulls float32: requests are cut at 40, each coded piece is encoded once,
 * and the resend after a failover carries the very same bytes; top-k keeps
 * what it did not send for the next push; pulls decode into the array and
 * into zero-copy spans; the bytes are counted. */
START_TEST(test_coded_push_and_pull) {
  model_tensors[0].push_codec = PS_CODEC_TOPK;
  model_tensors[0].topk_fraction = 0.25f;
  model_tensors[0].pull_codec = PS_CODEC_FP16;
  model_tensors[1].push_codec = PS_CODEC_INT8;
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 3000);
  fake_set_mode(f, 1, SRV_FAILOVER);
  float grad[TOTAL];
  for (int i = 0; i < TOTAL; i++) grad[i] = (float)((i * 37) % 64) - 31.5f;
  ck_assert_int_eq(ps_client_push(c, 0, TOTAL, grad, 1), PS_OK);

  req_t reqs[MAX_REQS];
  int n = fake_reqs(f, reqs);
  /* [0, 32) to server 1; [32, 40) and [40, 64) to server 2, which loses
   * the first that comes: that one goes again to server 3, and so does
   * the other unless server 2 answered it before the new view came. */
  ck_assert_msg(n == 4 || n == 5, "%d requests", n);
  const req_t *piece[3] = {NULL, NULL, NULL}, *again[3] = {NULL, NULL, NULL};
  for (int i = 0; i < n; i++) {
    int p = reqs[i].key_begin == 0 ? 0 : reqs[i].key_begin == 32 ? 1 : 2;
    if (reqs[i].server == 2)
      again[p] = &reqs[i];
    else
      piece[p] = &reqs[i];
  }
  ck_assert_ptr_nonnull(piece[0]);
  ck_assert_uint_eq(piece[0]->count, 32);
  ck_assert_int_eq(piece[0]->codec, PS_CODEC_TOPK);
  ck_assert_uint_eq(piece[0]->nraw, 8 * 8); /* ceil(0.25 x 32) pairs */
  size_t resent_bytes = 0;
  for (int p = 1; p < 3; p++) {
    ck_assert_ptr_nonnull(piece[p]);
    if (again[p] == NULL) continue;
    resent_bytes += again[p]->nraw;
    ck_assert_int_eq(again[p]->codec, piece[p]->codec);
    ck_assert_uint_eq(again[p]->seq, piece[p]->seq);
    ck_assert_uint_eq(again[p]->nraw, piece[p]->nraw);
    ck_assert_int_eq(memcmp(again[p]->raw, piece[p]->raw, piece[p]->nraw), 0);
  }
  ck_assert_uint_gt(resent_bytes, 0);
  ck_assert_uint_eq(piece[1]->count, 8);
  ck_assert_int_eq(piece[1]->codec, PS_CODEC_TOPK);
  ck_assert_uint_eq(piece[2]->count, 24);
  ck_assert_int_eq(piece[2]->codec, PS_CODEC_INT8);
  ck_assert_uint_eq(piece[2]->nraw, 4 + 24);

  /* Top-k sent the 8 largest |g| of [0, 32); the next push (of zeros)
   * sends the next 8 from the residual. */
  float sent[TOTAL], sent2[TOTAL];
  req_decode(piece[0], sent);
  float kth = 0;
  int nz = 0;
  for (int i = 0; i < 32; i++)
    if (sent[i] != 0) {
      ck_assert_float_eq(sent[i], grad[i]);
      nz++;
    }
  ck_assert_int_eq(nz, 8);
  for (int i = 0; i < 32; i++)
    if (sent[i] == 0 && fabsf(grad[i]) > kth) kth = fabsf(grad[i]);
  for (int i = 0; i < 32; i++)
    if (sent[i] != 0) ck_assert_float_ge(fabsf(sent[i]), kth);
  fake_clear_reqs(f);
  float zeros[TOTAL] = {0};
  ck_assert_int_eq(ps_client_push(c, 0, 32, zeros, 2), PS_OK);
  n = fake_reqs(f, reqs);
  ck_assert_int_eq(n, 1);
  req_decode(&reqs[0], sent2);
  nz = 0;
  for (int i = 0; i < 32; i++)
    if (sent2[i] != 0) {
      ck_assert_float_eq(sent[i], 0.0f);
      ck_assert_float_eq(sent2[i], grad[i]);
      nz++;
    }
  ck_assert_int_eq(nz, 8);

  /* Pulls: [0, 40) in fp16, [40, 64) in float32. */
  uint64_t push_bytes = 0, pull_bytes = 0;
  ps_client_wire_bytes(c, &push_bytes, &pull_bytes);
  ck_assert_uint_eq(push_bytes, 64 + 16 + 28 + resent_bytes + 64);
  float out[TOTAL];
  ck_assert_int_eq(ps_client_pull(c, 0, TOTAL, out, 2), PS_OK);
  for (int i = 0; i < TOTAL; i++)
    ck_assert_float_eq(
        out[i],
        i < 40 ? ps_fp16_to_float(ps_fp16_from_float(pull_value((uint64_t)i)))
               : pull_value((uint64_t)i));
  ps_client_wire_bytes(c, NULL, &pull_bytes);
  ck_assert_uint_eq(pull_bytes, 40 * 2 + 24 * 4);
  uint64_t t;
  ck_assert_int_eq(ps_client_pull_frames_start(c, 4, 50, 2, &t), PS_OK);
  const ps_client_span_t *spans = NULL;
  size_t ns = 0;
  ck_assert_int_eq(ps_client_wait_frames(c, t, &spans, &ns), PS_OK);
  uint64_t key = 4;
  for (size_t i = 0; i < ns; i++) {
    ck_assert_uint_eq(spans[i].key_begin, key);
    for (uint64_t k = 0; k < spans[i].count; k++)
      ck_assert_float_eq(spans[i].values[k], out[key + k]);
    key += spans[i].count;
  }
  ck_assert_uint_eq(key, 54);
  ps_client_release(c, t);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

/* ---- scheduler --------------------------------------------------------------
 */

START_TEST(test_barrier_and_done) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 2000);
  ck_assert_int_eq(ps_client_barrier(c, "start"), PS_OK);
  pthread_mutex_lock(&f->mu);
  ck_assert_int_eq(f->barriers, 1);
  ck_assert_str_eq(f->barrier_name, "start");
  pthread_mutex_unlock(&f->mu);
  ck_assert_int_eq(ps_client_barrier(c, ""), PS_ERR_INVAL);

  /* Refused for a stale epoch: entered again once the new view is here. */
  pthread_mutex_lock(&f->mu);
  f->barrier_stale_once = 1;
  pthread_mutex_unlock(&f->mu);
  ck_assert_int_eq(ps_client_barrier(c, "epoch2"), PS_OK);
  pthread_mutex_lock(&f->mu);
  ck_assert_int_eq(f->barriers, 3);
  ck_assert_uint_eq(f->barrier_epoch, 2);
  pthread_mutex_unlock(&f->mu);

  /* destroy sends the Done the caller did not. */
  ps_client_destroy(&c);
  ck_assert_int_eq(fake_wait(f, &f->dones, 1, 3000), 1);
  fake_stop(f);
}
END_TEST

START_TEST(test_shutdown_stops_calls) {
  fake_t *f = fake_start();
  ps_client_t *c = connect_client(f, 5000);
  fake_set_mode(f, 1, SRV_SILENT);
  pthread_mutex_lock(&f->mu);
  f->send_shutdown = 1;
  pthread_mutex_unlock(&f->mu);

  /* The push would wait 5 s for the silent server; the Shutdown ends it. */
  float grad[TOTAL] = {0};
  uint64_t t0 = ps_now_ms();
  ck_assert_int_eq(ps_client_push(c, 0, TOTAL, grad, 1), PS_ERR_SHUTDOWN);
  ck_assert_uint_lt(ps_now_ms() - t0, 2000);
  ck_assert_ptr_nonnull(strstr(ps_client_errmsg(c), "job over"));
  ck_assert_int_eq(ps_client_shutting_down(c), 1);
  ck_assert_int_eq(ps_client_barrier(c, "x"), PS_ERR_SHUTDOWN);
  ps_client_destroy(&c);
  fake_stop(f);
}
END_TEST

static Suite *client_suite(void) {
  Suite *s = suite_create("client");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 30);
  tcase_add_test(t, test_defaults_are_the_shared_ones);
  tcase_add_test(t, test_bad_options);
  tcase_add_test(t, test_no_scheduler_times_out);
  tcase_add_test(t, test_registration_refused);
  tcase_add_test(t, test_register_and_view);
  tcase_add_test(t, test_push_splits_across_servers);
  tcase_add_test(t, test_pull_assembles_replies);
  tcase_add_test(t, test_silent_server_times_out);
  tcase_add_test(t, test_stale_epoch_resends_with_new_view);
  tcase_add_test(t, test_server_error_is_reported);
  tcase_add_test(t, test_failover_resends_to_new_owner);
  tcase_add_test(t, test_chunks_follow_range_begins);
  tcase_add_test(t, test_window_limits_requests_in_flight);
  tcase_add_test(t, test_calls_in_flight_together);
  tcase_add_test(t, test_zero_copy_pull_spans);
  tcase_add_test(t, test_coded_push_and_pull);
  tcase_add_test(t, test_barrier_and_done);
  tcase_add_test(t, test_shutdown_stops_calls);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  return ps_check_run(client_suite());
}
