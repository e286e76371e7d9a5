/* Bad input to a live server and a live scheduler: garbage bytes, a
 * truncated header, a length that disagrees with its frame, an unknown
 * tensor, a wrong epoch; for sparse tables an unknown table, unsorted or
 * duplicate keys, a values frame that does not fit the table's dim. Each is
 * answered with an Error, and each daemon still serves the next good
 * request. With two servers, replication messages to a backup that do not
 * hold together (a chunk without its snapshot head, a head whose dedup
 * frame does not match its count, a live set without its first steps) and
 * any replication message from a node that is not the range's primary
 * (fenced) are refused the same way.
 *
 * On the same fixture, the promises sparse rows share with dense ranges
 * (issue #14): a resent sparse push (same sequence number) is applied once;
 * in BSP a sparse push changes no row until the range's dense step is
 * applied, and then moves it by the step's sum; a backup replays a
 * primary's sparse push once and refuses one that does not fit.
 *
 * A PushPull (issue #15) is answered with the weights of its step applied,
 * its resend too (not applied again), and refused where a push would be;
 * a coded one whose frame does not hold together is refused too.
 *
 * The test itself plays the single worker of the job over the real protocol,
 * so the cluster publishes a view and the server holds a model. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/auth.h"
#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "harness.h"
#include "tests/check_run.h"

#define NKEYS 64
#define SPARSE_DIM 4

static h_cluster_t c;
static void *ctx, *sched, *server;
static uint32_t node_id;
static uint64_t epoch;
static uint64_t next_req = 1;
/* Two-server fixture: range 0's primary id, its backup's socket, and the
 * range. */
static uint32_t primary_id;
static void *backup;
static uint64_t range0_begin, range0_end;

/* The tokens of the two nodes the test plays (common/auth.h): the job's
 * worker, and in the two-server fixture one of its servers. */
static ps_auth_token_t wtok, stok;

/* A connection of the node with token t, for use (PS_AUTH_USE_*). */
static void *dealer_as(const char *ep, const ps_auth_token_t *t, char use) {
  void *s = zmq_socket(ctx, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
  char why[128];
  ck_assert_int_eq(ps_auth_set_routing_id(s, t, use, why, sizeof(why)), PS_OK);
  ck_assert_int_eq(zmq_connect(s, ep), 0);
  return s;
}

/* A connection of the worker the test plays. */
static void *dealer(const char *ep) {
  return dealer_as(ep, &wtok, PS_AUTH_USE_DATA);
}

/* Waits (bounded) for one message; PS_ERR_TIMEOUT if none came. */
static int recv_msg(void *s, ps_msg_t *m, int timeout_ms) {
  zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
  if (zmq_poll(&it, 1, timeout_ms) != 1) return PS_ERR_TIMEOUT;
  char err[256];
  int rc = ps_msg_recv(s, 0, NULL, m, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "reply did not validate: %s", err);
  return rc;
}

/* Receives until a message answering req arrives (skipping unsolicited
 * views), within the deadline. */
static void recv_reply(void *s, uint64_t req, ps_msg_t *m) {
  uint64_t end = h_deadline_ms(5000);
  for (;;) {
    uint64_t now = h_now_ms();
    ck_assert_msg(now < end, "no reply to request %llu within 5 s",
                  (unsigned long long)req);
    if (recv_msg(s, m, (int)(end - now)) != PS_OK) continue;
    if (m->request_id == req) return;
    ps_msg_close(m);
  }
}

static void expect_error(void *s, uint64_t req, int code, const char *what) {
  ps_msg_t m;
  recv_reply(s, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ERROR,
                "%s: expected an Error, got %s", what,
                ps_body_name(m.env->body_case));
  ck_assert_msg(m.env->error->code == code, "%s: error %s (%s), expected %s",
                what, ps_err_name(m.env->error->code), m.env->error->message,
                ps_err_name(code));
  ck_assert_msg(m.env->error->message[0] != '\0', "%s: empty message", what);
  fprintf(stderr, "bad_input %s -> %s: %s\n", what,
          ps_err_name(m.env->error->code), m.env->error->message);
  ps_msg_close(&m);
}

static Ps__Envelope envelope(Ps__Envelope__BodyCase body) {
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = next_req++;
  env.sender = node_id;
  env.epoch = epoch;
  env.body_case = body;
  return env;
}

static void raw_send(void *s, const void *data, size_t n, int more) {
  ck_assert_int_ge(zmq_send(s, data, n, more ? ZMQ_SNDMORE : 0), 0);
}

/* The packed header of a push with this request id: error replies to
 * undecodable headers carry request id 0, decodable ones echo it. */
static size_t pack_push(uint8_t *buf, uint64_t req, uint64_t begin,
                        uint64_t count, uint64_t ep) {
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = begin;
  p.count = count;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.request_id = req;
  env.sender = node_id;
  env.epoch = ep;
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &p;
  return ps__envelope__pack(&env, buf);
}

/* Registers the test as a server of the job on its own membership link
 * (token stok) with an address nobody serves; returns its node id. */
static uint32_t register_fake_server(void **link) {
  char addr[64];
  snprintf(addr, sizeof(addr), "tcp://127.0.0.1:%d", h_free_port());
  *link = dealer_as(c.sched_ep, &stok, PS_AUTH_USE_MEMBER);
  Ps__Register reg = PS__REGISTER__INIT;
  reg.role = PS__ROLE__ROLE_SERVER;
  reg.address = addr;
  reg.rank = 0xffffffffu;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_REGISTER);
  env.sender = 0;
  env.epoch = 0;
  env.register_ = &reg;
  ck_assert_int_eq(ps_msg_send(*link, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(*link, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_REGISTER_REPLY,
                "server register answered with %s",
                ps_body_name(m.env->body_case));
  uint32_t id = m.env->register_reply->node_id;
  ps_msg_close(&m);
  return id;
}

static void *fake_link;
static const char *server_args; /* --nonfinite of the servers, or NULL */
static int bsp; /* a BSP job whose servers take 2 requests per worker */
static char backup_addr[256]; /* the real server of the two-server fixture */
static char server_ep_of_test[256]; /* the server the worker talks to */

static void setup_n(const char *nservers) {
  h_init(&c, "bad_input");
  ck_assert_int_eq(ps_auth_token_new(&wtok), PS_OK);
  ck_assert_int_eq(ps_auth_token_new(&stok), PS_OK);
  /* With two servers the test plays one of them: a range it leads has the
   * real server as its backup, which the test then feeds replication as
   * that range's primary, on that primary's own connection. */
  int fake = strcmp(nservers, "2") == 0;
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          nservers, "--workers", "1", "--mode", bsp ? "bsp" : "asp",
          "--heartbeat-timeout-ms", "60000", NULL);
  for (int i = 0; i < atoi(nservers) - fake; i++) {
    char name[32];
    snprintf(name, sizeof(name), "server%d", i);
    h_spawn(&c, name, "ps-server", "--scheduler", c.sched_ep, "--nonfinite",
            server_args ? server_args : "reject", "--max-inflight-per-peer",
            bsp ? "2" : "1024", NULL);
  }
  ctx = zmq_ctx_new();
  sched = dealer_as(c.sched_ep, &wtok, PS_AUTH_USE_MEMBER);
  uint32_t fake_id = fake ? register_fake_server(&fake_link) : 0;

  /* Register as the job's only worker with a one-tensor model. */
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  t.name = "w";
  t.offset = 0;
  t.length = NKEYS;
  t.init = PS__INIT__INIT_UNIFORM;
  t.init_scale = 0.5f;
  Ps__TensorSpec *tp = &t;
  Ps__ModelSpec model = PS__MODEL_SPEC__INIT;
  model.n_tensors = 1;
  model.tensors = &tp;
  model.learning_rate = 0.5f;
  model.seed = 7;
  Ps__SparseTableSpec st = PS__SPARSE_TABLE_SPEC__INIT;
  st.name = "emb";
  st.dim = SPARSE_DIM;
  Ps__SparseTableSpec *stp = &st;
  model.n_sparse_tables = 1;
  model.sparse_tables = &stp;
  Ps__Register reg = PS__REGISTER__INIT;
  reg.role = PS__ROLE__ROLE_WORKER;
  reg.model = &model;
  reg.rank = 0xffffffffu;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_REGISTER);
  env.register_ = &reg;
  ck_assert_int_eq(ps_msg_send(sched, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(sched, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_REGISTER_REPLY,
                "register answered with %s", ps_body_name(m.env->body_case));
  node_id = m.env->register_reply->node_id;
  ps_msg_close(&m);

  /* The view comes once the server registered too. */
  uint64_t end = h_deadline_ms(30000);
  char server_ep[256] = "", backup_ep[256] = "";
  while (server_ep[0] == '\0') {
    ck_assert_msg(h_now_ms() < end, "no view within 30 s");
    if (recv_msg(sched, &m, 1000) != PS_OK) continue;
    if (m.env->body_case == PS__ENVELOPE__BODY_VIEW) {
      Ps__View *v = m.env->view;
      epoch = v->epoch;
      ck_assert_uint_eq(v->n_ranges, (size_t)atoi(nservers));
      const Ps__KeyRange *r0 = v->ranges[0];
      for (size_t i = 0; fake && i < v->n_ranges; i++)
        if (v->ranges[i]->server_id == fake_id) r0 = v->ranges[i];
      primary_id = r0->server_id;
      range0_begin = r0->begin;
      range0_end = r0->end;
      for (size_t i = 0; i < v->n_nodes; i++) {
        if (v->nodes[i]->id == primary_id)
          snprintf(server_ep, sizeof(server_ep), "%s", v->nodes[i]->address);
        if (r0->n_backups > 0 && v->nodes[i]->id == r0->backups[0])
          snprintf(backup_ep, sizeof(backup_ep), "%s", v->nodes[i]->address);
      }
      /* The worker's pulls go to the real server. */
      if (fake) snprintf(server_ep, sizeof(server_ep), "%s", backup_ep);
    }
    ps_msg_close(&m);
  }
  ck_assert_uint_ge(epoch, 1);
  server = dealer(server_ep);
  snprintf(server_ep_of_test, sizeof(server_ep_of_test), "%s", server_ep);
  backup = fake ? dealer_as(backup_ep, &stok, PS_AUTH_USE_REPLICA) : NULL;
  snprintf(backup_addr, sizeof(backup_addr), "%s", backup_ep);
}

static void setup(void) {
  setup_n("1");
}
static void setup_bsp(void) {
  bsp = 1;
  setup_n("1");
  bsp = 0;
}
static void setup_skip(void) {
  server_args = "skip";
  setup_n("1");
  server_args = NULL;
}
static void setup_replicated(void) {
  setup_n("2");
}

static void teardown(void) {
  zmq_close(sched);
  zmq_close(server);
  if (backup) zmq_close(backup);
  backup = NULL;
  if (fake_link) zmq_close(fake_link);
  fake_link = NULL;
  zmq_ctx_term(ctx);
  h_kill_all(&c);
}

/* A good pull of the whole tensor: the server is still serving. */
static void expect_server_serves(void) {
  Ps__Pull p = PS__PULL__INIT;
  p.key_begin = 0;
  p.count = NKEYS;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PULL);
  env.pull = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(server, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_PULL_REPLY,
                "good pull answered with %s", ps_body_name(m.env->body_case));
  ck_assert_uint_eq(m.env->pull_reply->count, NKEYS);
  ck_assert_uint_eq(zmq_msg_size(&m.payload[0]), NKEYS * sizeof(float));
  ps_msg_close(&m);
}

/* The whole tensor, pulled. */
static void pull_all(float *out) {
  Ps__Pull p = PS__PULL__INIT;
  p.key_begin = 0;
  p.count = NKEYS;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PULL);
  env.pull = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(server, env.request_id, &m);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_PULL_REPLY);
  ck_assert_uint_eq(ps_msg_payload_bytes(&m), NKEYS * sizeof(float));
  ps_msg_payload_gather(&m, out);
  ps_msg_close(&m);
}

