/* libps-client's sparse table calls (issue #3), synchronous, on the calling
 * thread. See worker/client/client_int.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/err.h"
#include "common/frame.h"
#include "common/init.h"
#include "common/time.h"
#include "common/view.h"
#include "worker/client/client_int.h"

/* ---- sparse tables (issue #3) ------------------------------------------- */

/* A caller's key and where it came from, for sorting a copy. */
typedef struct {
  uint64_t key;
  size_t at;
} ps__skey_t;

static int ps__client_cmp_skey(const void *a, const void *b) {
  uint64_t x = ((const ps__skey_t *)a)->key, y = ((const ps__skey_t *)b)->key;
  return x < y ? -1 : x > y;
}

/* One range's share of a sparse call: keys [off, off + n) of the grouped
 * arrays, ascending, all of rows that live in range `range` of the view
 * (ps_view_sparse_range). A job's ranges never change, so a piece stays
 * whole across views: it is resent to the range's primary of the moment,
 * with the same sequence number, and the range applies it once. */
typedef struct {
  uint32_t range;
  uint32_t server_id; /* where it went last */
  uint64_t seq;       /* pushes: fixed at the first send */
  size_t off, n;
  uint64_t request_id; /* 0: not in flight */
  int done;
  uint64_t retry_at_ms; /* refused as stale or not ready: resend then */
} ps__spiece_t;

static int ps__client_sparse_send(ps_client_t *c, int is_push,
                                  const char *table, uint32_t dim,
                                  ps__spiece_t *p, const uint64_t *keys,
                                  const float *vals, uint64_t clock) {
  if (p->range >= c->view->nranges)
    return ps__client_fail(c, PS_ERR_STALE_EPOCH,
                           "table \"%s\": view epoch %" PRIu64
                           " has no range %u",
                           table, c->view->epoch, p->range);
  p->server_id = c->view->ranges[p->range].server_id;
  ps__conn_t *k;
  int rc = ps__client_conn_get(c, p->server_id, &k);
  if (rc != PS_OK) return rc;
  /* Copies, not loans: the grouped arrays are freed when the call ends,
   * which may be before ZeroMQ sends a frame of a call that timed out. */
  zmq_msg_t frames[2];
  int nframes = 1;
  size_t kbytes = p->n * sizeof(uint64_t);
  if (zmq_msg_init_size(&frames[0], kbytes) != 0)
    return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
  memcpy(zmq_msg_data(&frames[0]), keys + p->off, kbytes);
  if (is_push) {
    size_t vbytes = p->n * dim * sizeof(float);
    if (zmq_msg_init_size(&frames[1], vbytes) != 0) {
      zmq_msg_close(&frames[0]);
      return ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    }
    memcpy(zmq_msg_data(&frames[1]), vals + p->off * dim, vbytes);
    nframes = 2;
  }
  Ps__SparsePush push = PS__SPARSE_PUSH__INIT;
  Ps__SparsePull pull = PS__SPARSE_PULL__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = ++c->next_request_id;
  env.sender = c->node_id;
  env.epoch = c->view->epoch;
  if (is_push) {
    push.table = (char *)table;
    push.nkeys = p->n;
    push.clock = clock;
    if (p->seq == 0) p->seq = ++c->next_seq;
    push.seq = p->seq;
    env.body_case = PS__ENVELOPE__BODY_SPARSE_PUSH;
    env.sparse_push = &push;
  } else {
    pull.table = (char *)table;
    pull.nkeys = p->n;
    env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL;
    env.sparse_pull = &pull;
  }
  rc = ps_msg_send(k->sock, NULL, &env, frames, nframes);
  if (rc != PS_OK)
    return ps__client_fail(c, rc, "server %u (%s): sparse send failed: %s",
                           p->server_id, k->address, zmq_strerror(errno));
  p->request_id = env.request_id;
  p->retry_at_ms = 0;
  return PS_OK;
}

/* Handles one reply on server p's socket. Returns PS_OK (p may now be
 * done or waiting to be resent) or a failure with errmsg set. */
