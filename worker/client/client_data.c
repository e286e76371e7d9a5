/* libps-client's dense data plane, on the calling thread: calls and their
 * pieces, the windows, the resend timer, rebasing after a view change, the
 * progress loop, replies, zero-copy pull frames and release accounting, and
 * the push and pull calls of worker/client/include/ps/client.h. How it works:
 * worker/client/client_int.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "worker/client/client_int.h"

/* After the last reply, ZeroMQ's I/O thread may still hold acked frames for
 * a moment; past this, sockets holding frames are closed to free them. */
#define PS__RELEASE_GRACE_MS 100

/* ---- calls: pool, tickets, release accounting --------------------------- */

static void ps__client_op_drop_held(ps__op_t *op) {
  for (size_t i = 0; i < op->nheld; i++) zmq_msg_close(&op->held[i]);
  op->nheld = 0;
}

void ps__client_op_free(ps__op_t *op) {
  ps__client_op_drop_held(op);
  free(op->held);
  free(op->spans);
  free(op->pieces);
  free(op->enc_buf);
  free(op->dq);
  free(op);
}

/* Keeps the payload frames of a zero-copy pull's reply for piece p. A frame
 * ZeroMQ left at an odd address inside its receive buffer (small messages)
 * is copied into one of its own, so every span is a float array. */
