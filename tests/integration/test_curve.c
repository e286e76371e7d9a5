/* CURVE (issue #13): psctl keygen's files, a stranger's key gets no
 * service and is logged, a worker key cannot do what only servers or
 * admins may, a keyed job trains to the weights of a plaintext one, and
 * the plaintext of a push never crosses the wire with keys (it does
 * without, so the probe can fail). */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "common/frame.h"
#include "common/keys.h"
#include "common/time.h"
#include "harness.h"
#include "ps/client.h"
#include "tests/check_run.h"

/* Runs psctl keygen for role into dir; asserts it worked. */
static void keygen(h_cluster_t *c, const char *dir, const char *role,
                   const char *name) {
  int st;
  char *out = h_run(c, 10000, &st, "psctl", "keygen", "--role", role, "--out",
                    dir, "--name", name ? name : role, NULL);
  ck_assert_msg(out && st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psctl keygen --role %s failed: %s", role, out ? out : "");
  free(out);
}

/* A keys directory with one key of every role. */
static const char *cluster_keys(h_cluster_t *c) {
  const char *dir = h_path(c, "keys");
  const char *roles[] = {"scheduler", "server", "worker", "admin"};
  for (int i = 0; i < 4; i++) keygen(c, dir, roles[i], NULL);
  return dir;
}

static int count_in_file(const char *path, const char *needle) {
  char *s = h_read_file(path, NULL);
  int n = 0;
  for (const char *p = s; p && (p = strstr(p, needle)) != NULL; p++) n++;
  free(s);
  return n;
}

START_TEST(keygen_files_and_refusals) {
  h_cluster_t c;
  h_init(&c, "curve_keygen");
  const char *dir = h_path(&c, "keys");
  keygen(&c, dir, "worker", NULL);
  char key[700], pub[700];
  snprintf(key, sizeof(key), "%s/worker.key", dir);
  snprintf(pub, sizeof(pub), "%s/worker.pub", dir);
  struct stat st;
  ck_assert_int_eq(stat(key, &st), 0);
  ck_assert_msg((st.st_mode & 0777) == 0600, "worker.key mode %o",
                st.st_mode & 0777);
  ck_assert_int_eq(stat(pub, &st), 0);
  ck_assert_msg((st.st_mode & 0077) != 0 && (st.st_mode & 0022) == 0,
                "worker.pub mode %o", st.st_mode & 0777);
  char *text = h_read_file(pub, NULL);
  ck_assert_ptr_nonnull(text);
  ck_assert_msg(strstr(text, "role = worker") && !strstr(text, "secret"),
                "worker.pub: %s", text);
  free(text);

  /* Never over an existing key. */
  int rc;
  char *out = h_run(&c, 10000, &rc, "psctl", "keygen", "--role", "worker",
                    "--out", dir, NULL);
  ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) != 0 && out &&
                    strstr(out, "never overwritten"),
                "a second keygen: %s", out ? out : "");
  free(out);
  out = h_run(&c, 10000, &rc, "psctl", "keygen", "--role", "boss", "--out", dir,
              NULL);
  ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "--role boss: %s",
                out ? out : "");
  free(out);

  /* A secret key others may read is refused at load, naming the file. */
  keygen(&c, dir, "scheduler", NULL);
  char skey[700];
  snprintf(skey, sizeof(skey), "%s/scheduler.key", dir);
  ck_assert_int_eq(chmod(skey, 0640), 0);
  out = h_run(&c, 10000, &rc, "ps-scheduler", "--keys-dir", dir, "--bind",
              c.sched_ep, NULL);
  ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && out &&
                    strstr(out, "scheduler.key") && strstr(out, "chmod 600"),
                "a 0640 key: %s", out ? out : "");
  free(out);
  ck_assert_int_eq(chmod(skey, 0600), 0);
  /* A key of another role is refused too. */
  out = h_run(&c, 10000, &rc, "ps-scheduler", "--keys-dir", dir, "--key", key,
              "--bind", c.sched_ep, NULL);
  ck_assert_msg(
      WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && out && strstr(out, "worker key"),
      "a worker key for the scheduler: %s", out ? out : "");
  free(out);

  /* Neither keys nor --insecure: refused. */
  const char *was = getenv("PS_INSECURE");
  char saved[16] = "";
  if (was) snprintf(saved, sizeof(saved), "%s", was);
  unsetenv("PS_INSECURE");
  out = h_run(&c, 10000, &rc, "ps-scheduler", "--bind", c.sched_ep, NULL);
  if (was) setenv("PS_INSECURE", saved, 1);
  ck_assert_msg(
      WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && out && strstr(out, "--insecure"),
      "no keys, no --insecure: %s", out ? out : "");
  free(out);
  /* --insecure off loopback says so loudly. */
  int port = h_free_port();
  char ep[64];
  snprintf(ep, sizeof(ep), "tcp://0.0.0.0:%d", port);
  h_proc_t *p =
      h_spawn(&c, "open", "ps-scheduler", "--insecure", "--bind", ep, NULL);
  int said = h_wait_log(p->log, "event=insecure", 10000);
  h_kill_all(&c);
  ck_assert_msg(said && count_in_file(p->log, "lvl=warn") >= 1,
                "no insecure warning");
}
END_TEST