static int ps__client_sparse_reply(ps_client_t *c, int is_push, uint32_t dim,
                                   ps__spiece_t *p, ps_msg_t *m, int status,
                                   const char *reason, float *rows) {
  const char *what = is_push ? "sparse push" : "sparse pull";
  const char *addr = ps__client_server_addr(c, p->server_id);
  if (status != PS_OK)
    return ps__client_fail(c, PS_ERR_PROTO,
                           "server %u (%s): malformed %s reply: %s",
                           p->server_id, addr, what, reason);
  const Ps__Envelope *env = m->env;
  if (env->body_case == PS__ENVELOPE__BODY_ERROR) {
    int code = env->error->code;
    if (code == PS_ERR_STALE_EPOCH || code == PS_ERR_NOT_READY) {
      /* Refused before anything was applied: resending is safe. */
      p->request_id = 0;
      p->retry_at_ms = ps_now_ms() + PS__STALE_RETRY_MS;
      return PS_OK;
    }
    if (code >= 0) code = PS_ERR_PROTO;
    return ps__client_fail(c, code, "server %u (%s): %s: %s", p->server_id,
                           addr, ps_err_name(code),
                           env->error->message ? env->error->message : "");
  }
  if (is_push) {
    if (env->body_case != PS__ENVELOPE__BODY_ACK)
      return ps__client_fail(c, PS_ERR_PROTO,
                             "server %u (%s): %s reply to a %s", p->server_id,
                             addr, ps_body_name(env->body_case), what);
  } else {
    const Ps__SparsePullReply *r = env->sparse_pull_reply;
    if (env->body_case != PS__ENVELOPE__BODY_SPARSE_PULL_REPLY ||
        r->nkeys != p->n || r->dim != dim || m->npayload != 1 ||
        ps_msg_payload_bytes(m) != p->n * dim * sizeof(float))
      return ps__client_fail(
          c, PS_ERR_PROTO,
          "server %u (%s): %s reply does not match a pull of "
          "%zu rows of dim %u",
          p->server_id, addr, ps_body_name(env->body_case), p->n, dim);
    ps_msg_payload_gather(m, rows + p->off * dim);
  }
  p->done = 1;
  p->request_id = 0;
  return PS_OK;
}

/* Sends every piece, then waits for all replies until the call's deadline,
 * resending pieces refused for their epoch (nothing of those was applied). */
static int ps__client_sparse_run(ps_client_t *c, int is_push, const char *table,
                                 uint32_t dim,
                                 ps__spiece_t *pieces, size_t npieces,
                                 const uint64_t *keys, const float *vals,
                                 float *rows, uint64_t clock) {
  uint64_t deadline = ps_now_ms() + (uint64_t)c->opts.timeout_ms;
  int rc = ps__client_poll_reserve(c, npieces);
  if (rc != PS_OK) return rc;
  for (;;) {
    int changed = ps__client_refresh(c);
    if (changed < 0) return changed;
    if (changed)
      /* A range's primary changed (failover, handover): what it had in
       * flight goes to the new one, same sequence numbers. */
      for (size_t i = 0; i < npieces; i++) {
        ps__spiece_t *p = &pieces[i];
        if (!p->done && p->request_id != 0 && p->range < c->view->nranges &&
            c->view->ranges[p->range].server_id != p->server_id)
          p->request_id = 0;
      }
    uint64_t now = ps_now_ms();
    size_t pending = 0;
    uint64_t wake_at = deadline;
    for (size_t i = 0; i < npieces; i++) {
      ps__spiece_t *p = &pieces[i];
      if (p->done) continue;
      pending++;
      if (p->request_id != 0) continue;
      if (p->retry_at_ms > now) {
        if (p->retry_at_ms < wake_at) wake_at = p->retry_at_ms;
        continue;
      }
      rc = ps__client_sparse_send(c, is_push, table, dim, p, keys, vals, clock);
      if (rc != PS_OK) return rc;
    }
    if (pending == 0) return PS_OK;
    if (now >= deadline) {
      for (size_t i = 0; i < npieces; i++) {
        if (pieces[i].done) continue;
        return ps__client_fail(
            c, PS_ERR_TIMEOUT,
            "server %u (%s) did not answer sparse %s of %zu rows "
            "of \"%s\" within %d ms",
            pieces[i].server_id, ps__client_server_addr(c, pieces[i].server_id),
            is_push ? "push" : "pull", pieces[i].n, table, c->opts.timeout_ms);
      }
    }
    zmq_pollitem_t *items = c->poll_items;
    size_t nitems = 0;
    for (size_t i = 0; i < npieces; i++) {
      ps__conn_t *k = ps__client_conn_find(c, pieces[i].server_id);
      c->poll_conns[i] = NULL;
      if (pieces[i].done || pieces[i].request_id == 0 || k == NULL ||
          k->sock == NULL)
        continue;
      items[nitems] = (zmq_pollitem_t){.socket = k->sock, .events = ZMQ_POLLIN};
      c->poll_conns[nitems++] = k;
    }
    now = ps_now_ms();
    long slice = wake_at > now ? (long)(wake_at - now) : 0;
    if (slice > PS__POLL_SLICE_MS) slice = PS__POLL_SLICE_MS;
    if (zmq_poll(items, (int)nitems, slice) < 0 && errno != EINTR)
      return ps__client_fail(c, PS_ERR_ZMQ, "zmq_poll: %s",
                             zmq_strerror(errno));
    for (size_t i = 0; i < nitems; i++) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      ps__conn_t *k = c->poll_conns[i];
      for (;;) {
        ps_msg_t m;
        char reason[256] = "";
        int st = ps_msg_recv(k->sock, 0, &ps_frame_default_limits, &m, reason,
                             sizeof(reason));
        if (st == PS_ERR_TIMEOUT) break;
        if (st != PS_OK && st != PS_ERR_PROTO && st != PS_ERR_VERSION &&
            st != PS_ERR_TOO_BIG) {
          ps_msg_close(&m);
          return ps__client_fail(c, st, "server %u (%s): receive failed: %s",
                                 k->server_id, k->address, zmq_strerror(errno));
        }
        ps__spiece_t *p = NULL;
        for (size_t j = 0; j < npieces && m.request_id; j++)
          if (pieces[j].server_id == k->server_id &&
              pieces[j].request_id == m.request_id)
            p = &pieces[j];
        /* Anything else is a late reply to an earlier call: dropped. */
        if (p)
          rc =
              ps__client_sparse_reply(c, is_push, dim, p, &m, st, reason, rows);
        ps_msg_close(&m);
        if (rc != PS_OK) return rc;
      }
    }
  }
}

