/* common/http.h: requests, keep-alive, HEAD, refusals, and the limits
 * (connections, request size, idle time), against a real loop on a
 * thread and plain sockets with deadlines. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/http.h"
#include "common/time.h"
#include "tests/check_run.h"

typedef struct {
  uv_loop_t loop;
  uv_async_t stop;
  pthread_t thread;
  ps_http_t *http;
} server_t;

static void handler(ps_http_t *h, const char *method, const char *path,
                    ps_http_response_t *res, void *arg) {
  static char body[64];
  if (strcmp(path, "/metrics") == 0) {
    snprintf(body, sizeof(body), "hello %s\n", method);
    res->status = 200;
    res->body = body;
    res->body_len = strlen(body);
  } else if (strcmp(path, "/healthz") == 0) {
    res->status = 503;
    res->body = "not yet\n";
    res->body_len = 8;
  }
}

static void stop_cb(uv_async_t *a) {
  server_t *s = a->data;
  ps_http_destroy(&s->http);
  uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg) {
  server_t *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return NULL;
}

static void server_start(server_t *s, const ps_http_limits_t *lim) {
  memset(s, 0, sizeof(*s));
  ck_assert_int_eq(uv_loop_init(&s->loop), 0);
  char err[256];
  s->http = ps_http_new(&s->loop, "127.0.0.1:0", lim, handler, NULL, err,
                        sizeof(err));
  ck_assert_msg(s->http != NULL, "%s", err);
  ck_assert_int_gt(ps_http_port(s->http), 0);
  uv_async_init(&s->loop, &s->stop, stop_cb);
  s->stop.data = s;
  ck_assert_int_eq(pthread_create(&s->thread, NULL, loop_main, s), 0);
}

static void server_stop(server_t *s) {
  uv_async_send(&s->stop);
  pthread_join(s->thread, NULL);
  ck_assert_int_eq(uv_loop_close(&s->loop), 0); /* every handle freed */
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  return fd;
}

static void send_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* the server may have closed: the reply says */
    s += w;
    n -= (size_t)w;
  }
}

/* Reads until want bytes containing "\r\n\r\n" + Content-Length are in, the
 * peer closes (*closed = 1), or timeout_ms passes. */
static size_t read_reply(int fd, char *buf, size_t cap, int timeout_ms,
                         int *closed) {
  size_t n = 0;
  uint64_t deadline = ps_now_ms() + (uint64_t)timeout_ms;
  *closed = 0;
  buf[0] = '\0';
  while (ps_now_ms() < deadline && n + 1 < cap) {
    const char *end = strstr(buf, "\r\n\r\n");
    const char *cl = strstr(buf, "Content-Length: ");
    if (end && cl && n >= (size_t)(end + 4 - buf) + (size_t)atol(cl + 16))
      break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int left = (int)(deadline - ps_now_ms());
    if (poll(&p, 1, left > 0 ? left : 0) <= 0) continue;
    ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
    if (r <= 0) {
      *closed = 1;
      break;
    }
    n += (size_t)r;
    buf[n] = '\0';
  }
  return n;
}

/* 1 once the peer closed fd within timeout_ms. */
static int closed_within(int fd, int timeout_ms) {
  char b[256];
  int closed;
  read_reply(fd, b, sizeof(b), timeout_ms, &closed);
  while (!closed) {
    size_t n = read_reply(fd, b, sizeof(b), timeout_ms, &closed);
    if (n == 0) break;
  }
  return closed;
}

START_TEST(test_get_keepalive_head_404_405) {
  server_t s;
  server_start(&s, NULL);
  int fd = connect_to(ps_http_port(s.http));
  char buf[4096];
  int closed;
  const char *req = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
  send_all(fd, req, strlen(req));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", buf);
  ck_assert_ptr_nonnull(strstr(buf, "Content-Length: 10\r\n"));
  ck_assert_ptr_nonnull(strstr(buf, "\r\n\r\nhello GET\n"));
  ck_assert_ptr_nonnull(strstr(buf, "Connection: keep-alive"));
  ck_assert_int_eq(closed, 0);
  /* The same connection, twice pipelined. */
  req = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\n\r\n";
  send_all(fd, req, strlen(req));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0,
                "%s", buf);
  ck_assert_ptr_nonnull(strstr(buf, "not yet\n"));
  char *second = strstr(buf, "not yet\n") + 8;
  if (*second == '\0') read_reply(fd, second, sizeof(buf) - 600, 5000, &closed);
  ck_assert_msg(strstr(buf, "HTTP/1.1 404 Not Found\r\n") != NULL, "%s", buf);
  /* HEAD: the headers of the GET, no body. */
  req = "HEAD /metrics HTTP/1.1\r\n\r\n";
  send_all(fd, req, strlen(req));
  size_t n = 0;
  uint64_t deadline = ps_now_ms() + 5000;
  buf[0] = '\0';
  while (!strstr(buf, "\r\n\r\n") && ps_now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
    ck_assert_int_gt(r, 0);
    n += (size_t)r;
    buf[n] = '\0';
  }
  ck_assert_msg(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", buf);
  ck_assert_ptr_nonnull(strstr(buf, "Content-Length: 11\r\n"));
  ck_assert_str_eq(strstr(buf, "\r\n\r\n"), "\r\n\r\n");
  /* POST: 405 with Allow. */
  req = "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
  send_all(fd, req, strlen(req));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 405 ", 13) == 0, "%s", buf);
  ck_assert_ptr_nonnull(strstr(buf, "Allow: GET, HEAD\r\n"));
  /* Connection: close is honoured. */
  req = "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n";
  send_all(fd, req, strlen(req));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_ptr_nonnull(strstr(buf, "Connection: close"));
  ck_assert_int_eq(closed_within(fd, 5000), 1);
  close(fd);
  ck_assert_uint_eq(ps_http_stats(s.http)->requests, 6);
  server_stop(&s);
}
END_TEST

