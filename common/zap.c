#include "common/zap.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sockmon.h"
#include "common/time.h"
#include "common/transport.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* Refused keys remembered so each is logged once; past this many every
 * refusal is counted but no longer logged (a flood of fresh keys must not
 * grow memory nor the log). */
#define ZAP_REMEMBER_MAX 1024
/* request frames: version, request id, domain, address, routing id,
 * mechanism, credentials (CURVE: the client's public key). */
#define ZAP_FRAMES_MAX 8
/* connections_refused is logged at most this often. */
#define ZAP_CAP_LOG_EVERY_MS 5000

struct ps_zap_s {
  uv_poll_t poll;
  uv_prepare_t prepare;
  int open_handles;
  void *sock;
  const ps_keys_t *keys;
  uint64_t refused, admitted;
  uint8_t (*seen)[32]; /* refused keys already logged */
  size_t nseen;
  ps_sockmon_t *mon;        /* counts the bound socket's connections */
  uint64_t max_connections; /* 0: no cap */
  uint64_t over_cap, over_cap_logged;
  uint64_t last_cap_log_ms;
};

void ps_zap_set_cap(ps_zap_t *zap, ps_sockmon_t *mon,
                    uint64_t max_connections) {
  zap->mon = mon;
  zap->max_connections = mon ? max_connections : 0;
}

uint64_t ps_zap_over_cap(const ps_zap_t *zap) {
  return zap->over_cap;
}

/* An admitted key whose connection would pass the cap: refused, counted,
 * logged at most every ZAP_CAP_LOG_EVERY_MS with the count since. 1 when
 * refused. */
static int over_cap(ps_zap_t *zap, const char *address, const char *fp) {
  if (zap->max_connections == 0) return 0;
  uint64_t held = ps_sockmon_connections(zap->mon);
  if (held <= zap->max_connections) return 0;
  zap->over_cap++;
  uint64_t now = ps_now_ms();
  if (zap->last_cap_log_ms == 0 ||
      now - zap->last_cap_log_ms >= ZAP_CAP_LOG_EVERY_MS) {
    PS_WARN("connections_refused",
            "address=%s fingerprint=%s connections=%" PRIu64
            " max_connections=%" PRIu64 " count=%" PRIu64 " total=%" PRIu64,
            address, fp, held, zap->max_connections,
            zap->over_cap - zap->over_cap_logged, zap->over_cap);
    zap->over_cap_logged = zap->over_cap;
    zap->last_cap_log_ms = now;
  }
  return 1;
}

uint64_t ps_zap_refused(const ps_zap_t *zap) {
  return zap->refused;
}

uint64_t ps_zap_admitted(const ps_zap_t *zap) {
  return zap->admitted;
}

static int send_frame(void *sock, const void *data, size_t len, int more) {
  return zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) < 0 ? -1 : 0;
}

/* Logs a refused key the first time it is seen. */
static void note_refused(ps_zap_t *zap, const uint8_t *key, const char *address,
                         const char *why) {
  zap->refused++;
  if (key) {
    for (size_t i = 0; i < zap->nseen; i++)
      if (memcmp(zap->seen[i], key, 32) == 0) return;
    if (zap->nseen == ZAP_REMEMBER_MAX) return;
    if (zap->seen == NULL &&
        (zap->seen = malloc(ZAP_REMEMBER_MAX * sizeof(*zap->seen))) == NULL)
      return;
    memcpy(zap->seen[zap->nseen++], key, 32);
  }
  char fp[PS_KEY_FINGERPRINT_LEN + 1] = "-";
  if (key) ps_keys_fingerprint(NULL, key, fp);
  PS_WARN("curve_refused",
          "fingerprint=%s address=%s reason=\"%s\" refused=%" PRIu64, fp,
          address, why, zap->refused);
}

/* Answers one request, whose frames are f[0..n). */
static void handle(ps_zap_t *zap, zmq_msg_t *f, int n, int whole) {
  char address[64] = "?";
  if (n >= 4) {
    size_t len = zmq_msg_size(&f[3]);
    if (len >= sizeof(address)) len = sizeof(address) - 1;
    memcpy(address, zmq_msg_data(&f[3]), len);
    address[len] = '\0';
  }
  const char *code = "400", *text = "unknown key";
  char user_id[PS_KEY_Z85_LEN + 32] = "";
  if (!whole || n < 6 || zmq_msg_size(&f[0]) != 3 ||
      memcmp(zmq_msg_data(&f[0]), "1.0", 3) != 0) {
    text = "malformed ZAP request";
    note_refused(zap, NULL, address, text);
  } else if (zmq_msg_size(&f[5]) != 5 ||
             memcmp(zmq_msg_data(&f[5]), "CURVE", 5) != 0 || n != 7 ||
             zmq_msg_size(&f[6]) != 32) {
    text = "not CURVE";
    note_refused(zap, NULL, address, text);
  } else {
    const uint8_t *key = zmq_msg_data(&f[6]);
    const char *name = NULL;
    ps_key_role_t role = ps_keys_lookup(zap->keys, key, &name);
    char fp[PS_KEY_FINGERPRINT_LEN + 1];
    ps_keys_fingerprint(NULL, key, fp);
    if (role == PS_KEY_ROLE_NONE) {
      note_refused(zap, key, address, "public key not in the keys directory");
    } else if (over_cap(zap, address, fp)) {
      text = "too many connections";
    } else {
      char z85[PS_KEY_Z85_LEN + 1];
      zmq_z85_encode(z85, key, 32);
      snprintf(user_id, sizeof(user_id), "%s %s", ps_key_role_name(role), z85);
      code = "200";
      text = "OK";
      zap->admitted++;
      PS_DEBUG("curve_admitted", "fingerprint=%s name=%s role=%s address=%s",
               fp, name, ps_key_role_name(role), address);
    }
  }
  /* Reply: version, request id, status code and text, user id,
   * metadata. A REP socket must answer every request, even a bad one. */
  const void *rid = n >= 2 ? zmq_msg_data(&f[1]) : "";
  size_t rid_len = n >= 2 ? zmq_msg_size(&f[1]) : 0;
  if (send_frame(zap->sock, "1.0", 3, 1) != 0 ||
      send_frame(zap->sock, rid, rid_len, 1) != 0 ||
      send_frame(zap->sock, code, 3, 1) != 0 ||
      send_frame(zap->sock, text, strlen(text), 1) != 0 ||
      send_frame(zap->sock, user_id, strlen(user_id), 1) != 0 ||
      send_frame(zap->sock, "", 0, 0) != 0)
    PS_ERROR("zap_reply_failed", "err=\"%s\"", zmq_strerror(zmq_errno()));
}

