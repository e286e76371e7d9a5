/* Status codes shared by every part of the system.
 *
 * One list (PS_ERRNO_MAP) generates the enum, ps_strerror() and ps_err_name(),
 * in the manner of libuv's UV_ERRNO_MAP. PS_OK is 0, failures are negative.
 * The values travel on the wire in Error.code, so they never change meaning:
 * add new codes at the end. Any thread may call these functions.
 *
 * Public: installed with libps-client, whose calls return these codes.
 * Internal code includes it through common/err.h.
 */
#ifndef PS_ERR_H
#define PS_ERR_H

#include "ps/export.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PS_ERRNO_MAP(X)                                                    \
  X(OK, 0, "success")                                                      \
  X(ERR_NOMEM, -1, "out of memory")                                        \
  X(ERR_INVAL, -2, "invalid argument")                                     \
  X(ERR_IO, -3, "input/output error")                                      \
  X(ERR_TIMEOUT, -4, "deadline exceeded")                                  \
  X(ERR_PROTO, -5, "malformed message")                                    \
  X(ERR_VERSION, -6, "unsupported protocol version")                       \
  X(ERR_TOO_BIG, -7, "message exceeds a configured limit")                 \
  X(ERR_UNKNOWN_KEY, -8, "key range not held by this server")              \
  X(ERR_STALE_EPOCH, -9, "cluster view epoch does not match")              \
  X(ERR_NOT_READY, -10, "cluster view not published yet")                  \
  X(ERR_SHUTDOWN, -11, "cluster is shutting down")                         \
  X(ERR_CONFIG, -12, "bad configuration")                                  \
  X(ERR_FORMAT, -13, "bad file format")                                    \
  X(ERR_UNSUPPORTED, -14, "operation not supported")                       \
  X(ERR_REFUSED, -15, "request refused")                                   \
  X(ERR_PEER, -16, "peer failed")                                          \
  X(ERR_ZMQ, -17, "zeromq error")                                          \
  X(ERR_FENCED, -18, "node was declared dead and is fenced off")           \
  X(ERR_UNAVAILABLE, -19, "no live server holds the keys")                \
  X(ERR_PERMISSION_DENIED, -20, "sender may not send this")                \
  X(ERR_NONFINITE, -21, "values hold NaN or Inf")

typedef enum {
#define PS__ERR_ENUM(name, val, msg) PS_##name = (val),
  PS_ERRNO_MAP(PS__ERR_ENUM)
#undef PS__ERR_ENUM
} ps_err_t;

/* A static string that describes the code; never NULL. */
PS_EXTERN const char *ps_strerror(int err);
/* The code's name without the PS_ prefix ("ERR_TIMEOUT"); never NULL. */
PS_EXTERN const char *ps_err_name(int err);

#ifdef __cplusplus
}
#endif

#endif