/* A good status request: the scheduler is still serving. */
static void expect_scheduler_serves(void) {
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_STATUS_REQUEST);
  env.status_request = &sr;
  ck_assert_int_eq(ps_msg_send(sched, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(sched, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_STATUS,
                "status answered with %s", ps_body_name(m.env->body_case));
  ck_assert_uint_eq(m.env->status->view->epoch, epoch);
  ps_msg_close(&m);
}

static void check_garbage(void *s, void (*serves)(void)) {
  raw_send(s, "\x0a\xff\xff\xff\xffGARBAGE", 12, 0);
  expect_error(s, 0, PS_ERR_PROTO, "garbage");
  serves();
}

static void check_truncated(void *s, void (*serves)(void)) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 0, 0, NKEYS, epoch);
  raw_send(s, buf, n - 4, 0);
  expect_error(s, 0, PS_ERR_PROTO, "truncated header");
  serves();
}

/* A push whose frame is one value short: the server says the length
 * disagrees; the scheduler, which takes no payload at all, that it is too
 * big (code). */
static void check_length(void *s, void (*serves)(void), int code) {
  uint8_t buf[128];
  uint64_t req = next_req++;
  size_t n = pack_push(buf, req, 0, NKEYS, epoch);
  raw_send(s, buf, n, 1);
  float vals[NKEYS - 1] = {0};
  raw_send(s, vals, sizeof(vals), 0);
  expect_error(s, req, code, "length disagrees with frame");
  serves();
}