static int ps__client_op_hold(ps_client_t *c, ps__op_t *op,
                              const ps__piece_t *p, ps_msg_t *m) {
  if (op->nheld + (size_t)m->npayload > op->held_cap) {
    size_t cap = op->held_cap ? 2 * op->held_cap : 16;
    while (cap < op->nheld + (size_t)m->npayload) cap *= 2;
    zmq_msg_t *held = realloc(op->held, cap * sizeof(*held));
    if (held == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    op->held = held;
    ps_client_span_t *spans = realloc(op->spans, cap * sizeof(*spans));
    if (spans == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    op->spans = spans;
    op->held_cap = cap;
  }
  uint64_t key = p->key_begin;
  for (int i = 0; i < m->npayload; i++) {
    zmq_msg_t *h = &op->held[op->nheld];
    size_t bytes = zmq_msg_size(&m->payload[i]);
    if ((uintptr_t)zmq_msg_data(&m->payload[i]) % _Alignof(float) == 0) {
      zmq_msg_init(h);
      zmq_msg_move(h, &m->payload[i]);
    } else {
      if (zmq_msg_init_size(h, bytes) != 0)
        return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
      memcpy(zmq_msg_data(h), zmq_msg_data(&m->payload[i]), bytes);
    }
    ps_client_span_t *sp = &op->spans[op->nheld++];
    sp->key_begin = key;
    sp->count = bytes / sizeof(float);
    sp->values = zmq_msg_data(h);
    key += sp->count;
  }
  return PS_OK;
}

static ps__op_t *ps__client_op_find_ticket(ps_client_t *c, uint64_t ticket,
                                           size_t *index) {
  for (size_t i = 0; i < c->nops; i++)
    if (c->ops[i]->ticket == ticket) {
      if (index) *index = i;
      return c->ops[i];
    }
  return NULL;
}

/* A pooled call, registered as pending under a fresh ticket. */
static int ps__client_op_new(ps_client_t *c, ps__op_t **out) {
  if (c->nops >= PS_CLIENT_MAX_PENDING)
    return ps__client_fail(c, PS_ERR_REFUSED,
                           "%d calls are pending already; wait for some first",
                           PS_CLIENT_MAX_PENDING);
  if (c->nops == c->ops_cap) {
    size_t cap = c->ops_cap ? 2 * c->ops_cap : 16;
    ps__op_t **grown = realloc(c->ops, cap * sizeof(*grown));
    if (grown == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    c->ops = grown;
    c->ops_cap = cap;
  }
  ps__op_t *op = c->free_ops;
  if (op) {
    c->free_ops = op->next_free;
  } else if ((op = calloc(1, sizeof(*op))) == NULL) {
    return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
  }
  ps__piece_t *pieces = op->pieces;
  size_t cap = op->cap;
  memset(op, 0, offsetof(ps__op_t, unreleased));
  op->pieces = pieces;
  op->cap = cap;
  op->c = c;
  op->ticket = ++c->next_ticket;
  atomic_store(&op->unreleased, 0);
  op->next_free = NULL;
  op->nheld = 0;
  c->ops[c->nops++] = op;
  *out = op;
  return PS_OK;
}

/* Takes op off the pending list and back to the pool. */
static void ps__client_op_retire(ps_client_t *c, ps__op_t *op) {
  size_t i;
  ps__client_op_drop_held(op);
  if (ps__client_op_find_ticket(c, op->ticket, &i)) {
    memmove(&c->ops[i], &c->ops[i + 1], (c->nops - i - 1) * sizeof(*c->ops));
    c->nops--;
  }
  op->next_free = c->free_ops;
  c->free_ops = op;
}

/* ZeroMQ's I/O thread is done with one push frame of the call. Only the
 * last one takes the lock, to wake a waiter in ps__client_op_settle. */
static void ps__client_payload_released_cb(void *data, void *hint) {
  ps__op_t *op = hint;
  if (atomic_fetch_sub_explicit(&op->unreleased, 1, memory_order_acq_rel) ==
      1) {
    ps_client_t *c = op->c;
    pthread_mutex_lock(&c->rel_mu);
    pthread_cond_broadcast(&c->rel_cv);
    pthread_mutex_unlock(&c->rel_mu);
  }
}

static uint64_t ps__client_op_unreleased(ps__op_t *op) {
  return atomic_load_explicit(&op->unreleased, memory_order_acquire);
}

static void ps__client_op_fail(ps_client_t *c, ps__op_t *op, int status,
                               const char *msg);

/* Returns once ZeroMQ holds none of the call's push values, so the caller
 * may reuse them. Frames that reached their server were released by the
 * I/O thread right after the write, before the ack came back; frames
 * still queued (a server that never connected, a socket abandoned after a
 * view change) are only released when their socket closes, so after a
 * short grace every data socket is closed (they reconnect on the next
 * call), which fails the other calls with requests on them. ZeroMQ frees a
 * closed socket's queued frames on its own threads, so the final wait does
 * not depend on the network. */
static void ps__client_op_settle(ps_client_t *c, ps__op_t *op) {
  if (ps__client_op_unreleased(op) == 0) return;
  uint64_t grace = ps_now_ms() + PS__RELEASE_GRACE_MS;
  pthread_mutex_lock(&c->rel_mu);
  while (ps__client_op_unreleased(op) > 0 && ps_now_ms() < grace)
    ps__client_cond_wait_until(&c->rel_cv, &c->rel_mu, grace);
  uint64_t held = ps__client_op_unreleased(op);
  pthread_mutex_unlock(&c->rel_mu);
  if (held == 0) return;

  PS_DEBUG("client_release_close", "frames=%" PRIu64, held);
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    /* Failing a call frees its slots, so look again from the start. */
    for (int j = 0; j < k->inflight;) {
      ps__op_t *other = k->slots[j].op;
      if (other == op || other->finished) {
        j++;
        continue;
      }
      ps__client_op_fail(
          c, other, PS_ERR_PEER,
          "connection reset to release the frames of a failed call");
      j = 0;
    }
    ps__client_conn_close(k);
    k->gen = 0;
  }
  uint64_t warn_at = ps_now_ms() + 1000;
  pthread_mutex_lock(&c->rel_mu);
  while (ps__client_op_unreleased(op) > 0) {
    ps__client_cond_wait_until(&c->rel_cv, &c->rel_mu, warn_at);
    if (ps__client_op_unreleased(op) > 0 && ps_now_ms() >= warn_at) {
      PS_WARN("client_release_slow", "frames=%" PRIu64,
              ps__client_op_unreleased(op));
      warn_at = ps_now_ms() + 1000;
    }
  }
  pthread_mutex_unlock(&c->rel_mu);
}

/* ---- pieces and the window ----------------------------------------------- */

static int ps__client_op_append(ps_client_t *c, ps__op_t *op,
                                uint64_t key_begin, uint64_t count,
                                uint64_t seq, uint32_t server_id, int codec,
                                int pull_codec) {
  if (op->npieces == op->cap) {
    size_t cap = op->cap ? op->cap * 2 : 8;
    ps__piece_t *n = realloc(op->pieces, cap * sizeof(*n));
    if (n == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    op->pieces = n;
    op->cap = cap;
  }
  ps__piece_t *p = &op->pieces[op->npieces++];
  memset(p, 0, sizeof(*p));
  p->key_begin = key_begin;
  p->count = count;
  p->seq = seq;
  p->server_id = server_id;
  p->codec = codec;
  p->pull_codec = pull_codec;
  p->state = PS__PIECE_QUEUED;
  op->pending++;
  return PS_OK;
}

/* The codec of key for the call (a push's or a pull's, from the model's
 * tensor that holds it), the top-k fraction with it, and where the run of
 * tensors with the same codec that key is in ends. */
static int ps__client_codec_at(const ps_client_t *c, int is_push, uint64_t key,
                               float *fraction, uint64_t *run_end) {
  const ps_model_t *m = &c->view->model;
  size_t i = 0;
  while (i < m->ntensors && m->tensors[i].offset + m->tensors[i].length <= key)
    i++;
  if (i == m->ntensors) {
    *run_end = UINT64_MAX;
    if (fraction) *fraction = 0;
    return PS_CODEC_NONE;
  }
  const ps_tensor_spec_t *t = &m->tensors[i];
  int codec = is_push ? t->push_codec : t->pull_codec;
  float f = is_push ? t->topk_fraction : 0;
  size_t j = i + 1;
  while (j < m->ntensors &&
         (is_push ? m->tensors[j].push_codec : m->tensors[j].pull_codec) ==
             codec &&
         (!is_push || m->tensors[j].topk_fraction == f))
    j++;
  *run_end = m->tensors[j - 1].offset + m->tensors[j - 1].length;
  if (fraction) *fraction = f;
  return codec;
}

/* Cuts [key_begin, key_begin + count) at the current view's range
 * boundaries, and each range's part into chunks at multiples of chunk_keys
 * from the range's begin (so chunks line up with the server's blocks
 * whatever slice is asked for). seq 0 gives every piece a fresh sequence
 * number (pushes); otherwise the pieces inherit seq (a re-split resend). */
static int ps__client_op_split(ps_client_t *c, ps__op_t *op, uint64_t key_begin,
                               uint64_t count, uint64_t seq) {
  uint64_t key = key_begin, end = key_begin + count;
  while (key < end) {
    int r = ps_view_find_range(c->view, key);
    if (r < 0)
      return ps__client_fail(c, PS_ERR_INVAL,
                             "key %" PRIu64
                             " is in no range of view epoch %" PRIu64,
                             key, c->view->epoch);
    const ps_range_t *rg = &c->view->ranges[r];
    uint64_t piece_end = rg->end < end ? rg->end : end;
    if (c->chunk_keys) {
      uint64_t chunk_end =
          rg->begin + ((key - rg->begin) / c->chunk_keys + 1) * c->chunk_keys;
      if (chunk_end < piece_end) piece_end = chunk_end;
    }
    /* A request is in one codec: cut where the tensors' codec changes
     * (a push-pull's: its push's or its reply's). */
    uint64_t run_end;
    int codec = ps__client_codec_at(c, op->is_push, key, NULL, &run_end);
    if (run_end < piece_end) piece_end = run_end;
    int pull_codec = PS_CODEC_NONE;
    if (op->pushpull) {
      pull_codec = ps__client_codec_at(c, 0, key, NULL, &run_end);
      if (run_end < piece_end) piece_end = run_end;
    }
    uint64_t piece_seq = seq;
    if (op->is_push && piece_seq == 0) piece_seq = ++c->next_seq;
    int rc = ps__client_op_append(c, op, key, piece_end - key, piece_seq,
                                  rg->server_id, codec, pull_codec);
    if (rc != PS_OK) return rc;
    key = piece_end;
  }
  return PS_OK;
}

/* The one server owning all of [begin, begin + count) in the current view,
 * or -1 if none does. */
static int64_t ps__client_span_owner(const ps_view_t *v, uint64_t begin,
                                     uint64_t count) {
  int r = ps_view_find_range(v, begin);
  if (r < 0 || v->ranges[r].end < begin + count) return -1;
  return v->ranges[r].server_id;
}

/* Frees the window slot of piece index i of op, if it holds one: the piece
 * was answered, or is given up. A late reply then matches nothing and is
 * dropped. */
static void ps__client_piece_unsend(ps_client_t *c, ps__op_t *op, size_t i) {
  const ps__piece_t *p = &op->pieces[i];
  ps__conn_t *k = ps__client_conn_find(c, p->server_id);
  if (k == NULL || k->sock == NULL || k->gen != p->conn_gen) return;
  for (int j = 0; j < k->inflight; j++) {
    if (k->slots[j].request_id != p->request_id) continue;
    if (k->slots[j].acked) k->acked--;
    k->slots[j] = k->slots[--k->inflight];
    return;
  }
}

static void ps__client_piece_set(ps__op_t *op, ps__piece_t *p,
                                 ps__piece_state_t st) {
  int was_open = p->state != PS__PIECE_DONE && p->state != PS__PIECE_SUPERSEDED;
  int is_open = st != PS__PIECE_DONE && st != PS__PIECE_SUPERSEDED;
  if (p->state == PS__PIECE_STALE) op->nstale--;
  if (st == PS__PIECE_STALE) op->nstale++;
  if (was_open && !is_open) op->pending--;
  p->state = st;
}

/* Ends op with status; its requests still in flight are given up. */
static void ps__client_op_fail(ps_client_t *c, ps__op_t *op, int status,
                               const char *msg) {
  if (op->finished) return;
  for (size_t i = 0; i < op->npieces; i++)
    if (op->pieces[i].state == PS__PIECE_SENT)
      ps__client_piece_unsend(c, op, i);
  op->finished = 1;
  op->status = status;
  snprintf(op->errmsg, sizeof(op->errmsg), "%s", msg);
}

/* The same with the client's last error message (set by ps__client_fail). */
static void ps__client_op_fail_errmsg(ps_client_t *c, ps__op_t *op,
                                      int status) {
  ps__client_op_fail(c, op, status, c->errmsg);
}

static void ps__client_fail_all(ps_client_t *c, int status) {
  for (size_t i = 0; i < c->nops; i++)
    ps__client_op_fail_errmsg(c, c->ops[i], status);
}

/* The resend timer: a request on k has waited resend_ms for its reply. It
 * may have been lost with a server that was stopped, restarted or cut off,
 * and ZeroMQ does not say so; the only sure way to get an answer is to ask
 * again on a new connection (the old one may hold a half-sent queue). So
 * the socket is closed and every piece in flight on it is queued again,
 * to be sent to the owner the current view names, with its sequence
 * number: one the server applied already comes back as a duplicate ack.
 * Replies to the old requests die with the socket. */
static void ps__client_conn_resend(ps_client_t *c, ps__conn_t *k,
                                   uint64_t now) {
  size_t n = 0;
  uint64_t oldest = now;
  for (int j = 0; j < k->inflight; j++) {
    ps__slot_t *sl = &k->slots[j];
    ps__op_t *op = sl->op;
    ps__piece_t *p = &op->pieces[sl->piece];
    if (op->finished || p->state != PS__PIECE_SENT ||
        p->request_id != sl->request_id)
      continue;
    ps__client_piece_set(op, p, PS__PIECE_QUEUED);
    if (sl->piece < op->scan_from) op->scan_from = sl->piece;
    if (sl->sent_at_ms < oldest) oldest = sl->sent_at_ms;
    n++;
  }
  PS_INFO("client_resend",
          "server=%u addr=%s pieces=%zu waited_ms=%" PRIu64 " resend_ms=%d",
          k->server_id, k->address, n, now - oldest, c->opts.resend_ms);
  c->resends += n;
  ps__client_conn_close(k);
  k->gen = 0;
}

/* Runs the resend timer over every connection; returns the earliest time
 * it must run again (UINT64_MAX: nothing in flight). */
static uint64_t ps__client_resend_due(ps_client_t *c, uint64_t now) {
  uint64_t next = UINT64_MAX;
  if (c->opts.resend_ms <= 0) return next;
  uint64_t after = (uint64_t)c->opts.resend_ms;
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    if (k->sock == NULL || k->inflight == 0) continue;
    /* Only pushes count: a BSP pull waits at the server for its step as
     * long as the slowest worker takes, while a push is answered as soon
     * as the backups hold it. */
    uint64_t oldest = UINT64_MAX;
    for (int j = 0; j < k->inflight; j++)
      if (k->slots[j].op->is_push && !k->slots[j].acked &&
          k->slots[j].sent_at_ms < oldest)
        oldest = k->slots[j].sent_at_ms;
    if (oldest == UINT64_MAX) continue;
    if (now >= oldest + after)
      ps__client_conn_resend(c, k, now);
    else if (oldest + after < next)
      next = oldest + after;
  }
  return next;
}

/* After a view change: pieces whose keys moved to another server, or whose
 * socket was closed because the server moved, are cut again by the new
 * view. Pieces still in flight to an unchanged server keep waiting: the
 * server answers them or says STALE_EPOCH. */
static int ps__client_op_rebase(ps_client_t *c, ps__op_t *op) {
  size_t n = op->npieces; /* re-split pieces are appended past n */
  for (size_t i = 0; i < n; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state == PS__PIECE_DONE || p->state == PS__PIECE_SUPERSEDED)
      continue;
    int owned = ps__client_span_owner(c->view, p->key_begin, p->count) ==
                (int64_t)p->server_id;
    if (owned && (p->state != PS__PIECE_SENT ||
                  ps__client_conn_alive(c, p->server_id, p->conn_gen)))
      continue;
    if (p->state == PS__PIECE_SENT) ps__client_piece_unsend(c, op, i);
    ps__client_piece_set(op, p, PS__PIECE_SUPERSEDED);
    uint64_t begin = p->key_begin, count = p->count, seq = p->seq;
    int codec = p->codec, from_dq = p->from_dq;
    size_t enc_off = p->enc_off, enc_bytes = p->enc_bytes;
    size_t first = op->npieces;
    /* p may move: ps__client_op_split reallocates. */
    int rc = ps__client_op_split(c, op, begin, count, seq);
    if (rc != PS_OK) return rc;
    if (!op->is_push) continue;
    /* A coded push sends the same bits again when its piece is cut the
     * same (a new owner of the same range); cut otherwise, its pieces go
     * as the floats the servers would have decoded. */
    for (size_t j = first; j < op->npieces; j++) {
      ps__piece_t *q = &op->pieces[j];
      if (op->npieces - first == 1 && q->key_begin == begin &&
          q->count == count) {
        q->codec = codec;
        q->from_dq = from_dq;
        q->enc_off = enc_off;
        q->enc_bytes = enc_bytes;
      } else {
        q->from_dq = codec != PS_CODEC_NONE || from_dq;
        q->codec = PS_CODEC_NONE;
      }
    }
  }
  return PS_OK;
}

static int ps__client_op_send_piece(ps_client_t *c, ps__op_t *op, size_t i,
                                    ps__conn_t *k) {
  ps__piece_t *p = &op->pieces[i];
  Ps__Envelope env = PS__ENVELOPE__INIT;
  Ps__Push push = PS__PUSH__INIT;
  Ps__PushPull push_pull = PS__PUSH_PULL__INIT;
  Ps__Pull pull = PS__PULL__INIT;
  zmq_msg_t payload;
  int npayload = 0;

  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  if (op->pushpull) {
    push_pull.key_begin = p->key_begin;
    push_pull.count = p->count;
    push_pull.clock = op->clock;
    push_pull.seq = p->seq;
    push_pull.pull_codec = (Ps__Codec)p->pull_codec;
    env.body_case = PS__ENVELOPE__BODY_PUSH_PULL;
    env.push_pull = &push_pull;
  } else if (op->is_push) {
    push.key_begin = p->key_begin;
    push.count = p->count;
    push.clock = op->clock;
    push.seq = p->seq;
    env.body_case = PS__ENVELOPE__BODY_PUSH;
    env.push = &push;
  }
  if (op->is_push) {
    /* The values are the caller's (or the call's encoding of them): see
     * ps__client_op_settle for why this is safe and what happens to frames
     * of a call that failed. A push-pull's push is coded as a push's. */
    const void *src = op->values + (p->key_begin - op->key_begin);
    size_t bytes = p->count * sizeof(float);
    if (p->codec != PS_CODEC_NONE) {
      src = op->enc_buf + p->enc_off;
      bytes = p->enc_bytes;
      push.codec = (Ps__Codec)p->codec;
      push_pull.codec = (Ps__Codec)p->codec;
    } else if (p->from_dq) {
      src = op->dq + (p->key_begin - op->key_begin);
    }
    c->push_bytes += bytes;
    atomic_fetch_add_explicit(&op->unreleased, 1, memory_order_relaxed);
    if (ps_payload_wrap(&payload, (void *)src, bytes,
                        ps__client_payload_released_cb, op) != PS_OK) {
      ps__client_payload_released_cb(NULL, op);
      return ps__client_fail(
          c, PS_ERR_ZMQ, "server %u (%s): cannot wrap %" PRIu64 " values: %s",
          p->server_id, k->address, p->count, zmq_strerror(errno));
    }
    npayload = 1;
  } else {
    pull.key_begin = p->key_begin;
    pull.count = p->count;
    pull.clock = op->clock;
    pull.codec = (Ps__Codec)p->codec;
    env.body_case = PS__ENVELOPE__BODY_PULL;
    env.pull = &pull;
  }
  if (k->inflight == k->slots_cap) {
    /* Acked push-pulls wait outside the window, but keep their slots. */
    int cap = 2 * k->slots_cap;
    ps__slot_t *grown = realloc(k->slots, (size_t)cap * sizeof(*grown));
    if (grown == NULL) {
      if (npayload) zmq_msg_close(&payload);
      return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    }
    k->slots = grown;
    k->slots_cap = cap;
  }
  int rc =
      ps_msg_send(k->sock, NULL, &env, npayload ? &payload : NULL, npayload);
  if (rc != PS_OK)
    return ps__client_fail(c, rc, "server %u (%s): send failed: %s",
                           p->server_id, k->address, zmq_strerror(errno));
  ps__client_piece_set(op, p, PS__PIECE_SENT);
  p->request_id = env.request_id;
  p->epoch = env.epoch;
  p->view_gen = c->view_gen;
  p->conn_gen = k->gen;
  p->retry_at_ms = 0;
  k->slots[k->inflight++] = (ps__slot_t){env.request_id, op, i, ps_now_ms(), 0};
  return PS_OK;
}

/* Sends every piece of op that may go now: queued ones, and stale ones once
 * a newer view is here (or their retry time passed), within each server's
 * window. *room is the number of free window slots left in all; the scan
 * stops when none is. */
static int ps__client_op_send_ready(ps_client_t *c, ps__op_t *op, uint64_t now,
                                    int64_t *room) {
  size_t first_left = op->npieces; /* first piece still to send */
  size_t i;
  for (i = op->scan_from; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state != PS__PIECE_QUEUED && p->state != PS__PIECE_STALE) continue;
    if (*room <= 0) break;
    if (p->state == PS__PIECE_STALE && c->view_gen <= p->view_gen &&
        (p->retry_at_ms == 0 || now < p->retry_at_ms)) {
      if (first_left > i) first_left = i;
      continue;
    }
    ps__conn_t *k = NULL;
    int rc = ps__client_conn_get(c, p->server_id, &k);
    if (rc != PS_OK || k == NULL) return rc != PS_OK ? rc : PS_ERR_PEER;
    if (k->inflight - k->acked >= c->opts.window) {
      if (first_left > i) first_left = i;
      continue;
    }
    if ((rc = ps__client_op_send_piece(c, op, i, k)) != PS_OK) return rc;
    (*room)--;
  }
  if (i < op->npieces && first_left > i) first_left = i;
  op->scan_from = first_left;
  return PS_OK;
}