/* ---- a raw CURVE client, to send what libps-client never would ---- */

typedef struct {
  void *ctx, *sock;
} raw_t;

static void raw_open(raw_t *r, const char *dir, const char *key_file,
                     const char *endpoint, const char *server_key) {
  char err[512];
  int rc = PS_OK;
  ps_keys_t *keys =
      ps_keys_load(dir, key_file, PS_KEY_ROLE_WORKER, &rc, err, sizeof(err));
  ck_assert_msg(keys != NULL, "%s", err);
  r->ctx = zmq_ctx_new();
  r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof(zero));
  ck_assert_int_eq(
      ps_keys_apply(r->sock, keys,
                    server_key ? server_key : ps_keys_scheduler_key(keys), err,
                    sizeof(err)),
      PS_OK);
  ps_keys_destroy(&keys);
  ck_assert_int_eq(zmq_connect(r->sock, endpoint), 0);
}

static void raw_close(raw_t *r) {
  zmq_close(r->sock);
  zmq_ctx_term(r->ctx);
}

/* Sends env and returns the code of the Error that answers it (1: an
 * answer that is no Error, 0: none within 5 s). */
static int raw_ask(raw_t *r, Ps__Envelope *env) {
  static uint64_t id = 100;
  env->request_id = ++id;
  ck_assert_int_eq(ps_msg_send(r->sock, NULL, env, NULL, 0), PS_OK);
  uint64_t end = ps_now_ms() + 5000;
  while (ps_now_ms() < end) {
    zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 100) <= 0) continue;
    ps_msg_t m;
    char why[256];
    if (ps_msg_recv(r->sock, 0, NULL, &m, why, sizeof(why)) != PS_OK) {
      ps_msg_close(&m);
      continue;
    }
    int code = 1;
    if (m.env->request_id != env->request_id) {
      ps_msg_close(&m);
      continue;
    }
    if (m.env->body_case == PS__ENVELOPE__BODY_ERROR) code = m.env->error->code;
    ps_msg_close(&m);
    return code;
  }
  return 0;
}

/* The psctl of this test: with the admin key. */
static char *admin_psctl(h_cluster_t *c, const char *dir, const char *cmd,
                         int *st) {
  return h_run(c, 15000, st, "psctl", "--scheduler", c->sched_ep, "--keys-dir",
               dir, "--json", "--timeout-ms", "5000", cmd, NULL);
}

