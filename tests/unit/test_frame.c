/* Framing: encode/decode over a real inproc ROUTER/DEALER pair, every
 * rejection path of ps_msg_recv, pull replies in several frames, and the
 * header slab (more messages open than slots, copies by value). */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <zmq.h>

#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "tests/check_run.h"

static void *ctx, *router, *dealer;

static void setup(void) {
  ctx = zmq_ctx_new();
  router = zmq_socket(ctx, ZMQ_ROUTER);
  dealer = zmq_socket(ctx, ZMQ_DEALER);
  ck_assert_int_eq(zmq_bind(router, "inproc://frame"), 0);
  ck_assert_int_eq(zmq_connect(dealer, "inproc://frame"), 0);
}

static void teardown(void) {
  int zero = 0;
  zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_close(router);
  zmq_close(dealer);
  zmq_ctx_term(ctx);
}

/* Waits (bounded) until the router has a message, then receives it. */
static int recv_router(ps_msg_t *m, const ps_frame_limits_t *lim, char *err) {
  zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 2000), 1);
  return ps_msg_recv(router, 1, lim, m, err, 256);
}

static void send_raw(const void *data, size_t n, int more) {
  ck_assert_int_ge(zmq_send(dealer, data, n, more ? ZMQ_SNDMORE : 0), 0);
}

static size_t pack_push(uint8_t *buf, uint64_t count, uint32_t version) {
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = 16;
  p.count = count;
  p.clock = 3;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = version;
  env.request_id = 77;
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &p;
  return ps__envelope__pack(&env, buf);
}

START_TEST(push_roundtrip_zero_copy) {
  float *vals = malloc(64 * sizeof(float));
  for (int i = 0; i < 64; i++) vals[i] = (float)i;
  zmq_msg_t payload;
  ck_assert_int_eq(
      ps_payload_wrap(&payload, vals, 64 * sizeof(float), NULL, NULL), PS_OK);
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = 128;
  p.count = 64;
  p.clock = 9;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = 42;
  env.sender = 5;
  env.epoch = 2;
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &p;
  ck_assert_int_eq(ps_msg_send(dealer, NULL, &env, &payload, 1), PS_OK);

  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_OK);
  ck_assert(m.has_route);
  ck_assert_int_eq(m.request_id, 42);
  ck_assert_int_eq(m.env->sender, 5);
  ck_assert_int_eq(m.env->epoch, 2);
  ck_assert_int_eq(m.env->body_case, PS__ENVELOPE__BODY_PUSH);
  ck_assert_int_eq(m.env->push->key_begin, 128);
  ck_assert_int_eq(m.npayload, 1);
  const float *got = zmq_msg_data(&m.payload[0]);
  for (int i = 0; i < 64; i++) ck_assert_float_eq(got[i], (float)i);

  /* A reply routed back with the received identity reaches the dealer. */
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = 10;
  Ps__Envelope rep = PS__ENVELOPE__INIT;
  rep.request_id = m.request_id;
  rep.body_case = PS__ENVELOPE__BODY_ACK;
  rep.ack = &ack;
  ck_assert_int_eq(ps_msg_send(router, &m.route, &rep, NULL, 0), PS_OK);
  ps_msg_close(&m);
  zmq_pollitem_t it = {dealer, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 2000), 1);
  ps_msg_t r;
  ck_assert_int_eq(ps_msg_recv(dealer, 0, NULL, &r, err, sizeof(err)), PS_OK);
  ck_assert(!r.has_route);
  ck_assert_int_eq(r.request_id, 42);
  ck_assert_int_eq(r.env->ack->clock, 10);
  ps_msg_close(&r);
  free(vals);
}
END_TEST

/* One packed header sent twice (a view to two nodes): both copies decode
 * to the same envelope, and the header is still the caller's, whole. */