/* Free window slots over every server of the view: connected ones by their
 * count, others a whole window. */
static int64_t ps__client_window_room(ps_client_t *c) {
  int64_t room = 0;
  for (size_t i = 0; i < c->view->nranges; i++) {
    ps__conn_t *k = ps__client_conn_find(c, c->view->ranges[i].server_id);
    room += k && k->sock ? c->opts.window - (k->inflight - k->acked)
                         : c->opts.window;
  }
  return room;
}

/* A pull reply in a codec (ps_msg_recv checked its one frame's size):
 * decoded into the caller's array, or for a zero-copy pull into a frame of
 * its own that the call keeps. */
static int ps__client_pull_decode(ps_client_t *c, ps__conn_t *k, ps__op_t *op,
                                  const ps__piece_t *p, ps_msg_t *m,
                                  int codec) {
  char why[200];
  if (m->npayload != 1)
    return ps__client_fail(
        c, PS_ERR_PROTO, "server %u (%s): %s pull reply in %d frames",
        k->server_id, k->address, ps_codec_name(codec), m->npayload);
  zmq_msg_t decoded;
  float *dst;
  if (op->hold) {
    if (zmq_msg_init_size(&decoded, p->count * sizeof(float)) != 0)
      return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    dst = zmq_msg_data(&decoded);
  } else {
    dst = op->out + (p->key_begin - op->key_begin);
  }
  int rc = ps_codec_decode(codec, zmq_msg_data(&m->payload[0]),
                           zmq_msg_size(&m->payload[0]), p->count, dst, why,
                           sizeof(why));
  if (rc == PS_OK && op->hold) {
    /* The decoded frame replaces the received one, and is kept as it. */
    zmq_msg_close(&m->payload[0]);
    zmq_msg_init(&m->payload[0]);
    zmq_msg_move(&m->payload[0], &decoded);
    return ps__client_op_hold(c, op, p, m);
  }
  if (op->hold) zmq_msg_close(&decoded);
  if (rc != PS_OK)
    return ps__client_fail(c, PS_ERR_PROTO,
                           "server %u (%s): bad pull reply: %s", k->server_id,
                           k->address, why);
  return PS_OK;
}

