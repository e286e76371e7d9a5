/* The cluster view: built from the scheduler's state, published with a new
 * epoch, sent to the nodes, and answered to psctl status. */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/time.h"
#include "common/view.h"
#include "scheduler/coordinator.h"
#include "scheduler/placement.h"
#include "scheduler/sched_int.h"

/* ---- the view on the wire ------------------------------------------- */

void ps__sched_view_pb_free(view_pb_t *v) {
  free(v->infos);
  free(v->info_ptrs);
  free(v->krs);
  free(v->kr_ptrs);
  free(v->syncing);
  free(v->tensors);
  free(v->tensor_ptrs);
  free(v->sparse);
  free(v->sparse_ptrs);
  free(v->opts);
  memset(v, 0, sizeof(*v));
}

int ps__sched_view_pb_build(ps_sched_t *s, view_pb_t *v) {
  memset(v, 0, sizeof(*v));
  ps__view__init(&v->view);
  uint64_t now = ps_now_ms();
  v->view.epoch = s->epoch;
  v->view.mode = (Ps__ConsistencyMode)s->opts.mode;
  v->view.staleness = s->opts.staleness;
  v->view.live_workers = ps__sched_live_workers(s);
  v->view.start_clock = s->start_clock;
  v->view.restore_dir = s->restore_dir ? s->restore_dir : "";
  v->view.replication = s->replication;
  v->view.servers = s->opts.servers;

  /* calloc(0) may return NULL; one spare entry keeps NULL meaning failure. */
  v->infos = calloc(s->nnodes + 1, sizeof(*v->infos));
  v->info_ptrs = calloc(s->nnodes + 1, sizeof(*v->info_ptrs));
  v->krs = calloc(s->nranges + 1, sizeof(*v->krs));
  v->kr_ptrs = calloc(s->nranges + 1, sizeof(*v->kr_ptrs));
  v->syncing =
      calloc((s->nranges + 1) * (PS_MAX_REPLICAS - 1), sizeof(*v->syncing));
  size_t nt = s->has_model ? s->model.ntensors : 0;
  v->tensors = calloc(nt + 1, sizeof(*v->tensors));
  v->tensor_ptrs = calloc(nt + 1, sizeof(*v->tensor_ptrs));
  size_t nsp = s->has_model ? s->model.nsparse : 0;
  v->sparse = calloc(nsp + 1, sizeof(*v->sparse));
  v->sparse_ptrs = calloc(nsp + 1, sizeof(*v->sparse_ptrs));
  v->opts = calloc(nt + nsp + 1, sizeof(*v->opts));
  if (!v->infos || !v->info_ptrs || !v->krs || !v->kr_ptrs || !v->syncing ||
      !v->tensors || !v->tensor_ptrs || !v->sparse || !v->sparse_ptrs ||
      !v->opts) {
    ps__sched_view_pb_free(v);
    return PS_ERR_NOMEM;
  }
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    Ps__NodeInfo *ni = &v->infos[i];
    ps__node_info__init(ni);
    ni->id = n->id;
    ni->role = (Ps__Role)n->role;
    ni->address = n->address;
    ni->state = (Ps__NodeState)n->state;
    ni->last_heartbeat_ms = now > n->last_seen_ms ? now - n->last_seen_ms : 0;
    ni->clock = n->clock;
    ni->rank = n->role == PS__ROLE__ROLE_WORKER ? n->rank : 0;
    ni->join_clock = n->join_clock;
    ni->joining = n->joining;
    ni->active = n->active;
    ni->leave_clock = n->leave_clock;
    ni->metrics_address = n->metrics_address;
    ni->curve_key = n->curve_key;
    v->info_ptrs[i] = ni;
  }
  v->view.n_nodes = s->nnodes;
  v->view.nodes = v->info_ptrs;
  for (size_t i = 0; i < s->nranges; i++) {
    Ps__KeyRange *kr = &v->krs[i];
    ps__key_range__init(kr);
    kr->begin = s->ranges[i].begin;
    kr->end = s->ranges[i].end;
    kr->server_id = s->ranges[i].server_id;
    /* Points into the scheduler's range, like the rest of the view. */
    kr->backups = s->ranges[i].backups;
    kr->n_backups = s->ranges[i].nbackups;
    kr->syncing = &v->syncing[i * (PS_MAX_REPLICAS - 1)];
    for (uint32_t k = 0; k < s->ranges[i].nbackups; k++)
      if ((s->ranges[i].syncing_mask >> k) & 1u)
        kr->syncing[kr->n_syncing++] = s->ranges[i].backups[k];
    v->kr_ptrs[i] = kr;
  }
  v->view.n_ranges = s->nranges;
  v->view.ranges = v->kr_ptrs;
  if (s->has_model) {
    ps__model_spec__init(&v->model);
    ps_model_to_pb(&s->model, &v->model, v->tensors, v->tensor_ptrs, v->opts);
    ps_model_sparse_to_pb(&s->model, &v->model, v->sparse, v->sparse_ptrs,
                          v->opts + nt);
    v->view.model = &v->model;
  }
  return PS_OK;
}

