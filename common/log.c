#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int ps__log_level = PS_LOG_INFO;
static const char *log_component = "ps";
/* Set by the membership thread, read by every thread that logs. */
static _Atomic uint32_t log_node;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* "\r" and "erase to the end of the line" (ECMA-48 EL). */
#define LOG_STATUS_ERASE "\r\033[K"
/* Longest status line drawn, whatever the terminal's width. */
#define LOG_STATUS_MAX 512

static ps_log_format_t log_format = PS_LOG_FORMAT_LOGFMT;
/* PRETTY: the status line on screen ("" when none), and the lock that
 * keeps it and the lines written above it in order. */
static pthread_mutex_t log_status_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_status_text[LOG_STATUS_MAX];
static size_t log_status_len;

void ps_log_init(const char *component, ps_log_level_t level) {
  log_component = component;
  ps__log_level = (int)level;
}

void ps_log_set_node(uint32_t node_id) {
  atomic_store_explicit(&log_node, node_id, memory_order_relaxed);
}

ps_log_format_t ps_log_format_auto(void) {
  const char *term = getenv("TERM");
  if (!isatty(STDERR_FILENO) || term == NULL || term[0] == '\0' ||
      strcmp(term, "dumb") == 0)
    return PS_LOG_FORMAT_LOGFMT;
  return PS_LOG_FORMAT_PRETTY;
}

void ps_log_set_format(ps_log_format_t format) {
  log_format = format;
}

ps_log_format_t ps_log_format(void) {
  return log_format;
}

static void write_all(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t w = write(STDERR_FILENO, buf, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* nowhere to report it */
    buf += w;
    len -= (size_t)w;
  }
}

/* The terminal's width, less one column (a line that fills the last
 * column wraps on some terminals); 80 when stderr is no terminal. */
size_t ps_log_status_width(void) {
  struct winsize ws;
  size_t cols = 80;
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1)
    cols = ws.ws_col;
  cols -= 1;
  return cols < LOG_STATUS_MAX - 1 ? cols : LOG_STATUS_MAX - 1;
}

void ps_log_status(const char *text) {
  if (log_format != PS_LOG_FORMAT_PRETTY) return;
  char buf[LOG_STATUS_MAX + sizeof(LOG_STATUS_ERASE)];
  size_t len = text ? strlen(text) : 0, width = ps_log_status_width();
  if (len > width) len = width;
  pthread_mutex_lock(&log_status_mu);
  memcpy(log_status_text, text ? text : "", len);
  log_status_text[len] = '\0';
  log_status_len = len;
  memcpy(buf, LOG_STATUS_ERASE, sizeof(LOG_STATUS_ERASE) - 1);
  memcpy(buf + sizeof(LOG_STATUS_ERASE) - 1, log_status_text, len);
  write_all(buf, sizeof(LOG_STATUS_ERASE) - 1 + len);
  pthread_mutex_unlock(&log_status_mu);
}

void ps_log_status_end(void) {
  if (log_format != PS_LOG_FORMAT_PRETTY) return;
  pthread_mutex_lock(&log_status_mu);
  if (log_status_len > 0) write_all("\n", 1);
  log_status_len = 0;
  log_status_text[0] = '\0';
  pthread_mutex_unlock(&log_status_mu);
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
  if (log_format == PS_LOG_FORMAT_PRETTY) {
    /* Erase the status line, the line in its place, the status below. */
    char out[sizeof(LOG_STATUS_ERASE) + sizeof(line) + LOG_STATUS_MAX];
    pthread_mutex_lock(&log_status_mu);
    size_t len = 0;
    if (log_status_len > 0) {
      memcpy(out, LOG_STATUS_ERASE, sizeof(LOG_STATUS_ERASE) - 1);
      len = sizeof(LOG_STATUS_ERASE) - 1;
    }
    memcpy(out + len, line, (size_t)n);
    len += (size_t)n;
    memcpy(out + len, log_status_text, log_status_len);
    len += log_status_len;
    write_all(out, len);
    pthread_mutex_unlock(&log_status_mu);
    return;
  }
  /* One write per line: lines from different threads never interleave. */
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}