/* Handles one reply from server k. Returns PS_OK, or the error that ends
 * the call the reply belongs to (already recorded on it). */
static void ps__client_on_reply(ps_client_t *c, ps__conn_t *k, ps_msg_t *m,
                                int status, const char *reason) {
  ps__op_t *op = NULL;
  size_t pi = 0;
  for (int j = 0; m->request_id && j < k->inflight; j++) {
    if (k->slots[j].request_id != m->request_id) continue;
    op = k->slots[j].op;
    pi = k->slots[j].piece;
    if (status == PS_OK && !k->slots[j].acked &&
        m->env->body_case == PS__ENVELOPE__BODY_ACK &&
        (op->pushpull || (op->is_push && m->env->ack->held))) {
      /* The push is on every copy and the weights wait for the step (a
       * push-pull), or the push waits for its step to be replicated
       * (Ack.held): the slot leaves the window (other pieces must reach
       * the servers for the step to complete) and the resend timer. */
      k->slots[j].acked = 1;
      k->acked++;
      if (m->env->ack->duplicate) c->duplicate_acks++;
      return;
    }
    if (k->slots[j].acked) k->acked--;
    k->slots[j] = k->slots[--k->inflight];
    break;
  }
  if (op == NULL) {
    /* A reply to an earlier call that timed out, or to a piece already
     * resent: the request ids tell them apart, so it is just dropped. */
    PS_DEBUG("client_late_reply", "server=%u request=%" PRIu64 " status=%s",
             k->server_id, m->request_id, ps_err_name(status));
    return;
  }
  ps__piece_t *p = &op->pieces[pi];
  const char *what = op->pushpull ? "push_pull" : op->is_push ? "push" : "pull";
  int rc = PS_OK;
  if (status != PS_OK) {
    rc = ps__client_fail(c, PS_ERR_PROTO,
                         "server %u (%s): malformed %s reply: %s", k->server_id,
                         k->address, what, reason);
    ps__client_op_fail_errmsg(c, op, rc);
    return;
  }
  Ps__Envelope *env = m->env;
  if (env->body_case == PS__ENVELOPE__BODY_ERROR) {
    int code = env->error->code;
    const char *text = env->error->message ? env->error->message : "";
    /* NOT_READY: the server has not adopted its first view yet, which is
     * the same as being behind us. */
    if (code == PS_ERR_STALE_EPOCH || code == PS_ERR_NOT_READY) {
      ps__client_piece_set(op, p, PS__PIECE_STALE);
      if (pi < op->scan_from) op->scan_from = pi;
      /* A server behind us catches up by itself; one ahead means our view
       * is old, and the background thread brings the new one. */
      p->retry_at_ms = code == PS_ERR_NOT_READY || env->epoch < p->epoch
                           ? ps_now_ms() + PS__STALE_RETRY_MS
                           : 0;
      PS_INFO("client_stale_epoch",
              "server=%u our_epoch=%" PRIu64 " server_epoch=%" PRIu64
              " keys=%" PRIu64 "+%" PRIu64,
              k->server_id, p->epoch, env->epoch, p->key_begin, p->count);
      return;
    }
    if (code >= 0) code = PS_ERR_PROTO; /* an Error must carry a failure */
    rc = ps__client_fail(c, code, "server %u (%s): %s: %s", k->server_id,
                         k->address, ps_err_name(code), text);
    ps__client_op_fail_errmsg(c, op, rc);
    return;
  }
  if (op->is_push && !op->pushpull) {
    if (env->body_case != PS__ENVELOPE__BODY_ACK) {
      rc = ps__client_fail(c, PS_ERR_PROTO,
                           "server %u (%s): %s reply to a push", k->server_id,
                           k->address, ps_body_name(env->body_case));
      ps__client_op_fail_errmsg(c, op, rc);
      return;
    }
    if (env->ack->duplicate) {
      /* A resend of a piece the server had applied: acked, not applied
       * again. Counted, as a measure of how much failover resent. */
      c->duplicate_acks++;
      PS_DEBUG("client_duplicate_ack",
               "server=%u keys=%" PRIu64 "+%" PRIu64 " seq=%" PRIu64,
               k->server_id, p->key_begin, p->count, p->seq);
    }
  } else {
    if (env->body_case != PS__ENVELOPE__BODY_PULL_REPLY) {
      rc = ps__client_fail(c, PS_ERR_PROTO, "server %u (%s): %s reply to a %s",
                           k->server_id, k->address,
                           ps_body_name(env->body_case), what);
      ps__client_op_fail_errmsg(c, op, rc);
      return;
    }
    const Ps__PullReply *r = env->pull_reply;
    if (op->pushpull && r->duplicate) {
      c->duplicate_acks++;
      PS_DEBUG("client_duplicate_ack",
               "server=%u keys=%" PRIu64 "+%" PRIu64 " seq=%" PRIu64
               " op=push_pull",
               k->server_id, p->key_begin, p->count, p->seq);
    }
    if (r->key_begin != p->key_begin || r->count != p->count) {
      rc = ps__client_fail(c, PS_ERR_PROTO,
                           "server %u (%s): %s reply for keys %" PRIu64
                           "+%" PRIu64 " to a request for %" PRIu64 "+%" PRIu64,
                           k->server_id, k->address, what, r->key_begin,
                           r->count, p->key_begin, p->count);
      ps__client_op_fail_errmsg(c, op, rc);
      return;
    }
    c->pull_bytes += ps_msg_payload_bytes(m);
    if (r->clock < op->reply_clock) op->reply_clock = r->clock;
    if (r->codec != PS__CODEC__CODEC_NONE) {
      rc = ps__client_pull_decode(c, k, op, p, m, (int)r->codec);
      if (rc != PS_OK) {
        ps__client_op_fail_errmsg(c, op, rc);
        return;
      }
      ps__client_piece_set(op, p, PS__PIECE_DONE);
      return;
    }
    /* ps_msg_recv checked the frames against count; this guards the copy
     * against a change there. */
    size_t bytes = p->count * sizeof(float);
    if (m->npayload < 1 || ps_msg_payload_bytes(m) != bytes) {
      rc = ps__client_fail(c, PS_ERR_PROTO,
                           "server %u (%s): %s reply payload is not %zu bytes",
                           k->server_id, k->address, what, bytes);
      ps__client_op_fail_errmsg(c, op, rc);
      return;
    }
    /* A push-pull of step t brings the weights for step t + 1. */
    uint64_t want = op->pushpull ? op->clock + 1 : op->clock;
    if (r->clock < want) {
      uint64_t lag = want - r->clock;
      /* ASP promises no clock: only BSP and SSP have a bound, which the
       * servers keep; a reply beyond it is worth a line. */
      if (c->view->mode != PS__CONSISTENCY_MODE__MODE_ASP &&
          lag > ps_view_staleness(c->view)) {
        PS_WARN("pull_beyond_staleness",
                "server=%u keys=%" PRIu64 "+%" PRIu64 " clock=%" PRIu64
                " reply_clock=%" PRIu64 " staleness=%u",
                k->server_id, p->key_begin, p->count, want, r->clock,
                ps_view_staleness(c->view));
      }
    }
    if (op->hold) {
      rc = ps__client_op_hold(c, op, p, m);
      if (rc != PS_OK) {
        ps__client_op_fail_errmsg(c, op, rc);
        return;
      }
    } else {
      /* The one copy of a pull: from ZeroMQ's receive buffers into the
       * caller's array, frame by frame. */
      ps_msg_payload_gather(m, op->out + (p->key_begin - op->key_begin));
    }
  }
  ps__client_piece_set(op, p, PS__PIECE_DONE);
}