START_TEST(server_refuses_bad_input) {
  check_garbage(server, expect_server_serves);
  check_truncated(server, expect_server_serves);
  check_length(server, expect_server_serves, PS_ERR_PROTO);

  /* A push to keys no server holds: an unknown tensor. */
  float vals[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  zmq_msg_t payload;
  ps_payload_wrap(&payload, vals, sizeof(vals), NULL, NULL);
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = NKEYS + 1000;
  p.count = 8;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  expect_error(server, env.request_id, PS_ERR_UNKNOWN_KEY, "unknown tensor");
  expect_server_serves();

  /* A push under an epoch the cluster never had. */
  ps_payload_wrap(&payload, vals, sizeof(vals), NULL, NULL);
  p.key_begin = 0;
  env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  env.epoch = epoch + 41;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  expect_error(server, env.request_id, PS_ERR_STALE_EPOCH, "wrong epoch");
  expect_server_serves();

  /* Pushes of NaN in no worker's name, and in the worker's name from a
   * stranger's connection: refused, and the weights do not move. */
  float before[NKEYS], after[NKEYS];
  pull_all(before);
  float nan_vals[8];
  for (int i = 0; i < 8; i++) nan_vals[i] = __builtin_nanf("");
  ps_auth_token_t other;
  ck_assert_int_eq(ps_auth_token_new(&other), PS_OK);
  void *stranger = dealer_as(server_ep_of_test, &other, PS_AUTH_USE_DATA);
  for (int k = 0; k < 2; k++) {
    ps_payload_wrap(&payload, nan_vals, sizeof(nan_vals), NULL, NULL);
    env = envelope(PS__ENVELOPE__BODY_PUSH);
    env.push = &p;
    void *via = k == 0 ? server : stranger;
    if (k == 0) env.sender = node_id + 100; /* nobody's */
    ck_assert_int_eq(ps_msg_send(via, NULL, &env, &payload, 1), PS_OK);
    expect_error(via, env.request_id, PS_ERR_PERMISSION_DENIED,
                 k == 0 ? "unknown sender" : "worker's name, other connection");
  }
  zmq_close(stranger);
  /* NaN from the worker itself: --nonfinite reject (the default). */
  ps_payload_wrap(&payload, nan_vals, sizeof(nan_vals), NULL, NULL);
  env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  expect_error(server, env.request_id, PS_ERR_NONFINITE, "NaN push");
  pull_all(after);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);
  expect_server_serves();
}
END_TEST

/* Sends a push of keys [0, count) in codec with this frame; returns its
 * request id. */
static uint64_t send_coded_push(int codec, uint64_t count, const void *frame,
                                size_t bytes, uint64_t seq) {
  zmq_msg_t payload;
  ck_assert_int_eq(zmq_msg_init_size(&payload, bytes), 0);
  memcpy(zmq_msg_data(&payload), frame, bytes);
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = 0;
  p.count = count;
  p.seq = seq;
  p.codec = (Ps__Codec)codec;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  return env.request_id;
}

/* Issue #15: coded pushes whose frame does not hold what the header says
 * (a size off, top-k indices out of range, repeated or descending) and a
 * pull in a codec pulls do not have are refused and change nothing; a
 * good top-k push moves only its keys; an fp16 pull is the weights in
 * half precision. */
START_TEST(server_refuses_bad_codec) {
  float before[NKEYS], after[NKEYS];
  pull_all(before);
  unsigned char buf[1024] = {0};
  expect_error(server, send_coded_push(PS_CODEC_FP16, 8, buf, 15, 0),
               PS_ERR_PROTO, "fp16 frame a byte short");
  expect_error(server, send_coded_push(PS_CODEC_INT8, 8, buf, 8, 0),
               PS_ERR_PROTO, "int8 frame without its scale");
  expect_error(server, send_coded_push(9, 8, buf, 32, 0), PS_ERR_PROTO,
               "unknown codec");
  struct {
    uint32_t idx[2];
    const char *what;
  } bad[] = {{{5, 3}, "topk indices descending"},
             {{4, 4}, "topk index repeated"},
             {{1, 8}, "topk index past count"}};
  float vals[2] = {1, 2};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memcpy(buf, bad[i].idx, 8);
    memcpy(buf + 8, vals, 8);
    expect_error(server, send_coded_push(PS_CODEC_TOPK, 8, buf, 16, 0),
                 PS_ERR_PROTO, bad[i].what);
  }
  expect_error(server, send_coded_push(PS_CODEC_TOPK, 1, buf, 16, 0),
               PS_ERR_PROTO, "topk of more pairs than values");
  expect_error(server, send_coded_push(PS_CODEC_TOPK, 8, buf, 12, 0),
               PS_ERR_PROTO, "topk frame of half a pair");
  Ps__Pull pl = PS__PULL__INIT;
  pl.key_begin = 0;
  pl.count = NKEYS;
  pl.codec = PS__CODEC__CODEC_TOPK;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PULL);
  env.pull = &pl;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, NULL, 0), PS_OK);
  expect_error(server, env.request_id, PS_ERR_PROTO, "pull in topk");
  pull_all(after);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);

  /* A good one: keys 3 and 10 move, no other. */
  uint32_t idx[2] = {3, 10};
  memcpy(buf, idx, 8);
  memcpy(buf + 8, vals, 8);
  uint64_t req = send_coded_push(PS_CODEC_TOPK, NKEYS, buf, 16, 1);
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ACK,
                "good topk push answered with %s",
                ps_body_name(m.env->body_case));
  ps_msg_close(&m);
  pull_all(after);
  for (int i = 0; i < NKEYS; i++)
    if (i == 3 || i == 10)
      ck_assert_msg(after[i] != before[i], "key %d did not move", i);
    else
      ck_assert_msg(after[i] == before[i], "key %d moved", i);

  /* An fp16 pull: one frame of 2 bytes a key, the weights rounded. */
  pl.codec = PS__CODEC__CODEC_FP16;
  env = envelope(PS__ENVELOPE__BODY_PULL);
  env.pull = &pl;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, NULL, 0), PS_OK);
  recv_reply(server, env.request_id, &m);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_PULL_REPLY);
  ck_assert_int_eq(m.env->pull_reply->codec, PS__CODEC__CODEC_FP16);
  ck_assert_int_eq(m.npayload, 1);
  ck_assert_uint_eq(zmq_msg_size(&m.payload[0]), NKEYS * 2);
  for (int i = 0; i < NKEYS; i++) {
    uint16_t h;
    memcpy(&h, (char *)zmq_msg_data(&m.payload[0]) + 2 * i, 2);
    ck_assert_uint_eq(h, ps_fp16_from_float(after[i]));
  }
  ps_msg_close(&m);
  expect_server_serves();
}
END_TEST

/* --nonfinite skip: a push of NaN and Inf is acked and applied as zeros;
 * the weights do not move, a finite push after it still does. */
START_TEST(server_skips_nonfinite) {
  float before[NKEYS], after[NKEYS];
  pull_all(before);
  float vals[8];
  for (int i = 0; i < 8; i++)
    vals[i] = i % 2 ? __builtin_inff() : __builtin_nanf("");
  zmq_msg_t payload;
  ps_payload_wrap(&payload, vals, sizeof(vals), NULL, NULL);
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = 0;
  p.count = 8;
  p.seq = 1;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  ps_msg_t m;
  recv_reply(server, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ACK,
                "NaN push under skip answered with %s",
                ps_body_name(m.env->body_case));
  ps_msg_close(&m);
  pull_all(after);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);
  for (int i = 0; i < 8; i++) vals[i] = 1.0f;
  ps_payload_wrap(&payload, vals, sizeof(vals), NULL, NULL);
  p.seq = 2;
  env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  recv_reply(server, env.request_id, &m);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_ACK);
  ps_msg_close(&m);
  pull_all(after);
  ck_assert_msg(after[0] != before[0], "a finite push did not apply");
  ck_assert_msg(after[8] == before[8], "a key outside the push moved");
}
END_TEST

