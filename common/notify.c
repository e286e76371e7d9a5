#include "common/notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/log.h"
#include "common/time.h"

#define STATUS_MAX 256

static struct {
  int ready_sent;
  int stopping_sent;
  char status[STATUS_MAX];
  uint64_t last_watchdog_ns;
  ps_notify_status_cb status_cb;
  void *status_arg;
  int failure_logged;
} notify;

static int enabled(void) {
  const char *s = getenv("NOTIFY_SOCKET");
  return s != NULL && s[0] != '\0';
}

/* sd_notify returns > 0 when sent, 0 without NOTIFY_SOCKET, < 0 on error.
 * A manager that cannot be told is worth one warning, not one per tick. */
static void send_state(const char *state) {
  int rc = sd_notify(0, state);
  if (rc < 0 && !notify.failure_logged) {
    notify.failure_logged = 1;
    PS_WARN("notify_failed", "error=\"%s\" socket=%s", strerror(-rc),
            getenv("NOTIFY_SOCKET"));
  }
}

static void vformat(char *buf, size_t len, const char *fmt, va_list ap) {
  int n = vsnprintf(buf, len, fmt, ap);
  if (n < 0) buf[0] = '\0';
  /* STATUS= is one line: the manager shows it as is. */
  for (char *p = buf; *p; p++)
    if (*p == '\n') *p = ' ';
}

/* Sends prefix + STATUS=text in one datagram; remembers text. */
static void send_with_status(const char *prefix, const char *text) {
  char msg[STATUS_MAX + 64];
  snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix, text);
  snprintf(notify.status, sizeof(notify.status), "%s", text);
  send_state(msg);
}

void ps_notify_ready(const char *fmt, ...) {
  if (!enabled()) return;
  char text[STATUS_MAX];
  va_list ap;
  va_start(ap, fmt);
  vformat(text, sizeof(text), fmt, ap);
  va_end(ap);
  if (notify.ready_sent) {
    if (strcmp(text, notify.status) != 0) send_with_status("", text);
    return;
  }
  notify.ready_sent = 1;
  send_with_status("READY=1\n", text);
}

void ps_notify_status(const char *fmt, ...) {
  if (!enabled()) return;
  char text[STATUS_MAX];
  va_list ap;
  va_start(ap, fmt);
  vformat(text, sizeof(text), fmt, ap);
  va_end(ap);
  if (strcmp(text, notify.status) != 0) send_with_status("", text);
}

void ps_notify_stopping(const char *fmt, ...) {
  if (!enabled() || notify.stopping_sent) return;
  notify.stopping_sent = 1;
  char text[STATUS_MAX];
  va_list ap;
  va_start(ap, fmt);
  vformat(text, sizeof(text), fmt, ap);
  va_end(ap);
  send_with_status("STOPPING=1\n", text);
}

uint64_t ps_notify_watchdog_usec(void) {
  uint64_t usec = 0;
  /* Keeps the variables: the daemons start no children that could take
   * them for their own. */
  if (sd_watchdog_enabled(0, &usec) <= 0) return 0;
  return usec;
}

void ps_notify_watchdog_kick(void) {
  if (!enabled()) return;
  uint64_t usec = ps_notify_watchdog_usec();
  if (usec == 0) return;
  uint64_t now = ps_now_ns();
  if (notify.last_watchdog_ns != 0 &&
      now - notify.last_watchdog_ns < usec * 1000 / 2)
    return;
  notify.last_watchdog_ns = now;
  send_state("WATCHDOG=1");
}

static void notify_timer_cb(uv_timer_t *t) {
  uint64_t usec = ps_notify_watchdog_usec();
  if (usec != 0) {
    /* Ticks come at half the interval or more often: send on the tick that
     * is nearest to due, never more than a half-tick early. */
    uint64_t half_ns = usec * 1000 / 2;
    uint64_t tick_ns = uv_timer_get_repeat(t) * 1000000ull;
    uint64_t now = ps_now_ns();
    if (notify.last_watchdog_ns == 0 ||
        now - notify.last_watchdog_ns + tick_ns / 2 >= half_ns) {
      notify.last_watchdog_ns = now;
      send_state("WATCHDOG=1");
    }
  }
  if (notify.status_cb != NULL) {
    char text[STATUS_MAX];
    text[0] = '\0';
    notify.status_cb(notify.status_arg, text, sizeof(text));
    if (text[0] != '\0' && strcmp(text, notify.status) != 0)
      send_with_status("", text);
  }
}

int ps_notify_timer_start(uv_loop_t *loop, uv_timer_t *timer,
                          ps_notify_status_cb status_cb, void *arg) {
  if (!enabled()) return 0;
  uint64_t usec = ps_notify_watchdog_usec();
  uint64_t tick_ms = 1000;
  if (usec != 0 && usec / 2000 < tick_ms) tick_ms = usec / 2000;
  if (tick_ms == 0) tick_ms = 1;
  notify.status_cb = status_cb;
  notify.status_arg = arg;
  if (uv_timer_init(loop, timer) != 0) return 0;
  uv_timer_start(timer, notify_timer_cb, 0, tick_ms);
  uv_unref((uv_handle_t *)timer);
  if (usec != 0)
    PS_INFO("watchdog", "interval_ms=%llu send_every_ms=%llu",
            (unsigned long long)(usec / 1000), (unsigned long long)tick_ms);
  return 1;
}
