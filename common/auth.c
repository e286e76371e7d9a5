#include "common/auth.h"

#include <string.h>
#include <sys/random.h>

#include "common/err.h"

int ps_auth_token_new(ps_auth_token_t *t) {
  unsigned char raw[PS_AUTH_TOKEN_HEX / 2];
  size_t got = 0;
  while (got < sizeof(raw)) {
    ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
    if (n < 0) return PS_ERR_IO;
    got += (size_t)n;
  }
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof(raw); i++) {
    t->hex[2 * i] = digits[raw[i] >> 4];
    t->hex[2 * i + 1] = digits[raw[i] & 15];
  }
  t->hex[PS_AUTH_TOKEN_HEX] = '\0';
  return PS_OK;
}

int ps_auth_set_routing_id(void *sock, const ps_auth_token_t *t, char use,
                           char *err, size_t errlen) {
  char id[PS_AUTH_ROUTING_ID_LEN];
  id[0] = 'T';
  memcpy(id + 1, t->hex, PS_AUTH_TOKEN_HEX);
  id[PS_AUTH_ROUTING_ID_LEN - 1] = use;
  if (zmq_setsockopt(sock, ZMQ_ROUTING_ID, id, sizeof(id)) == 0) return PS_OK;
  return ps_errf(err, errlen, PS_ERR_ZMQ, "zmq_setsockopt(ZMQ_ROUTING_ID): %s",
                 zmq_strerror(zmq_errno()));
}

static int is_hex(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
      return 0;
  return 1;
}

int ps_auth_route_token(const zmq_msg_t *route, ps_auth_token_t *t) {
  zmq_msg_t *r = (zmq_msg_t *)route; /* zmq's accessors are not const */
  if (zmq_msg_size(r) != PS_AUTH_ROUTING_ID_LEN) return 0;
  const char *d = zmq_msg_data(r);
  if (d[0] != 'T' || !is_hex(d + 1, PS_AUTH_TOKEN_HEX)) return 0;
  memcpy(t->hex, d + 1, PS_AUTH_TOKEN_HEX);
  t->hex[PS_AUTH_TOKEN_HEX] = '\0';
  return 1;
}

int ps_auth_route_is(const zmq_msg_t *route, const char *hex) {
  zmq_msg_t *r = (zmq_msg_t *)route;
  if (hex == NULL || hex[0] == '\0') return 0;
  if (zmq_msg_size(r) != PS_AUTH_ROUTING_ID_LEN) return 0;
  const char *d = zmq_msg_data(r);
  return d[0] == 'T' && memcmp(d + 1, hex, PS_AUTH_TOKEN_HEX) == 0;
}