/* Sends a sparse request for table with these keys (and, for a push,
 * nvals floats of 1, with sequence number seq for step clock); returns its
 * request id. */
static uint64_t send_sparse_at(int push, const char *table,
                               const uint64_t *keys, size_t n, size_t nvals,
                               uint64_t seq, uint64_t clock) {
  static float vals[64];
  for (size_t i = 0; i < 64; i++) vals[i] = 1;
  zmq_msg_t frames[2];
  ck_assert_int_eq(zmq_msg_init_size(&frames[0], n * sizeof(uint64_t)), 0);
  memcpy(zmq_msg_data(&frames[0]), keys, n * sizeof(uint64_t));
  Ps__SparsePush sp = PS__SPARSE_PUSH__INIT;
  Ps__SparsePull sl = PS__SPARSE_PULL__INIT;
  Ps__Envelope env = envelope(push ? PS__ENVELOPE__BODY_SPARSE_PUSH
                                   : PS__ENVELOPE__BODY_SPARSE_PULL);
  if (push) {
    ps_payload_wrap(&frames[1], vals, nvals * sizeof(float), NULL, NULL);
    sp.table = (char *)table;
    sp.nkeys = n;
    sp.seq = seq;
    sp.clock = clock;
    env.sparse_push = &sp;
  } else {
    sl.table = (char *)table;
    sl.nkeys = n;
    env.sparse_pull = &sl;
  }
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, frames, push ? 2 : 1),
                   PS_OK);
  return env.request_id;
}

static uint64_t send_sparse(int push, const char *table, const uint64_t *keys,
                            size_t n, size_t nvals) {
  return send_sparse_at(push, table, keys, n, nvals, 0, 0);
}

/* A good sparse pull: rows of the table's dim come back. */
static void expect_sparse_serves(void) {
  uint64_t keys[3] = {5, 900, 1u << 20};
  uint64_t req = send_sparse(0, "emb", keys, 3, 0);
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL_REPLY,
                "sparse pull answered with %s", ps_body_name(m.env->body_case));
  ck_assert_uint_eq(m.env->sparse_pull_reply->nkeys, 3);
  ck_assert_uint_eq(m.env->sparse_pull_reply->dim, SPARSE_DIM);
  ck_assert_uint_eq(ps_msg_payload_bytes(&m), 3 * SPARSE_DIM * sizeof(float));
  ps_msg_close(&m);
}

START_TEST(server_refuses_bad_sparse) {
  expect_sparse_serves();
  uint64_t sorted[2] = {3, 8}, unsorted[2] = {8, 3}, dup[2] = {8, 8};
  uint64_t req = send_sparse(0, "nope", sorted, 2, 0);
  expect_error(server, req, PS_ERR_UNKNOWN_KEY, "unknown sparse table");
  req = send_sparse(1, "nope", sorted, 2, 2 * SPARSE_DIM);
  expect_error(server, req, PS_ERR_UNKNOWN_KEY, "push to unknown table");
  req = send_sparse(0, "emb", unsorted, 2, 0);
  expect_error(server, req, PS_ERR_PROTO, "unsorted sparse keys");
  req = send_sparse(1, "emb", dup, 2, 2 * SPARSE_DIM);
  expect_error(server, req, PS_ERR_PROTO, "duplicate sparse keys");
  /* Whole floats, but not nkeys * dim of them. */
  req = send_sparse(1, "emb", sorted, 2, 2 * (SPARSE_DIM + 1));
  expect_error(server, req, PS_ERR_PROTO, "values frame vs dim");
  expect_sparse_serves();
  /* Nothing above changed a row: a good push moves rows by lr * g. */
  uint64_t keys[1] = {3};
  req = send_sparse(1, "emb", keys, 1, SPARSE_DIM);
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ACK, "push: %s",
                ps_body_name(m.env->body_case));
  ps_msg_close(&m);
  req = send_sparse(0, "emb", keys, 1, 0);
  recv_reply(server, req, &m);
  ck_assert(m.env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL_REPLY);
  float row[SPARSE_DIM];
  ps_msg_payload_gather(&m, row);
  /* zero init, lr 0.5, one live worker, gradient 1 */
  for (int j = 0; j < SPARSE_DIM; j++) ck_assert(row[j] == -0.5f);
  ps_msg_close(&m);
}
END_TEST

/* Expects an Ack to req; returns its duplicate flag. */
static int expect_ack(void *s, uint64_t req, const char *what) {
  ps_msg_t m;
  recv_reply(s, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ACK, "%s: %s%s%s", what,
                ps_body_name(m.env->body_case),
                m.env->body_case == PS__ENVELOPE__BODY_ERROR ? ": " : "",
                m.env->body_case == PS__ENVELOPE__BODY_ERROR
                    ? m.env->error->message
                    : "");
  int dup = m.env->ack->duplicate;
  ps_msg_close(&m);
  return dup;
}

/* Row key of "emb", pulled: every element must be want. */
static void expect_row(uint64_t key, float want, const char *what) {
  uint64_t req = send_sparse(0, "emb", &key, 1, 0);
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL_REPLY,
                "%s: pull answered with %s", what,
                ps_body_name(m.env->body_case));
  float row[SPARSE_DIM];
  ps_msg_payload_gather(&m, row);
  ps_msg_close(&m);
  for (int j = 0; j < SPARSE_DIM; j++)
    ck_assert_msg(row[j] == want, "%s: row %llu[%d] is %g, want %g", what,
                  (unsigned long long)key, j, (double)row[j], (double)want);
}

START_TEST(sparse_resend_applied_once) {
  /* zero init, lr 0.5, one live worker, gradient 1: -0.5 per push. */
  uint64_t key[1] = {3};
  ck_assert(!expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM,
                                               100, 0),
                        "first push"));
  ck_assert_msg(expect_ack(server, send_sparse_at(1, "emb", key, 1,
                                                  SPARSE_DIM, 100, 0),
                           "resend"),
                "a resend of seq 100 was not acked as a duplicate");
  expect_row(3, -0.5f, "after a push and its resend");
  ck_assert(!expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM,
                                               101, 0),
                        "next push"));
  /* An older resend after a newer push: still remembered. */
  ck_assert(expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM,
                                              100, 0),
                       "late resend"));
  expect_row(3, -1.0f, "after two pushes and two resends");
  /* Unnumbered pushes (seq 0) are never taken for duplicates. */
  ck_assert(!expect_ack(server, send_sparse(1, "emb", key, 1, SPARSE_DIM),
                        "unnumbered"));
  ck_assert(!expect_ack(server, send_sparse(1, "emb", key, 1, SPARSE_DIM),
                        "unnumbered again"));
  expect_row(3, -2.0f, "after two unnumbered pushes");
}
END_TEST