void ps__sched_view_wire_drop(ps_sched_t *s) {
  if (!s->view_wire.valid) return;
  int n = s->view_wire.has_delta ? 4 : 2;
  for (int i = 0; i < n; i++) zmq_msg_close(&s->view_wire.msg[i]);
  s->view_wire.valid = 0;
  s->view_wire.has_delta = 0;
}

/* Notes which nodes the view of this epoch shows otherwise than the last
 * packed one (v carries the servers' tokens): those get shown_epoch =
 * epoch. Returns how many. */
static size_t note_changes(ps_sched_t *s, const view_pb_t *v) {
  size_t changed = 0;
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    ps_node_t now;
    /* The scheduler's own strings always fit; a failure would only
     * truncate what is compared, so the node counts as changed. */
    int rc = ps_node_from_pb(&v->infos[i], &now, NULL, 0);
    if (rc == PS_OK && n->shown_epoch != 0 && ps_node_equal(&now, &n->shown))
      continue;
    n->shown = now;
    n->shown_epoch = s->epoch;
    changed++;
  }
  return changed;
}

/* The same for the ranges: those the view of this epoch shows otherwise
 * get shown_range_epoch = epoch. Returns 1 if the view has as many ranges
 * as the last packed one (a delta may then carry only the changed ones),
 * else 0 (they all count as changed). */
static int note_range_changes(ps_sched_t *s) {
  if (s->nshown_ranges == s->nranges && (s->nranges == 0 || s->shown_ranges)) {
    for (size_t i = 0; i < s->nranges; i++) {
      if (ps_range_equal(&s->ranges[i], &s->shown_ranges[i])) continue;
      s->shown_ranges[i] = s->ranges[i];
      s->shown_range_epoch[i] = s->epoch;
    }
    return 1;
  }
  free(s->shown_ranges);
  free(s->shown_range_epoch);
  s->shown_ranges = calloc(s->nranges + 1, sizeof(*s->shown_ranges));
  s->shown_range_epoch = calloc(s->nranges + 1, sizeof(uint64_t));
  s->nshown_ranges = 0;
  if (s->shown_ranges == NULL || s->shown_range_epoch == NULL) return 0;
  for (size_t i = 0; i < s->nranges; i++) {
    s->shown_ranges[i] = s->ranges[i];
    s->shown_range_epoch[i] = s->epoch;
  }
  s->nshown_ranges = s->nranges;
  return 0;
}

/* Packs env twice, with and without the nodes' tokens, into msg[0] and
 * msg[1]. */
static int pack_pair(ps_sched_t *s, Ps__Envelope *env, Ps__NodeInfo *infos,
                     zmq_msg_t msg[2]) {
  /* Servers check who sends pushes and replication: their views carry
   * the nodes' tokens, the others' do not (common/auth.h). */
  for (size_t i = 0; i < s->nnodes; i++) infos[i].token = s->nodes[i].token;
  int rc = ps_msg_pack(env, &msg[0]);
  for (size_t i = 0; i < s->nnodes; i++) infos[i].token = (char *)"";
  if (rc == PS_OK) {
    rc = ps_msg_pack(env, &msg[1]);
    if (rc != PS_OK) zmq_msg_close(&msg[0]);
  }
  return rc;
}