/* Receives every reply waiting on k. Returns how many, or a negative
 * ps_err_t when the socket failed (errmsg set). */
static int ps__client_drain(ps_client_t *c, ps__conn_t *k) {
  int n = 0;
  while (k->sock) {
    ps_msg_t m;
    char reason[256] = "";
    int rc = ps_msg_recv(k->sock, 0, &ps_frame_default_limits, &m, reason,
                         sizeof(reason));
    if (rc == PS_ERR_TIMEOUT) return n;
    if (rc != PS_OK && rc != PS_ERR_PROTO && rc != PS_ERR_VERSION &&
        rc != PS_ERR_TOO_BIG) {
      ps_msg_close(&m);
      return ps__client_fail(c, rc, "server %u (%s): receive failed: %s",
                             k->server_id, k->address, zmq_strerror(errno));
    }
    ps__client_on_reply(c, k, &m, rc, reason);
    ps_msg_close(&m);
    n++;
  }
  return n;
}

/* The range of the current view that holds key, if the view says it is
 * lost: its primary is dead and none of its backups is alive (the scheduler
 * had no replica to promote). NULL otherwise. */
static const ps_range_t *ps__client_range_lost(const ps_client_t *c,
                                               uint64_t key) {
  int r = ps_view_find_range(c->view, key);
  if (r < 0) return NULL;
  const ps_range_t *rg = &c->view->ranges[r];
  const ps_node_t *primary = ps_view_node(c->view, rg->server_id);
  if (primary == NULL || primary->state != PS__NODE_STATE__NODE_STATE_DEAD)
    return NULL;
  for (uint32_t b = 0; b < rg->nbackups && b < PS_MAX_REPLICAS - 1; b++) {
    const ps_node_t *n = ps_view_node(c->view, rg->backups[b]);
    if (n && n->state == PS__NODE_STATE__NODE_STATE_ALIVE) return NULL;
  }
  return rg;
}

