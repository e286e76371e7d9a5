#include "frame.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "err.h"

const ps_frame_limits_t ps_frame_default_limits = {
    .max_header_bytes = 1u << 20,
    .max_payload_bytes = 1u << 30,
};

/* ---- header slab ----
 * protobuf-c allocates the Envelope and its body with malloc on every
 * unpack: two or three calls per request on the data plane. Instead each
 * message borrows one slot of this slab for the whole of its life (taken in
 * ps_msg_recv, given back in ps_msg_close) and the unpack bump-allocates in
 * it. A slot is found by its address, so ps_msg_t may be copied by value
 * (tests do) and closed on another thread. 64 slots cover every message a
 * process holds at once in practice; beyond that, or for a header whose
 * unpacked form outgrows a slot (a View), the unpack uses malloc as before. */
#define SLAB_SLOTS 64
#define SLAB_SLOT_BYTES 1024

static _Alignas(64) unsigned char slab[SLAB_SLOTS][SLAB_SLOT_BYTES];
static atomic_uint_fast64_t slab_used;

typedef struct {
  unsigned char *base; /* NULL: no slot, everything from malloc */
  size_t used;
} bump_t;

static int slab_take(void) {
  uint_fast64_t used = atomic_load_explicit(&slab_used, memory_order_relaxed);
  for (;;) {
    if (~used == 0) return -1;
    int i = __builtin_ctzll((unsigned long long)~used);
    uint_fast64_t want = used | ((uint_fast64_t)1 << i);
    if (atomic_compare_exchange_weak_explicit(&slab_used, &used, want,
                                              memory_order_acquire,
                                              memory_order_relaxed))
      return i;
  }
}

static int slab_index(const void *p) {
  /* Compared as integers: p is usually not inside the slab at all. */
  uintptr_t a = (uintptr_t)p, base = (uintptr_t)slab;
  if (a < base || a - base >= sizeof(slab)) return -1;
  return (int)((a - base) / SLAB_SLOT_BYTES);
}

static void slab_give(int i) {
  atomic_fetch_and_explicit(&slab_used, ~((uint_fast64_t)1 << i),
                            memory_order_release);
}

static void *bump_alloc(void *data, size_t size) {
  bump_t *b = data;
  size_t at = (b->used + 15) & ~(size_t)15;
  if (b->base && size <= SLAB_SLOT_BYTES && at <= SLAB_SLOT_BYTES - size) {
    b->used = at + size;
    return b->base + at;
  }
  return malloc(size);
}

/* Pieces inside the slab go back with their slot, in ps_msg_close. */
static void bump_free(void *data, void *p) {
  if (p && slab_index(p) < 0) free(p);
}