START_TEST(unknown_key_gets_no_service) {
  h_cluster_t c;
  h_init(&c, "curve_unknown");
  const char *dir = cluster_keys(&c);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--keys-dir", dir, "--bind",
              c.sched_ep, "--servers", "1", "--workers", "1", NULL);
  h_spawn(&c, "server", "ps-server", "--keys-dir", dir, "--scheduler",
          c.sched_ep, NULL);
  /* A stranger: its own worker key, and the scheduler's public key (which
   * is no secret), but its key is not in the cluster's directory. */
  char other[600], src[700], dst[700];
  snprintf(other, sizeof(other), "%s", h_path(&c, "stranger"));
  keygen(&c, other, "worker", NULL);
  snprintf(src, sizeof(src), "%s/scheduler.pub", dir);
  snprintf(dst, sizeof(dst), "%s/scheduler.pub", other);
  char *pubtext = h_read_file(src, NULL);
  FILE *f = fopen(dst, "w");
  ck_assert_ptr_nonnull(f);
  fputs(pubtext, f);
  fclose(f);
  free(pubtext);
  int st;
  uint64_t t0 = ps_now_ms();
  char *out = h_run(&c, 30000, &st, "ps-worker", "--keys-dir", other,
                    "--scheduler", c.sched_ep, "--connect-timeout-ms", "10000",
                    "--max-steps", "1", NULL);
  uint64_t took = ps_now_ms() - t0;
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0,
                "the stranger's worker was served: %s", out ? out : "");
  /* It learns at once (the handshake's refusal, from a socket monitor),
   * not at its 3 s deadline. */
  ck_assert_msg(took < 5000, "failed after %llu ms, near its 10 s deadline",
                (unsigned long long)took);
  ck_assert_msg(out && strstr(out, "refused this node's CURVE key"),
                "no clear error from the stranger's worker: %s",
                out ? out : "");
  free(out);
  /* The scheduler logged the key once, with its fingerprint, although the
   * worker's link retried the handshake for seconds. */
  char fp[PS_KEY_FINGERPRINT_LEN + 1];
  int rc;
  char err[512];
  ps_keys_t *k =
      ps_keys_load(other, NULL, PS_KEY_ROLE_WORKER, &rc, err, sizeof(err));
  ck_assert_msg(k != NULL, "%s", err);
  ps_keys_fingerprint(ps_keys_public(k), NULL, fp);
  ps_keys_destroy(&k);
  char needle[64];
  snprintf(needle, sizeof(needle), "fingerprint=%s", fp);
  int logged = count_in_file(sched->log, needle);
  ck_assert_msg(logged == 1, "the refusal of %s logged %d times", fp, logged);
  ck_assert_msg(count_in_file(sched->log, "event=curve_refused") == 1,
                "curve_refused lines");
  /* A worker in plaintext (--insecure, no keys) fails its handshake too
   * (the mechanisms differ) and must end with an error, never hang: its
   * registration, sent on a socket whose pipe the failed handshake
   * removed, once blocked it forever. ZeroMQ reports the mismatch only
   * when the worker reads the scheduler's greeting before the scheduler
   * closes the connection (at once, or seconds later under ASan); else it
   * ends at its deadline with the registration hint. */
  t0 = ps_now_ms();
  out = h_run(&c, 30000, &st, "ps-worker", "--insecure", "--scheduler",
              c.sched_ep, "--connect-timeout-ms", "10000", "--max-steps", "1",
              NULL);
  took = ps_now_ms() - t0;
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 1,
                "the plaintext worker was served or hung: %s", out ? out : "");
  ck_assert_msg(took < 15000 && out &&
                    (strstr(out, "speaks another security mechanism") ||
                     strstr(out, "no answer to registration")),
                "the plaintext worker failed after %llu ms: %s",
                (unsigned long long)took, out ? out : "");
  free(out);
  /* An admin still gets service, and stops the job. */
  out = admin_psctl(&c, dir, "stop", &st);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psctl stop: %s",
                out ? out : "");
  free(out);
  char why[256];
  ck_assert_msg(h_wait_all_exit0(&c, 0, 20000, why, sizeof(why)), "%s", why);
}
END_TEST

