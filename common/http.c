#include "http.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PS__HTTP_URL_MAX 1024
#define PS__HTTP_READ_BYTES 4096

typedef struct ps__http_conn_s ps__http_conn_t;

struct ps_http_s {
  uv_loop_t *loop;
  uv_tcp_t listener;
  int listener_open;
  int destroyed;
  ps_http_limits_t lim;
  ps_http_request_cb cb;
  void *arg;
  ps__http_conn_t *conns;
  ps_http_stats_t stats;
  char address[96];
  int port;
};

struct ps__http_conn_s {
  uv_tcp_t tcp;
  uv_timer_t timer;
  ps_http_t *h;
  ps__http_conn_t *next, **prevp;
  http_parser parser;
  size_t req_bytes; /* bytes of the request being read (about: see read_cb) */
  char url[PS__HTTP_URL_MAX];
  size_t url_len;
  int url_overflow;
  int pending_writes;
  int close_after_write;
  int closing;
  int handles; /* open handles: tcp and timer */
  char rbuf[PS__HTTP_READ_BYTES];
};

/* A response on its way: the request and its bytes in one allocation. */
typedef struct {
  uv_write_t req;
  ps__http_conn_t *c;
  char data[];
} ps__http_write_t;

static const char *reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Payload Too Large";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "Unknown";
}

int ps_http_parse_bind(const char *bind, struct sockaddr_storage *addr,
                       char *err, size_t errlen) {
  char host[64];
  const char *port_s;
  memset(addr, 0, sizeof(*addr));
  if (bind == NULL || bind[0] == '\0') goto bad;
  if (bind[0] == '[') {
    const char *close = strchr(bind, ']');
    if (close == NULL || close[1] != ':' ||
        (size_t)(close - bind - 1) >= sizeof(host))
      goto bad;
    memcpy(host, bind + 1, (size_t)(close - bind - 1));
    host[close - bind - 1] = '\0';
    port_s = close + 2;
  } else {
    const char *colon = strrchr(bind, ':');
    if (colon == NULL || (size_t)(colon - bind) >= sizeof(host) ||
        colon == bind || memchr(bind, ':', (size_t)(colon - bind)) != NULL)
      goto bad;
    memcpy(host, bind, (size_t)(colon - bind));
    host[colon - bind] = '\0';
    port_s = colon + 1;
  }
  if (*port_s == '\0' || strlen(port_s) > 5) goto bad;
  long port = 0;
  for (const char *p = port_s; *p; p++) {
    if (*p < '0' || *p > '9') goto bad;
    port = port * 10 + (*p - '0');
  }
  if (port > 65535) goto bad;
  if (bind[0] == '[') {
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)addr) != 0)
      goto bad;
  } else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)addr) != 0) {
    goto bad;
  }
  return 0;
bad:
  snprintf(err, errlen,
           "\"%s\" is not HOST:PORT with an IP address and a port in [0, "
           "65535] (e.g. 127.0.0.1:9100 or [::1]:9100)",
           bind ? bind : "");
  return -1;
}

/* ---- freeing ---- */

static void maybe_free(ps_http_t *h) {
  if (h->destroyed && !h->listener_open && h->conns == NULL) free(h);
}

static void listener_close_cb(uv_handle_t *handle) {
  ps_http_t *h = handle->data;
  h->listener_open = 0;
  maybe_free(h);
}

static void conn_close_cb(uv_handle_t *handle) {
  ps__http_conn_t *c = handle->data;
  if (--c->handles > 0) return;
  ps_http_t *h = c->h;
  *c->prevp = c->next;
  if (c->next) c->next->prevp = c->prevp;
  h->stats.open--;
  free(c);
  maybe_free(h);
}

static void conn_close(ps__http_conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
  uv_close((uv_handle_t *)&c->timer, conn_close_cb);
}

/* ---- responses ---- */

static void write_cb(uv_write_t *req, int status) {
  ps__http_write_t *w = (ps__http_write_t *)req;
  ps__http_conn_t *c = w->c;
  free(w);
  c->pending_writes--;
  if (status < 0 || (c->close_after_write && c->pending_writes == 0))
    conn_close(c);
}

