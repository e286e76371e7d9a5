/* A program that knows libps-client only as a user does: through the
 * installed headers and `pkg-config --cflags --libs ps-client`
 * (test_install.sh builds it against a fresh prefix). It declares a model
 * of one tensor, pushes a known gradient as step 0, pulls the weights as of
 * step 1 and checks that the servers applied exactly w -= lr * g (BSP, one
 * worker: the step's gradient is this push alone); then checks the view
 * accessors and an error code, and says Done.
 *
 *   push_pull tcp://127.0.0.1:PORT      prints "push_pull: ok", exits 0
 */
#include <ps/client.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define KEYS 1000
/* A power of two and small integer gradients: every w is exact in float. */
#define LR 0.5f

static float grad(uint64_t i) {
  return (float)((int)(i % 7) - 3);
}

static int check(int cond, const char *what, ps_client_t *c) {
  if (!cond)
    fprintf(stderr, "push_pull: %s (client: \"%s\")\n", what,
            c != NULL ? ps_client_errmsg(c) : "");
  return cond;
}

static int weights_ok(const float *w, const char *what) {
  for (uint64_t i = 0; i < KEYS; i++) {
    if (w[i] == -LR * grad(i)) continue;
    fprintf(stderr, "push_pull: %s: w[%llu] is %g, want %g\n", what,
            (unsigned long long)i, (double)w[i], (double)(-LR * grad(i)));
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCHEDULER_ENDPOINT\n", argv[0]);
    return 2;
  }
  ps_tensor_spec_t t;
  memset(&t, 0, sizeof(t));
  snprintf(t.name, sizeof(t.name), "w");
  t.length = KEYS;
  t.init = PS_INIT_ZERO;
  ps_model_t model;
  memset(&model, 0, sizeof(model));
  model.ntensors = 1;
  model.tensors = &t;
  model.total = KEYS;
  model.optimizer = PS_OPTIMIZER_SGD;
  model.learning_rate = LR;
  model.seed = 1;

  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = argv[1];
  o.timeout_ms = 30000;
  o.connect_timeout_ms = 30000;
  int err = PS_OK;
  char msg[256] = "";
  ps_client_t *c = ps_client_new(&o, &model, &err, msg, sizeof(msg));
  if (c == NULL) {
    fprintf(stderr, "push_pull: connect: %s: %s (%s)\n", ps_err_name(err), msg,
            ps_strerror(err));
    return 1;
  }

  const ps_view_t *v = ps_client_view(c);
  uint64_t begin = 1, end = 0;
  uint32_t server = 0;
  int ok = check(ps_view_epoch(v) >= 1, "view epoch is 0", c);
  ok = check(ps_view_live_workers(v) == 1, "live workers != 1", c) && ok;
  ok = check(ps_view_num_ranges(v) == 1, "ranges != 1", c) && ok;
  ok = check(ps_view_range(v, 0, &begin, &end, &server) == PS_OK &&
                 begin == 0 && end == KEYS,
             "range 0 is not [0, KEYS)", c) &&
       ok;
  ok = check(ps_view_range(v, 1, NULL, NULL, NULL) == PS_ERR_INVAL,
             "range 1 exists", c) &&
       ok;
  ok = check(ps_client_num_workers(c) == 1 && ps_client_rank(c) == 0,
             "not the one worker", c) &&
       ok;

  static float g[KEYS], w[KEYS];
  for (uint64_t i = 0; i < KEYS; i++) g[i] = grad(i);
  ok = ok && check(ps_client_push(c, 0, KEYS, g, 0) == PS_OK, "push", c);
  ok = ok && check(ps_client_pull(c, 0, KEYS, w, 1) == PS_OK, "pull", c) &&
       weights_ok(w, "pull");
  memset(w, 0, sizeof(w));
  ok = ok &&
       check(ps_client_pull_tensor(c, "w", w, 1) == PS_OK, "pull_tensor", c) &&
       weights_ok(w, "pull_tensor");

  /* A failure is a code from ps/err.h with a message on the client. */
  int rc = ps_client_push(c, KEYS - 1, 2, g, 1);
  ok = check(rc == PS_ERR_INVAL && strcmp(ps_err_name(rc), "ERR_INVAL") == 0 &&
                 ps_client_errmsg(c)[0] != '\0',
             "a push past the key space is not ERR_INVAL", c) &&
       ok;

  ok = check(ps_client_done(c) == PS_OK, "done", c) && ok;
  ps_client_destroy(&c);
  ok = check(c == NULL, "destroy left the pointer set", NULL) && ok;
  if (ok) printf("push_pull: ok\n");
  return ok ? 0 : 1;
}