const char *ps_body_name(Ps__Envelope__BodyCase c) {
  switch (c) {
    case PS__ENVELOPE__BODY__NOT_SET:
      return "none";
    case PS__ENVELOPE__BODY_REGISTER:
      return "register";
    case PS__ENVELOPE__BODY_REGISTER_REPLY:
      return "register_reply";
    case PS__ENVELOPE__BODY_HEARTBEAT:
      return "heartbeat";
    case PS__ENVELOPE__BODY_VIEW:
      return "view";
    case PS__ENVELOPE__BODY_PUSH:
      return "push";
    case PS__ENVELOPE__BODY_PULL:
      return "pull";
    case PS__ENVELOPE__BODY_PULL_REPLY:
      return "pull_reply";
    case PS__ENVELOPE__BODY_ACK:
      return "ack";
    case PS__ENVELOPE__BODY_ERROR:
      return "error";
    case PS__ENVELOPE__BODY_BARRIER:
      return "barrier";
    case PS__ENVELOPE__BODY_DONE:
      return "done";
    case PS__ENVELOPE__BODY_SHUTDOWN:
      return "shutdown";
    case PS__ENVELOPE__BODY_STATUS_REQUEST:
      return "status_request";
    case PS__ENVELOPE__BODY_STATUS:
      return "status";
    case PS__ENVELOPE__BODY_CHECKPOINT_REQUEST:
      return "checkpoint_request";
    case PS__ENVELOPE__BODY_CHECKPOINT_REPLY:
      return "checkpoint_reply";
    case PS__ENVELOPE__BODY_CHECKPOINT_COMMAND:
      return "checkpoint_command";
    case PS__ENVELOPE__BODY_CHECKPOINT_INFO:
      return "checkpoint_info";
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      return "sparse_push";
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      return "sparse_pull";
    case PS__ENVELOPE__BODY_SPARSE_PULL_REPLY:
      return "sparse_pull_reply";
    case PS__ENVELOPE__BODY_REPLICATE:
      return "replicate";
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT:
      return "replica_snapshot";
    case PS__ENVELOPE__BODY_REPLICA_SYNCED:
      return "replica_synced";
    case PS__ENVELOPE__BODY_JOIN_REPLY:
      return "join_reply";
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      return "replica_chunk";
    case PS__ENVELOPE__BODY_DRAIN_COMMAND:
      return "drain_command";
    case PS__ENVELOPE__BODY_HANDOVER:
      return "handover";
    case PS__ENVELOPE__BODY_HANDOVER_READY:
      return "handover_ready";
    case PS__ENVELOPE__BODY_PUSH_PULL:
      return "push_pull";
    case PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND:
      return "remove_worker_command";
    default:
      return "unknown";
  }
}

/* How many payload frames a body carries (at least min, at most max), and
 * how many float32 values they hold together. */
static void expected_payload(const Ps__Envelope *env, int *min_frames,
                             int *max_frames, uint64_t *nfloats) {
  *min_frames = *max_frames = 0;
  *nfloats = 0;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      *min_frames = *max_frames = 1;
      *nfloats = env->push->count;
      break;
    case PS__ENVELOPE__BODY_PUSH_PULL:
      *min_frames = *max_frames = 1;
      *nfloats = env->push_pull->count;
      break;
    case PS__ENVELOPE__BODY_PULL_REPLY:
      *min_frames = 1;
      *max_frames = PS_MAX_PAYLOAD_FRAMES;
      *nfloats = env->pull_reply->count;
      break;
    case PS__ENVELOPE__BODY_REPLICA_CHUNK:
      *min_frames = 1;
      *max_frames = PS_MAX_PAYLOAD_FRAMES;
      *nfloats = env->replica_chunk->count;
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
      if (env->replicate->kind == PS__REPLICATE_KIND__REPL_PUSH ||
          (env->replicate->kind == PS__REPLICATE_KIND__REPL_STEP &&
           env->replicate->sum)) {
        *min_frames = *max_frames = 1;
        *nfloats = env->replicate->count;
      }
      break;
    default:
      break;
  }
}

size_t ps_msg_payload_bytes(const ps_msg_t *m) {
  size_t n = 0;
  for (int i = 0; i < m->npayload; i++)
    n += zmq_msg_size((zmq_msg_t *)&m->payload[i]);
  return n;
}

void ps_msg_payload_gather(const ps_msg_t *m, void *dst) {
  unsigned char *d = dst;
  for (int i = 0; i < m->npayload; i++) {
    zmq_msg_t *f = (zmq_msg_t *)&m->payload[i];
    size_t n = zmq_msg_size(f);
    memcpy(d, zmq_msg_data(f), n);
    d += n;
  }
}

static size_t frame_size(const ps_msg_t *m, int i) {
  return zmq_msg_size((zmq_msg_t *)&m->payload[i]);
}

/* Sparse bodies: a keys frame of exactly nkeys uint64, and for a push a
 * values frame of whole floats (its exact size needs the table's dim, which
 * only the server knows: it checks nkeys * dim there); a reply carries its
 * dim, so its rows frame is checked exactly here. */
