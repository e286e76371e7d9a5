/* Tells a service manager (systemd, Type=notify) how a daemon is doing,
 * through libsystemd's sd_notify: READY=1 once the daemon serves, STATUS=
 * lines, WATCHDOG=1 from the daemon's own event loop, STOPPING=1 when it
 * begins to stop. Every call does nothing when NOTIFY_SOCKET is unset.
 *
 * One per process: the state (ready sent, last status, last watchdog) is
 * process-wide. Call from the daemon's loop thread only (ps-worker: its
 * training thread). Linked into the daemons, never into libps-client.
 */
#ifndef PS_NOTIFY_H
#define PS_NOTIFY_H

#include <uv.h>

/* Sends READY=1 (once; later calls send nothing) with a STATUS= line. */
void ps_notify_ready(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* Sends STATUS=<text>, only when it differs from the last one sent. */
void ps_notify_status(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* Sends STOPPING=1 (once) with a STATUS= line. */
void ps_notify_stopping(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* The watchdog interval the service manager asked for (WATCHDOG_USEC, for
 * this pid if WATCHDOG_PID is set) in microseconds; 0: no watchdog. */
uint64_t ps_notify_watchdog_usec(void);

/* Sends WATCHDOG=1 if half the watchdog interval has passed since the last
 * one (so it may be called as often as convenient); nothing without a
 * watchdog. For a loop that is not a libuv loop (ps-worker's steps). */
void ps_notify_watchdog_kick(void);

/* Called on every tick of the loop's notify timer; writes the daemon's
 * status line into buf (NUL-terminated) or leaves buf empty for none. */
typedef void (*ps_notify_status_cb)(void *arg, char *buf, size_t len);

/* Starts timer (the caller's memory, on loop) when NOTIFY_SOCKET is set:
 * every tick (half the watchdog interval, at most 1 s) sends WATCHDOG=1
 * when a watchdog is asked for, and the status from status_cb (may be
 * NULL) when it changed. Because the timer runs on the loop, a loop that is
 * stuck stops the WATCHDOG=1 messages, which is what the watchdog is for.
 * The timer is unreferenced: it never keeps the loop alive. Returns 1 if it
 * started (the caller then closes it with uv_close before freeing it), 0
 * if there is nothing to notify. */
int ps_notify_timer_start(uv_loop_t *loop, uv_timer_t *timer,
                          ps_notify_status_cb status_cb, void *arg);

#endif
