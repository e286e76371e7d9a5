#include "invariant.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

void ps_invariant_broken(const char *file, int line, const char *func,
                         const char *fmt, ...) {
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  /* Whatever the configured level: this is the last line the process
   * writes, and the one that says why it stopped. */
  ps_log_write(PS_LOG_ERROR, "invariant_broken",
               "check=\"%s\" at=%s:%d func=%s", what, file, line, func);
  abort();
}
