/* The frame and envelope decoder (common/frame.c): every message record of
 * the input is sent as a multipart message over inproc and received with
 * ps_msg_recv, which unpacks the header and validates it against its
 * payload frames, on a ROUTER (a routing frame first) or a PAIR.
 *
 * Control records: op bit 0 picks the PAIR (1) or the ROUTER (0) for the
 * messages after it; op bit 1 sets small limits (headers of 64 + arg % 512
 * bytes, payload frames of arg * 4 bytes), else the defaults.
 *
 * What must hold, beyond "no crash": a message that passes carries exactly
 * the bytes its header promises (what the server and clients rely on when
 * they apply a frame in place); sent again as decoded, it passes again with
 * the same body, request id and payload; a message that fails says why; and
 * no frame of any message is left behind for the next one to be mistaken
 * for.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "fuzz_util.h"
#include "fuzz_wire.h"

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "fuzz_frame: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                               \
    }                                                                        \
  } while (0)

static size_t frame_bytes(const ps_msg_t *m, int i) {
  return zmq_msg_size((zmq_msg_t *)&m->payload[i]);
}

/* The promises ps_msg_recv makes to every receiver of a message it
 * passed (common/frame.h). */
static void check_passed(const ps_msg_t *m, const ps_frame_limits_t *lim) {
  const Ps__Envelope *env = m->env;
  CHECK(env != NULL);
  CHECK(env->version == PS_PROTOCOL_VERSION);
  CHECK(env->body_case != PS__ENVELOPE__BODY__NOT_SET);
  CHECK(strcmp(ps_body_name(env->body_case), "unknown") != 0);
  CHECK(m->request_id == env->request_id);
  CHECK(m->npayload >= 0 && m->npayload <= PS_MAX_PAYLOAD_FRAMES);
  size_t total = ps_msg_payload_bytes(m);
  uint64_t want = 0;
  int floats = 1;
  int codec = PS_CODEC_NONE;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      CHECK(m->npayload == 1);
      want = env->push->count;
      codec = env->push->codec;
      break;
    case PS__ENVELOPE__BODY_PUSH_PULL:
      /* Its frame is a Push's (float32 or in codec); its reply is asked
       * in a codec pulls have. */
      CHECK(m->npayload == 1);
      want = env->push_pull->count;
      codec = env->push_pull->codec;
      CHECK(env->push_pull->pull_codec == PS_CODEC_NONE ||
            env->push_pull->pull_codec == PS_CODEC_FP16 ||
            env->push_pull->pull_codec == PS_CODEC_INT8);
      break;
    case PS__ENVELOPE__BODY_PULL_REPLY:
      want = env->pull_reply->count;
      codec = env->pull_reply->codec;
      CHECK(codec != PS_CODEC_TOPK);
      break;
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      want = env->replica_chunk->count;
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
      if (env->replicate->kind == PS__REPLICATE_KIND__REPL_PUSHES) {
        /* Coalesced pushes: a frame each, each REPL_PUSH's size. */
        const Ps__Replicate *r = env->replicate;
        CHECK(r->n_pushes >= 1 && r->n_pushes <= PS_MAX_PAYLOAD_FRAMES);
        CHECK((size_t)m->npayload == r->n_pushes);
        for (size_t i = 0; i < r->n_pushes; i++) {
          const Ps__ReplPush *p = r->pushes[i];
          CHECK(p->count > 0 &&
                p->count <= lim->max_payload_bytes / sizeof(float));
          if (p->codec == PS_CODEC_NONE) {
            CHECK(frame_bytes(m, (int)i) == p->count * sizeof(float));
          } else {
            char why[200];
            CHECK(p->codec > PS_CODEC_NONE && p->codec <= PS_CODEC_TOPK);
            CHECK(ps_codec_check_size((int)p->codec, p->count,
                                      frame_bytes(m, (int)i), why,
                                      sizeof(why)) == PS_OK);
          }
        }
        floats = 0;
      } else if (env->replicate->kind == PS__REPLICATE_KIND__REPL_PUSH ||
                 (env->replicate->kind == PS__REPLICATE_KIND__REPL_STEP &&
                  env->replicate->sum)) {
        CHECK(m->npayload == 1);
        want = env->replicate->count;
        if (env->replicate->kind == PS__REPLICATE_KIND__REPL_PUSH)
          codec = env->replicate->codec;
      } else {
        CHECK(m->npayload == 0);
        floats = 0;
      }
      break;
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      CHECK(m->npayload == 2);
      CHECK(frame_bytes(m, 0) == env->sparse_push->nkeys * sizeof(uint64_t));
      CHECK(frame_bytes(m, 1) > 0 &&
            frame_bytes(m, 1) % (env->sparse_push->nkeys * sizeof(float)) == 0);
      floats = 0;
      break;
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      CHECK(m->npayload == 1);
      CHECK(frame_bytes(m, 0) == env->sparse_pull->nkeys * sizeof(uint64_t));
      floats = 0;
      break;
    case PS__ENVELOPE__BODY_SPARSE_PULL_REPLY:
      CHECK(m->npayload == 1);
      CHECK(frame_bytes(m, 0) == (uint64_t)env->sparse_pull_reply->nkeys *
                                     env->sparse_pull_reply->dim *
                                     sizeof(float));
      floats = 0;
      break;
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT: {
      const Ps__ReplicaSnapshot *r = env->replica_snapshot;
      CHECK(m->npayload == 3);
      CHECK(r->range_begin < r->range_end);
      CHECK(r->acc_lo <= r->acc_hi &&
            r->acc_hi <= r->range_end - r->range_begin);
      CHECK(frame_bytes(m, 0) == (uint64_t)r->nlive * 16);
      CHECK(frame_bytes(m, 1) == (uint64_t)r->ncontrib * 16);
      floats = 0;
      break;
    }
    default:
      CHECK(m->npayload == 0);
      floats = 0;
      break;
  }
  if (floats && codec != PS_CODEC_NONE) {
    /* A coded frame: one, of exactly the codec's size for want values,
     * which would fit the limit decoded. */
    char why[200];
    CHECK(codec > PS_CODEC_NONE && codec <= PS_CODEC_TOPK);
    CHECK(m->npayload == 1);
    CHECK(want > 0 && want <= lim->max_payload_bytes / sizeof(float));
    CHECK(ps_codec_check_size(codec, want, total, why, sizeof(why)) == PS_OK);
  } else if (floats) {
    CHECK(want > 0);
    CHECK(m->npayload >= 1);
    CHECK(total == want * sizeof(float));
    for (int i = 0; i < m->npayload; i++) {
      CHECK(frame_bytes(m, i) > 0 && frame_bytes(m, i) % sizeof(float) == 0);
      CHECK(frame_bytes(m, i) <= lim->max_payload_bytes);
    }
  }
  /* Gathering reads exactly the bytes counted. */
  unsigned char *buf = malloc(total + 1);
  CHECK(buf != NULL);
  ps_msg_payload_gather(m, buf);
  free(buf);
}