static void ps__client_op_timeout(ps_client_t *c, ps__op_t *op) {
  const char *what = op->pushpull ? "push_pull" : op->is_push ? "push" : "pull";
  size_t missing = 0;
  ps__piece_t *first = NULL;
  const ps_range_t *lost = NULL;
  for (size_t i = 0; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->state == PS__PIECE_DONE || p->state == PS__PIECE_SUPERSEDED)
      continue;
    if (first == NULL) first = p;
    if (lost == NULL) lost = ps__client_range_lost(c, p->key_begin);
    missing++;
  }
  int rc;
  if (lost) {
    /* Not a slow server: the cluster has no copy of these keys left, and
     * saying so beats a timeout that invites waiting longer. */
    const char *addr = ps__client_server_addr(c, lost->server_id);
    PS_WARN("client_unavailable",
            "op=%s server=%u addr=%s range=%" PRIu64 "-%" PRIu64
            " epoch=%" PRIu64 " timeout_ms=%d missing=%zu",
            what, lost->server_id, addr, lost->begin, lost->end, c->view->epoch,
            op->timeout_ms, missing);
    rc = ps__client_fail(
        c, PS_ERR_UNAVAILABLE,
        "%s of keys [%" PRIu64 ", %" PRIu64
        "): server %u (%s) is "
        "dead and no live replica holds them (view epoch %" PRIu64
        ", waited %d ms)",
        what, lost->begin, lost->end, lost->server_id, addr, c->view->epoch,
        op->timeout_ms);
    ps__client_op_fail_errmsg(c, op, rc);
    return;
  }
  uint32_t sid = first->server_id;
  const char *addr = ps__client_server_addr(c, sid);
  PS_WARN("client_timeout",
          "op=%s server=%u addr=%s keys=%" PRIu64 "+%" PRIu64
          " timeout_ms=%d missing=%zu",
          what, sid, addr, first->key_begin, first->count, op->timeout_ms,
          missing);
  if (first->state == PS__PIECE_STALE)
    rc = ps__client_fail(
        c, PS_ERR_TIMEOUT,
        "server %u (%s) refused %s of keys %" PRIu64 "+%" PRIu64
        " for a stale epoch and no newer view came within %d ms",
        sid, addr, what, first->key_begin, first->count, op->timeout_ms);
  else
    rc = ps__client_fail(c, PS_ERR_TIMEOUT,
                         "server %u (%s) did not answer %s of keys %" PRIu64
                         "+%" PRIu64 " within %d ms (%zu piece(s) unanswered)",
                         sid, addr, what, first->key_begin, first->count,
                         op->timeout_ms, missing);
  ps__client_op_fail_errmsg(c, op, rc);
}

/* The poll set lives on the client so a call does not allocate it. */
int ps__client_poll_reserve(ps_client_t *c, size_t n) {
  if (n <= c->poll_cap) return PS_OK;
  zmq_pollitem_t *items = realloc(c->poll_items, n * sizeof(*items));
  if (items == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
  c->poll_items = items;
  ps__conn_t **conns = realloc(c->poll_conns, n * sizeof(*conns));
  if (conns == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
  c->poll_conns = conns;
  c->poll_cap = n;
  return PS_OK;
}

/* 1 if a call has a piece that waits for window room. */
static int ps__client_any_queued(const ps_client_t *c) {
  for (size_t i = 0; i < c->nops; i++) {
    const ps__op_t *op = c->ops[i];
    if (!op->finished && op->scan_from < op->npieces) return 1;
  }
  return 0;
}

/* Runs the data plane for every pending call: takes a new view (re-cutting
 * what moved), sends what the windows allow, receives replies, ends calls
 * that are answered or past their deadline. Returns when target has
 * finished, or, with target NULL, once nothing more is ready without
 * waiting. Failures are recorded on the calls they end. */
static void ps__client_progress(ps_client_t *c, ps__op_t *target) {
  for (;;) {
    int changed = ps__client_refresh(c);
    if (changed < 0) {
      ps__client_fail_all(c, changed);
      return;
    }
    uint64_t now = ps_now_ms();
    uint64_t resend_at = ps__client_resend_due(c, now);
    int64_t room = ps__client_window_room(c);
    uint64_t wake_at = now + PS__POLL_SLICE_MS;
    if (resend_at < wake_at) wake_at = resend_at;
    for (size_t i = 0; i < c->nops; i++) {
      ps__op_t *op = c->ops[i];
      if (op->finished) continue;
      int rc = PS_OK;
      if (changed) rc = ps__client_op_rebase(c, op);
      if (rc == PS_OK && room > 0)
        rc = ps__client_op_send_ready(c, op, now, &room);
      if (rc != PS_OK) {
        ps__client_op_fail_errmsg(c, op, rc);
        continue;
      }
      if (op->pending == 0) {
        op->finished = 1;
        op->status = PS_OK;
        continue;
      }
      if (now >= op->deadline_ms) {
        ps__client_op_timeout(c, op);
        continue;
      }
      if (op->deadline_ms < wake_at) wake_at = op->deadline_ms;
      if (op->nstale == 0) continue;
      for (size_t j = op->scan_from; j < op->npieces; j++) {
        const ps__piece_t *p = &op->pieces[j];
        if (p->state == PS__PIECE_STALE && p->retry_at_ms &&
            p->retry_at_ms < wake_at)
          wake_at = p->retry_at_ms;
      }
    }
    if (target && target->finished) return;

    if (target == NULL) {
      /* From a start: the requests are out. Replies are taken now only if
       * calls wait behind full windows, so the pipeline moves on while the
       * caller computes; otherwise the next wait takes them, and a start
       * costs no failed receive (each is a system call in ZeroMQ). */
      if (room > 0 || !ps__client_any_queued(c)) return;
      int got = 0;
      for (size_t i = 0; i < c->nconns; i++) {
        if (c->conns[i].sock == NULL || c->conns[i].inflight == 0) continue;
        int n = ps__client_drain(c, &c->conns[i]);
        if (n < 0) {
          ps__client_fail_all(c, n);
          return;
        }
        got += n;
      }
      if (got) continue;
      return;
    }

    /* Poll first: zmq_poll returns at once when a reply is already waiting,
     * and only the sockets that have one are then drained. */
    if (ps__client_poll_reserve(c, c->nconns + 1) != PS_OK) {
      ps__client_fail_all(c, PS_ERR_NOMEM);
      return;
    }
    zmq_pollitem_t *items = c->poll_items;
    ps__conn_t **polled = c->poll_conns;
    int n = 0;
    items[n] = (zmq_pollitem_t){.fd = c->wake_fd, .events = ZMQ_POLLIN};
    polled[n++] = NULL;
    for (size_t i = 0; i < c->nconns; i++) {
      if (c->conns[i].sock == NULL || c->conns[i].inflight == 0) continue;
      items[n] =
          (zmq_pollitem_t){.socket = c->conns[i].sock, .events = ZMQ_POLLIN};
      polled[n++] = &c->conns[i];
    }
    now = ps_now_ms();
    long slice = wake_at > now ? (long)(wake_at - now) : 0;
    if (zmq_poll(items, n, slice) < 0 && errno != EINTR) {
      ps__client_fail(c, PS_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
      ps__client_fail_all(c, PS_ERR_ZMQ);
      return;
    }
    if (items[0].revents & ZMQ_POLLIN) ps__client_drain_wake(c);
    for (int i = 1; i < n; i++) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      int got = ps__client_drain(c, polled[i]);
      if (got < 0) {
        ps__client_fail_all(c, got);
        return;
      }
    }
  }
}

static int ps__client_check_keys(ps_client_t *c, const char *what,
                                 uint64_t key_begin, uint64_t count,
                                 const void *buf) {
  int rc = ps__client_refresh(c);
  if (rc < 0) return rc;
  uint64_t total = c->view->model.total;
  if (count > 0 && buf == NULL)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "%s: NULL buffer for %" PRIu64 " keys", what, count);
  if (key_begin > total || count > total - key_begin)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "%s: keys %" PRIu64 "+%" PRIu64
                           " outside the model's key space [0, %" PRIu64 ")",
                           what, key_begin, count, total);
  return PS_OK;
}