START_TEST(packed_header_sent_twice) {
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = 123456789;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.epoch = 7;
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  zmq_msg_t header;
  ck_assert_int_eq(ps_msg_pack(&env, &header), PS_OK);
  size_t size = zmq_msg_size(&header);
  ck_assert_uint_eq(size, ps__envelope__get_packed_size(&env));
  /* The router learns the dealer's identity from its first message. */
  send_raw("hello", 5, 0);
  zmq_msg_t id;
  zmq_msg_init(&id);
  zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 2000), 1);
  ck_assert_int_ge(zmq_msg_recv(&id, router, 0), 0);
  zmq_msg_t rest;
  zmq_msg_init(&rest);
  ck_assert_int_ge(zmq_msg_recv(&rest, router, 0), 0);
  zmq_msg_close(&rest);
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq(ps_msg_send_packed(router, &id, &header), PS_OK);
  ck_assert_uint_eq(zmq_msg_size(&header), size);
  for (int i = 0; i < 2; i++) {
    zmq_pollitem_t d = {dealer, 0, ZMQ_POLLIN, 0};
    ck_assert_int_eq(zmq_poll(&d, 1, 2000), 1);
    ps_msg_t r;
    char err[256];
    ck_assert_int_eq(ps_msg_recv(dealer, 0, NULL, &r, err, sizeof(err)),
                     PS_OK);
    ck_assert_int_eq(r.env->version, PS_PROTOCOL_VERSION);
    ck_assert_int_eq(r.env->epoch, 7);
    ck_assert_int_eq(r.env->body_case, PS__ENVELOPE__BODY_ACK);
    ck_assert_uint_eq(r.env->ack->clock, 123456789);
    ps_msg_close(&r);
  }
  zmq_msg_close(&id);
  zmq_msg_close(&header);
}
END_TEST

START_TEST(garbage_header_refused) {
  send_raw("\xff\xff\xff\xff garbage", 13, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert(m.has_route); /* so the caller can still answer with an Error */
  ck_assert_ptr_null(m.env);
  ck_assert_ptr_nonnull(strstr(err, "not a ps.Envelope"));
  ps_msg_close(&m);
}
END_TEST

START_TEST(truncated_header_refused) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 4, PS_PROTOCOL_VERSION);
  send_raw(buf, n - 3, 1);
  float vals[4] = {0};
  send_raw(vals, sizeof(vals), 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_null(m.env);
  ps_msg_close(&m);
  /* The bad message's payload frame was consumed with it. */
  zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 50), 0);
}
END_TEST

START_TEST(length_disagrees_with_frame) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 8, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 1);
  float vals[7] = {0};
  send_raw(vals, sizeof(vals), 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(m.env);
  ck_assert_int_eq(m.request_id, 77);
  ck_assert_ptr_nonnull(strstr(err, "28 bytes"));
  ps_msg_close(&m);
}
END_TEST

START_TEST(missing_payload_refused) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 8, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "0 payload frames"));
  ps_msg_close(&m);
}
END_TEST

START_TEST(extra_payload_refused) {
  Ps__Envelope env = PS__ENVELOPE__INIT;
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  uint8_t buf[64];
  size_t n = ps__envelope__pack(&env, buf);
  send_raw(buf, n, 1);
  send_raw("xxxx", 4, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ps_msg_close(&m);
}
END_TEST

START_TEST(too_many_frames_refused) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 1, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 1);
  for (int i = 0; i < PS_MAX_PAYLOAD_FRAMES + 3; i++)
    send_raw("abcd", 4, i + 1 < PS_MAX_PAYLOAD_FRAMES + 3);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ps_msg_close(&m);
  zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 50), 0);
}
END_TEST

static size_t pack_pull_reply(uint8_t *buf, uint64_t count) {
  Ps__PullReply r = PS__PULL_REPLY__INIT;
  r.key_begin = 16;
  r.count = count;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.request_id = 78;
  env.body_case = PS__ENVELOPE__BODY_PULL_REPLY;
  env.pull_reply = &r;
  return ps__envelope__pack(&env, buf);
}