START_TEST(worker_key_may_not) {
  h_cluster_t c;
  h_init(&c, "curve_roles");
  const char *dir = cluster_keys(&c);
  h_spawn(&c, "scheduler", "ps-scheduler", "--keys-dir", dir, "--bind",
          c.sched_ep, "--servers", "1", "--workers", "1", NULL);
  h_proc_t *srv = h_spawn(&c, "server", "ps-server", "--keys-dir", dir,
                          "--scheduler", c.sched_ep, NULL);
  /* A real worker, so the job has its first view: a server binds its data
   * address only then (ps__server_frame_limit). */
  h_spawn(&c, "worker", "ps-worker", "--keys-dir", dir, "--scheduler",
          c.sched_ep, "--epochs", "1000", "--eval-every-epoch=false", NULL);
  ck_assert_msg(h_wait_log(srv->log, "event=frame_limit", 60000),
                "the server did not bind its data address");
  raw_t r;
  raw_open(&r, dir, NULL, c.sched_ep, NULL);

  Ps__Envelope env = PS__ENVELOPE__INIT;
  Ps__Register reg = PS__REGISTER__INIT;
  reg.role = PS__ROLE__ROLE_SERVER;
  reg.address = (char *)"tcp://127.0.0.1:1";
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &reg;
  ck_assert_int_eq(raw_ask(&r, &env), PS_ERR_PERMISSION_DENIED);

  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_COMMAND;
  env.checkpoint_command = &cc;
  ck_assert_int_eq(raw_ask(&r, &env), PS_ERR_PERMISSION_DENIED);

  Ps__DrainCommand dc = PS__DRAIN_COMMAND__INIT;
  dc.server = 1;
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_DRAIN_COMMAND;
  env.drain_command = &dc;
  ck_assert_int_eq(raw_ask(&r, &env), PS_ERR_PERMISSION_DENIED);

  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = (char *)"a worker key wants the cluster stopped";
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  ck_assert_int_eq(raw_ask(&r, &env), PS_ERR_PERMISSION_DENIED);
  raw_close(&r);

  /* Replication to the server, with the server's key from the view. */
  int st;
  char *js = admin_psctl(&c, dir, "status", &st);
  ck_assert_msg(js && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status: %s",
                js ? js : "");
  h_node_t nodes[8];
  int n = h_status_nodes(js, nodes, 8);
  free(js);
  const char *addr = NULL;
  for (int i = 0; i < n; i++)
    if (strcmp(nodes[i].role, "server") == 0) addr = nodes[i].address;
  ck_assert_ptr_nonnull(addr);
  char spub[700];
  snprintf(spub, sizeof(spub), "%s/server.pub", dir);
  char *text = h_read_file(spub, NULL);
  const char *pk = strstr(text, "public = ");
  ck_assert_ptr_nonnull(pk);
  char server_key[PS_KEY_Z85_LEN + 1];
  memcpy(server_key, pk + 9, PS_KEY_Z85_LEN);
  server_key[PS_KEY_Z85_LEN] = '\0';
  free(text);
  raw_open(&r, dir, NULL, addr, server_key);
  Ps__Replicate rep = PS__REPLICATE__INIT;
  rep.kind = PS__REPLICATE_KIND__REPL_LIVE;
  ps__envelope__init(&env);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = &rep;
  ck_assert_int_eq(raw_ask(&r, &env), PS_ERR_PERMISSION_DENIED);
  raw_close(&r);

  /* The job is untouched: the admin stops it. */
  char *out = admin_psctl(&c, dir, "stop", &st);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "psctl stop: %s",
                out ? out : "");
  free(out);
  char why[256];
  ck_assert_msg(h_wait_all_exit0(&c, 0, 20000, why, sizeof(why)), "%s", why);
}
END_TEST

