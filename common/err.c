#include "err.h"

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