START_TEST(pull_reply_in_several_frames) {
  /* A server sends each block of its weights as its own frame: 3 + 1 + 5
   * floats make one reply of 9, gathered in order. */
  uint8_t buf[128];
  float v[9];
  for (int i = 0; i < 9; i++) v[i] = (float)i + 0.5f;
  send_raw(buf, pack_pull_reply(buf, 9), 1);
  send_raw(v, 3 * sizeof(float), 1);
  send_raw(v + 3, 1 * sizeof(float), 1);
  send_raw(v + 4, 5 * sizeof(float), 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_OK);
  ck_assert_int_eq(m.npayload, 3);
  ck_assert_uint_eq(ps_msg_payload_bytes(&m), sizeof(v));
  float out[9];
  ps_msg_payload_gather(&m, out);
  ck_assert(memcmp(out, v, sizeof(v)) == 0);
  ps_msg_close(&m);

  /* The frames must add up to the count, each a whole number of floats. */
  send_raw(buf, pack_pull_reply(buf, 9), 1);
  send_raw(v, 4 * sizeof(float), 1);
  send_raw(v, 4 * sizeof(float), 0);
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "frames hold 32 bytes"));
  ps_msg_close(&m);
  send_raw(buf, pack_pull_reply(buf, 2), 1);
  send_raw(v, 6, 1);
  send_raw(v, 2, 0);
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "not a positive multiple of 4"));
  ps_msg_close(&m);
  /* A push still carries exactly one frame. */
  send_raw(buf, pack_push(buf, 2, PS_PROTOCOL_VERSION), 1);
  send_raw(v, 4, 1);
  send_raw(v, 4, 0);
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "2 payload frames, expected 1"));
  ps_msg_close(&m);
}
END_TEST

START_TEST(headers_outnumber_slab) {
  /* More messages held at once than the slab has slots: the rest are
   * unpacked with malloc, every one decodes, and closing them in any order
   * gives the slots back (a leak or a double free shows under ASan). */
  enum { N = 150 };
  static ps_msg_t held[N];
  uint8_t buf[128];
  float v[2] = {1.0f, 2.0f};
  for (int i = 0; i < N; i++) {
    send_raw(buf, pack_push(buf, 2, PS_PROTOCOL_VERSION), 1);
    send_raw(v, sizeof(v), 0);
    char err[256];
    ck_assert_int_eq(recv_router(&held[i], NULL, err), PS_OK);
    ck_assert_uint_eq(held[i].env->push->count, 2);
  }
  for (int i = 0; i < N; i += 2) ps_msg_close(&held[i]);
  /* Copied by value, as tests and callers do: the header stays valid. */
  ps_msg_t copy = held[1];
  ck_assert_uint_eq(copy.env->request_id, 77);
  ck_assert_uint_eq(copy.env->push->key_begin, 16);
  ps_msg_close(&copy);
  for (int i = 3; i < N; i += 2) ps_msg_close(&held[i]);
  /* Slots are free again: a fresh message decodes. */
  send_raw(buf, pack_push(buf, 2, PS_PROTOCOL_VERSION), 1);
  send_raw(v, sizeof(v), 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_OK);
  ck_assert_uint_eq(m.env->push->clock, 3);
  ps_msg_close(&m);
}
END_TEST

START_TEST(wrong_version_refused) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 1, PS_PROTOCOL_VERSION + 1);
  send_raw(buf, n, 1);
  send_raw("abcd", 4, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_VERSION);
  ps_msg_close(&m);
}
END_TEST

START_TEST(no_body_refused) {
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  uint8_t buf[64];
  size_t n = ps__envelope__pack(&env, buf);
  send_raw(buf, n ? n : 0, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "no body"));
  ps_msg_close(&m);
}
END_TEST

START_TEST(limits_enforced) {
  ps_frame_limits_t lim = {.max_header_bytes = 1 << 20,
                           .max_payload_bytes = 16};
  uint8_t buf[128];
  size_t n = pack_push(buf, 5, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 1);
  float vals[5] = {0};
  send_raw(vals, sizeof(vals), 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, &lim, err), PS_ERR_TOO_BIG);
  ps_msg_close(&m);

  lim.max_header_bytes = 4;
  lim.max_payload_bytes = 1 << 20;
  n = pack_push(buf, 1, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 1);
  send_raw(vals, 4, 0);
  ck_assert_int_eq(recv_router(&m, &lim, err), PS_ERR_TOO_BIG);
  ps_msg_close(&m);
}
END_TEST