/* The current epoch's view on the wire, packed once for the servers and
 * once for the others, whole and as a delta. One epoch is one content: a
 * node that hears of it late (its heartbeat carried an older epoch) gets
 * the same bytes as the rest, and no send packs the whole node table
 * again, which made a publish to N nodes cost N^2. */
static int view_wire(ps_sched_t *s) {
  if (s->view_wire.valid && s->view_wire.epoch == s->epoch) return PS_OK;
  uint64_t prev = s->view_wire.valid ? s->view_wire.epoch : 0;
  ps__sched_view_wire_drop(s);
  view_pb_t v;
  int rc = ps__sched_view_pb_build(s, &v);
  if (rc != PS_OK) return rc;
  for (size_t i = 0; i < s->nnodes; i++) v.infos[i].token = s->nodes[i].token;
  note_changes(s, &v);
  int same_ranges = note_range_changes(s);
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, 0);
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &v.view;
  rc = pack_pair(s, &env, v.infos, &s->view_wire.msg[0]);
  /* A delta against the previous epoch, if that is the view last packed:
   * only then do the nodes' shown_epoch say what changed since it. */
  int delta =
      rc == PS_OK && !s->opts.full_views && prev != 0 && prev == s->epoch - 1;
  uint32_t *range_index = NULL;
  if (delta) {
    size_t k = 0;
    for (size_t i = 0; i < s->nnodes; i++)
      if (s->nodes[i].shown_epoch == s->epoch) v.info_ptrs[k++] = &v.infos[i];
    v.view.n_nodes = k;
    v.view.base_epoch = prev;
    /* The ranges too, when the cut has as many as before (it always has:
     * a failover or a move changes servers only). */
    if (same_ranges &&
        (range_index = calloc(s->nranges + 1, sizeof(*range_index)))) {
      k = 0;
      for (size_t i = 0; i < s->nranges; i++)
        if (s->shown_range_epoch[i] == s->epoch) {
          range_index[k] = (uint32_t)i;
          v.kr_ptrs[k++] = &v.krs[i];
        }
      v.view.n_ranges = k;
      v.view.ranges_delta = 1;
      v.view.range_index = range_index;
      v.view.n_range_index = k;
    }
    if (pack_pair(s, &env, v.infos, &s->view_wire.msg[2]) != PS_OK) delta = 0;
  }
  free(range_index);
  ps__sched_view_pb_free(&v);
  if (rc != PS_OK) return rc;
  s->view_wire.valid = 1;
  s->view_wire.has_delta = delta;
  s->view_wire.epoch = s->epoch;
  return PS_OK;
}

uint64_t ps__sched_send_view(ps_sched_t *s, sched_node_t *only) {
  int rc = view_wire(s);
  if (rc != PS_OK) {
    PS_ERROR("view_send_failed", "epoch=%" PRIu64 " err=%s", s->epoch,
             ps_err_name(rc));
    return 0;
  }
  uint64_t now = ps_now_ms(), bytes = 0;
  /* Servers first, then the others. Dead and departed nodes are left out:
   * nobody would read it. A node sent the previous epoch gets the delta
   * (it holds that view unless a connection lost it: then its heartbeats
   * ask again and get the whole view, as every resend does). */
  for (int servers = 1; servers >= 0; servers--) {
    for (size_t i = 0; i < s->nnodes; i++) {
      sched_node_t *n = &s->nodes[i];
      if ((n->role == PS__ROLE__ROLE_SERVER) != servers) continue;
      if (only ? n != only : !ps__sched_node_holds_slot(n)) continue;
      int delta = only == NULL && s->view_wire.has_delta &&
                  n->view_sent_epoch + 1 == s->epoch;
      zmq_msg_t *msg = &s->view_wire.msg[(delta ? 2 : 0) + (servers ? 0 : 1)];
      ps__sched_send_packed_to_node(s, n, msg, PS__ENVELOPE__BODY_VIEW);
      bytes += zmq_msg_size(msg);
      if (delta)
        s->stats.views_delta++;
      else
        s->stats.views_whole++;
      n->view_sent_epoch = s->epoch;
      n->view_sent_ms = now;
    }
  }
  s->stats.view_bytes += bytes;
  return bytes;
}

