/* Transport: a socket that cannot be set up is refused with the call that
 * failed and the reason, and leaves nothing behind on the loop. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <uv.h>
#include <zmq.h>

#include "common/err.h"
#include "common/transport.h"
#include "tests/check_run.h"

static void on_msg(ps_zsock_t *zs, ps_msg_t *msg, int status,
                   const char *reason, void *arg) {
  (void)zs;
  (void)msg;
  (void)status;
  (void)reason;
  (void)arg;
}

START_TEST(configure_names_the_refused_option) {
  char err[256] = "";
  /* libzmq refuses every option on a NULL socket (ENOTSOCK). */
  ck_assert_int_eq(ps_zsock_configure(NULL, err, sizeof(err)), PS_ERR_ZMQ);
  ck_assert_msg(strstr(err, "zmq_setsockopt(ZMQ_LINGER)") != NULL, "err: %s",
                err);
  ck_assert_msg(strstr(err, zmq_strerror(ENOTSOCK)) != NULL, "err: %s", err);
}
END_TEST

START_TEST(bind_and_connect_failures_say_why) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  void *ctx = zmq_ctx_new();
  int rc = PS_OK;
  char err[256] = "";
  ps_zsock_t *a = ps_zsock_new(&loop, ctx, ZMQ_ROUTER, "inproc://taken", NULL,
                               NULL, on_msg, NULL, &rc, err, sizeof(err));
  ck_assert_msg(a != NULL, "err: %s", err);
  ck_assert_int_eq(rc, PS_OK);
  ck_assert_str_eq(ps_zsock_endpoint(a), "inproc://taken");

  ps_zsock_t *b = ps_zsock_new(&loop, ctx, ZMQ_ROUTER, "inproc://taken", NULL,
                               NULL, on_msg, NULL, &rc, err, sizeof(err));
  ck_assert_ptr_null(b);
  ck_assert_int_eq(rc, PS_ERR_ZMQ);
  ck_assert_msg(strstr(err, "cannot bind inproc://taken") != NULL, "err: %s",
                err);

  ps_zsock_t *c = ps_zsock_new(&loop, ctx, ZMQ_DEALER, NULL, "nowhere", NULL,
                               on_msg, NULL, &rc, err, sizeof(err));
  ck_assert_ptr_null(c);
  ck_assert_int_eq(rc, PS_ERR_ZMQ);
  ck_assert_msg(strstr(err, "cannot connect to nowhere") != NULL, "err: %s",
                err);

  ps_zsock_destroy(&a);
  ck_assert_ptr_null(a);
  uv_run(&loop, UV_RUN_DEFAULT);
  /* Failed sockets left no handle open: the loop closes. */
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  ck_assert_int_eq(zmq_ctx_term(ctx), 0);
}
END_TEST

START_TEST(names_are_told_from_addresses) {
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://server-a:7101"), 1);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://localhost:7101"), 1);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://10.0.0.1;srv:7101"), 1);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://10.89.0.2:7101"), 0);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://[::1]:7101"), 0);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("tcp://*:7101"), 0);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("inproc://server-a"), 0);
  ck_assert_int_eq(ps_zsock_endpoint_has_name("ipc:///tmp/x"), 0);
  ck_assert_int_eq(ps_zsock_endpoint_has_name(NULL), 0);
}
END_TEST

static void count_msg(ps_zsock_t *zs, ps_msg_t *msg, int status,
                      const char *reason, void *arg) {
  (void)zs;
  (void)reason;
  (*(int *)arg)++;
  if (status == PS_OK) ps_msg_close(msg);
}

static void stop_timer(uv_timer_t *t) {
  uv_stop(t->loop);
}

/* A socket that connects by name (on a context of its own, see
 * ps_zsock_new) talks to one bound on the shared context, and both close
 * without holding up the shared context's term. */