START_TEST(zero_count_refused) {
  uint8_t buf[128];
  size_t n = pack_push(buf, 0, PS_PROTOCOL_VERSION);
  send_raw(buf, n, 1);
  send_raw("", 0, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ps_msg_close(&m);
}
END_TEST

START_TEST(error_reply_carries_request) {
  send_raw("junk", 4, 0);
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_int_eq(ps_msg_reply_error(router, &m, 3, 1, PS_ERR_PROTO,
                                      "bad: %s", err),
                   PS_OK);
  ps_msg_close(&m);
  zmq_pollitem_t it = {dealer, 0, ZMQ_POLLIN, 0};
  ck_assert_int_eq(zmq_poll(&it, 1, 2000), 1);
  ps_msg_t r;
  ck_assert_int_eq(ps_msg_recv(dealer, 0, NULL, &r, err, sizeof(err)), PS_OK);
  ck_assert_int_eq(r.env->body_case, PS__ENVELOPE__BODY_ERROR);
  ck_assert_int_eq(r.env->error->code, PS_ERR_PROTO);
  ck_assert_int_eq(r.env->epoch, 3);
  ck_assert_ptr_nonnull(strstr(r.env->error->message, "bad:"));
  ps_msg_close(&r);
}
END_TEST

START_TEST(recv_without_message_is_timeout) {
  ps_msg_t m;
  char err[256];
  ck_assert_int_eq(ps_msg_recv(router, 1, NULL, &m, err, sizeof(err)),
                   PS_ERR_TIMEOUT);
}
END_TEST

/* A snapshot head: 3 frames (live, contrib, dedup), the first two exactly
 * the size the header says; at least one chunk; a sum interval inside the
 * range. A chunk: whole floats adding up to its count. */
static size_t pack_snapshot(uint8_t *buf, uint32_t nlive, uint32_t nchunks,
                            uint64_t acc_hi) {
  Ps__ReplicaSnapshot r = PS__REPLICA_SNAPSHOT__INIT;
  r.range_begin = 16;
  r.range_end = 80;
  r.nlive = nlive;
  r.ncontrib = 1;
  r.nchunks = nchunks;
  r.acc_lo = 8;
  r.acc_hi = acc_hi;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.request_id = 5;
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SNAPSHOT;
  env.replica_snapshot = &r;
  return ps__envelope__pack(&env, buf);
}

static int send_snapshot(uint32_t nlive, uint32_t nchunks, uint64_t acc_hi,
                         size_t live_bytes, char *err) {
  uint8_t buf[256];
  send_raw(buf, pack_snapshot(buf, nlive, nchunks, acc_hi), 1);
  uint64_t live[8] = {0}, contrib[2] = {0};
  send_raw(live, live_bytes, 1);
  send_raw(contrib, sizeof(contrib), 1);
  send_raw(NULL, 0, 0); /* no dedup records */
  ps_msg_t m;
  int rc = recv_router(&m, NULL, err);
  ps_msg_close(&m);
  return rc;
}

START_TEST(snapshot_head_checked) {
  char err[256];
  ck_assert_int_eq(send_snapshot(2, 1, 40, 32, err), PS_OK);
  ck_assert_int_eq(send_snapshot(2, 1, 40, 16, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "live frame has 16 bytes"));
  ck_assert_int_eq(send_snapshot(1, 0, 40, 16, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "no chunks"));
  ck_assert_int_eq(send_snapshot(1, 1, 65, 16, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "sum interval [8,65)"));
}
END_TEST

START_TEST(snapshot_chunk_checked) {
  Ps__ReplicaChunk c = PS__REPLICA_CHUNK__INIT;
  c.range_begin = 0;
  c.range_end = 64;
  c.count = 12;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.body_case = PS__ENVELOPE__BODY_REPLICA_CHUNK;
  env.replica_chunk = &c;
  uint8_t buf[128];
  size_t n = ps__envelope__pack(&env, buf);
  float v[12] = {0};
  char err[256];
  ps_msg_t m;
  /* 12 floats in two frames: fine. */
  send_raw(buf, n, 1);
  send_raw(v, 8 * sizeof(float), 1);
  send_raw(v, 4 * sizeof(float), 0);
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_OK);
  ck_assert_int_eq(m.npayload, 2);
  ps_msg_close(&m);
  /* 11 of them: refused. */
  send_raw(buf, n, 1);
  send_raw(v, 11 * sizeof(float), 0);
  ck_assert_int_eq(recv_router(&m, NULL, err), PS_ERR_PROTO);
  ck_assert_ptr_nonnull(strstr(err, "12 values"));
  ps_msg_close(&m);
}
END_TEST

