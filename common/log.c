#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int ps__log_level = PS_LOG_INFO;
static const char *log_component = "ps";
/* Set by the membership thread, read by every thread that logs. */
static _Atomic uint32_t log_node;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ps_log_init(const char *component, ps_log_level_t level) {
  log_component = component;
  ps__log_level = (int)level;
}

void ps_log_set_node(uint32_t node_id) {
  atomic_store_explicit(&log_node, node_id, memory_order_relaxed);
}

int ps_log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_names[i]) == 0) return i;
  return -1;
}

void ps_log_write(ps_log_level_t level, const char *event, const char *fmt,
                  ...) {
  char line[2048];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof(line),
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ lvl=%s comp=%s "
                   "node=%u event=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                   level_names[level], log_component,
                   atomic_load_explicit(&log_node, memory_order_relaxed), event);
  if (n < 0) return;
  if ((size_t)n < sizeof(line) - 2 && fmt[0] != '\0') {
    line[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof(line) - 2) n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  /* One write per line: lines from different threads never interleave. */
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}