/* A BSP job of 2 servers and 2 workers, keyed or not; the weights at the
 * end into dump. */
static void run_job(h_cluster_t *c, const char *keys, const char *dump) {
  h_new_sched_ep(c);
  const char *k1 = keys ? "--keys-dir" : "--insecure=true";
  const char *k2 = keys ? keys : "--log-level=info";
  int from = c->nprocs;
  h_spawn(c, "scheduler", "ps-scheduler", k1, k2, "--bind", c->sched_ep,
          "--servers", "2", "--workers", "2", "--mode", "bsp", NULL);
  h_spawn(c, "server0", "ps-server", k1, k2, "--scheduler", c->sched_ep, NULL);
  h_spawn(c, "server1", "ps-server", k1, k2, "--scheduler", c->sched_ep, NULL);
  h_spawn(c, "worker0", "ps-worker", k1, k2, "--scheduler", c->sched_ep,
          "--rank", "0", "--batch-size", "32", "--max-steps", "60",
          "--dump-weights", dump, NULL);
  h_spawn(c, "worker1", "ps-worker", k1, k2, "--scheduler", c->sched_ep,
          "--rank", "1", "--batch-size", "32", "--max-steps", "60", NULL);
  char why[256];
  ck_assert_msg(h_wait_all_exit0(c, from, 240000, why, sizeof(why)), "%s", why);
}

START_TEST(keyed_job_trains_the_same) {
  h_cluster_t c;
  h_init(&c, "curve_same_weights");
  const char *dir = cluster_keys(&c);
  char plain[700], keyed[700];
  snprintf(plain, sizeof(plain), "%s", h_path(&c, "plain.bin"));
  snprintf(keyed, sizeof(keyed), "%s", h_path(&c, "keyed.bin"));
  run_job(&c, NULL, plain);
  run_job(&c, dir, keyed);
  h_kill_all(&c);
  size_t na, nb;
  float *a = (float *)h_read_file(plain, &na);
  float *b = (float *)h_read_file(keyed, &nb);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(na, nb);
  ck_assert_uint_gt(na, 0);
  size_t n = na / sizeof(float), differ = 0;
  double max_diff = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > max_diff) max_diff = d;
    differ += a[i] != b[i];
  }
  fprintf(stderr, "curve same weights: %zu weights, %zu differ, max %.3g\n", n,
          differ, max_diff);
  ck_assert_msg(max_diff <= 1e-6, "keyed and plaintext weights differ by %.3g",
                max_diff);
  free(a);
  free(b);
}
END_TEST

/* ---- the wire: a TCP proxy between the worker and the server ---- */

#define CAP_MAX (64u << 20)

typedef struct {
  int listen_fd, target_port, stop;
  pthread_mutex_t mu;
  unsigned char *cap;
  size_t ncap;
} proxy_t;

static void *proxy_main(void *arg) {
  proxy_t *p = arg;
  struct pollfd fds[33];
  int peer[33];
  int n = 1;
  fds[0].fd = p->listen_fd;
  fds[0].events = POLLIN;
  unsigned char buf[65536];
  while (!p->stop) {
    if (poll(fds, (nfds_t)n, 100) <= 0) continue;
    if ((fds[0].revents & POLLIN) && n + 2 <= 33) {
      int a = accept(p->listen_fd, NULL, NULL);
      int b = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in sa = {.sin_family = AF_INET,
                               .sin_port = htons((uint16_t)p->target_port)};
      sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (a >= 0 && b >= 0 &&
          connect(b, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        fds[n] = (struct pollfd){.fd = a, .events = POLLIN};
        peer[n++] = b;
        fds[n] = (struct pollfd){.fd = b, .events = POLLIN};
        peer[n++] = a;
      } else {
        if (a >= 0) close(a);
        if (b >= 0) close(b);
      }
    }
    for (int i = 1; i < n; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got <= 0) {
        shutdown(peer[i], SHUT_WR);
        fds[i].fd = -1;
        continue;
      }
      pthread_mutex_lock(&p->mu);
      if (p->ncap + (size_t)got <= CAP_MAX) {
        memcpy(p->cap + p->ncap, buf, (size_t)got);
        p->ncap += (size_t)got;
      }
      pthread_mutex_unlock(&p->mu);
      for (ssize_t off = 0; off < got;) {
        ssize_t w = write(peer[i], buf + off, (size_t)(got - off));
        if (w <= 0) break;
        off += w;
      }
    }
  }
  for (int i = 1; i < n; i++)
    if (fds[i].fd >= 0) close(fds[i].fd);
  return NULL;
}