/* Pushes gradient 1 to the whole dense tensor for step, numbered seq. */
static void push_dense_step(uint64_t step, uint64_t seq) {
  static float g[NKEYS];
  for (int i = 0; i < NKEYS; i++) g[i] = 1;
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = 0;
  p.count = NKEYS;
  p.clock = step;
  p.seq = seq;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH);
  env.push = &p;
  zmq_msg_t f;
  ps_payload_wrap(&f, g, sizeof(g), NULL, NULL);
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &f, 1), PS_OK);
  expect_ack(server, env.request_id, "dense push");
}

START_TEST(sparse_bsp_applies_at_the_step) {
  uint64_t key[1] = {3};
  expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM, 200, 0),
             "sparse push, step 0");
  /* Summed, not applied: the row is unchanged until the step is. */
  expect_row(3, 0.0f, "before step 0 is applied");
  uint64_t req = send_sparse_at(1, "emb", key, 1, SPARSE_DIM, 201, 1);
  expect_error(server, req, PS_ERR_REFUSED, "sparse push for a future step");
  push_dense_step(0, 202);
  /* One contributor: the step's sum * lr 0.5. */
  expect_row(3, -0.5f, "after step 0");
  /* Two pushes of the same row in one step add up. */
  expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM, 203, 1),
             "sparse push, step 1");
  expect_ack(server, send_sparse_at(1, "emb", key, 1, SPARSE_DIM, 204, 1),
             "second sparse push, step 1");
  expect_row(3, -0.5f, "before step 1 is applied");
  push_dense_step(1, 205);
  expect_row(3, -1.5f, "after step 1");
}
END_TEST

/* A PushPull (issue #15) of gradient 1 to keys [begin, +count) for step,
 * numbered seq; returns its request id. */
static uint64_t send_pushpull(uint64_t begin, uint64_t count, uint64_t step,
                              uint64_t seq) {
  static float g[NKEYS];
  for (int i = 0; i < NKEYS; i++) g[i] = 1;
  Ps__PushPull p = PS__PUSH_PULL__INIT;
  p.key_begin = begin;
  p.count = count;
  p.clock = step;
  p.seq = seq;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH_PULL);
  env.push_pull = &p;
  zmq_msg_t f;
  ps_payload_wrap(&f, g, (count ? count : 1) * sizeof(float), NULL, NULL);
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &f, 1), PS_OK);
  return env.request_id;
}

/* The reply to PushPull req: the weights of the whole tensor at clock,
 * into w; duplicate says whether the server took the push for one. */
static void expect_pushpull_weights(uint64_t req, float *w, uint64_t clock,
                                    int duplicate, const char *what) {
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(
      m.env->body_case == PS__ENVELOPE__BODY_PULL_REPLY,
      "%s: answered with %s (%s)", what, ps_body_name(m.env->body_case),
      m.env->body_case == PS__ENVELOPE__BODY_ERROR ? m.env->error->message
                                                   : "");
  ck_assert_uint_eq(m.env->pull_reply->key_begin, 0);
  ck_assert_uint_eq(m.env->pull_reply->count, NKEYS);
  ck_assert_uint_eq(m.env->pull_reply->clock, clock);
  ck_assert_msg(m.env->pull_reply->duplicate == (duplicate != 0),
                "%s: duplicate is %d", what, m.env->pull_reply->duplicate);
  ck_assert_uint_eq(ps_msg_payload_bytes(&m), NKEYS * sizeof(float));
  ps_msg_payload_gather(&m, w);
  ps_msg_close(&m);
}

/* w holds what a pull gives now. */
static void expect_pulled(const float *w, const char *what) {
  float now[NKEYS];
  pull_all(now);
  for (int i = 0; i < NKEYS; i++)
    ck_assert_msg(w[i] == now[i], "%s: key %d is %g, a pull gives %g", what, i,
                  w[i], now[i]);
}

/* BSP, one worker, lr 0.5, one copy: a PushPull's reply carries the
 * weights with its step applied; a resend (same seq) is not applied again
 * and still gets them; what a push refuses, a PushPull refuses. */
START_TEST(pushpull_resend_gets_weights) {
  float w0[NKEYS], w[NKEYS], w1[NKEYS];
  expect_pushpull_weights(send_pushpull(0, NKEYS, 0, 300), w0, 1, 0,
                          "push-pull of step 0");
  /* Zero init, gradient 1: the step moved every weight down. */
  for (int i = 0; i < NKEYS; i++) ck_assert_float_lt(w0[i], 0.0f);
  expect_pulled(w0, "after step 0");
  expect_pushpull_weights(send_pushpull(0, NKEYS, 0, 300), w, 1, 1,
                          "its resend");
  ck_assert_int_eq(memcmp(w, w0, sizeof(w)), 0);
  expect_pulled(w0, "after the resend");
  expect_pushpull_weights(send_pushpull(0, NKEYS, 1, 301), w1, 2, 0,
                          "push-pull of step 1");
  for (int i = 0; i < NKEYS; i++) ck_assert_float_lt(w1[i], w0[i]);
  expect_pulled(w1, "after step 1");
  uint64_t req = send_pushpull(0, NKEYS, 5, 302);
  expect_error(server, req, PS_ERR_REFUSED, "push-pull for a future step");
  req = send_pushpull(NKEYS + 1000, 1, 2, 303);
  expect_error(server, req, PS_ERR_UNKNOWN_KEY, "push-pull of unknown keys");
  expect_pulled(w1, "after refused push-pulls");
}
END_TEST

/* A PushPull (issue #15) of keys [0, count) for step whose push frame is
 * codec's (these bytes), its reply asked in pull_codec; returns its
 * request id. */
static uint64_t send_coded_pushpull(int codec, int pull_codec, uint64_t count,
                                    const void *frame, size_t bytes,
                                    uint64_t step, uint64_t seq) {
  zmq_msg_t payload;
  ck_assert_int_eq(zmq_msg_init_size(&payload, bytes), 0);
  memcpy(zmq_msg_data(&payload), frame, bytes);
  Ps__PushPull p = PS__PUSH_PULL__INIT;
  p.key_begin = 0;
  p.count = count;
  p.clock = step;
  p.seq = seq;
  p.codec = (Ps__Codec)codec;
  p.pull_codec = (Ps__Codec)pull_codec;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PUSH_PULL);
  env.push_pull = &p;
  ck_assert_int_eq(ps_msg_send(server, NULL, &env, &payload, 1), PS_OK);
  return env.request_id;
}

/* The fp16 PullReply to push-pull req: the whole tensor at clock, its
 * frame into h (NKEYS halves). */