static int validate_sparse(const Ps__Envelope *env, const ps_msg_t *m,
                           const ps_frame_limits_t *limits, char *err,
                           size_t errlen) {
  const char *what = ps_body_name(env->body_case);
  uint64_t nkeys;
  int want_frames;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      nkeys = env->sparse_push->nkeys;
      want_frames = 2;
      break;
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      nkeys = env->sparse_pull->nkeys;
      want_frames = 1;
      break;
    default:
      nkeys = env->sparse_pull_reply->nkeys;
      want_frames = 1;
      break;
  }
  if (m->npayload != want_frames)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s carries %d payload frames, expected %d", what,
                   m->npayload, want_frames);
  if (nkeys == 0)
    return ps_errf(err, errlen, PS_ERR_PROTO, "%s of 0 keys", what);
  if (nkeys > limits->max_payload_bytes / sizeof(uint64_t))
    return ps_errf(err, errlen, PS_ERR_TOO_BIG,
                   "%s of %llu keys exceeds the limit of %zu bytes", what,
                   (unsigned long long)nkeys, limits->max_payload_bytes);
  if (env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL_REPLY) {
    uint32_t dim = env->sparse_pull_reply->dim;
    if (dim == 0 || nkeys > limits->max_payload_bytes / sizeof(float) / dim)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "%s of %llu rows of dim %u: bad dim or over the limit",
                     what, (unsigned long long)nkeys, dim);
    if (frame_size(m, 0) != nkeys * dim * sizeof(float))
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "%s header says %llu rows of %u floats but the frame has "
                     "%zu bytes",
                     what, (unsigned long long)nkeys, dim, frame_size(m, 0));
    return PS_OK;
  }
  if (frame_size(m, 0) != nkeys * sizeof(uint64_t))
    return ps_errf(
        err, errlen, PS_ERR_PROTO,
        "%s header says %llu keys (%llu bytes) but the keys frame has "
        "%zu bytes",
        what, (unsigned long long)nkeys,
        (unsigned long long)(nkeys * sizeof(uint64_t)), frame_size(m, 0));
  if (want_frames == 2) {
    size_t sz = frame_size(m, 1);
    if (sz == 0 || sz % (nkeys * sizeof(float)) != 0)
      return ps_errf(
          err, errlen, PS_ERR_PROTO,
          "%s values frame has %zu bytes, not a positive multiple of "
          "%llu keys * 4",
          what, sz, (unsigned long long)nkeys);
  }
  return PS_OK;
}

/* A snapshot head's three frames against its header (proto/ps.proto,
 * ReplicaSnapshot). The dedup frame's record size belongs to the server,
 * which checks it; the arrays come in ReplicaChunk messages. */
static int validate_snapshot(const Ps__ReplicaSnapshot *r, const ps_msg_t *m,
                             char *err, size_t errlen) {
  if (m->npayload != 3)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "replica_snapshot carries %d payload frames, expected 3",
                   m->npayload);
  if (r->range_end <= r->range_begin)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "replica_snapshot of empty range");
  if (r->nchunks == 0)
    return ps_errf(
        err, errlen, PS_ERR_PROTO,
        "replica_snapshot announces no chunks: the weights must come");
  uint64_t len = r->range_end - r->range_begin;
  if (r->acc_lo > r->acc_hi || r->acc_hi > len)
    return ps_errf(
        err, errlen, PS_ERR_PROTO,
        "replica_snapshot sum interval [%llu,%llu) outside the range "
        "of %llu values",
        (unsigned long long)r->acc_lo, (unsigned long long)r->acc_hi,
        (unsigned long long)len);
  const uint64_t want[2] = {(uint64_t)r->nlive * 2 * sizeof(uint64_t),
                            (uint64_t)r->ncontrib * 2 * sizeof(uint64_t)};
  static const char *const names[2] = {"live", "contrib"};
  for (int i = 0; i < 2; i++)
    if (frame_size(m, i) != want[i])
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "replica_snapshot %s frame has %zu bytes, the header says "
                     "%llu",
                     names[i], frame_size(m, i), (unsigned long long)want[i]);
  return PS_OK;
}