#define PATTERN_FLOATS 4096

/* Pushes a known gradient through the proxy; returns 1 if its bytes were
 * seen on the wire. */
static int pattern_on_wire(h_cluster_t *c, const char *keys) {
  h_new_sched_ep(c);
  int sport = h_free_port(), pport = h_free_port();
  char bind_ep[64], adv[64];
  snprintf(bind_ep, sizeof(bind_ep), "tcp://127.0.0.1:%d", sport);
  snprintf(adv, sizeof(adv), "tcp://127.0.0.1:%d", pport);
  proxy_t p;
  memset(&p, 0, sizeof(p));
  pthread_mutex_init(&p.mu, NULL);
  p.cap = malloc(CAP_MAX);
  p.target_port = sport;
  p.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(p.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)pport)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(p.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  ck_assert_int_eq(listen(p.listen_fd, 16), 0);
  pthread_t t;
  pthread_create(&t, NULL, proxy_main, &p);

  const char *k1 = keys ? "--keys-dir" : "--insecure=true";
  const char *k2 = keys ? keys : "--log-level=info";
  int from = c->nprocs;
  h_spawn(c, "scheduler", "ps-scheduler", k1, k2, "--bind", c->sched_ep,
          "--servers", "1", "--workers", "1", "--mode", "asp", NULL);
  h_spawn(c, "server", "ps-server", k1, k2, "--scheduler", c->sched_ep,
          "--bind", bind_ep, "--advertise", adv, NULL);

  ps_tensor_spec_t ts;
  memset(&ts, 0, sizeof(ts));
  snprintf(ts.name, sizeof(ts.name), "probe");
  ts.length = PATTERN_FLOATS;
  ts.init = PS__INIT__INIT_ZERO;
  ps_model_t model;
  memset(&model, 0, sizeof(model));
  model.ntensors = 1;
  model.tensors = &ts;
  model.total = PATTERN_FLOATS;
  model.optimizer = PS__OPTIMIZER__OPT_SGD;
  model.learning_rate = 0.01f;
  model.seed = 1;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = c->sched_ep;
  o.keys_dir = keys;
  o.timeout_ms = 20000;
  int rc;
  char err[512];
  ps_client_t *cl = ps_client_new(&o, &model, &rc, err, sizeof(err));
  ck_assert_msg(cl != NULL, "client: %s", err);
  static float g[PATTERN_FLOATS];
  for (int i = 0; i < PATTERN_FLOATS; i++) g[i] = 1.0f + (float)i * 0.03125f;
  ck_assert_int_eq(ps_client_push(cl, 0, PATTERN_FLOATS, g, 0), PS_OK);
  static float w[PATTERN_FLOATS];
  ck_assert_int_eq(ps_client_pull(cl, 0, PATTERN_FLOATS, w, 1), PS_OK);
  /* The push reached the server: w = -lr * g. */
  ck_assert_float_eq_tol(w[100], -0.01f * g[100], 1e-6f);
  ps_client_destroy(&cl);
  char why[256];
  ck_assert_msg(h_wait_all_exit0(c, from, 30000, why, sizeof(why)), "%s", why);
  p.stop = 1;
  pthread_join(t, NULL);
  close(p.listen_fd);
  /* 256 bytes from the middle of the gradient. */
  const unsigned char *needle = (const unsigned char *)&g[2000];
  size_t nlen = 64 * sizeof(float);
  int seen = memmem(p.cap, p.ncap, needle, nlen) != NULL;
  fprintf(stderr, "curve wire (%s): %zu bytes through the proxy, pattern %s\n",
          keys ? "keys" : "insecure", p.ncap, seen ? "seen" : "not seen");
  ck_assert_msg(p.ncap > PATTERN_FLOATS * sizeof(float),
                "only %zu bytes through the proxy", p.ncap);
  free(p.cap);
  return seen;
}