static void ps__client_report_clock(ps_client_t *c, uint64_t clock) {
  if (clock <= c->last_clock) return;
  c->last_clock = clock;
  pthread_mutex_lock(&c->mu);
  c->shared.clock = clock;
  pthread_mutex_unlock(&c->mu);
  ps__client_thread_poke(c);
}

/* A push whose keys are in coded tensors: every coded piece is encoded
 * now, once, into the call's enc_buf (resends send these bytes), and dq
 * gets what the servers will decode. Top-k adds each key's residual first
 * and keeps what it does not send (error feedback). */
static int ps__client_op_encode(ps_client_t *c, ps__op_t *op) {
  size_t enc_total = 0, topk_max = 0;
  int coded = 0, topk = 0;
  for (size_t i = 0; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->codec == PS_CODEC_NONE) continue;
    float f;
    uint64_t run_end;
    ps__client_codec_at(c, 1, p->key_begin, &f, &run_end);
    uint64_t kk = ps_codec_topk_count(p->count, f);
    p->enc_off = enc_total;
    p->enc_bytes = ps_codec_encoded_bytes(p->codec, p->count, kk);
    /* Aligned starts: a frame is read with memcpy, but cheaper aligned. */
    enc_total += (p->enc_bytes + 7) & ~(size_t)7;
    coded = 1;
    if (p->codec == PS_CODEC_TOPK) {
      topk = 1;
      if (p->count > topk_max) topk_max = p->count;
    }
  }
  if (!coded) return PS_OK;
  if (enc_total > op->enc_cap) {
    unsigned char *b = realloc(op->enc_buf, enc_total);
    if (b == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    op->enc_buf = b;
    op->enc_cap = enc_total;
  }
  if (op->count > op->dq_cap) {
    float *d = realloc(op->dq, op->count * sizeof(float));
    if (d == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    op->dq = d;
    op->dq_cap = op->count;
  }
  if (topk) {
    if (c->residual == NULL &&
        (c->residual = calloc(c->view->model.total, sizeof(float))) == NULL)
      return ps__client_fail(c, PS_ERR_NOMEM,
                             "out of memory for the top-k residual");
    if (topk_max > c->topk_scratch_cap) {
      float *t = realloc(c->topk_scratch, topk_max * sizeof(float));
      if (t == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
      c->topk_scratch = t;
      c->topk_scratch_cap = topk_max;
    }
  }
  for (size_t i = 0; i < op->npieces; i++) {
    ps__piece_t *p = &op->pieces[i];
    if (p->codec == PS_CODEC_NONE) continue;
    uint64_t off = p->key_begin - op->key_begin;
    const float *g = op->values + off;
    float *dq = op->dq + off;
    unsigned char *enc = op->enc_buf + p->enc_off;
    char why[200];
    int rc;
    uint64_t kk = p->enc_bytes / (sizeof(uint32_t) + sizeof(float));
    if (p->codec == PS_CODEC_TOPK) {
      ps_codec_topk_feedback(g, c->residual + p->key_begin, p->count, kk, enc,
                             dq, c->topk_scratch);
      rc = PS_OK;
    } else {
      ps_codec_encode(p->codec, g, p->count, 0, enc, NULL);
      rc = ps_codec_decode(p->codec, enc, p->enc_bytes, p->count, dq, why,
                           sizeof(why));
    }
    if (rc != PS_OK)
      return ps__client_fail(
          c, PS_ERR_PROTO, "encoding keys %" PRIu64 "+%" PRIu64 " in %s: %s",
          p->key_begin, p->count, ps_codec_name(p->codec), why);
  }
  return PS_OK;
}

/* Starts one call; count 0 gives a call that is finished at once. */
static int ps__client_start(ps_client_t *c, int is_push, int hold,
                            uint64_t key_begin, uint64_t count,
                            const float *values, float *out, uint64_t clock,
                            uint64_t *ticket) {
  int pushpull = is_push && out != NULL;
  const char *what = pushpull ? "push_pull" : is_push ? "push" : "pull";
  if (ticket == NULL)
    return ps__client_fail(c, PS_ERR_INVAL, "%s: ticket is NULL", what);
  int rc = ps__client_check_keys(c, what, key_begin, count,
                                 is_push ? (const void *)values
                                 : hold  ? (const void *)ticket
                                         : (const void *)out);
  if (rc != PS_OK) return rc;
  uintptr_t g0 = (uintptr_t)values, w0 = (uintptr_t)out;
  size_t bytes = (size_t)count * sizeof(float);
  if (pushpull && count > 0 && g0 < w0 + bytes && w0 < g0 + bytes)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "push_pull: the gradient and the weights overlap "
                           "(the gradient is sent from where it lies)");
  if (pushpull && clock == UINT64_MAX)
    return ps__client_fail(
        c, PS_ERR_INVAL, "push_pull at step %" PRIu64 ": no next step", clock);
  if (is_push) ps__client_report_clock(c, clock);
  ps__op_t *op = NULL;
  if ((rc = ps__client_op_new(c, &op)) != PS_OK) return rc;
  op->is_push = is_push;
  op->pushpull = pushpull;
  op->hold = hold;
  op->key_begin = key_begin;
  op->count = count;
  op->clock = clock;
  op->reply_clock = UINT64_MAX;
  op->values = values;
  op->out = out;
  op->timeout_ms = c->opts.timeout_ms;
  op->deadline_ms = ps_now_ms() + (uint64_t)c->opts.timeout_ms;
  rc = ps__client_op_split(c, op, key_begin, count, 0);
  if (rc == PS_OK && is_push) rc = ps__client_op_encode(c, op);
  if (rc != PS_OK) {
    ps__client_op_retire(c, op);
    return rc;
  }
  *ticket = op->ticket;
  /* Send what the windows take now, so the requests are on the wire while
   * the caller goes on. */
  ps__client_progress(c, NULL);
  return PS_OK;
}

int ps_client_push_start(ps_client_t *c, uint64_t key_begin, uint64_t count,
                         const float *values, uint64_t clock,
                         uint64_t *ticket) {
  return ps__client_start(c, 1, 0, key_begin, count, values, NULL, clock,
                          ticket);
}

int ps_client_pushpull_start(ps_client_t *c, uint64_t key_begin, uint64_t count,
                             const float *grad, uint64_t step,
                             float *weights_out, uint64_t *ticket) {
  if (weights_out == NULL && count > 0)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "push_pull: NULL buffer for %" PRIu64 " weights",
                           count);
  /* Coded tensors (issue #15) push-pull in their codecs: the push as
   * ps_client_push would send it (encoded once, top-k's residual updated
   * once), the reply as ps_client_pull would get it. */
  /* A non-NULL out is what makes the push a PushPull. */
  float none;
  return ps__client_start(c, 1, 0, key_begin, count, grad,
                          weights_out ? weights_out : &none, step, ticket);
}

