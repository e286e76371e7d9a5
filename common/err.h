/* Status codes shared by every part of the system.
 *
 * One list (PS_ERRNO_MAP) generates the enum, ps_strerror() and ps_err_name(),
 * in the manner of libuv's UV_ERRNO_MAP. PS_OK is 0, failures are negative.
 * The values travel on the wire in Error.code, so they never change meaning:
 * add new codes at the end. Any thread may call these functions.
 */
#ifndef PS_ERR_H
#define PS_ERR_H

#include <stdarg.h>
#include <stddef.h>

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
  X(ERR_UNAVAILABLE, -19, "no live server holds the keys")

typedef enum {
#define PS__ERR_ENUM(name, val, msg) PS_##name = (val),
  PS_ERRNO_MAP(PS__ERR_ENUM)
#undef PS__ERR_ENUM
} ps_err_t;

/* A static string that describes the code; never NULL. */
const char *ps_strerror(int err);
/* The code's name without the PS_ prefix ("ERR_TIMEOUT"); never NULL. */
const char *ps_err_name(int err);

/* Writes a printf-style message into err (errlen bytes, cut short and always
 * terminated; nothing when err is NULL or errlen is 0) and returns code, so
 * that a failing function says why and fails in one statement:
 *   return ps_errf(err, errlen, PS_ERR_INVAL, "tensor \"%s\" is empty", n);
 * The one helper for "an error code and a message in the caller's buffer". */
int ps_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* ps_errf with a va_list, for functions that take a format of their own. */
int ps_verrf(char *err, size_t errlen, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

#endif