START_TEST(test_malformed_and_too_big) {
  ps_http_limits_t lim = {.max_request_bytes = 1024};
  server_t s;
  server_start(&s, &lim);
  char buf[4096];
  int closed;
  int fd = connect_to(ps_http_port(s.http));
  const char *junk = "NOT HTTP AT ALL\r\n\r\n";
  send_all(fd, junk, strlen(junk));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 400 ", 13) == 0, "%s", buf);
  ck_assert_int_eq(closed_within(fd, 5000), 1);
  close(fd);

  fd = connect_to(ps_http_port(s.http));
  char big[3000];
  int k = snprintf(big, sizeof(big), "GET /metrics HTTP/1.1\r\nX-Pad: ");
  memset(big + k, 'a', sizeof(big) - (size_t)k - 1);
  big[sizeof(big) - 1] = '\0';
  send_all(fd, big, strlen(big));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 431 ", 13) == 0, "%s", buf);
  ck_assert_int_eq(closed_within(fd, 5000), 1);
  close(fd);

  fd = connect_to(ps_http_port(s.http));
  char url[1500] = "GET /";
  memset(url + 5, 'u', 1100);
  strcpy(url + 1105, " HTTP/1.1\r\n\r\n");
  send_all(fd, url, strlen(url));
  read_reply(fd, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 4", 10) == 0, "%s", buf);
  ck_assert_int_eq(closed_within(fd, 5000), 1);
  close(fd);
  ck_assert_uint_eq(ps_http_stats(s.http)->bad, 3);
  server_stop(&s);
}
END_TEST

START_TEST(test_connection_limit_and_idle) {
  ps_http_limits_t lim = {.max_connections = 2, .idle_timeout_ms = 300};
  server_t s;
  server_start(&s, &lim);
  int port = ps_http_port(s.http);
  int a = connect_to(port), b = connect_to(port);
  /* a and b are accepted (served below); the third is closed at once. */
  char buf[1024];
  int closed;
  const char *req = "GET /metrics HTTP/1.1\r\n\r\n";
  send_all(a, req, strlen(req));
  read_reply(a, buf, sizeof(buf), 5000, &closed);
  ck_assert_msg(strncmp(buf, "HTTP/1.1 200 OK", 15) == 0, "%s", buf);
  int c = connect_to(port);
  ck_assert_int_eq(closed_within(c, 5000), 1);
  close(c);
  /* b sent nothing: closed after the idle time, not before. */
  uint64_t t0 = ps_now_ms();
  ck_assert_int_eq(closed_within(b, 5000), 1);
  ck_assert_uint_ge(ps_now_ms() - t0 + 50, 250);
  close(b);
  ck_assert_int_eq(closed_within(a, 5000), 1);
  close(a);
  ck_assert_uint_ge(ps_http_stats(s.http)->refused, 1);
  ck_assert_uint_ge(ps_http_stats(s.http)->timeouts, 2);
  server_stop(&s);
}
END_TEST

START_TEST(test_bind_refused) {
  struct sockaddr_storage a;
  char err[256];
  ck_assert_int_eq(ps_http_parse_bind("127.0.0.1:9100", &a, err, sizeof(err)),
                   0);
  ck_assert_int_eq(ps_http_parse_bind("[::1]:0", &a, err, sizeof(err)), 0);
  const char *bad[] = {"",
                       "127.0.0.1",
                       "127.0.0.1:",
                       "localhost:9100",
                       "127.0.0.1:70000",
                       "1.2.3.4:9x",
                       ":9100",
                       "::1:80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(ps_http_parse_bind(bad[i], &a, err, sizeof(err)) == -1,
                  "accepted %s", bad[i]);
    ck_assert_ptr_nonnull(strstr(err, "HOST:PORT"));
  }
  /* A port already taken is refused with the reason. */
  server_t s;
  server_start(&s, NULL);
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%d", ps_http_port(s.http));
  uv_loop_t loop;
  uv_loop_init(&loop);
  ps_http_t *h =
      ps_http_new(&loop, bind, NULL, handler, NULL, err, sizeof(err));
  ck_assert_ptr_null(h);
  ck_assert_msg(strstr(err, "address already in use") != NULL, "%s", err);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  server_stop(&s);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_get_keepalive_head_404_405);
  tcase_add_test(tc, test_malformed_and_too_big);
  tcase_add_test(tc, test_connection_limit_and_idle);
  tcase_add_test(tc, test_bind_refused);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