/* Rows keyed by id between servers (a replicated sparse push, a snapshot's
 * sparse rows): a keys frame of exactly nkeys uint64 and a values frame of
 * whole float rows; the row size is the receiver's to check (it knows the
 * table). */
static int validate_keyed_rows(const char *what, uint64_t nkeys,
                               const ps_msg_t *m,
                               const ps_frame_limits_t *limits, char *err,
                               size_t errlen) {
  if (m->npayload != 2)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s carries %d payload frames, expected 2", what,
                   m->npayload);
  if (nkeys == 0 || nkeys > limits->max_payload_bytes / sizeof(uint64_t))
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s of %llu rows: none, or over the limit of %zu bytes",
                   what, (unsigned long long)nkeys, limits->max_payload_bytes);
  if (frame_size(m, 0) != nkeys * sizeof(uint64_t))
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s header says %llu rows but the keys frame has %zu bytes",
                   what, (unsigned long long)nkeys, frame_size(m, 0));
  size_t sz = frame_size(m, 1);
  if (sz == 0 || sz % (nkeys * sizeof(float)) != 0)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s values frame has %zu bytes, not a positive multiple of "
                   "%llu rows * 4",
                   what, sz, (unsigned long long)nkeys);
  return PS_OK;
}

/* Dense bodies whose payload is in a codec (proto/ps.proto, Codec): one
 * frame of exactly the codec's size for count values (topk: whole pairs,
 * 1 to count of them), topk only for pushes, and a pull may ask for none,
 * fp16 or int8. Returns 1 when the body is not coded (the float checks
 * follow), else PS_OK or the error. */
static int validate_coded(const Ps__Envelope *env, const ps_msg_t *m,
                          const ps_frame_limits_t *limits, char *err,
                          size_t errlen) {
  const char *what = ps_body_name(env->body_case);
  int codec;
  uint64_t count;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      codec = env->push->codec;
      count = env->push->count;
      break;
    case PS__ENVELOPE__BODY_PULL:
      codec = env->pull->codec;
      if (codec != PS_CODEC_NONE && codec != PS_CODEC_FP16 &&
          codec != PS_CODEC_INT8)
        return ps_errf(err, errlen, PS_ERR_PROTO,
                       "pull asks for codec %d: pulls come in none, fp16 "
                       "or int8",
                       codec);
      return 1;
    case PS__ENVELOPE__BODY_PUSH_PULL: {
      /* Its push is a Push's frame; its reply a Pull's. */
      int reply = env->push_pull->pull_codec;
      if (reply != PS_CODEC_NONE && reply != PS_CODEC_FP16 &&
          reply != PS_CODEC_INT8)
        return ps_errf(err, errlen, PS_ERR_PROTO,
                       "push_pull asks for its reply in codec %d: pulls come "
                       "in none, fp16 or int8",
                       reply);
      codec = env->push_pull->codec;
      count = env->push_pull->count;
      break;
    }
    case PS__ENVELOPE__BODY_PULL_REPLY:
      codec = env->pull_reply->codec;
      count = env->pull_reply->count;
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
      if (env->replicate->kind != PS__REPLICATE_KIND__REPL_PUSH) return 1;
      codec = env->replicate->codec;
      count = env->replicate->count;
      break;
    default:
      return 1;
  }
  if (codec == PS_CODEC_NONE) return 1;
  if (codec < 0 || codec > PS_CODEC_TOPK ||
      (codec == PS_CODEC_TOPK &&
       env->body_case == PS__ENVELOPE__BODY_PULL_REPLY))
    return ps_errf(err, errlen, PS_ERR_PROTO, "%s in unknown codec %d", what,
                   codec);
  if (m->npayload != 1)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s in %s carries %d payload frames, expected 1", what,
                   ps_codec_name(codec), m->npayload);
  /* The decoded values must fit where raw ones would. */
  if (count > limits->max_payload_bytes / sizeof(float))
    return ps_errf(err, errlen, PS_ERR_TOO_BIG,
                   "%s of %llu values exceeds the limit of %zu bytes", what,
                   (unsigned long long)count, limits->max_payload_bytes);
  char why[200];
  if (ps_codec_check_size(codec, count, frame_size(m, 0), why, sizeof(why)) !=
      PS_OK)
    return ps_errf(err, errlen, PS_ERR_PROTO, "%s: %s", what, why);
  return PS_OK;
}

