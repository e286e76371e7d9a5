/* The server's request dispatch (ps-server/server.c, ps__server_dispatch):
 * one real server object, node FUZZ_SERVER_ID, made once and reset before
 * every input, fed the input's messages in-process.
 *
 * Each message record is received with ps_msg_recv under the server's own
 * limits (a real route from one of the harness's senders) and goes where
 * the server's data socket sends it: a bad message is refused as on_data
 * refuses it, a good one goes to ps__server_dispatch, which reaches the
 * shards (push, pull, parked pulls), the sparse tables and the backup side
 * of replication (Replicate, ReplicaSnapshot, ReplicaChunk). Replies go out
 * on the server's data socket to routes it does not know (ROUTER_MANDATORY
 * drops them), as to a worker that went away.
 *
 * Two bodies stand for the scheduler's link instead: a View is adopted as
 * on_view adopts one (the generator's seeds start with one), a Handover
 * goes to ps__server_handle_handover. A view is made safe to adopt here:
 * every node's address becomes inproc://fuzz-peer-<id % FUZZ_PEERS>, where
 * the harness plays the backups (a primary connects to its backups, and
 * nothing may leave the process), restore_dir is dropped (no restore from
 * disk), and a model of more than FUZZ_MAX_KEYS keys is not adopted (the
 * scheduler is trusted with the model's size).
 *
 * Control records: op 0 runs the server's loop once (timers, closes); op 1
 * has the backups ack everything the primary sent them so far (Replicate,
 * snapshots), op 2 has them refuse it as fenced, and the loop runs so that
 * the primary reads the answers; others are ignored. Whatever the backups
 * and the scheduler's link got is dropped after every input.
 *
 * A view the server would stop on (another model, one it cannot adopt)
 * ends the input: nothing after it would be served. A server that did stop
 * (ps_server_stop from a request) is destroyed and made again, which costs
 * the member's linger (up to a second), so it must stay rare.
 *
 * Reset: every range, parked pull, held replication message and sparse row
 * is dropped, the replicator made anew, and the view forgotten, so every
 * input starts from a server that has registered and holds no view.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/transport.h"
#include "common/view.h"
#include "fuzz_setup.h"
#include "fuzz_util.h"
#include "fuzz_wire.h"
#include "ps-server/server_int.h"

/* The harness's backups: one ROUTER per endpoint on the server's context
 * (inproc works within one), and a sink for the scheduler's link. */
#define FUZZ_PEERS 8
#define SCHEDULER_ENDPOINT "inproc://fuzz-server-no-scheduler"

static ps_server_t *server;
static fuzz_wire_t *wire;
static void *peers[FUZZ_PEERS];
static void *scheduler_sink;

static void *bind_router(void *ctx, const char *ep) {
  void *sock = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0;
  if (sock == NULL || zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero)) ||
      zmq_setsockopt(sock, ZMQ_RCVHWM, &zero, sizeof(zero)) ||
      ps_zmq_bind(sock, ep) != 0) {
    fprintf(stderr, "fuzz_server: bind %s: %s\n", ep,
            zmq_strerror(zmq_errno()));
    abort();
  }
  return sock;
}

static void peers_open(ps_server_t *s) {
  for (int i = 0; i < FUZZ_PEERS; i++) {
    char ep[64];
    snprintf(ep, sizeof(ep), "inproc://fuzz-peer-%d", i);
    peers[i] = bind_router(s->zctx, ep);
  }
  scheduler_sink = bind_router(s->zctx, SCHEDULER_ENDPOINT);
}

static void peers_close(void) {
  for (int i = 0; i < FUZZ_PEERS; i++) zmq_close(peers[i]);
  zmq_close(scheduler_sink);
}

enum { PEERS_DROP, PEERS_ACK, PEERS_REFUSE };

/* Reads everything waiting on sock; as a backup, answers each with an Ack
 * or a fenced Error of its request id (how: PEERS_*). */
static void peer_serve(void *sock, int how) {
  for (;;) {
    ps_msg_t m;
    char err[256];
    int rc = ps_msg_recv(sock, 1, NULL, &m, err, sizeof(err));
    if (rc == PS_ERR_TIMEOUT) return;
    /* A backup acks a snapshot once, for its head and chunks together. */
    int chunk = m.env && m.env->body_case == PS__ENVELOPE__BODY_REPLICA_CHUNK;
    if (how != PEERS_DROP && m.has_route && !chunk) {
      Ps__Envelope env = PS__ENVELOPE__INIT;
      env.request_id = m.request_id;
      env.sender = FUZZ_PEER_ID;
      env.epoch = ps__server_view_epoch(server);
      Ps__Ack ack = PS__ACK__INIT;
      Ps__Error e = PS__ERROR__INIT;
      if (how == PEERS_ACK) {
        env.body_case = PS__ENVELOPE__BODY_ACK;
        env.ack = &ack;
      } else {
        e.code = PS_ERR_FENCED;
        e.message = "fenced by the harness";
        env.body_case = PS__ENVELOPE__BODY_ERROR;
        env.error = &e;
      }
      ps_msg_send(sock, &m.route, &env, NULL, 0);
    }
    ps_msg_close(&m);
  }
}