static void drain(ps_zap_t *zap) {
  for (;;) {
    int events = 0;
    size_t sz = sizeof(events);
    if (zap->sock == NULL ||
        zmq_getsockopt(zap->sock, ZMQ_EVENTS, &events, &sz) != 0 ||
        !(events & ZMQ_POLLIN))
      return;
    zmq_msg_t f[ZAP_FRAMES_MAX];
    int n = 0, more = 1, ok = 1;
    while (more) {
      zmq_msg_t part;
      zmq_msg_init(&part);
      if (zmq_msg_recv(&part, zap->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&part);
        ok = 0;
        break;
      }
      more = zmq_msg_more(&part);
      if (n < ZAP_FRAMES_MAX)
        f[n++] = part; /* moves the frame */
      else
        zmq_msg_close(&part), ok = 0; /* too many: refused below */
    }
    if (n > 0) handle(zap, f, n, ok);
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
    if (n == 0) return;
  }
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  if (status < 0) {
    PS_ERROR("zap_poll_failed", "err=%s", uv_strerror(status));
    return;
  }
  drain(h->data);
}

/* A send takes the fd's edge for a request that came meanwhile. */
static void prepare_cb(uv_prepare_t *h) {
  drain(h->data);
}

static void close_cb(uv_handle_t *h) {
  ps_zap_t *zap = h->data;
  if (--zap->open_handles == 0) {
    free(zap->seen);
    free(zap);
  }
}

ps_zap_t *ps_zap_new(uv_loop_t *loop, void *zmq_ctx, const ps_keys_t *keys,
                     int *err, char *errbuf, size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  ps_zap_t *zap = calloc(1, sizeof(*zap));
  if (zap == NULL) {
    *err = ps_errf(errbuf, errlen, PS_ERR_NOMEM, "out of memory");
    return NULL;
  }
  zap->keys = keys;
  int zero = 0, fd = -1;
  size_t fdlen = sizeof(fd);
  if ((zap->sock = zmq_socket(zmq_ctx, ZMQ_REP)) == NULL ||
      zmq_setsockopt(zap->sock, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
      ps_zmq_bind(zap->sock, ZAP_ENDPOINT) != 0 ||
      zmq_getsockopt(zap->sock, ZMQ_FD, &fd, &fdlen) != 0) {
    *err = ps_errf(errbuf, errlen, PS_ERR_ZMQ, "ZAP handler on %s: %s",
                   ZAP_ENDPOINT, zmq_strerror(zmq_errno()));
    if (zap->sock) zmq_close(zap->sock);
    free(zap);
    return NULL;
  }
  int uerr = uv_poll_init(loop, &zap->poll, fd);
  if (uerr != 0) {
    *err = ps_errf(errbuf, errlen, PS_ERR_IO, "ZAP handler: uv_poll_init: %s",
                   uv_strerror(uerr));
    zmq_close(zap->sock);
    free(zap);
    return NULL;
  }
  zap->poll.data = zap;
  zap->prepare.data = zap;
  zap->open_handles = 2;
  uv_prepare_init(loop, &zap->prepare);
  if ((uerr = uv_poll_start(&zap->poll, UV_READABLE, poll_cb)) != 0 ||
      (uerr = uv_prepare_start(&zap->prepare, prepare_cb)) != 0) {
    *err = ps_errf(errbuf, errlen, PS_ERR_IO, "ZAP handler: %s",
                   uv_strerror(uerr));
    ps_zap_destroy(&zap);
    return NULL;
  }
  *err = PS_OK;
  return zap;
}

void ps_zap_destroy(ps_zap_t **zap_p) {
  ps_zap_t *zap = *zap_p;
  if (zap == NULL) return;
  *zap_p = NULL;
  if (zap->sock) zmq_close(zap->sock);
  zap->sock = NULL;
  uv_poll_stop(&zap->poll);
  uv_prepare_stop(&zap->prepare);
  uv_close((uv_handle_t *)&zap->poll, close_cb);
  uv_close((uv_handle_t *)&zap->prepare, close_cb);
}