/* ---- publishing ----------------------------------------------------- */

static int range_primary_alive(const ps_sched_t *s, const ps_range_t *r) {
  return r->server_id >= 1 && r->server_id <= s->nnodes &&
         s->nodes[r->server_id - 1].state == PS__NODE_STATE__NODE_STATE_ALIVE;
}

void ps__sched_publish(ps_sched_t *s, const char *why) {
  s->epoch++;
  uint32_t by_state[PS_PLACE_UNAVAILABLE + 1] = {0};
  for (size_t i = 0; i < s->nranges; i++) {
    const ps_range_t *r = &s->ranges[i];
    by_state[ps_place_state(range_primary_alive(s, r), r->nbackups,
                            ps_place_nsyncing(r), s->replication)]++;
  }
  PS_INFO("view_published",
          "epoch=%" PRIu64
          " servers=%u workers=%u live_workers=%u keys=%" PRIu64
          " mode=%s replication=%u ranges_ok=%u syncing=%u degraded=%u "
          "unavailable=%u why=%s",
          s->epoch,
          ps__sched_count_nodes(s, PS__ROLE__ROLE_SERVER,
                                PS__NODE_STATE__NODE_STATE_ALIVE),
          ps__sched_count_slots(s, PS__ROLE__ROLE_WORKER),
          ps__sched_live_workers(s), s->model.total,
          ps__sched_mode_name(s->opts.mode), s->replication,
          by_state[PS_PLACE_OK], by_state[PS_PLACE_SYNCING],
          by_state[PS_PLACE_DEGRADED], by_state[PS_PLACE_UNAVAILABLE], why);
  ps__sched_state_save(s); /* on disk before any node hears of it */
  /* How long handing the view to libzmq took, and how much it was: the
   * figures that showed publishing needed deltas (issue #16). */
  uint64_t t0 = uv_hrtime();
  uint64_t whole0 = s->stats.views_whole, delta0 = s->stats.views_delta;
  uint64_t bytes = ps__sched_send_view(s, NULL);
  PS_INFO("view_sent",
          "epoch=%" PRIu64 " nodes=%" PRIu64 " deltas=%" PRIu64
          " bytes=%" PRIu64 " us=%" PRIu64,
          s->epoch,
          s->stats.views_whole - whole0 + s->stats.views_delta - delta0,
          s->stats.views_delta - delta0, bytes, (uv_hrtime() - t0) / 1000);
}

/* The first view: once every expected node is in, cut the key space into
 * --ranges ranges (one per server by default), range i led by the i-th
 * server in id order (round robin), each backed by the next servers in
 * ring order. */
