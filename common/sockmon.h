/* Watches a bound ZeroMQ socket for connections it fails to accept, and
 * counts the ones it holds (for the ZAP handler's cap, common/zap.h); or a
 * connecting one for handshakes its peer refused.
 *
 * ZeroMQ accepts TCP connections on its I/O thread and says nothing when an
 * accept fails (out of file descriptors: EMFILE/ENFILE): the new peer just
 * gets no answer. A socket monitor (zmq_socket_monitor) reports those as
 * ZMQ_EVENT_ACCEPT_FAILED; the sockmon reads them on the owner's uv loop,
 * counts them, and logs accept_failed at most once per 5 s with how many
 * failed since the last line and in all.
 *
 * Also here: raising the open-file limit at start, so that a daemon that
 * serves many connections reaches the hard limit before it fails at all.
 *
 * Loop thread only (ps_sockmon_*); ps_raise_nofile_limit anywhere, once at
 * start.
 */
#ifndef PS_SOCKMON_H
#define PS_SOCKMON_H

#include <stdint.h>
#include <uv.h>

typedef struct ps_sockmon_s ps_sockmon_t;

/* Starts monitoring sock (bound, on ctx) for failed accepts; name goes in
 * the log lines ("scheduler", "data"). Returns NULL with *err set (and a
 * warning logged) if ZeroMQ refuses the monitor; the daemon runs without
 * it. Caller owns the result. */
ps_sockmon_t *ps_sockmon_new(uv_loop_t *loop, void *ctx, void *sock,
                             const char *name, int *err);

/* A connecting socket's failed handshakes: event is
 * ZMQ_EVENT_HANDSHAKE_FAILED_AUTH (value: the status the peer's ZAP handler
 * gave, 400 when it refused our key) or ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
 * (value: ZMQ_PROTOCOL_ERROR_*, such as a security mechanism the peer does
 * not speak). Called on the loop; it must not destroy the sockmon. */
typedef void (*ps_sockmon_handshake_cb)(void *arg, int event, uint32_t value);

/* Watches sock (one that connects) for failed handshakes, calling cb with
 * arg for each. NULL with *err set (and a warning logged) if ZeroMQ refuses
 * the monitor. */
ps_sockmon_t *ps_sockmon_new_handshakes(uv_loop_t *loop, void *ctx, void *sock,
                                        const char *name,
                                        ps_sockmon_handshake_cb cb, void *arg,
                                        int *err);

/* Accepts that failed so far. */
uint64_t ps_sockmon_accept_failures(const ps_sockmon_t *m);

/* Connections the socket accepted and still holds, counting every event
 * ZeroMQ has queued by now (read first). 0 for NULL. Loop thread. */
uint64_t ps_sockmon_connections(ps_sockmon_t *m);

/* Stops the monitor and closes its socket (before the monitored socket is
 * closed); memory is freed once the loop has run the close callbacks. Sets
 * *m_p to NULL. */
void ps_sockmon_destroy(ps_sockmon_t **m_p);

/* Raises the soft RLIMIT_NOFILE to the hard limit and logs both
 * (event=nofile_limit). Returns PS_OK, or PS_ERR_IO if setrlimit failed
 * (logged; the daemon goes on with the soft limit). */
int ps_raise_nofile_limit(void);

#endif