static void idle_cb(uv_timer_t *t) {
  ps__http_conn_t *c = t->data;
  c->h->stats.timeouts++;
  conn_close(c);
}

static void send_response(ps__http_conn_t *c, const ps_http_response_t *res,
                          int head_only, int keep_alive) {
  ps_http_t *h = c->h;
  char head[320];
  int hn = snprintf(
      head, sizeof(head),
      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
      "Content-Length: %zu\r\n%sConnection: %s\r\n\r\n",
      res->status, reason_phrase(res->status),
      res->content_type ? res->content_type : "text/plain; charset=utf-8",
      res->body_len, res->status == 405 ? "Allow: GET, HEAD\r\n" : "",
      keep_alive ? "keep-alive" : "close");
  if (hn < 0 || (size_t)hn >= sizeof(head)) {
    conn_close(c);
    return;
  }
  size_t body = head_only ? 0 : res->body_len;
  ps__http_write_t *w = malloc(sizeof(*w) + (size_t)hn + body);
  if (w == NULL) {
    conn_close(c);
    return;
  }
  memcpy(w->data, head, (size_t)hn);
  if (body) memcpy(w->data + hn, res->body, body);
  w->c = c;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)((size_t)hn + body));
  h->stats.requests++;
  if (!keep_alive) {
    c->close_after_write = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  if (rc != 0) {
    free(w); /* a failed call never fires its callback */
    conn_close(c);
    return;
  }
  c->pending_writes++;
  /* Each request gets a fresh idle_timeout_ms. */
  uv_timer_start(&c->timer, idle_cb, (uint64_t)h->lim.idle_timeout_ms, 0);
}

/* A request that cannot be served: the status, a reason, and the end of
 * the connection (the parser's state is unknown past this point). */
static void refuse(ps__http_conn_t *c, int status, const char *why) {
  c->h->stats.bad++;
  ps_http_response_t res = {
      .status = status, .body = why, .body_len = strlen(why)};
  send_response(c, &res, 0, 0);
}

/* ---- parsing ---- */

static int on_message_begin(http_parser *p) {
  ps__http_conn_t *c = p->data;
  c->url_len = 0;
  c->url_overflow = 0;
  c->url[0] = '\0';
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  ps__http_conn_t *c = p->data;
  if (c->url_len + len >= sizeof(c->url)) {
    c->url_overflow = 1;
    return 0;
  }
  memcpy(c->url + c->url_len, at, len);
  c->url_len += len;
  c->url[c->url_len] = '\0';
  return 0;
}

static int on_message_complete(http_parser *p) {
  ps__http_conn_t *c = p->data;
  ps_http_t *h = c->h;
  c->req_bytes = 0;
  if (c->url_overflow) {
    refuse(c, 414, "request target too long\n");
    return 1;
  }
  int head_only = p->method == HTTP_HEAD;
  int keep_alive = http_should_keep_alive(p);
  ps_http_response_t res = {
      .status = 404, .body = "not found\n", .body_len = 10};
  if (p->method != HTTP_GET && p->method != HTTP_HEAD) {
    res.status = 405;
    res.body = "only GET and HEAD\n";
    res.body_len = strlen(res.body);
  } else {
    char *q = strchr(c->url, '?');
    if (q) *q = '\0';
    h->cb(h, http_method_str((enum http_method)p->method), c->url, &res,
          h->arg);
  }
  send_response(c, &res, head_only, keep_alive);
  /* Stop parsing: nothing after a last request is read. */
  return c->close_after_write || c->closing ? 1 : 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

static void alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  ps__http_conn_t *c = handle->data;
  (void)suggested;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  ps__http_conn_t *c = stream->data;
  ps_http_t *h = c->h;
  if (nread < 0) {
    conn_close(c); /* EOF or an error */
    return;
  }
  if (nread == 0 || c->closing || c->close_after_write) return;
  /* Counted per read: bytes of a read that follow a complete request are
   * counted for none, so a request may exceed the limit by one read. */
  c->req_bytes += (size_t)nread;
  size_t done =
      http_parser_execute(&c->parser, &parser_settings, buf->base, nread);
  if (c->closing || c->close_after_write) return;
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e != HPE_OK || c->parser.upgrade || done != (size_t)nread) {
    char why[128];
    snprintf(why, sizeof(why), "malformed request: %s\n",
             c->parser.upgrade ? "upgrade not supported" : http_errno_name(e));
    refuse(c, e == HPE_HEADER_OVERFLOW ? 431 : 400, why);
    return;
  }
  if (c->req_bytes > h->lim.max_request_bytes) {
    char why[96];
    snprintf(why, sizeof(why), "request over %zu bytes\n",
             h->lim.max_request_bytes);
    refuse(c, c->parser.flags & F_CONTENTLENGTH ? 413 : 431, why);
    return;
  }
  if (c->tcp.write_queue_size > h->lim.max_queued_bytes) conn_close(c);
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *server, int status) {
  ps_http_t *h = server->data;
  if (status < 0 || h->destroyed) return;
  ps__http_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return; /* the connection waits in the backlog */
  c->h = h;
  uv_tcp_init(h->loop, &c->tcp);
  uv_timer_init(h->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles = 2;
  uv_unref((uv_handle_t *)&c->tcp);
  uv_unref((uv_handle_t *)&c->timer);
  c->next = h->conns;
  c->prevp = &h->conns;
  if (h->conns) h->conns->prevp = &c->next;
  h->conns = c;
  h->stats.open++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  if (h->stats.open > (uint32_t)h->lim.max_connections) {
    h->stats.refused++;
    conn_close(c);
    return;
  }
  h->stats.accepted++;
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  uv_timer_start(&c->timer, idle_cb, (uint64_t)h->lim.idle_timeout_ms, 0);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) != 0)
    conn_close(c);
}

