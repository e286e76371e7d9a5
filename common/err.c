#include "err.h"

#include <stdio.h>

const char *ps_strerror(int err) {
  switch (err) {
#define PS__ERR_STR(name, val, msg) \
  case (val):                       \
    return msg;
    PS_ERRNO_MAP(PS__ERR_STR)
#undef PS__ERR_STR
  }
  return "unknown error";
}

const char *ps_err_name(int err) {
  switch (err) {
#define PS__ERR_NAME(name, val, msg) \
  case (val):                        \
    return #name;
    PS_ERRNO_MAP(PS__ERR_NAME)
#undef PS__ERR_NAME
  }
  return "ERR_UNKNOWN";
}

int ps_verrf(char *err, size_t errlen, int code, const char *fmt, va_list ap) {
  if (err != NULL && errlen > 0) vsnprintf(err, errlen, fmt, ap);
  return code;
}

int ps_errf(char *err, size_t errlen, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(err, errlen, code, fmt, ap);
  va_end(ap);
  return code;
}