/* A PushPull of count keys whose push frame is codec's (issue #15), of
 * bytes bytes, its reply asked in pull_codec: what ps_msg_recv says. */
static int send_pushpull(int codec, int pull_codec, uint64_t count,
                         size_t bytes, char *err) {
  Ps__PushPull p = PS__PUSH_PULL__INIT;
  p.count = count;
  p.clock = 2;
  p.seq = 9;
  p.codec = (Ps__Codec)codec;
  p.pull_codec = (Ps__Codec)pull_codec;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.version = PS_PROTOCOL_VERSION;
  env.request_id = 8;
  env.body_case = PS__ENVELOPE__BODY_PUSH_PULL;
  env.push_pull = &p;
  uint8_t buf[128];
  send_raw(buf, ps__envelope__pack(&env, buf), 1);
  static uint8_t frame[4096];
  send_raw(frame, bytes, 0);
  ps_msg_t m;
  int rc = recv_router(&m, NULL, err);
  if (rc == PS_OK) {
    ck_assert_int_eq(m.env->push_pull->codec, codec);
    ck_assert_int_eq(m.env->push_pull->pull_codec, pull_codec);
  }
  ps_msg_close(&m);
  return rc;
}

/* A push-pull's frame is checked against its codec's size exactly as a
 * push's, and its reply may be asked only in a codec pulls have. */
START_TEST(coded_pushpull_checked) {
  char err[256];
  ck_assert_int_eq(send_pushpull(PS_CODEC_NONE, PS_CODEC_NONE, 300, 1200, err),
                   PS_OK);
  ck_assert_int_eq(send_pushpull(PS_CODEC_FP16, PS_CODEC_FP16, 300, 600, err),
                   PS_OK);
  /* int8: 2 scales (300 keys in blocks of 256), then 300 int8. */
  ck_assert_int_eq(send_pushpull(PS_CODEC_INT8, PS_CODEC_INT8, 300, 308, err),
                   PS_OK);
  ck_assert_int_eq(send_pushpull(PS_CODEC_TOPK, PS_CODEC_INT8, 300, 24, err),
                   PS_OK);
  ck_assert_int_eq(send_pushpull(PS_CODEC_FP16, PS_CODEC_NONE, 300, 1200, err),
                   PS_ERR_PROTO);
  ck_assert_msg(strstr(err, "push_pull") && strstr(err, "fp16"), "%s", err);
  ck_assert_int_eq(send_pushpull(PS_CODEC_INT8, PS_CODEC_NONE, 300, 304, err),
                   PS_ERR_PROTO);
  ck_assert_msg(strstr(err, "push_pull") && strstr(err, "int8"), "%s", err);
  ck_assert_int_eq(send_pushpull(PS_CODEC_TOPK, PS_CODEC_NONE, 300, 20, err),
                   PS_ERR_PROTO);
  ck_assert_int_eq(send_pushpull(7, PS_CODEC_NONE, 300, 1200, err),
                   PS_ERR_PROTO);
  ck_assert_msg(strstr(err, "unknown codec 7"), "%s", err);
  /* Float32 push, but a reply in top-k (pushes only) or unknown. */
  ck_assert_int_eq(send_pushpull(PS_CODEC_NONE, PS_CODEC_TOPK, 300, 1200, err),
                   PS_ERR_PROTO);
  ck_assert_msg(strstr(err, "reply in codec 3"), "%s", err);
  ck_assert_int_eq(send_pushpull(PS_CODEC_FP16, 9, 300, 600, err),
                   PS_ERR_PROTO);
  ck_assert_msg(strstr(err, "reply in codec 9"), "%s", err);
}
END_TEST