/* REPL_PUSHES: one frame per listed push, each what a REPL_PUSH of that
 * push would carry (count float32, or the push's codec's size). */
static int validate_pushes(const Ps__Replicate *r, const ps_msg_t *m,
                           const ps_frame_limits_t *limits, char *err,
                           size_t errlen) {
  if (r->n_pushes == 0 || r->n_pushes > PS_MAX_PAYLOAD_FRAMES)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "replicate (pushes) of %zu pushes: 1 to %d", r->n_pushes,
                   PS_MAX_PAYLOAD_FRAMES);
  if ((size_t)m->npayload != r->n_pushes)
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "replicate (pushes) lists %zu pushes but carries %d "
                   "payload frames",
                   r->n_pushes, m->npayload);
  for (size_t i = 0; i < r->n_pushes; i++) {
    const Ps__ReplPush *p = r->pushes[i];
    size_t sz = frame_size(m, (int)i);
    if (p->count == 0 || p->count > limits->max_payload_bytes / sizeof(float))
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "replicate (pushes): push %zu of %llu values: none, or "
                     "over the limit of %zu bytes",
                     i, (unsigned long long)p->count,
                     limits->max_payload_bytes);
    if (p->codec == PS_CODEC_NONE) {
      if (sz != p->count * sizeof(float))
        return ps_errf(err, errlen, PS_ERR_PROTO,
                       "replicate (pushes): push %zu of %llu values in a "
                       "frame of %zu bytes",
                       i, (unsigned long long)p->count, sz);
      continue;
    }
    if ((int)p->codec < 0 || p->codec > PS_CODEC_TOPK)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "replicate (pushes): push %zu in unknown codec %d", i,
                     (int)p->codec);
    char why[200];
    if (ps_codec_check_size((int)p->codec, p->count, sz, why, sizeof(why)) !=
        PS_OK)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "replicate (pushes): push %zu: %s", i, why);
  }
  return PS_OK;
}

