/* Transport: a socket that cannot be set up is refused with the call that
 * failed and the reason, and leaves nothing behind on the loop. */
#include <check.h>
#include <string.h>
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

int main(void) {
  Suite *s = suite_create("transport");
  TCase *tc = tcase_create("transport");
  tcase_add_test(tc, configure_names_the_refused_option);
  tcase_add_test(tc, bind_and_connect_failures_say_why);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