static void expect_fp16_reply(uint64_t req, uint16_t *h, uint64_t clock,
                              int duplicate, const char *what) {
  ps_msg_t m;
  recv_reply(server, req, &m);
  ck_assert_msg(
      m.env->body_case == PS__ENVELOPE__BODY_PULL_REPLY,
      "%s: answered with %s (%s)", what, ps_body_name(m.env->body_case),
      m.env->body_case == PS__ENVELOPE__BODY_ERROR ? m.env->error->message
                                                   : "");
  ck_assert_int_eq(m.env->pull_reply->codec, PS__CODEC__CODEC_FP16);
  ck_assert_uint_eq(m.env->pull_reply->count, NKEYS);
  ck_assert_uint_eq(m.env->pull_reply->clock, clock);
  ck_assert_msg(m.env->pull_reply->duplicate == (duplicate != 0),
                "%s: duplicate is %d", what, m.env->pull_reply->duplicate);
  ck_assert_int_eq(m.npayload, 1);
  ck_assert_uint_eq(zmq_msg_size(&m.payload[0]), NKEYS * 2);
  memcpy(h, zmq_msg_data(&m.payload[0]), NKEYS * 2);
  ps_msg_close(&m);
}

/* Issue #15: a PushPull whose coded push does not hold together (a frame
 * a byte short, top-k indices out of order or past count) or that asks
 * for its reply in top-k is refused with an Error and changes nothing; a
 * good int8 push-pull with fp16 replies moves the weights by what the
 * int8 frame decodes to (the same decoder as a Push's) and brings them
 * back in half precision; its resend (same seq, same bits) is not applied
 * again and gets the same reply. */
START_TEST(coded_pushpull_refused_or_served) {
  float before[NKEYS], after[NKEYS];
  pull_all(before);
  static float g[NKEYS];
  for (int i = 0; i < NKEYS; i++) g[i] = 0.25f * (float)(i % 9) - 1.0f;
  unsigned char enc[1024] = {0};
  size_t n8 = ps_codec_encode(PS_CODEC_INT8, g, NKEYS, 0, enc, NULL);
  expect_error(server,
               send_coded_pushpull(PS_CODEC_INT8, PS_CODEC_FP16, NKEYS, enc,
                                   n8 - 1, 0, 500),
               PS_ERR_PROTO, "int8 push-pull a byte short");
  expect_error(server,
               send_coded_pushpull(PS_CODEC_FP16, PS_CODEC_FP16, NKEYS, enc,
                                   NKEYS * 2 + 2, 0, 500),
               PS_ERR_PROTO, "fp16 push-pull a value long");
  unsigned char bad[16];
  uint32_t idx[2] = {7, 3};
  float vals[2] = {1, 2};
  memcpy(bad, idx, 8);
  memcpy(bad + 8, vals, 8);
  expect_error(
      server,
      send_coded_pushpull(PS_CODEC_TOPK, PS_CODEC_INT8, NKEYS, bad, 16, 0, 500),
      PS_ERR_PROTO, "top-k push-pull indices descending");
  idx[0] = 3, idx[1] = NKEYS;
  memcpy(bad, idx, 8);
  expect_error(
      server,
      send_coded_pushpull(PS_CODEC_TOPK, PS_CODEC_INT8, NKEYS, bad, 16, 0, 500),
      PS_ERR_PROTO, "top-k push-pull index past count");
  expect_error(
      server,
      send_coded_pushpull(PS_CODEC_INT8, PS_CODEC_TOPK, NKEYS, enc, n8, 0, 500),
      PS_ERR_PROTO, "push-pull reply asked in top-k");
  pull_all(after);
  ck_assert_int_eq(memcmp(before, after, sizeof(before)), 0);

  /* A good one (seq 500 was never applied: every refusal came before). */
  uint16_t h[NKEYS], again[NKEYS];
  expect_fp16_reply(
      send_coded_pushpull(PS_CODEC_INT8, PS_CODEC_FP16, NKEYS, enc, n8, 0, 500),
      h, 1, 0, "int8 push-pull of step 0");
  pull_all(after);
  float dq[NKEYS];
  char why[200];
  ck_assert_int_eq(
      ps_codec_decode(PS_CODEC_INT8, enc, n8, NKEYS, dq, why, sizeof(why)),
      PS_OK);
  int moved = 0;
  for (int i = 0; i < NKEYS; i++) {
    ck_assert_uint_eq(h[i], ps_fp16_from_float(after[i]));
    /* Zero gradient after decoding: the weight stays; else it moves
     * against it. */
    if (dq[i] == 0)
      ck_assert_msg(after[i] == before[i], "key %d moved", i);
    else
      ck_assert_msg((after[i] - before[i]) * dq[i] < 0,
                    "key %d did not move against its gradient", i);
    moved += after[i] != before[i];
  }
  ck_assert_int_gt(moved, 0);
  /* The resend after a failover sends the same bits with the same seq. */
  expect_fp16_reply(
      send_coded_pushpull(PS_CODEC_INT8, PS_CODEC_FP16, NKEYS, enc, n8, 0, 500),
      again, 1, 1, "its resend");
  ck_assert_int_eq(memcmp(h, again, sizeof(h)), 0);
  float now[NKEYS];
  pull_all(now);
  ck_assert_int_eq(memcmp(after, now, sizeof(now)), 0);
  expect_server_serves();
}
END_TEST

static Ps__Envelope from_primary(Ps__Envelope__BodyCase body);
static void expect_backup_replays(void);

/* A sparse push replayed on the real server as the backup of the range
 * the test leads. */
static uint64_t send_replicated_sparse(const char *table, uint64_t seq,
                                       size_t nvals) {
  static float vals[2 * SPARSE_DIM];
  static uint64_t key[1] = {11};
  for (size_t i = 0; i < 2 * SPARSE_DIM; i++) vals[i] = 1;
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = range0_begin;
  r.range_end = range0_end;
  r.kind = PS__REPLICATE_KIND__REPL_SPARSE_PUSH;
  r.worker = node_id;
  r.seq = seq;
  r.table = (char *)table;
  r.nkeys = 1;
  zmq_msg_t f[2];
  ps_payload_wrap(&f[0], key, sizeof(key), NULL, NULL);
  ps_payload_wrap(&f[1], vals, nvals * sizeof(float), NULL, NULL);
  Ps__Envelope env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &r;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, f, 2), PS_OK);
  return env.request_id;
}

START_TEST(backup_replays_sparse_once) {
  ck_assert_ptr_nonnull(backup);
  expect_ack(backup, send_replicated_sparse("emb", 300, SPARSE_DIM),
             "replicated sparse push");
  expect_ack(backup, send_replicated_sparse("emb", 300, SPARSE_DIM),
             "replicated sparse push, resent");
  expect_error(backup, send_replicated_sparse("nope", 301, SPARSE_DIM),
               PS_ERR_UNKNOWN_KEY, "replicated push to an unknown table");
  expect_error(backup, send_replicated_sparse("emb", 302, 2 * SPARSE_DIM),
               PS_ERR_PROTO, "replicated push of the wrong dim");
  expect_backup_replays();
}
END_TEST

/* VmRSS of the process named name (a harness slot), in KiB; -1 if none. */
static long rss_kib(const char *name) {
  pid_t pid = 0;
  for (int i = 0; i < c.nprocs; i++)
    if (strcmp(c.procs[i].name, name) == 0) pid = c.procs[i].pid;
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = pid ? fopen(path, "r") : NULL; /* st_size is 0 in /proc */
  long kib = -1;
  while (f && fgets(line, sizeof(line), f))
    if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kib;
}