void ps__sched_maybe_publish_first(ps_sched_t *s) {
  if (s->published || !s->has_model) return;
  if (ps__sched_count_slots(s, PS__ROLE__ROLE_SERVER) != s->opts.servers ||
      ps__sched_count_slots(s, PS__ROLE__ROLE_WORKER) != s->opts.workers)
    return;
  uint32_t nserv = s->opts.servers;
  uint32_t nranges = s->opts.ranges ? s->opts.ranges : nserv;
  uint64_t *begins = calloc((size_t)nranges + 1, sizeof(*begins));
  /* ranges >= servers >= 1 is checked at start; the spare entry only keeps
   * static analysis from seeing a zero-size calloc. */
  ps_range_t *ranges = calloc((size_t)nranges + 1, sizeof(*ranges));
  uint32_t *ids = calloc((size_t)nserv + 1, sizeof(*ids));
  int rc = begins && ranges && ids
               ? ps_range_split(s->model.total, nranges, begins)
               : PS_ERR_NOMEM;
  if (rc != PS_OK) {
    /* Retried on the next registration change; nothing else can be done. */
    PS_ERROR("range_split_failed",
             "servers=%u ranges=%u keys=%" PRIu64 " err=%s", nserv, nranges,
             s->model.total, ps_err_name(rc));
    free(begins);
    free(ranges);
    free(ids);
    return;
  }
  uint32_t k = 0;
  for (size_t i = 0; i < s->nnodes && k < nserv; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->role != PS__ROLE__ROLE_SERVER || !ps__sched_node_holds_slot(n))
      continue;
    n->active = 1;
    ids[k++] = n->id;
  }
  for (uint32_t r = 0; r < nranges; r++) {
    ranges[r].begin = begins[r];
    ranges[r].end = begins[r + 1];
  }
  ps_place_first(ranges, nranges, ids, nserv, s->replication);
  free(ids);
  free(begins);
  s->ranges = ranges;
  s->nranges = nranges;
  s->published = 1;
  ps__sched_publish(s, "all_registered");
  ps__sched_barrier_check_all(s);
  /* A periodic checkpoint's first step may come within a heartbeat. */
  s->ckpt_last_ms = ps_now_ms();
  ps__sched_ckpt_periodic(s, s->ckpt_last_ms);
}

/* ---- psctl status --------------------------------------------------- */

void ps__sched_handle_status(ps_sched_t *s, ps_msg_t *m) {
  if (!ps__sched_epoch_current(s, m)) return;
  view_pb_t v;
  if (ps__sched_view_pb_build(s, &v) != PS_OK) {
    ps__sched_reply_error(s, m, PS_ERR_NOMEM, "scheduler out of memory");
    return;
  }
  Ps__Status st = PS__STATUS__INIT;
  st.view = &v.view;
  st.uptime_ms = ps_now_ms() - s->start_ms;
  st.expected_servers = s->opts.servers;
  st.expected_workers = s->opts.workers;
  st.max_workers = s->opts.max_workers;
  st.accept_failures = ps_sockmon_accept_failures(s->zs_mon);
  uint64_t now = ps_now_ms();
  Ps__CheckpointInfo last, cur;
  if (s->has_last) {
    last = s->last;
    last.dir = s->last_dir;
    last.reason = s->last_reason;
    last.age_ms = now > s->last_done_ms ? now - s->last_done_ms : 0;
    st.last_checkpoint = &last;
  }
  Ps__CheckpointInfo failure;
  if (s->has_failure) {
    failure = s->failure;
    failure.age_ms = now > s->failure_ms ? now - s->failure_ms : 0;
    st.last_failure = &failure;
  }
  if (ps_coord_active(s->coord)) {
    ps__checkpoint_info__init(&cur);
    cur.step = ps_coord_step(s->coord);
    cur.dir = (char *)ps_coord_dir(s->coord);
    cur.reason = (char *)ps_coord_reason(s->coord);
    cur.age_ms = now - ps_coord_started_ms(s->coord);
    st.checkpoint = &cur;
  }
  Ps__Envelope env;
  ps__sched_envelope_init(s, &env, m->request_id);
  env.body_case = PS__ENVELOPE__BODY_STATUS;
  env.status = &st;
  ps__sched_reply(s, m, &env);
  ps__sched_view_pb_free(&v);
}

/* Kept apart from the heartbeat's handling (membership.c): it changes no
 * membership, only what psctl shows. A node the scheduler does not know,
 * or declared dead, was refused there; its address stays as it was. */
void ps__sched_note_metrics_address(ps_sched_t *s, const ps_msg_t *m) {
  const Ps__Heartbeat *hb = m->env->heartbeat;
  sched_node_t *n = ps__sched_node_by_id(s, m->env->sender);
  if (n == NULL || n->state == PS__NODE_STATE__NODE_STATE_DEAD || hb == NULL)
    return;
  const char *a = hb->metrics_address ? hb->metrics_address : "";
  if (strlen(a) >= sizeof(n->metrics_address)) return;
  memcpy(n->metrics_address, a, strlen(a) + 1);
}