int ps_client_pushpull(ps_client_t *c, uint64_t key_begin, uint64_t count,
                       const float *grad, uint64_t step, float *weights_out) {
  uint64_t ticket;
  int rc = ps_client_pushpull_start(c, key_begin, count, grad, step,
                                    weights_out, &ticket);
  return rc != PS_OK ? rc : ps_client_wait(c, ticket);
}

int ps_client_pull_start(ps_client_t *c, uint64_t key_begin, uint64_t count,
                         float *out, uint64_t clock, uint64_t *ticket) {
  return ps__client_start(c, 0, 0, key_begin, count, NULL, out, clock, ticket);
}

int ps_client_pull_frames_start(ps_client_t *c, uint64_t key_begin,
                                uint64_t count, uint64_t clock,
                                uint64_t *ticket) {
  return ps__client_start(c, 0, 1, key_begin, count, NULL, NULL, clock, ticket);
}

static int ps__client_cmp_span(const void *a, const void *b) {
  const ps_client_span_t *x = a, *y = b;
  return x->key_begin < y->key_begin ? -1 : x->key_begin > y->key_begin;
}

int ps_client_wait_frames(ps_client_t *c, uint64_t ticket,
                          const ps_client_span_t **spans, size_t *nspans) {
  ps__op_t *op = ps__client_op_find_ticket(c, ticket, NULL);
  if (op == NULL || !op->hold || op->waited)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "no zero-copy pull is pending with ticket %" PRIu64,
                           ticket);
  if (spans == NULL || nspans == NULL)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "wait_frames: spans or nspans is NULL");
  ps__client_progress(c, op);
  int rc = op->status;
  if (rc != PS_OK) {
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", op->errmsg);
    ps__client_op_retire(c, op);
    return rc;
  }
  /* Pieces are answered in any order; the caller gets them by key. */
  qsort(op->spans, op->nheld, sizeof(*op->spans), ps__client_cmp_span);
  op->waited = 1;
  *spans = op->spans;
  *nspans = op->nheld;
  return PS_OK;
}

void ps_client_release(ps_client_t *c, uint64_t ticket) {
  ps__op_t *op = ps__client_op_find_ticket(c, ticket, NULL);
  if (op && op->hold && op->waited) ps__client_op_retire(c, op);
}

int ps_client_wait(ps_client_t *c, uint64_t ticket) {
  ps__op_t *op = ps__client_op_find_ticket(c, ticket, NULL);
  if (op == NULL)
    return ps__client_fail(c, PS_ERR_INVAL,
                           "no call is pending with ticket %" PRIu64, ticket);
  ps__client_progress(c, op);
  if (op->is_push) ps__client_op_settle(c, op);
  int rc = op->status;
  if (rc != PS_OK) snprintf(c->errmsg, sizeof(c->errmsg), "%s", op->errmsg);
  if (rc == PS_OK && (!op->is_push || op->pushpull))
    c->last_pull_clock = op->reply_clock;
  ps__client_op_retire(c, op);
  return rc;
}

int ps_client_push(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   const float *values, uint64_t clock) {
  uint64_t ticket;
  int rc = ps_client_push_start(c, key_begin, count, values, clock, &ticket);
  return rc != PS_OK ? rc : ps_client_wait(c, ticket);
}

int ps_client_pull(ps_client_t *c, uint64_t key_begin, uint64_t count,
                   float *out, uint64_t clock) {
  uint64_t ticket;
  int rc = ps_client_pull_start(c, key_begin, count, out, clock, &ticket);
  return rc != PS_OK ? rc : ps_client_wait(c, ticket);
}

static int ps__client_tensor(ps_client_t *c, const char *name,
                             const ps_tensor_spec_t **t) {
  int rc = ps__client_refresh(c);
  if (rc < 0) return rc;
  if (name == NULL)
    return ps__client_fail(c, PS_ERR_INVAL, "tensor name is NULL");
  *t = ps_model_tensor(&c->view->model, name);
  if (*t == NULL)
    return ps__client_fail(c, PS_ERR_INVAL, "no tensor \"%s\" in the model",
                           name);
  return PS_OK;
}

int ps_client_push_tensor(ps_client_t *c, const char *name, const float *values,
                          uint64_t clock) {
  const ps_tensor_spec_t *t = NULL;
  int rc = ps__client_tensor(c, name, &t);
  if (rc != PS_OK || t == NULL) return rc;
  return ps_client_push(c, t->offset, t->length, values, clock);
}

int ps_client_pull_tensor(ps_client_t *c, const char *name, float *out,
                          uint64_t clock) {
  const ps_tensor_spec_t *t = NULL;
  int rc = ps__client_tensor(c, name, &t);
  if (rc != PS_OK || t == NULL) return rc;
  return ps_client_pull(c, t->offset, t->length, out, clock);
}
