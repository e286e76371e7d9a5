/* Framing: one message on the wire is
 *   [routing frame, ROUTER side only] [Envelope header] [payload frame]*
 * The header is a packed ps.Envelope (proto/ps.proto); payload frames are raw
 * little-endian arrays that never pass through protobuf.
 *
 * ps_msg_recv checks everything before the caller touches anything: the
 * protocol version, that a body is set, the number of payload frames the body
 * calls for, every count in the body against the real size of its frame, and
 * every size against the limits. A message that fails is reported with a
 * status and a one-line reason, and whatever could be recovered (the routing
 * frame, the request id) stays in the ps_msg_t so the caller can send an
 * Error reply.
 *
 * Sending hands payload frames to ZeroMQ without a copy: build them with
 * zmq_msg_init_data and a free callback (ps_payload_wrap) or pass received
 * frames on. Functions here are called by the thread that owns the socket.
 *
 * Receiving allocates nothing for data-plane headers: the Envelope is
 * unpacked into a slot of a small process-wide slab (taken and given back
 * with atomics, so any thread may receive and close), and only headers too
 * big for a slot (views, status) or a full slab fall back to malloc.
 */
#ifndef PS_FRAME_H
#define PS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "proto/ps.pb-c.h"

#define PS_PROTOCOL_VERSION 1
/* A PullReply may come in several frames (a server serves each block of its
 * weights as its own zero-copy frame); every other body has at most one. */
#define PS_MAX_PAYLOAD_FRAMES 32

typedef struct {
  size_t max_header_bytes;  /* default 1 MiB: a View of a big cluster fits */
  size_t max_payload_bytes; /* per frame; default 1 GiB */
} ps_frame_limits_t;

extern const ps_frame_limits_t ps_frame_default_limits;

typedef struct {
  int has_route;       /* the routing frame below is valid */
  zmq_msg_t route;     /* ROUTER side: the peer's identity */
  /* ROUTER side: the connection's ZAP User-Id (CURVE: "ROLE KEY", see
   * common/keys.h), "" for none. Copied from the header frame: libzmq 4.3
   * leaves the routing frame without metadata when ZMQ_EVENTS was read
   * first, as every drain does. */
  char user_id[64];
  Ps__Envelope *env;   /* NULL if the header could not be decoded */
  uint64_t request_id; /* from env when decoded, else 0 */
  int npayload;
  zmq_msg_t payload[PS_MAX_PAYLOAD_FRAMES];
} ps_msg_t;

/* The bytes a message's payload frames hold together. */
size_t ps_msg_payload_bytes(const ps_msg_t *m);

/* Copies the payload frames, in order, to dst (ps_msg_payload_bytes(m)
 * bytes): a PullReply's values land contiguously whatever its framing. */
void ps_msg_payload_gather(const ps_msg_t *m, void *dst);

/* Receives one whole multipart message without blocking. is_router: the
 * socket is a ROUTER and the first frame is the peer's identity.
 * Returns PS_OK; PS_ERR_TIMEOUT if no message was waiting (EAGAIN); or a
 * validation failure (PS_ERR_PROTO, PS_ERR_VERSION, PS_ERR_TOO_BIG) with the
 * reason in err, in which case the message's remaining frames were consumed
 * and m holds what could be recovered. In every case except PS_ERR_TIMEOUT the
 * caller must ps_msg_close(m). */
int ps_msg_recv(void *sock, int is_router, const ps_frame_limits_t *limits,
                ps_msg_t *m, char *err, size_t errlen);

/* Checks an already decoded message (body present, frame counts and sizes);
 * ps_msg_recv calls it. Exposed for tests and for in-process use. A Push
 * carries exactly one frame of count floats; a PullReply 1 to
 * PS_MAX_PAYLOAD_FRAMES non-empty frames, each a whole number of floats,
 * count floats in all. Sparse bodies: see validate_sparse in common/frame.c. */
int ps_msg_validate(const ps_msg_t *m, const ps_frame_limits_t *limits,
                    char *err, size_t errlen);

/* Frees the decoded header and closes every frame. Safe on a zeroed msg. */
void ps_msg_close(ps_msg_t *m);

/* Sends route (if non-NULL, copied by reference: zmq_msg_copy), the packed
 * env, then npayload frames. The payload frames are moved into ZeroMQ: on
 * return they are empty whatever the result. env->version is set here.
 * Blocks only if ZeroMQ's high-water mark is reached. */
int ps_msg_send(void *sock, zmq_msg_t *route, Ps__Envelope *env,
                zmq_msg_t *payload, int npayload);

/* One message to many peers (a view to every node): ps_msg_pack packs env
 * (its version set here) once into header, which the caller closes;
 * ps_msg_send_packed sends route (if non-NULL) and header, sharing the
 * header's bytes (zmq_msg_copy counts references), so N sends cost one
 * packing and no copies. header stays the caller's. Both return PS_OK,
 * PS_ERR_NOMEM or PS_ERR_ZMQ; ps_msg_pack leaves header empty on failure. */
int ps_msg_pack(Ps__Envelope *env, zmq_msg_t *header);
int ps_msg_send_packed(void *sock, zmq_msg_t *route, zmq_msg_t *header);

/* Sends an Error with code and a printf-style message as the reply to m
 * (same route and request id). */
int ps_msg_reply_error(void *sock, ps_msg_t *m, uint64_t epoch,
                       uint32_t sender, int code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Initialises msg to point at data without a copy; free_cb(data, hint) runs
 * on ZeroMQ's I/O thread when it is done with the bytes. free_cb may be NULL
 * when the caller guarantees the bytes outlive the send (a test's fixed
 * buffer); libps-client passes one that counts each frame back into its
 * call (ps__client_op_settle in worker/client/client_data.c). */
int ps_payload_wrap(zmq_msg_t *msg, void *data, size_t size,
                    zmq_free_fn *free_cb, void *hint);

/* The name of a body case ("push", "pull_reply", ...), for logs and errors. */
const char *ps_body_name(Ps__Envelope__BodyCase c);

#endif