static void peers_serve(int how) {
  for (int i = 0; i < FUZZ_PEERS; i++) peer_serve(peers[i], how);
  peer_serve(scheduler_sink, PEERS_DROP);
}

static ps_server_t *server_new(void) {
  ps_server_opts_t o;
  ps_server_opts_init(&o);
  o.scheduler = SCHEDULER_ENDPOINT;
  o.bind = "inproc://fuzz-server-data";
  o.handle_signals = 0;
  o.scheduler_timeout_ms = 0;
  o.heartbeat_ms = 1000;
  int err;
  char why[256];
  ps_server_t *s = ps_server_new(&o, &err, why, sizeof(why));
  if (s == NULL) {
    fprintf(stderr, "fuzz_server: ps_server_new: %s\n", why);
    abort();
  }
  /* As if the scheduler had answered its Register. */
  s->node_id = FUZZ_SERVER_ID;
  peers_open(s);
  return s;
}

static void server_remake(void) {
  peers_close(); /* the context ends only once every socket is closed */
  ps_server_destroy(&server);
  server = server_new();
}

static void server_reset(ps_server_t *s) {
  ps__server_deferred_free(s);
  if (s->view != NULL || s->nranges > 0) {
    /* A view that gives this server nothing drops every range the way a
     * real one does (parked pulls failed, chains dropped); then no view. */
    ps_view_t *blank = calloc(1, sizeof(*blank));
    char err[256];
    if (blank == NULL ||
        ps__server_adopt_view(s, blank, err, sizeof(err)) != PS_OK) {
      fprintf(stderr, "fuzz_server: reset: %s\n", err);
      abort();
    }
    ps_view_destroy(&s->view);
  }
  ps__server_sparse_free(s);
  s->reported_clock = 0;
  ps_repl_destroy(&s->repl);
  uv_run(&s->loop, UV_RUN_NOWAIT); /* the replicator's sockets close */
  ps_repl_cbs_t rcbs = {.push_done = ps__server_repl_push_done,
                        .synced = ps__server_repl_synced,
                        .progress = ps__server_handover_progress};
  s->repl = ps_repl_new(&s->loop, s->zctx, &s->limits, &rcbs, s);
  if (s->repl == NULL) abort();
}

static int same_model(const ps_view_t *a, const ps_view_t *b) {
  return a->mode == b->mode && ps_model_equal(&a->model, &b->model);
}

/* What on_view does with a view from the scheduler, less the restore.
 * Returns 0 when the server would stop there (the object is left as it
 * was, or with the ranges a failed adoption dropped: the next reset copes
 * with both). */
static int scheduler_view(ps_server_t *s, const Ps__View *pb) {
  char err[512];
  ps_view_t *view = ps_view_from_pb(pb, err, sizeof(err));
  if (view == NULL) return 1; /* the member refuses it and goes on */
  if (view->model.total > FUZZ_MAX_KEYS) {
    ps_view_destroy(&view);
    return 1;
  }
  free(view->restore_dir);
  view->restore_dir = NULL;
  for (size_t i = 0; i < view->nnodes; i++) {
    ps_node_t *n = &view->nodes[i];
    snprintf(n->address, sizeof(n->address), "inproc://fuzz-peer-%u",
             n->id % FUZZ_PEERS);
  }
  s->stats.views++;
  if (s->nranges > 0 && !same_model(s->view, view)) {
    ps_view_destroy(&view);
    return 0;
  }
  int rc = ps__server_adopt_view(s, view, err, sizeof(err));
  if (rc != PS_OK) {
    if (s->view != view) ps_view_destroy(&view);
    return 0;
  }
  return 1;
}

/* One message as the data socket's callback takes it; 0 when the server
 * stops (or would). */
static int serve(ps_server_t *s, ps_msg_t *m, int rc, const char *reason) {
  if (rc != PS_OK) {
    s->stats.bad_messages++;
    ps__server_refuse(s, m, rc, "%s", reason);
    return 1;
  }
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_VIEW:
      return scheduler_view(s, m->env->view);
    case PS__ENVELOPE__BODY_HANDOVER:
      ps__server_handle_handover(s, m->env->handover);
      break;
    default:
      ps__server_dispatch(s, m);
      break;
  }
  return !s->stopping;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (server == NULL) {
    fuzz_quiet_logs("fuzz_server");
    server = server_new();
    wire = fuzz_wire_new(1);
  }
  server_reset(server);
  fuzz_input_t in = {data, size};
  fuzz_record_t r;
  while (fuzz_next_record(&in, &r)) {
    if (r.control) {
      if (r.op == 1 || r.op == 2) {
        peers_serve(r.op == 1 ? PEERS_ACK : PEERS_REFUSE);
        uv_run(&server->loop, UV_RUN_NOWAIT);
      }
      if (r.op <= 2) uv_run(&server->loop, UV_RUN_NOWAIT);
      if (server->stopping) server_remake();
      continue;
    }
    ps_msg_t m;
    char err[512];
    int rc = fuzz_wire_deliver(wire, &r, &server->limits, &m, err, sizeof(err));
    int going = serve(server, &m, rc, err);
    ps_msg_close(&m);
    if (server->stopping) server_remake();
    if (!going) break;
  }
  peers_serve(PEERS_DROP);
  fuzz_pace_reaper(); /* the replicator's sockets, made for every input */
  return 0;
}
