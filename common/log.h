/* One line per event, key=value, on stderr:
 *   ts=2026-11-25T20:45:01.123Z lvl=info comp=server node=3 event=view epoch=2
 *
 * PS_LOG costs one comparison below the configured level: its arguments are
 * not evaluated. Every thread may log; each line is written with a single
 * write so lines from different threads never interleave.
 */
#ifndef PS_LOG_H
#define PS_LOG_H

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
