/* A small HTTP/1.1 server on a libuv loop, for /metrics and /healthz.
 *
 * Why on the daemon's own loop, with http-parser (Debian's
 * libhttp-parser-dev), rather than a library with threads of its own
 * (libmicrohttpd): a daemon's state (its node table, ranges, stats) is
 * owned by its loop thread and read without locks. Serving the scrape on
 * that thread reads it the same way, at a consistent instant, with no lock
 * added to the data plane and no thread to start, stop and account for.
 * A scrape renders a few KiB of text and hands it to an asynchronous
 * uv_write; the loop never waits on a slow or stuck scraper. http-parser
 * only parses bytes we give it (no sockets, no threads, no allocation), so
 * it fits a loop that libuv already drives.
 *
 * Bounded: at most max_connections at once (more are accepted and closed
 * at once, counted); a request's head and body together at most about
 * max_request_bytes (431 or 413, then closed); a connection that has not
 * completed a request within idle_timeout_ms of its accept or its last
 * response is closed; a peer that does not read its responses is closed
 * once max_queued_bytes wait to be written. GET and HEAD only (405).
 *
 * Every handle is unreferenced (uv_unref): the endpoint never keeps a loop
 * alive, so a daemon whose own handles closed finishes its uv_run as it
 * did without it; ps_http_destroy then closes what is left.
 *
 * Loop thread only.
 */
#ifndef PS_HTTP_H
#define PS_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ps_http_s ps_http_t;

typedef struct {
  int max_connections;      /* 0: 16 */
  size_t max_request_bytes; /* 0: 8192 */
  int idle_timeout_ms;      /* 0: 30000 */
  size_t max_queued_bytes;  /* 0: 4 MiB */
} ps_http_limits_t;

/* What a handler answers. body is copied before the handler's caller
 * returns, so it may point at the handler's own buffer. */
typedef struct {
  int status;               /* 200, 404, 503, ... */
  const char *content_type; /* NULL: text/plain; charset=utf-8 */
  const char *body;
  size_t body_len;
} ps_http_response_t;

/* A complete request: method ("GET", "HEAD") and path (without the query
 * string). res starts as 404 with an empty body. Called on the loop
 * thread; must not block. */
typedef void (*ps_http_request_cb)(ps_http_t *h, const char *method,
                                   const char *path, ps_http_response_t *res,
                                   void *arg);

typedef struct {
  uint64_t accepted; /* connections accepted and served */
  uint64_t refused;  /* connections closed at once: over max_connections */
  uint64_t requests; /* requests answered, any status */
  uint64_t bad;      /* requests refused as malformed or too big */
  uint64_t timeouts; /* connections closed for idling */
  uint32_t open;     /* connections open now */
} ps_http_stats_t;

/* Parses "HOST:PORT" (an IPv4 address, or [IPv6]) into addr. Returns 0, or
 * -1 with the reason in err. Port 0 asks the kernel for a free one. */
int ps_http_parse_bind(const char *bind, struct sockaddr_storage *addr,
                       char *err, size_t errlen);

/* Listens on bind and serves every request through cb. limits may be
 * NULL (the defaults). Returns NULL with the reason in err (a bad address,
 * the port taken). Caller owns the result (ps_http_destroy). */
ps_http_t *ps_http_new(uv_loop_t *loop, const char *bind,
                       const ps_http_limits_t *limits, ps_http_request_cb cb,
                       void *arg, char *err, size_t errlen);

/* The address actually bound, "127.0.0.1:9100" (the port resolved). */
const char *ps_http_address(const ps_http_t *h);
int ps_http_port(const ps_http_t *h);

const ps_http_stats_t *ps_http_stats(const ps_http_t *h);

/* Closes the listener and every connection (responses still queued are
 * dropped), and frees h once libuv has closed them: the loop must run
 * again for that. Sets *h_p to NULL. NULL-safe. */
void ps_http_destroy(ps_http_t **h_p);

#endif