ps_http_t *ps_http_new(uv_loop_t *loop, const char *bind,
                       const ps_http_limits_t *limits, ps_http_request_cb cb,
                       void *arg, char *err, size_t errlen) {
  struct sockaddr_storage addr;
  if (ps_http_parse_bind(bind, &addr, err, errlen) != 0) return NULL;
  ps_http_t *h = calloc(1, sizeof(*h));
  if (h == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->loop = loop;
  h->cb = cb;
  h->arg = arg;
  if (limits) h->lim = *limits;
  if (h->lim.max_connections <= 0) h->lim.max_connections = 16;
  if (h->lim.max_request_bytes == 0) h->lim.max_request_bytes = 8192;
  if (h->lim.idle_timeout_ms <= 0) h->lim.idle_timeout_ms = 30000;
  if (h->lim.max_queued_bytes == 0) h->lim.max_queued_bytes = 4u << 20;
  int rc = uv_tcp_init(loop, &h->listener);
  if (rc != 0) {
    snprintf(err, errlen, "uv_tcp_init: %s", uv_strerror(rc));
    free(h);
    return NULL;
  }
  h->listener.data = h;
  h->listener_open = 1;
  uv_unref((uv_handle_t *)&h->listener);
  rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 64, on_connection);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", bind, uv_strerror(rc));
    ps_http_destroy(&h);
    return NULL;
  }
  struct sockaddr_storage got;
  int len = sizeof(got);
  char ip[64] = "?";
  if (uv_tcp_getsockname(&h->listener, (struct sockaddr *)&got, &len) == 0) {
    if (got.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&got, ip, sizeof(ip));
      h->port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
      snprintf(h->address, sizeof(h->address), "[%s]:%d", ip, h->port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&got, ip, sizeof(ip));
      h->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
      snprintf(h->address, sizeof(h->address), "%s:%d", ip, h->port);
    }
  }
  return h;
}

const char *ps_http_address(const ps_http_t *h) {
  return h->address;
}

int ps_http_port(const ps_http_t *h) {
  return h->port;
}

const ps_http_stats_t *ps_http_stats(const ps_http_t *h) {
  return &h->stats;
}

void ps_http_destroy(ps_http_t **h_p) {
  ps_http_t *h = h_p ? *h_p : NULL;
  if (h == NULL) return;
  *h_p = NULL;
  h->destroyed = 1;
  for (ps__http_conn_t *c = h->conns; c; c = c->next) conn_close(c);
  if (h->listener_open)
    uv_close((uv_handle_t *)&h->listener, listener_close_cb);
  else
    maybe_free(h);
}