static void free_big(void *data, void *hint) {
  (void)hint;
  free(data);
}

/* Sends one frame of n bytes (calloc'd, so untouched zero pages here) to
 * ep on a fresh connection, and waits until the peer drops it. Returns 1 if it did within 20 s. */
static int oversized_dropped(const char *ep, size_t n) {
  /* A stranger: the worker's routing id would take over its connection. */
  ps_auth_token_t t;
  ck_assert_int_eq(ps_auth_token_new(&t), PS_OK);
  void *s = dealer_as(ep, &t, PS_AUTH_USE_DATA);
  /* A name per call: the last monitor's may not be released yet. */
  static int calls;
  char mep[64];
  snprintf(mep, sizeof(mep), "inproc://oversized-%d", ++calls);
  ck_assert_int_eq(zmq_socket_monitor(s, mep, ZMQ_EVENT_DISCONNECTED), 0);
  void *mon = zmq_socket(ctx, ZMQ_PAIR);
  ck_assert_int_eq(zmq_connect(mon, mep), 0);
  void *buf = calloc(1, n);
  ck_assert_ptr_nonnull(buf);
  zmq_msg_t msg;
  zmq_msg_init_data(&msg, buf, n, free_big, NULL);
  ck_assert_int_ge(zmq_msg_send(&msg, s, 0), 0);
  int dropped = 0;
  uint64_t end = h_deadline_ms(20000);
  while (!dropped && h_now_ms() < end) {
    zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 200) != 1) continue;
    zmq_msg_t ev;
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, mon, 0) >= 6) {
      uint16_t e;
      memcpy(&e, zmq_msg_data(&ev), sizeof(e));
      dropped = e == ZMQ_EVENT_DISCONNECTED;
    }
    zmq_msg_close(&ev);
    int more = 0;
    size_t sz = sizeof(more);
    while (zmq_getsockopt(mon, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
      zmq_msg_init(&ev);
      zmq_msg_recv(&ev, mon, 0);
      zmq_msg_close(&ev);
    }
  }
  zmq_socket_monitor(s, NULL, 0);
  zmq_close(mon);
  zmq_close(s);
  return dropped;
}

/* A frame far bigger than anything the server holds (its ranges are NKEYS
 * floats): ZeroMQ drops it, and the connection, when it reads its length;
 * the server never allocates it and serves on. The same for the scheduler,
 * which takes no payload frame at all. */
START_TEST(oversized_frames_dropped) {
  const size_t big = (size_t)256 << 20;
  long before = rss_kib("server0");
  ck_assert_msg(before > 0, "no RSS for server0 (%d processes)", c.nprocs);
  ck_assert_msg(oversized_dropped(server_ep_of_test, big),
                "the server did not drop a 256 MiB frame");
  long after = rss_kib("server0");
  fprintf(stderr, "bad_input oversized: server RSS %ld -> %ld KiB\n", before,
          after);
  ck_assert_msg(after - before < 32 * 1024,
                "server RSS grew by %ld KiB for a dropped frame",
                after - before);
  expect_server_serves();
  before = rss_kib("scheduler");
  ck_assert_msg(oversized_dropped(c.sched_ep, (size_t)64 << 20),
                "the scheduler did not drop a 64 MiB frame");
  after = rss_kib("scheduler");
  fprintf(stderr, "bad_input oversized: scheduler RSS %ld -> %ld KiB\n",
          before, after);
  ck_assert_msg(after - before < 16 * 1024,
                "scheduler RSS grew by %ld KiB for a dropped frame",
                after - before);
  expect_scheduler_serves();
}
END_TEST

/* A worker may have --max-inflight-per-peer requests waiting on a server
 * (here 2): BSP pulls for a step to come park until the cap, the next one
 * is refused, and the server still answers pulls it can serve. */
START_TEST(inflight_capped) {
  uint64_t reqs[3];
  for (int i = 0; i < 3; i++) {
    Ps__Pull p = PS__PULL__INIT;
    p.key_begin = 0;
    p.count = NKEYS;
    p.clock = 5; /* no step was applied: it parks */
    Ps__Envelope env = envelope(PS__ENVELOPE__BODY_PULL);
    env.pull = &p;
    ck_assert_int_eq(ps_msg_send(server, NULL, &env, NULL, 0), PS_OK);
    reqs[i] = env.request_id;
  }
  expect_error(server, reqs[2], PS_ERR_REFUSED, "third request in flight");
  expect_server_serves(); /* step 0 is there: served at once */
}
END_TEST

START_TEST(scheduler_refuses_bad_input) {
  check_garbage(sched, expect_scheduler_serves);
  check_truncated(sched, expect_scheduler_serves);
  check_length(sched, expect_scheduler_serves, PS_ERR_TOO_BIG);

  /* A checkpoint into a directory of the sender's choosing, with no
   * --checkpoint-dir configured: refused, nothing created. */
  char target[600];
  snprintf(target, sizeof(target), "%s/elsewhere", c.dir);
  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  cc.dir = target;
  Ps__Envelope cenv = envelope(PS__ENVELOPE__BODY_CHECKPOINT_COMMAND);
  cenv.checkpoint_command = &cc;
  ck_assert_int_eq(ps_msg_send(sched, NULL, &cenv, NULL, 0), PS_OK);
  expect_error(sched, cenv.request_id, PS_ERR_PERMISSION_DENIED,
               "checkpoint anywhere");
  ck_assert_msg(access(target, F_OK) != 0, "%s was created", target);

  /* A second worker declaring a model with a tensor the job does not have. */
  Ps__TensorSpec t = PS__TENSOR_SPEC__INIT;
  t.name = "no.such.tensor";
  t.length = NKEYS;
  Ps__TensorSpec *tp = &t;
  Ps__ModelSpec model = PS__MODEL_SPEC__INIT;
  model.n_tensors = 1;
  model.tensors = &tp;
  Ps__Register reg = PS__REGISTER__INIT;
  reg.role = PS__ROLE__ROLE_WORKER;
  reg.model = &model;
  reg.rank = 0xffffffffu;
  Ps__Envelope env = envelope(PS__ENVELOPE__BODY_REGISTER);
  env.register_ = &reg;
  env.sender = 0;
  env.epoch = 0;
  void *other = dealer(c.sched_ep); /* another worker process */
  ck_assert_int_eq(ps_msg_send(other, NULL, &env, NULL, 0), PS_OK);
  expect_error(other, env.request_id, PS_ERR_REFUSED, "unknown tensor");
  zmq_close(other);
  expect_scheduler_serves();

  /* A barrier under an epoch the cluster never had. */
  Ps__Barrier b = PS__BARRIER__INIT;
  b.name = "start";
  env = envelope(PS__ENVELOPE__BODY_BARRIER);
  env.barrier = &b;
  env.epoch = epoch + 41;
  ck_assert_int_eq(ps_msg_send(sched, NULL, &env, NULL, 0), PS_OK);
  expect_error(sched, env.request_id, PS_ERR_STALE_EPOCH, "wrong epoch");
  expect_scheduler_serves();
}
END_TEST