int ps_msg_validate(const ps_msg_t *m, const ps_frame_limits_t *limits,
                    char *err, size_t errlen) {
  const Ps__Envelope *env = m->env;
  if (env == NULL)
    return ps_errf(err, errlen, PS_ERR_PROTO, "header is not a ps.Envelope");
  if (env->version != PS_PROTOCOL_VERSION)
    return ps_errf(err, errlen, PS_ERR_VERSION,
                   "protocol version %u, this node speaks %u", env->version,
                   PS_PROTOCOL_VERSION);
  if (env->body_case == PS__ENVELOPE__BODY__NOT_SET)
    return ps_errf(err, errlen, PS_ERR_PROTO, "envelope has no body");
  if (env->body_case == PS__ENVELOPE__BODY_SPARSE_PUSH ||
      env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL ||
      env->body_case == PS__ENVELOPE__BODY_SPARSE_PULL_REPLY)
    return validate_sparse(env, m, limits, err, errlen);
  if (env->body_case == PS__ENVELOPE__BODY_REPLICA_SNAPSHOT)
    return validate_snapshot(env->replica_snapshot, m, err, errlen);
  if (env->body_case == PS__ENVELOPE__BODY_REPLICATE &&
      env->replicate->kind == PS__REPLICATE_KIND__REPL_PUSHES)
    return validate_pushes(env->replicate, m, limits, err, errlen);
  if (env->body_case == PS__ENVELOPE__BODY_REPLICATE &&
      env->replicate->kind == PS__REPLICATE_KIND__REPL_SPARSE_PUSH)
    return validate_keyed_rows("replicate (sparse push)", env->replicate->nkeys,
                               m, limits, err, errlen);
  if (env->body_case == PS__ENVELOPE__BODY_REPLICA_CHUNK &&
      (env->replica_chunk->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_ROWS ||
       env->replica_chunk->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SUM))
    return validate_keyed_rows("replica_chunk (sparse rows)",
                               env->replica_chunk->count, m, limits, err,
                               errlen);
  if (env->body_case == PS__ENVELOPE__BODY_REPLICA_CHUNK &&
      env->replica_chunk->array == PS__SNAPSHOT_ARRAY__SNAP_SPARSE_SKETCH) {
    uint64_t n = env->replica_chunk->count;
    if (m->npayload != 1 || n == 0 ||
        n > limits->max_payload_bytes / sizeof(uint32_t) ||
        frame_size(m, 0) != n * sizeof(uint32_t))
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "replica_chunk (sparse sketch) of %llu counters must be "
                     "one frame of as many uint32",
                     (unsigned long long)n);
    return PS_OK;
  }

  int coded = validate_coded(env, m, limits, err, errlen);
  if (coded != 1) return coded;

  int min_frames, max_frames;
  uint64_t want_floats;
  expected_payload(env, &min_frames, &max_frames, &want_floats);
  if (m->npayload < min_frames || m->npayload > max_frames) {
    if (min_frames == max_frames)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "%s carries %d payload frames, expected %d",
                     ps_body_name(env->body_case), m->npayload, min_frames);
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s carries %d payload frames, expected %d to %d",
                   ps_body_name(env->body_case), m->npayload, min_frames,
                   max_frames);
  }
  if (max_frames == 0) return PS_OK;

  size_t max_floats = limits->max_payload_bytes / sizeof(float);
  if (want_floats == 0)
    return ps_errf(err, errlen, PS_ERR_PROTO, "%s of 0 values",
                   ps_body_name(env->body_case));
  if (want_floats > max_floats)
    return ps_errf(err, errlen, PS_ERR_TOO_BIG,
                   "%s of %llu values exceeds the limit of %zu bytes",
                   ps_body_name(env->body_case),
                   (unsigned long long)want_floats, limits->max_payload_bytes);
  /* Every frame a whole number of floats, so the receiver can treat each
   * as a float array on its own. */
  for (int i = 0; i < m->npayload; i++) {
    size_t sz = zmq_msg_size((zmq_msg_t *)&m->payload[i]);
    if (sz == 0 || sz % sizeof(float) != 0)
      return ps_errf(err, errlen, PS_ERR_PROTO,
                     "%s payload frame %d has %zu bytes, not a positive "
                     "multiple of %zu",
                     ps_body_name(env->body_case), i, sz, sizeof(float));
  }
  size_t got = ps_msg_payload_bytes(m);
  if (got != want_floats * sizeof(float))
    return ps_errf(err, errlen, PS_ERR_PROTO,
                   "%s header says %llu values (%llu bytes) but the frame%s "
                   "%zu bytes",
                   ps_body_name(env->body_case),
                   (unsigned long long)want_floats,
                   (unsigned long long)(want_floats * sizeof(float)),
                   m->npayload > 1 ? "s hold" : " has", got);
  return PS_OK;
}

/* A signal (the SIGTERM that asks a worker to stop, a profiler's timer)
 * interrupts a send blocked at the high-water mark or a receive of a
 * message's later frames; neither has moved any frame then, so both are
 * simply tried again. The stop itself is noticed by whoever installed the
 * handler, between calls. */
static int send_part(zmq_msg_t *msg, void *sock, int flags) {
  int rc;
  do {
    rc = zmq_msg_send(msg, sock, flags);
  } while (rc < 0 && zmq_errno() == EINTR);
  return rc;
}

static int recv_part(zmq_msg_t *msg, void *sock) {
  int rc;
  do {
    rc = zmq_msg_recv(msg, sock, 0);
  } while (rc < 0 && zmq_errno() == EINTR);
  return rc;
}

