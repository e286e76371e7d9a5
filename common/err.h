/* Status codes: the list is public (ps/err.h, installed with libps-client);
 * the daemons and the library include it from here. */
#ifndef PS_COMMON_ERR_H
#define PS_COMMON_ERR_H

#include <stdarg.h>
#include <stddef.h>

#include "ps/err.h"

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