/* --max-connections: a scheduler holding 2 connections (two psctl top
 * sessions, each on one connection for as long as it runs) refuses the
 * handshake of a third, which gets no answer; once a session ends the
 * next one is admitted. Counted and logged. */
START_TEST(connection_cap) {
  h_cluster_t c;
  h_init(&c, "curve_cap");
  const char *dir = cluster_keys(&c);
  h_proc_t *sched = h_spawn(&c, "scheduler", "ps-scheduler", "--keys-dir", dir,
                            "--bind", c.sched_ep, "--servers", "1", "--workers",
                            "1", "--max-connections", "2", NULL);
  ck_assert_msg(h_wait_log(sched->log, "event=listening", 10000),
                "scheduler did not start");
  h_proc_t *top[2];
  for (int i = 0; i < 2; i++) {
    char name[16];
    snprintf(name, sizeof(name), "top%d", i);
    top[i] = h_spawn(&c, name, "psctl", "--scheduler", c.sched_ep, "--keys-dir",
                     dir, "--timeout-ms", "5000", "--json", "--interval-ms",
                     "200", "top", NULL);
    /* Answered once: its connection is held. */
    ck_assert_msg(h_wait_log(top[i]->log, "\"epoch\"", 15000),
                  "psctl top %d got no answer", i);
  }
  int st;
  char *out = h_run(&c, 15000, &st, "psctl", "--scheduler", c.sched_ep,
                    "--keys-dir", dir, "--timeout-ms", "1500", "status", NULL);
  ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1,
                "a third connection was served: %s", out ? out : "");
  free(out);
  ck_assert_msg(h_wait_log(sched->log, "event=connections_refused", 5000),
                "the refusal was not logged");
  ck_assert_msg(count_in_file(sched->log, "max_connections=2") >= 1,
                "the log line does not name the cap");
  /* One session ends: the next connection is admitted. */
  kill(top[0]->pid, SIGTERM);
  ck_assert(h_wait_exit(top[0], 5000));
  int served = 0;
  uint64_t end = h_deadline_ms(15000);
  while (!served && h_now_ms() < end) {
    out = h_run(&c, 15000, &st, "psctl", "--scheduler", c.sched_ep,
                "--keys-dir", dir, "--timeout-ms", "2000", "status", NULL);
    served = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    free(out);
  }
  ck_assert_msg(served, "no connection admitted after one closed");
  out = admin_psctl(&c, dir, "stop", &st);
  free(out);
  h_kill_all(&c);
}
END_TEST

START_TEST(no_plaintext_on_the_wire) {
  h_cluster_t c;
  h_init(&c, "curve_wire");
  const char *dir = cluster_keys(&c);
  ck_assert_msg(pattern_on_wire(&c, NULL),
                "the probe does not see a plaintext push");
  ck_assert_msg(!pattern_on_wire(&c, dir),
                "a CURVE push crossed the wire in plaintext");
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("curve");
  TCase *tc = tcase_create("curve");
  tcase_set_timeout(tc, 400);
  tcase_add_test(tc, keygen_files_and_refusals);
  tcase_add_test(tc, unknown_key_gets_no_service);
  tcase_add_test(tc, worker_key_may_not);
  tcase_add_test(tc, connection_cap);
  tcase_add_test(tc, no_plaintext_on_the_wire);
  tcase_add_test(tc, keyed_job_trains_the_same);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