/* Reads and drops the frames left of a multipart message, so a bad message
 * never leaves pieces that would be mistaken for the next one. */
static void drain_rest(void *sock) {
  int more = 1;
  size_t sz = sizeof(more);
  while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
    zmq_msg_t part;
    zmq_msg_init(&part);
    if (recv_part(&part, sock) < 0) {
      zmq_msg_close(&part);
      return;
    }
    zmq_msg_close(&part);
  }
}

static int has_more(zmq_msg_t *msg) {
  return zmq_msg_more(msg);
}

int ps_msg_recv(void *sock, int is_router, const ps_frame_limits_t *limits,
                ps_msg_t *m, char *err, size_t errlen) {
  /* Not a memset of the whole struct: the payload array is 2 KiB and its
   * entries are initialised as frames arrive. */
  m->has_route = 0;
  m->user_id[0] = '\0';
  m->env = NULL;
  m->request_id = 0;
  m->npayload = 0;
  if (err && errlen) err[0] = '\0';
  if (limits == NULL) limits = &ps_frame_default_limits;

  zmq_msg_t first;
  zmq_msg_init(&first);
  if (zmq_msg_recv(&first, sock, ZMQ_DONTWAIT) < 0) {
    int e = zmq_errno();
    zmq_msg_close(&first);
    if (e == EAGAIN || e == EINTR) return PS_ERR_TIMEOUT;
    return ps_errf(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
                   zmq_strerror(e));
  }

  zmq_msg_t header;
  if (is_router) {
    /* ROUTER prepends the peer identity as its own frame. */
    m->route = first;
    m->has_route = 1;
    if (!has_more(&m->route))
      return ps_errf(err, errlen, PS_ERR_PROTO, "message has no header frame");
    zmq_msg_init(&header);
    if (recv_part(&header, sock) < 0) {
      zmq_msg_close(&header);
      return ps_errf(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
                     zmq_strerror(zmq_errno()));
    }
    const char *uid = zmq_msg_gets(&header, "User-Id");
    if (uid) snprintf(m->user_id, sizeof(m->user_id), "%s", uid);
  } else {
    header = first;
  }

  int more = has_more(&header);
  size_t hsize = zmq_msg_size(&header);
  int rc = PS_OK;
  if (hsize > limits->max_header_bytes) {
    rc = ps_errf(err, errlen, PS_ERR_TOO_BIG,
                 "header of %zu bytes exceeds the limit of %zu", hsize,
                 limits->max_header_bytes);
  } else {
    int slot = slab_take();
    bump_t bump = {slot >= 0 ? slab[slot] : NULL, 0};
    ProtobufCAllocator alloc = {bump_alloc, bump_free, &bump};
    m->env = ps__envelope__unpack(&alloc, hsize, zmq_msg_data(&header));
    /* The slot stays taken only if the Envelope itself lives in it; that
     * is how ps_msg_close finds it again. */
    if (slot >= 0 && (m->env == NULL || slab_index(m->env) != slot))
      slab_give(slot);
    if (m->env == NULL)
      rc = ps_errf(err, errlen, PS_ERR_PROTO,
                   "header of %zu bytes is not a ps.Envelope", hsize);
    else
      m->request_id = m->env->request_id;
  }
  zmq_msg_close(&header);

  while (more) {
    if (m->npayload == PS_MAX_PAYLOAD_FRAMES) {
      drain_rest(sock);
      return ps_errf(err, errlen, PS_ERR_PROTO, "more than %d payload frames",
                     PS_MAX_PAYLOAD_FRAMES);
    }
    zmq_msg_t *p = &m->payload[m->npayload];
    zmq_msg_init(p);
    if (recv_part(p, sock) < 0) {
      zmq_msg_close(p);
      return ps_errf(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
                     zmq_strerror(zmq_errno()));
    }
    m->npayload++;
    more = has_more(p);
  }
  if (rc != PS_OK) return rc;
  return ps_msg_validate(m, limits, err, errlen);
}