START_TEST(body_names) {
  ck_assert_str_eq(ps_body_name(PS__ENVELOPE__BODY_PUSH), "push");
  ck_assert_str_eq(ps_body_name(PS__ENVELOPE__BODY_PULL_REPLY), "pull_reply");
}
END_TEST

/* A send blocked at the high-water mark and interrupted by a signal (a
 * SIGTERM asking a worker to stop) is tried again: it completes once the
 * peer reads, instead of failing the call with "Interrupted system call". */
static atomic_int alarm_seen;
static void on_alarm(int sig) {
  (void)sig;
  atomic_store(&alarm_seen, 1);
}

static void *drain_after_alarm(void *sock) {
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) { /* waits for the signal, bounded */
    if (atomic_load(&alarm_seen)) break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - t0.tv_sec > 10) return NULL;
    struct timespec tick = {0, 1000000};
    nanosleep(&tick, NULL);
  }
  /* Reads until the envelope (the only frame longer than a byte) arrives. */
  for (;;) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) != 1) return NULL;
    char buf[256];
    int n = zmq_recv(sock, buf, sizeof(buf), 0);
    if (n > 1) return sock;
  }
}

START_TEST(send_interrupted_by_signal_is_retried) {
  void *c = zmq_ctx_new();
  void *a = zmq_socket(c, ZMQ_PAIR), *b = zmq_socket(c, ZMQ_PAIR);
  int one = 1;
  zmq_setsockopt(a, ZMQ_SNDHWM, &one, sizeof(one));
  zmq_setsockopt(b, ZMQ_RCVHWM, &one, sizeof(one));
  ck_assert_int_eq(zmq_bind(a, "inproc://hwm"), 0);
  ck_assert_int_eq(zmq_connect(b, "inproc://hwm"), 0);
  int queued = 0;
  while (queued < 1000 && zmq_send(a, "x", 1, ZMQ_DONTWAIT) == 1) queued++;
  ck_assert_int_lt(queued, 1000); /* the pipe is full now */

  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_alarm; /* no SA_RESTART: the wait sees EINTR */
  sigemptyset(&sa.sa_mask);
  ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGALRM);
  pthread_sigmask(SIG_BLOCK, &block, &old); /* the reader never takes it */
  pthread_t reader;
  ck_assert_int_eq(pthread_create(&reader, NULL, drain_after_alarm, b), 0);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  struct itimerval it = {{0, 0}, {0, 50000}};
  ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);

  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = 9;
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  env.heartbeat = &hb;
  ck_assert_int_eq(ps_msg_send(a, NULL, &env, NULL, 0), PS_OK);
  void *got = NULL;
  pthread_join(reader, &got);
  ck_assert(atomic_load(&alarm_seen));
  ck_assert_ptr_eq(got, b); /* the envelope reached the peer */
  int zero = 0;
  zmq_setsockopt(a, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(b, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_close(a);
  zmq_close(b);
  zmq_ctx_term(c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("frame");
  TCase *tc = tcase_create("frame");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, push_roundtrip_zero_copy);
  tcase_add_test(tc, garbage_header_refused);
  tcase_add_test(tc, truncated_header_refused);
  tcase_add_test(tc, length_disagrees_with_frame);
  tcase_add_test(tc, missing_payload_refused);
  tcase_add_test(tc, extra_payload_refused);
  tcase_add_test(tc, too_many_frames_refused);
  tcase_add_test(tc, wrong_version_refused);
  tcase_add_test(tc, no_body_refused);
  tcase_add_test(tc, limits_enforced);
  tcase_add_test(tc, zero_count_refused);
  tcase_add_test(tc, error_reply_carries_request);
  tcase_add_test(tc, recv_without_message_is_timeout);
  tcase_add_test(tc, body_names);
  tcase_add_test(tc, coded_pushpull_checked);
  tcase_add_test(tc, snapshot_head_checked);
  tcase_add_test(tc, snapshot_chunk_checked);
  tcase_add_test(tc, pull_reply_in_several_frames);
  tcase_add_test(tc, headers_outnumber_slab);
  tcase_add_test(tc, send_interrupted_by_signal_is_retried);
  tcase_add_test(tc, packed_header_sent_twice);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