static int ps__client_sparse(ps_client_t *c, int is_push, const char *table,
                             const uint64_t *keys, size_t n,
                             const float *values, float *out, uint64_t clock) {
  int rc = ps__client_refresh(c);
  if (rc < 0) return rc;
  if (table == NULL)
    return ps__client_fail(c, PS_ERR_INVAL, "table name is NULL");
  const ps_sparse_spec_t *spec = ps_model_sparse(&c->view->model, table);
  if (spec == NULL)
    return ps__client_fail(c, PS_ERR_UNKNOWN_KEY,
                           "no sparse table \"%s\" in the model", table);
  if (n == 0) return PS_OK;
  if (keys == NULL || (is_push ? values == NULL : out == NULL))
    return ps__client_fail(c, PS_ERR_INVAL, "sparse call on \"%s\": NULL array",
                           table);
  /* Sparse calls are synchronous and read replies straight off the
   * sockets; dense calls in flight would have theirs dropped. */
  if (c->nops > 0)
    return ps__client_fail(
        c, PS_ERR_INVAL, "sparse call while %zu dense calls are not waited for",
        c->nops);
  uint32_t dim = spec->dim;
  uint64_t salt = spec->salt;
  char tname[PS_NAME_MAX];
  snprintf(tname, sizeof(tname), "%s", spec->name);
  size_t ns = c->view->nsparse_parts;
  if (ns == 0)
    return ps__client_fail(c, PS_ERR_NOT_READY,
                           "view epoch %" PRIu64
                           " has no dense range to hold sparse rows",
                           c->view->epoch);

  ps__skey_t *sorted = malloc(n * sizeof(*sorted));
  uint64_t *gkeys = malloc(n * sizeof(*gkeys));
  size_t *gfrom = malloc(n * sizeof(*gfrom));
  uint32_t *owner = malloc(n * sizeof(*owner));
  float *rows = malloc(n * dim * sizeof(float));
  ps__spiece_t *pieces = calloc(ns, sizeof(*pieces));
  size_t *fill = calloc(ns, sizeof(*fill));
  if (!sorted || !gkeys || !gfrom || !owner || !rows || !pieces || !fill) {
    rc = ps__client_fail(c, PS_ERR_NOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) sorted[i] = (ps__skey_t){keys[i], i};
  qsort(sorted, n, sizeof(*sorted), ps__client_cmp_skey);
  for (size_t i = 1; i < n; i++) {
    if (sorted[i].key == sorted[i - 1].key) {
      rc = ps__client_fail(c, PS_ERR_INVAL,
                           "sparse call on \"%s\": key %" PRIu64
                           " appears twice",
                           tname, sorted[i].key);
      goto out;
    }
  }
  for (size_t s = 0; s < ns; s++) pieces[s].range = c->view->sparse_parts[s];
  for (size_t i = 0; i < n; i++) {
    /* The part index of ps_view_sparse_range. */
    owner[i] = ps_sparse_part_of(salt, sorted[i].key, (uint32_t)ns);
    pieces[owner[i]].n++;
  }
  size_t off = 0;
  for (size_t s = 0; s < ns; s++) {
    pieces[s].off = off;
    off += pieces[s].n;
    if (pieces[s].n == 0) pieces[s].done = 1;
  }
  /* A stable partition of the sorted keys: each server's stay ascending. */
  for (size_t i = 0; i < n; i++) {
    ps__spiece_t *p = &pieces[owner[i]];
    size_t at = p->off + fill[owner[i]]++;
    gkeys[at] = sorted[i].key;
    gfrom[at] = sorted[i].at;
    if (is_push)
      memcpy(rows + at * dim, values + sorted[i].at * dim, dim * sizeof(float));
  }
  rc = ps__client_sparse_run(c, is_push, tname, dim, pieces, ns, gkeys,
                             rows, rows, clock);
  if (rc == PS_OK && !is_push)
    for (size_t i = 0; i < n; i++)
      memcpy(out + gfrom[i] * dim, rows + i * dim, dim * sizeof(float));
out:
  free(sorted);
  free(gkeys);
  free(gfrom);
  free(owner);
  free(rows);
  free(pieces);
  free(fill);
  return rc;
}

int ps_client_sparse_push(ps_client_t *c, const char *table,
                          const uint64_t *keys, size_t n, const float *values,
                          uint64_t clock) {
  return ps__client_sparse(c, 1, table, keys, n, values, NULL, clock);
}

int ps_client_sparse_pull(ps_client_t *c, const char *table,
                          const uint64_t *keys, size_t n, float *out) {
  return ps__client_sparse(c, 0, table, keys, n, NULL, out, 0);
}