/* A replication message to the real server, the backup of the range the
 * test leads, from the test as that range's primary. */
static Ps__Envelope from_primary(Ps__Envelope__BodyCase body) {
  Ps__Envelope env = envelope(body);
  env.sender = primary_id;
  return env;
}

/* The backup still replays a good change from its primary. */
static void expect_backup_replays(void) {
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = range0_begin;
  r.range_end = range0_end;
  r.kind = PS__REPLICATE_KIND__REPL_LIVE;
  uint32_t live[1] = {node_id};
  uint64_t from[1] = {0};
  r.n_live = r.n_live_from = 1;
  r.live = live;
  r.live_from = from;
  Ps__Envelope env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &r;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, NULL, 0), PS_OK);
  ps_msg_t m;
  recv_reply(backup, env.request_id, &m);
  ck_assert_msg(m.env->body_case == PS__ENVELOPE__BODY_ACK,
                "good live set answered with %s",
                ps_body_name(m.env->body_case));
  ps_msg_close(&m);
}

START_TEST(backup_refuses_bad_replication) {
  ck_assert_ptr_nonnull(backup);
  expect_backup_replays();

  /* A live set whose first steps do not match it. */
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = range0_begin;
  r.range_end = range0_end;
  r.kind = PS__REPLICATE_KIND__REPL_LIVE;
  uint32_t live[2] = {node_id, node_id + 7};
  uint64_t from[1] = {0};
  r.n_live = 2;
  r.live = live;
  r.n_live_from = 1;
  r.live_from = from;
  Ps__Envelope env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &r;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, NULL, 0), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_PROTO, "live without steps");

  /* A chunk of a snapshot that never began. */
  Ps__ReplicaChunk ch = PS__REPLICA_CHUNK__INIT;
  ch.range_begin = range0_begin;
  ch.range_end = range0_end;
  ch.count = 4;
  float vals[4] = {0};
  zmq_msg_t f;
  ps_payload_wrap(&f, vals, sizeof(vals), NULL, NULL);
  env = from_primary(PS__ENVELOPE__BODY_REPLICA_CHUNK);
  env.replica_chunk = &ch;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, &f, 1), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_PROTO, "chunk without head");

  /* A snapshot head whose dedup frame is not its record count. */
  Ps__ReplicaSnapshot sn = PS__REPLICA_SNAPSHOT__INIT;
  sn.range_begin = range0_begin;
  sn.range_end = range0_end;
  sn.nchunks = 1;
  sn.ndedup = 1;
  zmq_msg_t hf[3];
  for (int i = 0; i < 3; i++) zmq_msg_init(&hf[i]); /* all empty */
  env = from_primary(PS__ENVELOPE__BODY_REPLICA_SNAPSHOT);
  env.replica_snapshot = &sn;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, hf, 3), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_PROTO, "dedup frame size");

  /* A step (REPL_STEP, BSP's one replicated update per step) whose
   * workers and sequence numbers do not pair up. */
  Ps__Replicate st = PS__REPLICATE__INIT;
  st.range_begin = range0_begin;
  st.range_end = range0_end;
  st.kind = PS__REPLICATE_KIND__REPL_STEP;
  uint32_t sw[2] = {node_id, node_id + 7};
  uint64_t sq[2] = {1, 1};
  st.n_step_workers = 2;
  st.step_workers = sw;
  st.n_step_seqs = 1;
  st.step_seqs = sq;
  st.clock = 0;
  st.clock_after = 1;
  env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &st;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, NULL, 0), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_PROTO, "step workers, no seqs");
  /* A step's sum that is not the size of the range (its frame holds the
   * count it claims). */
  st.n_step_seqs = 2;
  st.sum = 1;
  st.count = range0_end - range0_begin + 1;
  float *sum = calloc(st.count, sizeof(float));
  ck_assert_ptr_nonnull(sum);
  ps_payload_wrap(&f, sum, st.count * sizeof(float), NULL, NULL);
  env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &st;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, &f, 1), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_PROTO, "step sum size");
  free(sum);
  /* A well-formed step this copy cannot follow: the job is ASP, whose
   * pushes are replicated one by one. Nothing was applied. */
  st.sum = 0;
  st.count = 0;
  env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &st;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, NULL, 0), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_REFUSED, "step in ASP");

  /* Any of them from a node that is not the primary: fenced. */
  expect_backup_replays();
  r.n_live = 1;
  env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &r;
  env.sender = node_id;
  ck_assert_int_eq(ps_msg_send(backup, NULL, &env, NULL, 0), PS_OK);
  expect_error(backup, env.request_id, PS_ERR_FENCED, "not the primary");
  expect_backup_replays();

  /* In the primary's name, on a connection that is not the primary's (the
   * worker's): refused, whatever the message says. */
  void *forger = dealer(backup_addr);
  env = from_primary(PS__ENVELOPE__BODY_REPLICATE);
  env.replicate = &r;
  ck_assert_int_eq(ps_msg_send(forger, NULL, &env, NULL, 0), PS_OK);
  expect_error(forger, env.request_id, PS_ERR_PERMISSION_DENIED,
               "primary's name, worker's connection");
  zmq_close(forger);
  expect_backup_replays();
}
END_TEST

int main(void) {
  Suite *s = suite_create("bad_input");
  TCase *tc = tcase_create("bad_input");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, server_refuses_bad_input);
  tcase_add_test(tc, server_refuses_bad_codec);
  tcase_add_test(tc, server_refuses_bad_sparse);
  tcase_add_test(tc, sparse_resend_applied_once);
  tcase_add_test(tc, scheduler_refuses_bad_input);
  tcase_add_test(tc, oversized_frames_dropped);
  suite_add_tcase(s, tc);
  TCase *tr = tcase_create("replication");
  tcase_set_timeout(tr, 120);
  tcase_add_checked_fixture(tr, setup_replicated, teardown);
  tcase_add_test(tr, backup_refuses_bad_replication);
  tcase_add_test(tr, backup_replays_sparse_once);
  suite_add_tcase(s, tr);
  TCase *ti = tcase_create("inflight");
  tcase_set_timeout(ti, 120);
  tcase_add_checked_fixture(ti, setup_bsp, teardown);
  tcase_add_test(ti, inflight_capped);
  suite_add_tcase(s, ti);
  TCase *tb = tcase_create("sparse_bsp");
  tcase_set_timeout(tb, 120);
  tcase_add_checked_fixture(tb, setup_bsp, teardown);
  tcase_add_test(tb, sparse_bsp_applies_at_the_step);
  tcase_add_test(tb, pushpull_resend_gets_weights);
  tcase_add_test(tb, coded_pushpull_refused_or_served);
  suite_add_tcase(s, tb);
  TCase *tn = tcase_create("nonfinite_skip");
  tcase_set_timeout(tn, 120);
  tcase_add_checked_fixture(tn, setup_skip, teardown);
  tcase_add_test(tn, server_skips_nonfinite);
  suite_add_tcase(s, tn);
  return ps_check_run(s);
}
