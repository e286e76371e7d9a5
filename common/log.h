/* One line per event, key=value, on stderr:
 *   ts=2026-11-25T20:45:01.123Z lvl=info comp=server node=3 event=view epoch=2
 *
 * PS_LOG costs one comparison below the configured level: its arguments are
 * not evaluated. Every thread may log; each line is written with a single
 * write so lines from different threads never interleave.
 *
 * For a person at a terminal (PS_LOG_FORMAT_PRETTY) the lines are the same,
 * and below them stays one status line that the program rewrites in place
 * (ps-worker's progress: "\r", the text, erase to the end of the line);
 * every log line is written above it, and it is drawn again below. Only
 * then do the writes take a lock, since the status line is shared.
 */
#ifndef PS_LOG_H
#define PS_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  PS_LOG_DEBUG = 0,
  PS_LOG_INFO = 1,
  PS_LOG_WARN = 2,
  PS_LOG_ERROR = 3,
} ps_log_level_t;

extern int ps__log_level;

/* Sets the process-wide component name ("server") and the minimum level.
 * Call once at start, before other threads exist. */
void ps_log_init(const char *component, ps_log_level_t level);
/* The node id printed on every line; 0 until the scheduler assigns one. */
void ps_log_set_node(uint32_t node_id);
/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int ps_log_level_parse(const char *s);

typedef enum {
  PS_LOG_FORMAT_LOGFMT = 0, /* lines only (the default) */
  PS_LOG_FORMAT_PRETTY = 1, /* lines, and a status line below them */
} ps_log_format_t;

/* PS_LOG_FORMAT_PRETTY when stderr is a terminal that understands
 * "erase to the end of the line" (TERM is set and not "dumb"), else
 * PS_LOG_FORMAT_LOGFMT: what --log-format auto means. */
ps_log_format_t ps_log_format_auto(void);
/* Call once at start, before other threads exist. */
void ps_log_set_format(ps_log_format_t format);
ps_log_format_t ps_log_format(void);

/* PRETTY only (a no-op otherwise): shows text, one line without a newline,
 * as the status line, cut to the terminal's width so it never wraps. NULL
 * or "" erases it. Any thread. */
void ps_log_status(const char *text);
/* The columns a status line may take: the terminal's width less one (80
 * less one when stderr is no terminal). */
size_t ps_log_status_width(void);
/* Ends the status line with a newline, leaving it on the screen, so what
 * is printed next starts below it. No-op without one. Any thread. */
void ps_log_status_end(void);

/* event is a bare word; fmt continues the line with " key=value" pairs and
 * may be "" for none. */
void ps_log_write(ps_log_level_t level, const char *event, const char *fmt,
                  ...) __attribute__((format(printf, 3, 4)));

#define PS_LOG(level, event, ...)                    \
  do {                                               \
    if ((int)(level) >= ps__log_level)               \
      ps_log_write((level), (event), __VA_ARGS__);   \
  } while (0)

#define PS_DEBUG(event, ...) PS_LOG(PS_LOG_DEBUG, event, __VA_ARGS__)
#define PS_INFO(event, ...) PS_LOG(PS_LOG_INFO, event, __VA_ARGS__)
#define PS_WARN(event, ...) PS_LOG(PS_LOG_WARN, event, __VA_ARGS__)
#define PS_ERROR(event, ...) PS_LOG(PS_LOG_ERROR, event, __VA_ARGS__)

#endif
