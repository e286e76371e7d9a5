/* The ZAP handler of a daemon that serves CURVE (issue #13).
 *
 * libzmq asks the ZAP handler of a socket's context (a REP socket bound to
 * inproc://zeromq.zap.01) about every CURVE handshake on a socket that
 * binds with ZMQ_CURVE_SERVER. This one admits only the public keys of
 * the daemon's table (common/keys.h) and answers with the User-Id
 * "ROLE PUBLIC", which every message of the connection then carries, so
 * handlers check roles with ps_keys_peer. A refused key is counted and
 * logged once (its fingerprint and the peer's address); a client retrying
 * with it is refused again, silently.
 *
 * It runs on the daemon's libuv loop like any socket (common/transport.h):
 * no thread of its own. Create it before the CURVE socket binds, on the
 * same ZeroMQ context; one per context. Loop thread only.
 */
#ifndef PS_COMMON_ZAP_H
#define PS_COMMON_ZAP_H

#include <stdint.h>
#include <uv.h>

#include "keys.h"
#include "sockmon.h"

typedef struct ps_zap_s ps_zap_t;

/* Binds the handler on zmq_ctx and serves it on loop; keys must outlive
 * it. Returns NULL with *err and errbuf filled on failure (another handler
 * on the context). The caller owns the result. */
ps_zap_t *ps_zap_new(uv_loop_t *loop, void *zmq_ctx, const ps_keys_t *keys,
                     int *err, char *errbuf, size_t errlen);

/* Handshakes refused since the start (unknown keys, other mechanisms). */
uint64_t ps_zap_refused(const ps_zap_t *zap);
/* Handshakes admitted since the start. */
uint64_t ps_zap_admitted(const ps_zap_t *zap);

/* Caps the connections of the socket mon watches (the one the handler
 * serves): a handshake that would make more than max_connections is
 * refused like an unknown key ("too many connections"), counted, and
 * logged at most every 5 s (event=connections_refused). A refused
 * connection is closed by ZeroMQ and stops counting; its peer retries and
 * is admitted once another has gone. mon NULL or max 0: no cap. mon must
 * outlive zap's use of it. */
void ps_zap_set_cap(ps_zap_t *zap, ps_sockmon_t *mon,
                    uint64_t max_connections);
/* Handshakes refused by the cap since the start. */
uint64_t ps_zap_over_cap(const ps_zap_t *zap);

/* Closes the socket and frees zap once the loop ran the close callbacks;
 * sets *zap_p to NULL. NULL: nothing. */
void ps_zap_destroy(ps_zap_t **zap_p);

#endif
