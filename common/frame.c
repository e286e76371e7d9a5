#include "frame.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

const ps_frame_limits_t ps_frame_default_limits = {
    .max_header_bytes = 1u << 20,
    .max_payload_bytes = 1u << 30,
};

const char *ps_body_name(Ps__Envelope__BodyCase c) {
  switch (c) {
    case PS__ENVELOPE__BODY__NOT_SET: return "none";
    case PS__ENVELOPE__BODY_REGISTER: return "register";
    case PS__ENVELOPE__BODY_REGISTER_REPLY: return "register_reply";
    case PS__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
    case PS__ENVELOPE__BODY_VIEW: return "view";
    case PS__ENVELOPE__BODY_PUSH: return "push";
    case PS__ENVELOPE__BODY_PULL: return "pull";
    case PS__ENVELOPE__BODY_PULL_REPLY: return "pull_reply";
    case PS__ENVELOPE__BODY_ACK: return "ack";
    case PS__ENVELOPE__BODY_ERROR: return "error";
    case PS__ENVELOPE__BODY_BARRIER: return "barrier";
    case PS__ENVELOPE__BODY_DONE: return "done";
    case PS__ENVELOPE__BODY_SHUTDOWN: return "shutdown";
    case PS__ENVELOPE__BODY_STATUS_REQUEST: return "status_request";
    case PS__ENVELOPE__BODY_STATUS: return "status";
    default: return "unknown";
  }
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* How many payload frames a body carries, and how many float32 values the
 * first one must hold. */
static int expected_payload(const Ps__Envelope *env, int *nframes,
                            uint64_t *nfloats) {
  *nframes = 0;
  *nfloats = 0;
  switch (env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      *nframes = 1;
      *nfloats = env->push->count;
      return 1;
    case PS__ENVELOPE__BODY_PULL_REPLY:
      *nframes = 1;
      *nfloats = env->pull_reply->count;
      return 1;
    default:
      return 0;
  }
}

int ps_msg_validate(const ps_msg_t *m, const ps_frame_limits_t *limits,
                    char *err, size_t errlen) {
  const Ps__Envelope *env = m->env;
  if (env == NULL)
    return fail(err, errlen, PS_ERR_PROTO, "header is not a ps.Envelope");
  if (env->version != PS_PROTOCOL_VERSION)
    return fail(err, errlen, PS_ERR_VERSION,
                "protocol version %u, this node speaks %u", env->version,
                PS_PROTOCOL_VERSION);
  if (env->body_case == PS__ENVELOPE__BODY__NOT_SET)
    return fail(err, errlen, PS_ERR_PROTO, "envelope has no body");

  int want_frames;
  uint64_t want_floats;
  expected_payload(env, &want_frames, &want_floats);
  if (m->npayload != want_frames)
    return fail(err, errlen, PS_ERR_PROTO,
                "%s carries %d payload frames, expected %d",
                ps_body_name(env->body_case), m->npayload, want_frames);
  if (want_frames == 0) return PS_OK;

  size_t max_floats = limits->max_payload_bytes / sizeof(float);
  if (want_floats == 0)
    return fail(err, errlen, PS_ERR_PROTO, "%s of 0 values",
                ps_body_name(env->body_case));
  if (want_floats > max_floats)
    return fail(err, errlen, PS_ERR_TOO_BIG,
                "%s of %llu values exceeds the limit of %zu bytes",
                ps_body_name(env->body_case), (unsigned long long)want_floats,
                limits->max_payload_bytes);
  size_t got = zmq_msg_size((zmq_msg_t *)&m->payload[0]);
  if (got != want_floats * sizeof(float))
    return fail(err, errlen, PS_ERR_PROTO,
                "%s header says %llu values (%llu bytes) but the frame has "
                "%zu bytes",
                ps_body_name(env->body_case), (unsigned long long)want_floats,
                (unsigned long long)(want_floats * sizeof(float)), got);
  return PS_OK;
}

/* Reads and drops the frames left of a multipart message, so a bad message
 * never leaves pieces that would be mistaken for the next one. */
static void drain_rest(void *sock) {
  int more = 1;
  size_t sz = sizeof(more);
  while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
    zmq_msg_t part;
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, sock, 0) < 0) {
      zmq_msg_close(&part);
      return;
    }
    zmq_msg_close(&part);
  }
}

static int has_more(zmq_msg_t *msg) { return zmq_msg_more(msg); }

int ps_msg_recv(void *sock, int is_router, const ps_frame_limits_t *limits,
                ps_msg_t *m, char *err, size_t errlen) {
  memset(m, 0, sizeof(*m));
  if (err && errlen) err[0] = '\0';
  if (limits == NULL) limits = &ps_frame_default_limits;

  zmq_msg_t first;
  zmq_msg_init(&first);
  if (zmq_msg_recv(&first, sock, ZMQ_DONTWAIT) < 0) {
    int e = zmq_errno();
    zmq_msg_close(&first);
    if (e == EAGAIN) return PS_ERR_TIMEOUT;
    return fail(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
                zmq_strerror(e));
  }

  zmq_msg_t header;
  if (is_router) {
    /* ROUTER prepends the peer identity as its own frame. */
    m->route = first;
    m->has_route = 1;
    if (!has_more(&m->route))
      return fail(err, errlen, PS_ERR_PROTO, "message has no header frame");
    zmq_msg_init(&header);
    if (zmq_msg_recv(&header, sock, 0) < 0) {
      zmq_msg_close(&header);
      return fail(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
                  zmq_strerror(zmq_errno()));
    }
  } else {
    header = first;
  }

  int more = has_more(&header);
  size_t hsize = zmq_msg_size(&header);
  int rc = PS_OK;
  if (hsize > limits->max_header_bytes) {
    rc = fail(err, errlen, PS_ERR_TOO_BIG,
              "header of %zu bytes exceeds the limit of %zu", hsize,
              limits->max_header_bytes);
  } else {
    m->env = ps__envelope__unpack(NULL, hsize, zmq_msg_data(&header));
    if (m->env == NULL)
      rc = fail(err, errlen, PS_ERR_PROTO,
                "header of %zu bytes is not a ps.Envelope", hsize);
    else
      m->request_id = m->env->request_id;
  }
  zmq_msg_close(&header);

  while (more) {
    if (m->npayload == PS_MAX_PAYLOAD_FRAMES) {
      drain_rest(sock);
      return fail(err, errlen, PS_ERR_PROTO,
                  "more than %d payload frames", PS_MAX_PAYLOAD_FRAMES);
    }
    zmq_msg_t *p = &m->payload[m->npayload];
    zmq_msg_init(p);
    if (zmq_msg_recv(p, sock, 0) < 0) {
      zmq_msg_close(p);
      return fail(err, errlen, PS_ERR_ZMQ, "receive failed: %s",
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
  if (m->env) ps__envelope__free_unpacked(m->env, NULL);
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
    if (zmq_msg_send(&r, sock, ZMQ_SNDMORE) < 0) {
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
  if (zmq_msg_send(&header, sock, npayload > 0 ? ZMQ_SNDMORE : 0) < 0) {
    zmq_msg_close(&header);
    rc = PS_ERR_ZMQ;
    goto out;
  }
  for (int i = 0; i < npayload; i++) {
    if (zmq_msg_send(&payload[i], sock, i + 1 < npayload ? ZMQ_SNDMORE : 0) <
        0) {
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

int ps_msg_reply_error(void *sock, ps_msg_t *m, uint64_t epoch,
                       uint32_t sender, int code, const char *fmt, ...) {
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
