/* libps-client, calling thread: taking the newest view from the background
 * thread, and the data socket (a DEALER) to each server of the view. See
 * worker/client/client_int.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/log.h"
#include "common/transport.h"
#include "common/view.h"
#include "worker/client/client_int.h"

/* ---- views and connections (calling thread) ----------------------------- */

void ps__client_conn_close(ps__conn_t *k) {
  if (k->sock) zmq_close(k->sock);
  k->sock = NULL;
  ps_zctx_term_async(k->own_ctx);
  k->own_ctx = NULL;
  k->inflight = 0;
  k->acked = 0;
}

ps__conn_t *ps__client_conn_find(ps_client_t *c, uint32_t server_id) {
  for (size_t i = 0; i < c->nconns; i++)
    if (c->conns[i].server_id == server_id) return &c->conns[i];
  return NULL;
}

/* Returns the open socket to server_id, connecting it if needed. */
int ps__client_conn_get(ps_client_t *c, uint32_t server_id, ps__conn_t **out) {
  const ps_node_t *node = ps_view_node(c->view, server_id);
  if (node == NULL || node->address[0] == '\0')
    return ps__client_fail(c, PS_ERR_PEER,
                           "server %u has no address in view epoch %" PRIu64,
                           server_id, c->view->epoch);
  ps__conn_t *k = ps__client_conn_find(c, server_id);
  if (k && k->sock && strcmp(k->address, node->address) == 0) {
    *out = k;
    return PS_OK;
  }
  if (k == NULL) {
    if (c->nconns == c->conns_cap) {
      size_t cap = c->conns_cap ? c->conns_cap * 2 : 8;
      ps__conn_t *n = realloc(c->conns, cap * sizeof(*n));
      if (n == NULL) return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
      c->conns = n;
      c->conns_cap = cap;
    }
    k = &c->conns[c->nconns];
    memset(k, 0, sizeof(*k));
    k->slots = calloc((size_t)c->opts.window, sizeof(*k->slots));
    if (k->slots == NULL)
      return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    k->slots_cap = c->opts.window;
    c->nconns++;
    k->server_id = server_id;
  }
  ps__client_conn_close(k);
  snprintf(k->address, sizeof(k->address), "%s", node->address);
  void *ctx = c->zctx;
  if (ps_zsock_endpoint_has_name(node->address)) {
    if ((k->own_ctx = zmq_ctx_new()) == NULL)
      return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): zmq_ctx_new: %s",
                             server_id, node->address, zmq_strerror(errno));
    ctx = k->own_ctx;
  }
  void *s = zmq_socket(ctx, ZMQ_DEALER);
  if (s == NULL) {
    int e = errno;
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): socket: %s",
                           server_id, node->address, zmq_strerror(e));
  }
  char why[256];
  if (ps_zsock_configure(s, why, sizeof(why)) != PS_OK) {
    zmq_close(s);
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): %s", server_id,
                           node->address, why);
  }
  if (ps_auth_set_routing_id(s, &c->token, PS_AUTH_USE_DATA, why,
                             sizeof(why)) != PS_OK) {
    zmq_close(s);
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): %s", server_id,
                           node->address, why);
  }
  if (c->keys && node->curve_key[0] == '\0') {
    zmq_close(s);
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_PERMISSION_DENIED,
                           "server %u (%s) has no CURVE key in view epoch "
                           "%" PRIu64 ": it runs without --keys-dir",
                           server_id, node->address, c->view->epoch);
  }
  if (c->keys && ps_keys_apply(s, c->keys, node->curve_key, why,
                               sizeof(why)) != PS_OK) {
    zmq_close(s);
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): %s", server_id,
                           node->address, why);
  }
  if (ps_zmq_connect(s, node->address) != 0) {
    int e = errno;
    zmq_close(s);
    ps__client_conn_close(k);
    return ps__client_fail(c, PS_ERR_ZMQ, "server %u (%s): cannot connect: %s",
                           server_id, node->address, zmq_strerror(e));
  }
  k->sock = s;
  k->gen = ++c->conn_gen;
  k->inflight = 0;
  k->acked = 0;
  PS_DEBUG("client_connect", "server=%u addr=%s", server_id, node->address);
  *out = k;
  return PS_OK;
}

int ps__client_conn_alive(ps_client_t *c, uint32_t server_id, uint64_t gen) {
  ps__conn_t *k = ps__client_conn_find(c, server_id);
  return k && k->sock && k->gen == gen;
}

/* 1 if the view says server_id will never answer at address again: it is
 * gone from the view, moved, or dead or left (a dead server comes back
 * under a new id). */
static int ps__client_conn_stale(const ps_view_t *view, uint32_t server_id,
                                 const char *address) {
  const ps_node_t *node = ps_view_node(view, server_id);
  return node == NULL || node->role != PS__ROLE__ROLE_SERVER ||
         node->state == PS__NODE_STATE__NODE_STATE_DEAD ||
         node->state == PS__NODE_STATE__NODE_STATE_LEFT ||
         strcmp(node->address, address) != 0;
}

/* Closes the sockets the new view makes useless: servers gone, moved, dead
 * or left. A dead server's socket must not stay open: ZeroMQ reconnects it
 * to whatever binds the address next, typically the same server restarted
 * under a new id (systemd's Restart=), and this client's second connection
 * there carries the same routing id (common/auth.h) as the one it opens to
 * the new server; the server's ROUTER hands the id to whichever connected
 * last, and replies sent down the other one were lost: a push-pull that
 * had its Ack then waited for its weights until its deadline. */
static void ps__client_conns_prune(ps_client_t *c) {
  for (size_t i = 0; i < c->nconns; i++) {
    ps__conn_t *k = &c->conns[i];
    if (ps__client_conn_stale(c->view, k->server_id, k->address)) {
      ps__client_conn_close(k);
      k->gen = 0;
    }
  }
}

/* Takes the newest view from the background thread, if there is one, and
 * reports a shutdown. Returns 1 if the view changed, 0 if not, or
 * PS_ERR_SHUTDOWN with errmsg set. */
int ps__client_refresh(ps_client_t *c) {
  ps_view_t *fresh;
  pthread_mutex_lock(&c->mu);
  fresh = c->shared.view;
  c->shared.view = NULL;
  int shutdown = c->shared.shutdown;
  int status = c->shared.shutdown_status;
  char reason[sizeof(c->shared.shutdown_reason)];
  if (shutdown) memcpy(reason, c->shared.shutdown_reason, sizeof(reason));
  c->node_id = c->shared.node_id;
  c->rank = c->shared.rank;
  c->num_workers = c->shared.num_workers;
  pthread_mutex_unlock(&c->mu);

  int changed = 0;
  if (fresh) {
    PS_DEBUG("client_view",
             "epoch=%" PRIu64 " prev_epoch=%" PRIu64 " ranges=%zu",
             fresh->epoch, c->view ? c->view->epoch : 0, fresh->nranges);
    ps_view_destroy(&c->view);
    c->view = fresh;
    c->view_gen++;
    ps__client_conns_prune(c);
    changed = 1;
  }
  if (shutdown)
    return ps__client_fail(c, PS_ERR_SHUTDOWN,
                           "scheduler %s shut the cluster down "
                           "(%s): %s",
                           c->scheduler, ps_err_name(status), reason);
  return changed;
}

const char *ps__client_server_addr(ps_client_t *c, uint32_t server_id) {
  ps__conn_t *k = ps__client_conn_find(c, server_id);
  if (k && k->address[0]) return k->address;
  const ps_node_t *node = c->view ? ps_view_node(c->view, server_id) : NULL;
  return node ? node->address : "?";
}