START_TEST(connect_by_name_works) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  void *ctx = zmq_ctx_new();
  int rc = PS_OK, got = 0;
  char err[256] = "";
  ps_zsock_t *a =
      ps_zsock_new(&loop, ctx, ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL, NULL,
                   count_msg, &got, &rc, err, sizeof(err));
  ck_assert_msg(a != NULL, "err: %s", err);
  const char *ep = ps_zsock_endpoint(a);
  char named[64];
  snprintf(named, sizeof(named), "tcp://localhost:%s", strrchr(ep, ':') + 1);
  ps_zsock_t *b = ps_zsock_new(&loop, ctx, ZMQ_DEALER, NULL, named, NULL,
                               on_msg, NULL, &rc, err, sizeof(err));
  ck_assert_msg(b != NULL, "err: %s", err);
  ck_assert_int_ge(zmq_send(ps_zsock_socket(b), "x", 1, 0), 0);
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  for (int i = 0; i < 100 && got == 0; i++) {
    uv_timer_start(&t, stop_timer, 50, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  ck_assert_int_eq(got, 1);
  uv_close((uv_handle_t *)&t, NULL);
  ps_zsock_destroy(&b);
  ps_zsock_destroy(&a);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  ck_assert_int_eq(zmq_ctx_term(ctx), 0);
}
END_TEST

typedef struct {
  uv_loop_t *loop;
  uint64_t count, want;
  uint64_t at[16]; /* when each came (ns) */
} stamps_t;

static void stamp_msg(ps_zsock_t *zs, ps_msg_t *msg, int status,
                      const char *reason, void *arg) {
  stamps_t *st = arg;
  (void)zs;
  (void)reason;
  if (st->count < 16) st->at[st->count] = uv_hrtime();
  if (++st->count >= st->want) uv_stop(st->loop);
  (void)status; /* "x" is no Envelope; the route frame is held either way */
  ps_msg_close(msg);
}

/* Runs the loop until st->count reaches want (the callback stops it at
 * once) or 5 s passed. */
static void run_until(stamps_t *st, uint64_t want) {
  uv_timer_t t;
  uv_timer_init(st->loop, &t);
  st->want = want;
  for (int i = 0; i < 100 && st->count < want; i++) {
    uv_timer_start(&t, stop_timer, 50, 0);
    uv_run(st->loop, UV_RUN_DEFAULT);
  }
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(st->loop, UV_RUN_NOWAIT);
}

/* batch_ms: messages that come right after a read wait for the batch's
 * timer and are all read then, none left behind while the poll is
 * stopped; once the batch is over the socket listens again. */
START_TEST(batched_reads_wait_then_take_all) {
  uv_loop_t loop;
  ck_assert_int_eq(uv_loop_init(&loop), 0);
  void *ctx = zmq_ctx_new();
  int rc = PS_OK;
  char err[256] = "";
  stamps_t st = {.loop = &loop};
  ps_zsock_opts_t zo = {.batch_ms = 60};
  ps_zsock_t *a =
      ps_zsock_new(&loop, ctx, ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL, &zo,
                   stamp_msg, &st, &rc, err, sizeof(err));
  ck_assert_msg(a != NULL, "err: %s", err);
  ps_zsock_t *b =
      ps_zsock_new(&loop, ctx, ZMQ_DEALER, NULL, ps_zsock_endpoint(a), NULL,
                   on_msg, NULL, &rc, err, sizeof(err));
  ck_assert_msg(b != NULL, "err: %s", err);
  ck_assert_int_ge(zmq_send(ps_zsock_socket(b), "x", 1, 0), 0);
  run_until(&st, 1);
  ck_assert_int_eq(st.count, 1);
  /* The loop just read: these five wait for the rest of the batch. A
   * read that did not wait comes a batch after the last drain began,
   * which was after the first message was read, so the bound holds on a
   * loaded host too; it fails when a read does not wait. */
  for (int i = 0; i < 5; i++)
    ck_assert_int_ge(zmq_send(ps_zsock_socket(b), "y", 1, 0), 0);
  run_until(&st, 6);
  ck_assert_int_eq(st.count, 6);
  for (int i = 1; i <= 5; i++)
    ck_assert_msg(st.at[i] - st.at[0] >= 45 * 1000000ull,
                  "message %d read %.1f ms after the first, within its "
                  "batch",
                  i + 1, (double)(st.at[i] - st.at[0]) / 1e6);
  /* And the socket listens again after the batch. */
  ck_assert_int_ge(zmq_send(ps_zsock_socket(b), "z", 1, 0), 0);
  run_until(&st, 7);
  ck_assert_int_eq(st.count, 7);
  ps_zsock_destroy(&b);
  ps_zsock_destroy(&a);
  uv_run(&loop, UV_RUN_DEFAULT);
  ck_assert_int_eq(uv_loop_close(&loop), 0);
  ck_assert_int_eq(zmq_ctx_term(ctx), 0);
}
END_TEST

static volatile sig_atomic_t alarms;
static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

START_TEST(bind_and_connect_survive_signals) {
  /* A SIGALRM every 20 us with no SA_RESTART, as libFuzzer's timer (it
   * failed a harness's bind with EINTR in CI): zmq_bind and zmq_connect
   * fail with EINTR now and then (hundreds of times in 40,000 calls when
   * measured), ps_zmq_bind and ps_zmq_connect never. */
  struct sigaction sa, old;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_alarm;
  ck_assert_int_eq(sigaction(SIGALRM, &sa, &old), 0);
  struct itimerval it = {{0, 20}, {0, 20}}, off = {{0, 0}, {0, 0}};
  ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
  void *ctx = zmq_ctx_new();
  int failed = 0, i;
  char ep[64];
  for (i = 0; i < 400 && !failed; i++) {
    void *s = zmq_socket(ctx, ZMQ_PAIR), *c = zmq_socket(ctx, ZMQ_PAIR);
    ck_assert(s && c);
    snprintf(ep, sizeof(ep), "inproc://eintr-%d", i);
    if (ps_zmq_bind(s, ep) != 0 || ps_zmq_connect(c, ep) != 0)
      failed = zmq_errno();
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(c, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_close(c);
    zmq_close(s);
  }
  setitimer(ITIMER_REAL, &off, NULL);
  sigaction(SIGALRM, &old, NULL);
  zmq_ctx_term(ctx);
  ck_assert_msg(!failed, "call %d failed: %s", i, zmq_strerror(failed));
  ck_assert_int_gt(alarms, 100);
}
END_TEST

int main(void) {
  Suite *s = suite_create("transport");
  TCase *tc = tcase_create("transport");
  tcase_add_test(tc, configure_names_the_refused_option);
  tcase_add_test(tc, bind_and_connect_failures_say_why);
  tcase_add_test(tc, names_are_told_from_addresses);
  tcase_add_test(tc, connect_by_name_works);
  tcase_add_test(tc, batched_reads_wait_then_take_all);
  tcase_add_test(tc, bind_and_connect_survive_signals);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