/* Whether msg or any message inside it kept fields it did not know. */
static int has_unknown_fields(const ProtobufCMessage *msg) {
  if (msg == NULL) return 0;
  if (msg->n_unknown_fields > 0) return 1;
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  const char *base = (const char *)msg;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      ProtobufCMessage *const *sub =
          *(ProtobufCMessage *const *const *)(base + f->offset);
      for (size_t k = 0; k < n; k++)
        if (has_unknown_fields(sub[k])) return 1;
      continue;
    }
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)(base + f->quantifier_offset) != f->id)
      continue;
    if (has_unknown_fields(*(ProtobufCMessage *const *)(base + f->offset)))
      return 1;
  }
  return 0;
}

static void check_failed(const ps_msg_t *m, int rc, const char *err) {
  CHECK(rc == PS_ERR_PROTO || rc == PS_ERR_VERSION || rc == PS_ERR_TOO_BIG);
  CHECK(err[0] != '\0');
  if (m->env) CHECK(m->request_id == m->env->request_id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fuzz_wire_t *router, *pair;
  if (router == NULL) {
    fuzz_quiet_logs("fuzz_frame");
    router = fuzz_wire_new(1);
    pair = fuzz_wire_new(0);
  }
  fuzz_input_t in = {data, size};
  fuzz_record_t r;
  fuzz_wire_t *w = router;
  ps_frame_limits_t lim = ps_frame_default_limits;
  while (fuzz_next_record(&in, &r)) {
    if (r.control) {
      w = (r.op & 1) ? pair : router;
      lim = ps_frame_default_limits;
      if (r.op & 2) {
        lim.max_header_bytes = 64 + r.arg % 512;
        lim.max_payload_bytes = (size_t)r.arg * 4;
      }
      continue;
    }
    ps_msg_t m;
    char err[512];
    int rc = fuzz_wire_deliver(w, &r, &lim, &m, err, sizeof(err));
    if (rc == PS_OK) {
      check_passed(&m, &lim);
      int body = m.env->body_case;
      uint64_t id = m.request_id;
      size_t bytes = ps_msg_payload_bytes(&m);
      int npayload = m.npayload;
      int unknown = has_unknown_fields(&m.env->base);
      ps_msg_t again;
      int rc2 = fuzz_wire_resend(w, r.from, &m, &lim, &again, err, sizeof(err));
      /* protobuf-c keeps unknown fields as they came, malformed ones too
       * (a field number 0 in a long varint), and writes them back in a form
       * it then refuses: only a message that had none must pass again. */
      if (rc2 != PS_OK && unknown) {
        ps_msg_close(&again);
        ps_msg_close(&m);
        CHECK(fuzz_wire_idle(w));
        continue;
      }
      if (rc2 != PS_OK) fprintf(stderr, "fuzz_frame: resent: %s\n", err);
      CHECK(rc2 == PS_OK);
      CHECK((int)again.env->body_case == body);
      CHECK(again.request_id == id);
      CHECK(again.npayload == npayload);
      CHECK(ps_msg_payload_bytes(&again) == bytes);
      check_passed(&again, &lim);
      ps_msg_close(&again);
    } else {
      check_failed(&m, rc, err);
    }
    ps_msg_close(&m);
    CHECK(fuzz_wire_idle(w));
  }
  return 0;
}