void ps_msg_close(ps_msg_t *m) {
  if (m->has_route) zmq_msg_close(&m->route);
  m->has_route = 0;
  if (m->env) {
    ProtobufCAllocator alloc = {bump_alloc, bump_free, NULL};
    int slot = slab_index(m->env);
    ps__envelope__free_unpacked(m->env, &alloc);
    if (slot >= 0) slab_give(slot);
  }
  m->env = NULL;
  for (int i = 0; i < m->npayload; i++) zmq_msg_close(&m->payload[i]);
  m->npayload = 0;
}

int ps_msg_send(void *sock, zmq_msg_t *route, Ps__Envelope *env,
                zmq_msg_t *payload, int npayload) {
  int rc = PS_OK;
  env->version = PS_PROTOCOL_VERSION;
  if (route) {
    zmq_msg_t r;
    zmq_msg_init(&r);
    zmq_msg_copy(&r, route);
    if (send_part(&r, sock, ZMQ_SNDMORE) < 0) {
      zmq_msg_close(&r);
      rc = PS_ERR_ZMQ;
      goto out;
    }
  }
  size_t hsize = ps__envelope__get_packed_size(env);
  zmq_msg_t header;
  if (zmq_msg_init_size(&header, hsize) != 0) {
    rc = PS_ERR_NOMEM;
    goto out;
  }
  ps__envelope__pack(env, zmq_msg_data(&header));
  if (send_part(&header, sock, npayload > 0 ? ZMQ_SNDMORE : 0) < 0) {
    zmq_msg_close(&header);
    rc = PS_ERR_ZMQ;
    goto out;
  }
  for (int i = 0; i < npayload; i++) {
    if (send_part(&payload[i], sock, i + 1 < npayload ? ZMQ_SNDMORE : 0) < 0) {
      rc = PS_ERR_ZMQ;
      goto out;
    }
  }
out:
  /* Whatever happened, the payload frames are no longer the caller's. */
  for (int i = 0; i < npayload; i++) {
    zmq_msg_close(&payload[i]);
    zmq_msg_init(&payload[i]);
  }
  return rc;
}

int ps_msg_pack(Ps__Envelope *env, zmq_msg_t *header) {
  env->version = PS_PROTOCOL_VERSION;
  size_t hsize = ps__envelope__get_packed_size(env);
  if (zmq_msg_init_size(header, hsize) != 0) {
    zmq_msg_init(header);
    return PS_ERR_NOMEM;
  }
  ps__envelope__pack(env, zmq_msg_data(header));
  return PS_OK;
}

int ps_msg_send_packed(void *sock, zmq_msg_t *route, zmq_msg_t *header) {
  zmq_msg_t part;
  if (route) {
    zmq_msg_init(&part);
    zmq_msg_copy(&part, route);
    if (send_part(&part, sock, ZMQ_SNDMORE) < 0) {
      zmq_msg_close(&part);
      return PS_ERR_ZMQ;
    }
  }
  /* A reference to the same bytes, not a copy of them. */
  zmq_msg_init(&part);
  zmq_msg_copy(&part, header);
  if (send_part(&part, sock, 0) < 0) {
    zmq_msg_close(&part);
    return PS_ERR_ZMQ;
  }
  return PS_OK;
}

int ps_msg_reply_error(void *sock, ps_msg_t *m, uint64_t epoch, uint32_t sender,
                       int code, const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);

  Ps__Error e = PS__ERROR__INIT;
  e.code = code;
  e.message = text;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m->request_id;
  env.sender = sender;
  env.epoch = epoch;
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  return ps_msg_send(sock, m->has_route ? &m->route : NULL, &env, NULL, 0);
}

int ps_payload_wrap(zmq_msg_t *msg, void *data, size_t size,
                    zmq_free_fn *free_cb, void *hint) {
  if (zmq_msg_init_data(msg, data, size, free_cb, hint) != 0)
    return PS_ERR_NOMEM;
  return PS_OK;
}
