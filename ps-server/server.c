#include "server.h"

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/log.h"
#include "common/member.h"
#include "common/time.h"
#include "common/transport.h"
#include "common/view.h"
#include "dedup.h"
#include "replica.h"
#include "saver.h"
#include "shard.h"
#include "sparse.h"

/* Payload frames are float32 little-endian on the wire and are applied in
 * place, which is only right on a little-endian host. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "payload frames are applied in place: little-endian only");

/* At most this many BSP pulls wait for a step at once; more is a client bug
 * or an attack, not a training job, and must not grow memory without bound. */
#define PARKED_PULLS_MAX 65536
/* Refused requests are logged at most once per this many ms. */
#define WARN_INTERVAL_MS 1000
/* Replication messages from a primary whose view is newer than ours wait
 * for our view; more than this is not a view in transit. */
#define DEFERRED_MAX 65536

/* A BSP pull that asked for a step the shard has not applied yet. */
typedef struct parked_pull_s {
  struct parked_pull_s *next;
  zmq_msg_t route; /* a reference to the peer's routing id (zmq_msg_copy) */
  uint64_t request_id;
  uint64_t key_begin, count, clock;
} parked_pull_t;

/* A range this server holds a copy of: as its primary (serves workers,
 * forwards every change to the backups) or as a backup (replays what the
 * primary forwards). A backup added to a running job has no shard until
 * the primary's snapshot comes. */
typedef struct {
  uint64_t begin, end;
  ps_shard_t *shard;
  ps_dedup_t *dedup;     /* (worker, seq) pairs applied: see dedup.h */
  parked_pull_t *parked; /* in arrival order */
  int primary;
  uint32_t primary_id; /* backups: the only node whose changes they take */
  /* Primaries: the backups already sent a snapshot of the range. */
  uint32_t nsnapped;
  uint32_t snapped[PS_MAX_REPLICAS - 1];
  /* ... of which these acked it: they hold the range. */
  uint32_t nsynced;
  uint32_t synced[PS_MAX_REPLICAS - 1];
} owned_range_t;

/* A replication message that came ahead of our view (the snapshot of a
 * new backup can overtake the view that makes it one). */
typedef struct deferred_s {
  struct deferred_s *next;
  ps_msg_t m;
} deferred_t;

typedef struct {
  int armed;
  uint64_t last_ms;
  uint64_t suppressed;
  /* Reports what a window suppressed when no later line would carry it. */
  uv_timer_t flush_timer;
  int flush_open;
} ratelimit_t;

struct ps_server_s {
  uv_loop_t loop;
  int loop_ready;
  void *zctx;
  ps_zsock_t *data;
  ps_member_t *member;
  uv_signal_t sigterm, sigint;
  int signals_open;
  uv_timer_t stop_timer;
  int stop_timer_open;

  char *scheduler;
  char *advertise;
  char endpoint[PS_ADDR_MAX]; /* the bound one, kept after the socket closes */
  ps_frame_limits_t limits;

  uint32_t node_id;
  ps_view_t *view; /* the adopted view; its model built the shards */
  owned_range_t *ranges;
  size_t nranges;
  uint64_t reported_clock;

  ps_server_stats_t stats;
  ratelimit_t warn_limit;
  /* Checkpoints (saver.h): shards written at the scheduler's request and
   * loaded at a restore. While the first view's ranges load, that view
   * (or a newer one) waits in restore_view and requests get NOT_READY. */
  ps_saver_t *saver;
  ps_view_t *restore_view;
  int restoring;
  float *scratch; /* aligned copies of unaligned push frames */
  size_t scratch_bytes;
  /* Sparse tables (sparse.h), one per table of the model, in its order;
   * made with the first view that has the model. */
  ps_sparse_table_t **sparse;
  size_t nsparse;
  uint64_t *key_scratch; /* aligned copy of a sparse request's keys */
  size_t key_scratch_bytes;

  /* Replication (replica.h): this node's primary side; and the backup
   * side's messages waiting for a newer view. */
  ps_repl_t *repl;
  deferred_t *deferred, **deferred_tail;
  size_t ndeferred;

  int stopping;
  int torn_down;
  int exit_status;
  char errmsg[512];
};

static const char *mode_name(int mode) {
  return mode == PS__CONSISTENCY_MODE__MODE_ASP ? "asp" : "bsp";
}

static uint64_t view_epoch(const ps_server_t *s) {
  return s->view ? s->view->epoch : 0;
}

static void count_error(ps_server_t *s, int code) {
  int i = -code;
  if (i < 0 || i >= PS_SERVER_NERR) i = 0;
  s->stats.errors[i]++;
}

static void ratelimit_flush_cb(uv_timer_t *t) {
  ratelimit_t *rl = t->data;
  if (rl->suppressed == 0) return;
  PS_WARN("request_refused_suppressed", "count=%llu window_ms=%d",
          (unsigned long long)rl->suppressed, WARN_INTERVAL_MS);
  rl->suppressed = 0;
  rl->last_ms = ps_now_ms();
}

/* One line per WARN_INTERVAL_MS at most, so a flood of bad packets cannot
 * flood the log; what a window suppressed is reported with the next line or,
 * if none comes, by the flush timer when the window ends. */
static int ratelimit_allow(ratelimit_t *rl, uint64_t *suppressed) {
  uint64_t now = ps_now_ms();
  if (rl->armed && now - rl->last_ms < WARN_INTERVAL_MS) {
    rl->suppressed++;
    if (rl->flush_open && !uv_is_active((uv_handle_t *)&rl->flush_timer))
      uv_timer_start(&rl->flush_timer, ratelimit_flush_cb,
                     WARN_INTERVAL_MS - (now - rl->last_ms), 0);
    return 0;
  }
  *suppressed = rl->suppressed;
  rl->suppressed = 0;
  rl->last_ms = now;
  rl->armed = 1;
  return 1;
}

static void count_sent(ps_server_t *s, Ps__Envelope *env, size_t payload) {
  /* ps_msg_send sets the version; set it first so the size is the real one. */
  env->version = PS_PROTOCOL_VERSION;
  s->stats.bytes_out += ps__envelope__get_packed_size(env) + payload;
}

static void send_error_v(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                         int code, const char *fmt, va_list ap) {
  char text[512];
  vsnprintf(text, sizeof(text), fmt, ap);
  count_error(s, code);
  if (s->data == NULL || route == NULL) return;
  Ps__Error e = PS__ERROR__INIT;
  e.code = code;
  e.message = text;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  count_sent(s, &env, 0);
  if (ps_msg_send(ps_zsock_socket(s->data), route, &env, NULL, 0) != PS_OK)
    s->stats.send_failures++;
}

static void send_error(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                       int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void send_error(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                       int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  send_error_v(s, route, request_id, code, fmt, ap);
  va_end(ap);
}

/* Refuses request m: an Error reply when the peer can be reached, a counter,
 * and a rate-limited warning. */
static void refuse(ps_server_t *s, ps_msg_t *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void refuse(ps_server_t *s, ps_msg_t *m, int code, const char *fmt,
                   ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof(text), fmt, ap);
  va_end(ap);
  send_error(s, m->has_route ? &m->route : NULL, m->request_id, code, "%s",
             text);
  uint64_t suppressed;
  if (ratelimit_allow(&s->warn_limit, &suppressed))
    PS_WARN("request_refused",
            "code=%s body=%s sender=%u request_id=%llu reason=\"%s\" "
            "suppressed=%llu",
            ps_err_name(code),
            m->env ? ps_body_name(m->env->body_case) : "undecoded",
            m->env ? m->env->sender : 0, (unsigned long long)m->request_id,
            text, (unsigned long long)suppressed);
}

/* "[0,1024),[2048,4096)" into buf, for logs and error messages. */
static const char *format_ranges(const ps_server_t *s, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  if (s->nranges == 0) {
    snprintf(buf, len, "none");
    return buf;
  }
  for (size_t i = 0; i < s->nranges && n < len; i++) {
    const owned_range_t *r = &s->ranges[i];
    int w = snprintf(buf + n, len - n, "%s[%llu,%llu)%s", i ? "," : "",
                     (unsigned long long)r->begin, (unsigned long long)r->end,
                     r->primary ? "" : (r->shard ? "b" : "b?"));
    if (w < 0) break;
    n += (size_t)w;
  }
  return buf;
}

/* ---- pull replies ---- */

/* Builds the payload frames of a pull reply for [key_begin, +count) of r:
 * runs of the weights worth it go out without a copy, each pinning its
 * block's version until ZeroMQ's I/O thread has written it (see shard.h);
 * neighbouring short runs are copied together into one frame. Returns the
 * number of frames, or a negative ps_err_t with every frame closed. */
static int build_pull_frames(ps_server_t *s, const owned_range_t *r,
                             uint64_t key_begin, uint64_t count,
                             zmq_msg_t *frames) {
  ps_shard_run_t runs[PS_MAX_PAYLOAD_FRAMES];
  int nruns = ps_shard_runs(r->shard, key_begin, count, runs,
                            PS_MAX_PAYLOAD_FRAMES, NULL, 0);
  if (nruns < 0) return nruns;
  if (nruns > PS_MAX_PAYLOAD_FRAMES) {
    /* A slice over more blocks than a message may carry frames (an
     * unchunked pull of tens of MiB): one copied frame. */
    runs[0].count = count;
    runs[0].zero_copy = 0;
    nruns = 1;
  }
  int nframes = 0;
  for (int i = 0; i < nruns;) {
    if (runs[i].zero_copy) {
      ps_shard_pin(runs[i].version);
      if (ps_payload_wrap(&frames[nframes], (void *)runs[i].data,
                          (size_t)runs[i].count * sizeof(float), ps_shard_unpin,
                          runs[i].version) != PS_OK) {
        ps_shard_unpin(NULL, runs[i].version);
        goto nomem;
      }
      s->stats.pull_bytes_zero_copy += runs[i].count * sizeof(float);
      nframes++;
      i++;
      continue;
    }
    /* Copy this run and the short ones after it into one frame. */
    uint64_t first = key_begin, n = 0;
    for (int j = 0; j < i; j++) first += runs[j].count;
    int j = i;
    while (j < nruns && !runs[j].zero_copy) n += runs[j++].count;
    if (zmq_msg_init_size(&frames[nframes], (size_t)n * sizeof(float)) != 0)
      goto nomem;
    ps_shard_read(r->shard, first, n, zmq_msg_data(&frames[nframes]), NULL, 0);
    s->stats.pull_bytes_copied += n * sizeof(float);
    nframes++;
    i = j;
  }
  return nframes;
nomem:
  for (int i = 0; i < nframes; i++) zmq_msg_close(&frames[i]);
  return PS_ERR_NOMEM;
}

static void send_pull_reply(ps_server_t *s, zmq_msg_t *route,
                            uint64_t request_id, const owned_range_t *r,
                            uint64_t key_begin, uint64_t count) {
  zmq_msg_t frames[PS_MAX_PAYLOAD_FRAMES];
  int nframes = build_pull_frames(s, r, key_begin, count, frames);
  if (nframes < 0) {
    /* The caller checked the slice; only memory can fail here. */
    send_error(s, route, request_id, nframes,
               "%s for a pull reply of %llu values", ps_strerror(nframes),
               (unsigned long long)count);
    return;
  }
  Ps__PullReply pr = PS__PULL_REPLY__INIT;
  pr.key_begin = key_begin;
  pr.count = count;
  pr.clock = ps_shard_clock(r->shard);
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_PULL_REPLY;
  env.pull_reply = &pr;
  count_sent(s, &env, (size_t)count * sizeof(float));
  if (ps_msg_send(ps_zsock_socket(s->data), route, &env, frames, nframes) !=
      PS_OK)
    s->stats.send_failures++;
}

/* Block applies that wrote a fresh version because a pull reply still held
 * the current one, over every shard; with peak, the most block versions
 * (current, held by replies, spare) there were at once. */
static unsigned long long cow_applies(const ps_server_t *s,
                                      unsigned long long *peak) {
  unsigned long long n = 0;
  *peak = 0;
  for (size_t i = 0; i < s->nranges; i++) {
    ps_shard_stats_t st;
    if (s->ranges[i].shard == NULL) continue;
    ps_shard_stats(s->ranges[i].shard, &st);
    n += st.cow_applies;
    *peak += st.versions_peak;
  }
  return n;
}

static void parked_free(ps_server_t *s, parked_pull_t *p) {
  zmq_msg_close(&p->route);
  free(p);
  s->stats.parked_pulls--;
}

/* Answers the parked pulls of r whose step the shard has reached. */
static void serve_parked(ps_server_t *s, owned_range_t *r) {
  uint64_t clock = ps_shard_clock(r->shard);
  parked_pull_t **pp = &r->parked;
  while (*pp) {
    parked_pull_t *p = *pp;
    if (p->clock > clock) {
      pp = &p->next;
      continue;
    }
    *pp = p->next;
    send_pull_reply(s, &p->route, p->request_id, r, p->key_begin, p->count);
    parked_free(s, p);
  }
}

/* Fails every parked pull of r with code: the range moved or the server
 * stops, and the worker should hear it now rather than time out. */
static void fail_parked(ps_server_t *s, owned_range_t *r, int code,
                        const char *why) {
  while (r->parked) {
    parked_pull_t *p = r->parked;
    r->parked = p->next;
    send_error(s, &p->route, p->request_id, code, "pull of [%llu,+%llu): %s",
               (unsigned long long)p->key_begin, (unsigned long long)p->count,
               why);
    parked_free(s, p);
  }
}

/* The slowest shard's clock is the step this server has fully applied. */
static void report_clock(ps_server_t *s) {
  if (s->nranges == 0 || s->member == NULL) return;
  uint64_t c = UINT64_MAX;
  for (size_t i = 0; i < s->nranges; i++) {
    if (!s->ranges[i].primary || s->ranges[i].shard == NULL) continue;
    uint64_t ci = ps_shard_clock(s->ranges[i].shard);
    if (ci < c) c = ci;
  }
  if (c != UINT64_MAX && c != s->reported_clock) {
    s->reported_clock = c;
    ps_member_set_clock(s->member, c);
  }
}

static void after_apply(ps_server_t *s, owned_range_t *r) {
  s->stats.applies++;
  /* First: a checkpoint waiting for this clock copies the shard before a
   * reply or another apply can follow. */
  if (s->saver) ps_saver_shard_applied(s->saver, r->shard);
  PS_DEBUG("step_applied", "range=[%llu,%llu) mode=%s clock=%llu",
           (unsigned long long)ps_shard_begin(r->shard),
           (unsigned long long)ps_shard_end(r->shard),
           mode_name(ps_shard_mode(r->shard)),
           (unsigned long long)ps_shard_clock(r->shard));
  serve_parked(s, r);
  report_clock(s);
}

/* Sets r's live set (ps_shard_set_live), saying so in the log when the
 * clock skipped steps that no live worker contributes to. */
static int range_set_live(owned_range_t *r, const ps_shard_live_t *live,
                          size_t nlive, int *applied) {
  ps_shard_stats_t before, after;
  ps_shard_stats(r->shard, &before);
  uint64_t from = ps_shard_clock(r->shard);
  int rc = ps_shard_set_live(r->shard, live, nlive, applied);
  ps_shard_stats(r->shard, &after);
  if (after.skipped_steps > before.skipped_steps)
    PS_WARN("steps_skipped",
            "range=[%llu,%llu) from=%llu to=%llu reason=\"no live worker "
            "contributes before step %llu\"",
            (unsigned long long)r->begin, (unsigned long long)r->end,
            (unsigned long long)from,
            (unsigned long long)ps_shard_clock(r->shard),
            (unsigned long long)ps_shard_clock(r->shard));
  return rc;
}

/* ---- requests ---- */

/* The range this server is the primary of that holds the whole slice, or
 * NULL after refusing m: with STALE_EPOCH when the request's view is older
 * than ours (the keys moved: the client takes the new view and resends),
 * else UNKNOWN_KEY. */
static owned_range_t *find_range(ps_server_t *s, ps_msg_t *m,
                                 uint64_t key_begin, uint64_t count) {
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->shard && ps_shard_contains(r->shard, key_begin, count))
      return r;
  }
  char owned[256];
  refuse(
      s, m,
      m->env->epoch < view_epoch(s) ? PS_ERR_STALE_EPOCH : PS_ERR_UNKNOWN_KEY,
      "keys [%llu,+%llu) are not inside one range of server %u (owns %s "
      "at epoch %llu)",
      (unsigned long long)key_begin, (unsigned long long)count, s->node_id,
      format_ranges(s, owned, sizeof(owned)),
      (unsigned long long)view_epoch(s));
  return NULL;
}

/* Refuses m unless the server has a view with a model, at m's epoch or a
 * newer one (a request from an older view is served when the keys are
 * still this server's: find_range). */
static int check_epoch(ps_server_t *s, ps_msg_t *m) {
  if (s->view == NULL) {
    refuse(s, m, PS_ERR_NOT_READY, "server %u has no cluster view yet",
           s->node_id);
    return 0;
  }
  if (s->view->model.total == 0 && s->view->model.nsparse == 0) {
    refuse(s, m, PS_ERR_NOT_READY,
           "cluster view epoch %llu has no model yet (no worker registered)",
           (unsigned long long)s->view->epoch);
    return 0;
  }
  if (m->env->epoch > s->view->epoch) {
    refuse(
        s, m, PS_ERR_STALE_EPOCH, "request epoch %llu, server view epoch %llu",
        (unsigned long long)m->env->epoch, (unsigned long long)s->view->epoch);
    return 0;
  }
  return 1;
}

/* Answers a push on route: the Ack carries the server clock after it. */
static void reply_ack(ps_server_t *s, zmq_msg_t *route, uint64_t request_id,
                      uint64_t clock, int duplicate) {
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = clock;
  ack.duplicate = duplicate != 0;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = request_id;
  env.sender = s->node_id;
  env.epoch = view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_ACK;
  env.ack = &ack;
  count_sent(s, &env, 0);
  if (s->data == NULL ||
      ps_msg_send(ps_zsock_socket(s->data), route, &env, NULL, 0) != PS_OK)
    s->stats.send_failures++;
}

/* replica.h: a worker's push is on every backup (or cannot be). */
static void repl_push_done(void *arg, zmq_msg_t *route, uint64_t request_id,
                           uint64_t clock, int duplicate, int status,
                           const char *reason) {
  ps_server_t *s = arg;
  if (status == PS_OK) {
    if (duplicate) s->stats.duplicate_pushes++;
    reply_ack(s, route, request_id, clock, duplicate);
    return;
  }
  send_error(s, route, request_id, status, "push not replicated: %s", reason);
}

/* A pointer to the floats of frame f (count values), aligned: ZeroMQ may
 * hand over a small frame at any byte offset inside its receive buffer,
 * and a float array must be aligned, so such a frame is copied into a
 * scratch buffer the server keeps (rare, counted; no allocation once it is
 * big enough). NULL when out of memory. */
static const float *aligned_floats(ps_server_t *s, zmq_msg_t *f,
                                   uint64_t count) {
  const void *data = zmq_msg_data(f);
  if ((uintptr_t)data % _Alignof(float) == 0) return data;
  size_t bytes = (size_t)count * sizeof(float);
  if (bytes > s->scratch_bytes) {
    float *grown = realloc(s->scratch, bytes);
    if (grown == NULL) return NULL;
    s->scratch = grown;
    s->scratch_bytes = bytes;
  }
  memcpy(s->scratch, data, bytes);
  s->stats.unaligned_payloads++;
  return s->scratch;
}

static void handle_push(ps_server_t *s, ps_msg_t *m) {
  const Ps__Push *p = m->env->push;
  if (!check_epoch(s, m)) return;
  owned_range_t *r = find_range(s, m, p->key_begin, p->count);
  if (r == NULL) return;
  uint32_t worker = m->env->sender;

  /* A resend of a push this range applied (the client resends whatever
   * was not acked after a failover or a timeout) is acked, not applied;
   * the ack still waits for the backups to hold the original. */
  int seen = ps_dedup_check(r->dedup, worker, p->seq);
  if (seen == PS_DEDUP_OLD) {
    refuse(s, m, PS_ERR_REFUSED,
           "push seq %llu of worker %u is older than the %d this range "
           "remembers: cannot tell whether it was applied",
           (unsigned long long)p->seq, worker, PS_DEDUP_WINDOW);
    return;
  }
  if (seen == PS_DEDUP_DUP) {
    if (ps_repl_push(s->repl, r->begin, r->end, &m->route, m->request_id,
                     ps_shard_clock(r->shard), 1, worker, p, NULL) != PS_OK)
      refuse(s, m, PS_ERR_NOMEM, "no memory to queue an ack");
    return;
  }
  /* The gradient is applied straight from the received frame (ps_msg_recv
   * checked that it holds exactly count floats). */
  const float *g = aligned_floats(s, &m->payload[0], p->count);
  if (g == NULL) {
    refuse(s, m, PS_ERR_NOMEM, "no memory to align a push of %llu values",
           (unsigned long long)p->count);
    return;
  }
  char why[256];
  uint64_t clock_after = 0;
  int rc = ps_dedup_reserve(r->dedup, worker);
  if (rc == PS_OK)
    rc = ps_shard_push_begin(r->shard, worker, p->key_begin, p->count, p->clock,
                             &clock_after, why, sizeof(why));
  else
    snprintf(why, sizeof(why), "no memory to remember worker %u", worker);
  if (rc != PS_OK) {
    refuse(s, m, rc, "%s", why);
    return;
  }
  /* Forwarded to the backups before it is applied here, so their copies
   * are on the wire while this thread applies. With no backups the ack
   * goes out now, before the apply: ZeroMQ's I/O thread sends it while
   * this thread applies, nothing can fail past the begin, and this thread
   * serves nothing else before the end, so every request served after
   * this one sees the push. */
  if (ps_repl_push(s->repl, r->begin, r->end, &m->route, m->request_id,
                   clock_after, 0, worker, p, &m->payload[0]) != PS_OK) {
    /* Applied but not on the backups: this server cannot keep its
     * promise; the backup takes over with what it has. */
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory queueing replication", 1);
    return;
  }
  ps_dedup_mark(r->dedup, worker, p->seq);
  int applied = 0;
  ps_shard_push_end(r->shard, worker, p->key_begin, p->count, g, p->clock,
                    &applied);
  if (applied) after_apply(s, r);
}

static void handle_pull(ps_server_t *s, ps_msg_t *m) {
  const Ps__Pull *p = m->env->pull;
  if (!check_epoch(s, m)) return;
  if (p->count == 0) {
    refuse(s, m, PS_ERR_PROTO, "pull of 0 keys");
    return;
  }
  if (p->count > s->limits.max_payload_bytes / sizeof(float)) {
    refuse(s, m, PS_ERR_TOO_BIG,
           "pull of %llu values exceeds the limit of %zu bytes per frame",
           (unsigned long long)p->count, s->limits.max_payload_bytes);
    return;
  }
  owned_range_t *r = find_range(s, m, p->key_begin, p->count);
  if (r == NULL) return;

  if (ps_shard_mode(r->shard) == PS__CONSISTENCY_MODE__MODE_BSP &&
      p->clock > ps_shard_clock(r->shard)) {
    if (s->stats.parked_pulls >= PARKED_PULLS_MAX) {
      refuse(s, m, PS_ERR_REFUSED,
             "%d pulls already wait for a step; pull for step %llu refused",
             PARKED_PULLS_MAX, (unsigned long long)p->clock);
      return;
    }
    parked_pull_t *pp = calloc(1, sizeof(*pp));
    if (pp == NULL) {
      refuse(s, m, PS_ERR_NOMEM, "no memory to park a pull");
      return;
    }
    zmq_msg_init(&pp->route);
    zmq_msg_copy(&pp->route, &m->route);
    pp->request_id = m->request_id;
    pp->key_begin = p->key_begin;
    pp->count = p->count;
    pp->clock = p->clock;
    parked_pull_t **tail = &r->parked;
    while (*tail) tail = &(*tail)->next;
    *tail = pp;
    s->stats.pulls_parked++;
    s->stats.parked_pulls++;
    return;
  }
  send_pull_reply(s, &m->route, m->request_id, r, p->key_begin, p->count);
}

/* ---- replication, the backup's side (replica.h has the primary's) ---- */

static void defer(ps_server_t *s, ps_msg_t *m) {
  if (s->ndeferred >= DEFERRED_MAX) {
    refuse(s, m, PS_ERR_REFUSED,
           "%d replication messages already wait for view epoch %llu",
           DEFERRED_MAX, (unsigned long long)m->env->epoch);
    return;
  }
  deferred_t *d = calloc(1, sizeof(*d));
  if (d == NULL) {
    refuse(s, m, PS_ERR_NOMEM, "no memory to hold a replication message");
    return;
  }
  /* Moved, frames and all: ps_msg_close of the original closes nothing. */
  d->m.has_route = m->has_route;
  zmq_msg_init(&d->m.route);
  if (m->has_route) zmq_msg_move(&d->m.route, &m->route);
  m->has_route = 0;
  d->m.env = m->env;
  m->env = NULL;
  d->m.request_id = m->request_id;
  d->m.npayload = m->npayload;
  for (int i = 0; i < m->npayload; i++) {
    zmq_msg_init(&d->m.payload[i]);
    zmq_msg_move(&d->m.payload[i], &m->payload[i]);
    zmq_msg_close(&m->payload[i]);
  }
  m->npayload = 0;
  *s->deferred_tail = d;
  s->deferred_tail = &d->next;
  s->ndeferred++;
}

/* The range [begin, end) this server is a backup of, with sender as its
 * primary, for a replication message m; NULL after taking care of m:
 * held for a newer view (defer), or refused (fencing: a primary that the
 * view replaced must not get an ack). */
static owned_range_t *replica_range(ps_server_t *s, ps_msg_t *m, uint64_t begin,
                                    uint64_t end) {
  uint64_t mine = view_epoch(s);
  if (s->view == NULL || m->env->epoch > mine || s->restoring) {
    defer(s, m);
    return NULL;
  }
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->begin == begin && r->end == end && !r->primary &&
        r->primary_id == m->env->sender)
      return r;
  }
  refuse(s, m, PS_ERR_FENCED,
         "node %u is not the primary of [%llu,%llu) with server %u as its "
         "backup at epoch %llu (its epoch %llu)",
         m->env->sender, (unsigned long long)begin, (unsigned long long)end,
         s->node_id, (unsigned long long)mine,
         (unsigned long long)m->env->epoch);
  return NULL;
}

static void reply_replica_ack(ps_server_t *s, ps_msg_t *m, uint64_t clock) {
  s->stats.replicated++;
  reply_ack(s, &m->route, m->request_id, clock, 0);
}

static void handle_replicate(ps_server_t *s, ps_msg_t *m) {
  const Ps__Replicate *p = m->env->replicate;
  owned_range_t *r = replica_range(s, m, p->range_begin, p->range_end);
  if (r == NULL) return;
  if (r->shard == NULL) {
    refuse(s, m, PS_ERR_NOT_READY,
           "server %u has no snapshot of [%llu,%llu) yet", s->node_id,
           (unsigned long long)r->begin, (unsigned long long)r->end);
    return;
  }
  char why[256];
  int rc;
  int applied = 0;
  if (p->kind == PS__REPLICATE_KIND__REPL_LIVE) {
    if (p->n_live_from != p->n_live) {
      refuse(s, m, PS_ERR_PROTO, "%zu live workers but %zu first steps",
             p->n_live, p->n_live_from);
      return;
    }
    ps_shard_live_t *live = calloc(p->n_live + 1, sizeof(*live));
    if (live == NULL) {
      refuse(s, m, PS_ERR_NOMEM, "no memory for a live set");
      return;
    }
    for (size_t i = 0; i < p->n_live; i++)
      live[i] = (ps_shard_live_t){p->live[i], p->live_from[i]};
    rc = range_set_live(r, live, p->n_live, &applied);
    free(live);
    if (rc != PS_OK) {
      refuse(s, m, rc, "cannot set the live set of [%llu,%llu)",
             (unsigned long long)r->begin, (unsigned long long)r->end);
      return;
    }
    reply_replica_ack(s, m, ps_shard_clock(r->shard));
    if (applied) after_apply(s, r);
    return;
  }
  if (p->kind != PS__REPLICATE_KIND__REPL_PUSH) {
    refuse(s, m, PS_ERR_UNSUPPORTED, "replication kind %d", (int)p->kind);
    return;
  }
  if (ps_dedup_check(r->dedup, p->worker, p->seq) == PS_DEDUP_DUP) {
    /* The primary never forwards a duplicate; a resent Replicate is one. */
    reply_replica_ack(s, m, ps_shard_clock(r->shard));
    return;
  }
  const float *g = aligned_floats(s, &m->payload[0], p->count);
  uint64_t clock_after = 0;
  rc = g ? ps_dedup_reserve(r->dedup, p->worker) : PS_ERR_NOMEM;
  if (rc == PS_OK)
    rc = ps_shard_push_begin(r->shard, p->worker, p->key_begin, p->count,
                             p->clock, &clock_after, why, sizeof(why));
  else
    snprintf(why, sizeof(why), "out of memory");
  if (rc != PS_OK) {
    /* The primary took this push: the copies differ. The primary fails the
     * worker's push, and the scheduler hears of it in the log. */
    PS_ERROR("replica_diverged",
             "range=[%llu,%llu) primary=%u worker=%u seq=%llu reason=\"%s\"",
             (unsigned long long)r->begin, (unsigned long long)r->end,
             m->env->sender, p->worker, (unsigned long long)p->seq, why);
    refuse(s, m, rc, "backup %u cannot replay the push: %s", s->node_id, why);
    return;
  }
  ps_dedup_mark(r->dedup, p->worker, p->seq);
  reply_replica_ack(s, m, clock_after);
  ps_shard_push_end(r->shard, p->worker, p->key_begin, p->count, g, p->clock,
                    &applied);
  if (applied) after_apply(s, r);
}

/* A whole range from its primary: this server becomes a backup in step. */
static void handle_snapshot(ps_server_t *s, ps_msg_t *m) {
  const Ps__ReplicaSnapshot *p = m->env->replica_snapshot;
  owned_range_t *r = replica_range(s, m, p->range_begin, p->range_end);
  if (r == NULL) return;
  size_t dbytes = zmq_msg_size(&m->payload[5]);
  if (dbytes != (size_t)p->ndedup * sizeof(ps_dedup_record_t)) {
    refuse(s, m, PS_ERR_PROTO,
           "snapshot dedup frame has %zu bytes for %u records of %zu", dbytes,
           p->ndedup, sizeof(ps_dedup_record_t));
    return;
  }
  uint64_t len = p->range_end - p->range_begin;
  /* Frames are copied out of ZeroMQ's buffers once, into aligned memory:
   * a snapshot is rare and the shard keeps its own copy anyway. */
  void *buf[6] = {NULL};
  int rc = PS_OK;
  for (int i = 0; i < 6 && rc == PS_OK; i++) {
    size_t n = zmq_msg_size(&m->payload[i]);
    buf[i] = malloc(n ? n : 1);
    if (buf[i] == NULL)
      rc = PS_ERR_NOMEM;
    else if (n)
      memcpy(buf[i], zmq_msg_data(&m->payload[i]), n);
  }
  char why[256] = "out of memory";
  ps_shard_t *shard = NULL;
  ps_dedup_t *dedup = NULL;
  if (rc == PS_OK) {
    shard = ps_shard_new(p->range_begin, p->range_end, &s->view->model,
                         s->view->mode, NULL, 0, &rc, why, sizeof(why));
    dedup = ps_dedup_new();
    if (shard != NULL && dedup == NULL) rc = PS_ERR_NOMEM;
  }
  if (rc == PS_OK) {
    ps_shard_state_t st = {
        .clock = p->clock,
        .weights = buf[0],
        .momentum = p->has_momentum ? buf[1] : NULL,
        .acc_lo = p->acc_lo,
        .acc_hi = p->acc_hi,
        .acc = buf[2],
        .live = buf[3],
        .nlive = p->nlive,
        .contrib = buf[4],
        .ncontrib = p->ncontrib,
    };
    rc = ps_shard_import(shard, &st, why, sizeof(why));
  }
  if (rc == PS_OK) {
    rc = ps_dedup_import(dedup, buf[5], p->ndedup);
    if (rc != PS_OK) snprintf(why, sizeof(why), "bad dedup records");
  }
  for (int i = 0; i < 6; i++) free(buf[i]);
  if (rc != PS_OK) {
    ps_shard_destroy(&shard);
    ps_dedup_destroy(&dedup);
    refuse(s, m, rc, "snapshot of [%llu,%llu) refused: %s",
           (unsigned long long)p->range_begin, (unsigned long long)p->range_end,
           why);
    return;
  }
  ps_shard_destroy(&r->shard);
  ps_dedup_destroy(&r->dedup);
  r->shard = shard;
  r->dedup = dedup;
  s->stats.snapshots_in++;
  PS_INFO("replica_filled",
          "range=[%llu,%llu) primary=%u clock=%llu keys=%llu workers=%u "
          "epoch=%llu",
          (unsigned long long)r->begin, (unsigned long long)r->end,
          m->env->sender, (unsigned long long)p->clock, (unsigned long long)len,
          p->ndedup, (unsigned long long)view_epoch(s));
  reply_replica_ack(s, m, p->clock);
}

static void dispatch(ps_server_t *s, ps_msg_t *m);

/* Serves, in order, the held replication messages our view has caught up
 * with; stops at the first one still ahead, so a primary's changes keep
 * their order. */
static void serve_deferred(ps_server_t *s) {
  while (s->deferred && s->view &&
         s->deferred->m.env->epoch <= s->view->epoch && !s->restoring) {
    deferred_t *d = s->deferred;
    s->deferred = d->next;
    if (s->deferred == NULL) s->deferred_tail = &s->deferred;
    s->ndeferred--;
    dispatch(s, &d->m);
    ps_msg_close(&d->m);
    free(d);
  }
}

static void deferred_free(ps_server_t *s) {
  while (s->deferred) {
    deferred_t *d = s->deferred;
    s->deferred = d->next;
    ps_msg_close(&d->m);
    free(d);
  }
  s->deferred_tail = &s->deferred;
  s->ndeferred = 0;
}

/* ---- sparse tables (issue #3) ---- */

/* Grows *buf to bytes; PS_OK or PS_ERR_NOMEM. */
static int scratch_reserve(void **buf, size_t *have, size_t bytes) {
  if (bytes <= *have) return PS_OK;
  void *grown = realloc(*buf, bytes);
  if (grown == NULL) return PS_ERR_NOMEM;
  *buf = grown;
  *have = bytes;
  return PS_OK;
}

/* The table a sparse request names and its keys, aligned and checked: all
 * owned by this server under the current view. NULL after refusing m. */
static ps_sparse_table_t *sparse_begin(ps_server_t *s, ps_msg_t *m,
                                       const char *table, uint64_t nkeys,
                                       const uint64_t **keys_out) {
  if (!check_epoch(s, m)) return NULL;
  ps_sparse_table_t *t = NULL;
  for (size_t i = 0; table && i < s->nsparse; i++)
    if (strcmp(ps_sparse_table_name(s->sparse[i]), table) == 0)
      t = s->sparse[i];
  if (t == NULL) {
    refuse(s, m, PS_ERR_UNKNOWN_KEY, "no sparse table \"%s\" in the model",
           table ? table : "");
    return NULL;
  }
  /* ps_msg_recv checked the frame holds exactly nkeys uint64. A frame may
   * sit at any offset in ZeroMQ's buffer, so the keys are copied to an
   * aligned scratch (a few KiB; cheaper than a branch per key). */
  size_t bytes = (size_t)nkeys * sizeof(uint64_t);
  if (scratch_reserve((void **)&s->key_scratch, &s->key_scratch_bytes, bytes) !=
      PS_OK) {
    refuse(s, m, PS_ERR_NOMEM, "no memory for %llu keys",
           (unsigned long long)nkeys);
    return NULL;
  }
  memcpy(s->key_scratch, zmq_msg_data(&m->payload[0]), bytes);
  const uint64_t *keys = s->key_scratch;
  char why[256];
  if (ps_sparse_keys_check(keys, nkeys, why, sizeof(why)) != PS_OK) {
    refuse(s, m, PS_ERR_PROTO, "table \"%s\": %s", table, why);
    return NULL;
  }
  const ps_sparse_spec_t *spec = ps_model_sparse(&s->view->model, table);
  for (uint64_t i = 0; i < nkeys; i++) {
    int64_t owner = ps_view_sparse_owner(s->view, spec->salt, keys[i]);
    if (owner != (int64_t)s->node_id) {
      refuse(s, m, PS_ERR_UNKNOWN_KEY,
             "table \"%s\": row %llu belongs to server %lld, not %u, at "
             "epoch %llu",
             table, (unsigned long long)keys[i], (long long)owner, s->node_id,
             (unsigned long long)view_epoch(s));
      return NULL;
    }
  }
  *keys_out = keys;
  return t;
}

/* Sparse rows are applied on arrival in both modes: BSP's step barrier
 * covers dense ranges only for now (README), and each push is scaled by
 * 1/live workers as a dense one is, so a step of N workers moves a row by
 * their mean gradient. */
static void handle_sparse_push(ps_server_t *s, ps_msg_t *m) {
  const Ps__SparsePush *p = m->env->sparse_push;
  const uint64_t *keys;
  ps_sparse_table_t *t = sparse_begin(s, m, p->table, p->nkeys, &keys);
  if (t == NULL) return;
  size_t bytes = (size_t)p->nkeys * ps_sparse_table_dim(t) * sizeof(float);
  size_t got = zmq_msg_size(&m->payload[1]);
  if (got != bytes) {
    refuse(s, m, PS_ERR_PROTO,
           "table \"%s\": values frame has %zu bytes, %llu keys of dim %u "
           "need %zu",
           p->table, got, (unsigned long long)p->nkeys, ps_sparse_table_dim(t),
           bytes);
    return;
  }
  const void *data = zmq_msg_data(&m->payload[1]);
  const float *g = data;
  if ((uintptr_t)data % _Alignof(float) != 0) {
    if (scratch_reserve((void **)&s->scratch, &s->scratch_bytes, bytes) !=
        PS_OK) {
      refuse(s, m, PS_ERR_NOMEM, "no memory to align a sparse push");
      return;
    }
    memcpy(s->scratch, data, bytes);
    g = s->scratch;
    s->stats.unaligned_payloads++;
  }
  uint32_t live = s->view->live_workers ? s->view->live_workers : 1;
  char why[256];
  int rc = ps_sparse_table_push(t, keys, p->nkeys, g, 1.0f / (float)live, why,
                                sizeof(why));
  if (rc != PS_OK) {
    refuse(s, m, rc, "table \"%s\": %s", p->table, why);
    return;
  }
  s->stats.applies++;
  reply_ack(s, &m->route, m->request_id, p->clock, 0);
}

static void sparse_rows_free(void *data, void *hint) {
  (void)hint;
  free(data);
}

static void handle_sparse_pull(ps_server_t *s, ps_msg_t *m) {
  const Ps__SparsePull *p = m->env->sparse_pull;
  const uint64_t *keys;
  ps_sparse_table_t *t = sparse_begin(s, m, p->table, p->nkeys, &keys);
  if (t == NULL) return;
  uint32_t dim = ps_sparse_table_dim(t);
  if (p->nkeys > s->limits.max_payload_bytes / sizeof(float) / dim) {
    refuse(s, m, PS_ERR_TOO_BIG,
           "pull of %llu rows of dim %u exceeds the limit of %zu bytes",
           (unsigned long long)p->nkeys, dim, s->limits.max_payload_bytes);
    return;
  }
  size_t bytes = (size_t)p->nkeys * dim * sizeof(float);
  /* Rows are copied into a frame ZeroMQ owns: the table's arena moves when
   * it grows, so it cannot be lent zero-copy as dense blocks are. */
  float *rows = malloc(bytes);
  if (rows == NULL) {
    refuse(s, m, PS_ERR_NOMEM, "no memory for a sparse pull reply");
    return;
  }
  char why[256];
  int rc = ps_sparse_table_pull(t, keys, p->nkeys, rows, why, sizeof(why));
  if (rc != PS_OK) {
    free(rows);
    refuse(s, m, rc, "table \"%s\": %s", p->table, why);
    return;
  }
  zmq_msg_t frame;
  if (ps_payload_wrap(&frame, rows, bytes, sparse_rows_free, NULL) != PS_OK) {
    free(rows);
    refuse(s, m, PS_ERR_NOMEM, "no memory for a sparse pull reply");
    return;
  }
  s->stats.pull_bytes_copied += bytes;
  Ps__SparsePullReply r = PS__SPARSE_PULL_REPLY__INIT;
  r.table = p->table;
  r.nkeys = p->nkeys;
  r.dim = dim;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = m->request_id;
  env.sender = s->node_id;
  env.epoch = view_epoch(s);
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL_REPLY;
  env.sparse_pull_reply = &r;
  count_sent(s, &env, bytes);
  if (ps_msg_send(ps_zsock_socket(s->data), &m->route, &env, &frame, 1) !=
      PS_OK)
    s->stats.send_failures++;
}

/* Makes the model's sparse tables once: the model never changes within a
 * job (same_model), so later views keep them. */
static int sparse_adopt(ps_server_t *s, const ps_view_t *view, char *err,
                        size_t errlen) {
  if (s->sparse != NULL || view->model.nsparse == 0) return PS_OK;
  s->sparse = calloc(view->model.nsparse, sizeof(*s->sparse));
  if (s->sparse == NULL) goto nomem;
  for (size_t i = 0; i < view->model.nsparse; i++) {
    s->sparse[i] = ps_sparse_table_new(&view->model.sparse[i], &view->model);
    if (s->sparse[i] == NULL) goto nomem;
    s->nsparse = i + 1;
  }
  PS_INFO("sparse_tables", "count=%zu epoch=%llu", s->nsparse,
          (unsigned long long)view->epoch);
  return PS_OK;
nomem:
  snprintf(err, errlen, "out of memory creating sparse tables");
  return PS_ERR_NOMEM;
}

static void sparse_free(ps_server_t *s) {
  for (size_t i = 0; i < s->nsparse; i++)
    ps_sparse_table_destroy(&s->sparse[i]);
  free(s->sparse);
  s->sparse = NULL;
  s->nsparse = 0;
  free(s->key_scratch);
  s->key_scratch = NULL;
}

static void on_data(ps_zsock_t *zs, ps_msg_t *m, int status, const char *reason,
                    void *arg) {
  ps_server_t *s = arg;
  int body = m->env ? (int)m->env->body_case : 0;
  s->stats.requests[body >= 0 && body < PS_SERVER_NBODY ? body : 0]++;
  size_t in = m->env ? ps__envelope__get_packed_size(m->env) : 0;
  for (int i = 0; i < m->npayload; i++) in += zmq_msg_size(&m->payload[i]);
  s->stats.bytes_in += in;

  if (s->stopping) {
    refuse(s, m, PS_ERR_SHUTDOWN, "server %u is shutting down", s->node_id);
  } else if (status != PS_OK) {
    s->stats.bad_messages++;
    refuse(s, m, status, "%s", reason);
  } else if (!m->has_route || m->env == NULL) {
    /* ps_msg_recv on a ROUTER gives both whenever it returns PS_OK. */
    count_error(s, PS_ERR_PROTO);
  } else {
    dispatch(s, m);
  }
  ps_msg_close(m);
}

static void dispatch(ps_server_t *s, ps_msg_t *m) {
  switch (m->env->body_case) {
    case PS__ENVELOPE__BODY_PUSH:
      handle_push(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICATE:
      handle_replicate(s, m);
      break;
    case PS__ENVELOPE__BODY_REPLICA_SNAPSHOT:
      handle_snapshot(s, m);
      break;
    case PS__ENVELOPE__BODY_PULL:
      handle_pull(s, m);
      break;
    case PS__ENVELOPE__BODY_SPARSE_PUSH:
      handle_sparse_push(s, m);
      break;
    case PS__ENVELOPE__BODY_SPARSE_PULL:
      handle_sparse_pull(s, m);
      break;
    case PS__ENVELOPE__BODY_ERROR:
      /* Never answer an Error with an Error: two confused peers would
       * bounce them forever. */
      count_error(s, PS_ERR_UNSUPPORTED);
      break;
    default:
      refuse(s, m, PS_ERR_UNSUPPORTED, "a server does not serve %s",
             ps_body_name(m->env->body_case));
      break;
  }
}

/* ---- stopping ---- */

static void handle_close_cb(uv_handle_t *h) {
  (void)h;
}

/* Closes every handle of the server; the loop then runs out and
 * ps_server_run returns. */
static void teardown(ps_server_t *s) {
  if (s->torn_down) return;
  s->torn_down = 1;
  for (size_t i = 0; i < s->nranges; i++)
    fail_parked(s, &s->ranges[i], PS_ERR_SHUTDOWN, "the server stops");
  ps_repl_destroy(&s->repl);
  ps_zsock_destroy(&s->data);
  ps_member_destroy(&s->member);
  if (s->signals_open) {
    s->signals_open = 0;
    uv_close((uv_handle_t *)&s->sigterm, handle_close_cb);
    uv_close((uv_handle_t *)&s->sigint, handle_close_cb);
  }
  if (s->stop_timer_open) {
    s->stop_timer_open = 0;
    uv_close((uv_handle_t *)&s->stop_timer, handle_close_cb);
  }
  if (s->warn_limit.flush_open) {
    ratelimit_flush_cb(&s->warn_limit.flush_timer);
    s->warn_limit.flush_open = 0;
    uv_close((uv_handle_t *)&s->warn_limit.flush_timer, handle_close_cb);
  }
}

static void stop_timer_cb(uv_timer_t *t) {
  teardown(t->data);
}

void ps_server_stop(ps_server_t *s, int status, const char *reason, int leave) {
  if (s->stopping || s->torn_down) return;
  s->stopping = 1;
  s->exit_status = status;
  if (status != PS_OK) snprintf(s->errmsg, sizeof(s->errmsg), "%s", reason);
  PS_LOG(status == PS_OK ? PS_LOG_INFO : PS_LOG_ERROR, "shutdown",
         "reason=\"%s\" status=%s leave=%d", reason, ps_err_name(status),
         leave);
  const ps_server_stats_t *st = &s->stats;
  unsigned long long versions_peak = 0;
  unsigned long long cow = cow_applies(s, &versions_peak);
  uint64_t errors = 0;
  for (int i = 0; i < PS_SERVER_NERR; i++) errors += st->errors[i];
  PS_INFO("server_stats",
          "push=%llu pull=%llu applies=%llu errors=%llu bad_messages=%llu "
          "bytes_in=%llu bytes_out=%llu pulls_parked=%llu "
          "unaligned_payloads=%llu send_failures=%llu "
          "pull_bytes_zero_copy=%llu pull_bytes_copied=%llu cow_applies=%llu "
          "versions_peak=%llu",
          (unsigned long long)st->requests[PS__ENVELOPE__BODY_PUSH],
          (unsigned long long)st->requests[PS__ENVELOPE__BODY_PULL],
          (unsigned long long)st->applies, (unsigned long long)errors,
          (unsigned long long)st->bad_messages,
          (unsigned long long)st->bytes_in, (unsigned long long)st->bytes_out,
          (unsigned long long)st->pulls_parked,
          (unsigned long long)st->unaligned_payloads,
          (unsigned long long)st->send_failures,
          (unsigned long long)st->pull_bytes_zero_copy,
          (unsigned long long)st->pull_bytes_copied, cow, versions_peak);
  /* Workers waiting on a step hear it now instead of timing out, and no
   * new request is served while the server goes. */
  for (size_t i = 0; i < s->nranges; i++)
    fail_parked(s, &s->ranges[i], PS_ERR_SHUTDOWN, "the server stops");
  ps_zsock_destroy(&s->data);
  /* The member lingers (up to 1 s) on a farewell when it is closed, so the
   * Leave reaches the scheduler well within the 5 s a service manager
   * grants after SIGTERM. */
  if (leave && s->member) ps_member_send_leave(s->member, reason);
  /* The member is closed from a timer, never from inside its own callback
   * (Shutdown arrives through one). */
  uv_timer_start(&s->stop_timer, stop_timer_cb, 0, 0);
}

static void signal_cb(uv_signal_t *h, int signum) {
  ps_server_t *s = h->data;
  char reason[64];
  snprintf(reason, sizeof(reason), "signal %s",
           signum == SIGTERM ? "SIGTERM" : "SIGINT");
  ps_server_stop(s, PS_OK, reason, 1);
}

/* ---- membership ---- */

static void on_registered(ps_member_t *m, uint32_t node_id, uint32_t rank,
                          uint32_t num_workers, void *arg) {
  ps_server_t *s = arg;
  /* The member logs the registered event and sets the log's node id. */
  s->node_id = node_id;
}

static void on_shutdown(ps_member_t *m, int status, const char *reason,
                        void *arg) {
  ps_server_t *s = arg;
  /* The scheduler ending the job is a clean stop; a refused registration or
   * a scheduler silent past the timeout is a failure. */
  int st = (status == PS_OK || status == PS_ERR_SHUTDOWN) ? PS_OK : status;
  ps_server_stop(s, st, reason && reason[0] ? reason : ps_strerror(status), 0);
}

static int same_model(const ps_view_t *a, const ps_view_t *b) {
  return a->mode == b->mode && ps_model_equal(&a->model, &b->model);
}

/* The node ids of the view's live workers, into *ids (caller frees; NULL
 * when there are none). Returns 0 when out of memory. */
static int live_worker_ids(const ps_view_t *view, uint32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  size_t count = 0;
  for (size_t i = 0; i < view->nnodes; i++)
    if (view->nodes[i].role == PS__ROLE__ROLE_WORKER &&
        view->nodes[i].state == PS__NODE_STATE__NODE_STATE_ALIVE)
      count++;
  if (count == 0) return 1;
  *ids = malloc(count * sizeof(**ids));
  if (*ids == NULL) return 0;
  for (size_t i = 0; i < view->nnodes; i++)
    if (view->nodes[i].role == PS__ROLE__ROLE_WORKER &&
        view->nodes[i].state == PS__NODE_STATE__NODE_STATE_ALIVE)
      (*ids)[(*n)++] = view->nodes[i].id;
  return 1;
}

/* The view's live workers with the first step each contributes to, into
 * *live (caller frees; NULL when there are none). A worker that joins a
 * running job is in it from its join_clock on, also while the servers
 * still confirm that step (joining): a shard must not pass the step before
 * the worker is counted. Returns 0 when out of memory. */
static int live_set(const ps_view_t *view, ps_shard_live_t **live, size_t *n) {
  uint32_t *ids;
  if (!live_worker_ids(view, &ids, n)) return 0;
  *live = NULL;
  if (*n == 0) return 1;
  *live = calloc(*n, sizeof(**live));
  if (*live == NULL) {
    free(ids);
    return 0;
  }
  for (size_t i = 0; i < *n; i++) {
    const ps_node_t *node = ps_view_node(view, ids[i]);
    (*live)[i] = (ps_shard_live_t){ids[i], node ? node->join_clock : 0};
  }
  free(ids);
  return 1;
}

static void owned_free(ps_server_t *s, owned_range_t *r, const char *why) {
  fail_parked(s, r, PS_ERR_STALE_EPOCH, why);
  if (r->primary && s->repl) ps_repl_drop_chain(s->repl, r->begin, r->end);
  ps_shard_destroy(&r->shard);
  ps_dedup_destroy(&r->dedup);
}

static int listed(const uint32_t *ids, uint32_t n, uint32_t id) {
  for (uint32_t k = 0; k < n; k++)
    if (ids[k] == id) return 1;
  return 0;
}

/* Keeps the ids of the n in ids that are backups of vr; returns how many. */
static uint32_t keep_backups(uint32_t *ids, uint32_t n, const ps_range_t *vr) {
  uint32_t keep = 0;
  for (uint32_t k = 0; k < n; k++)
    if (ps_range_has_backup(vr, ids[k])) ids[keep++] = ids[k];
  return keep;
}

/* Tells the scheduler that backup holds [begin, end) (ReplicaSynced). */
static void send_replica_synced(ps_server_t *s, uint64_t begin, uint64_t end,
                                uint32_t backup, uint64_t bytes, uint64_t ms) {
  if (s->member == NULL) return;
  Ps__ReplicaSynced rs = PS__REPLICA_SYNCED__INIT;
  rs.range_begin = begin;
  rs.range_end = end;
  rs.backup = backup;
  rs.bytes = bytes;
  rs.duration_ms = ms;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SYNCED;
  env.replica_synced = &rs;
  int rc = ps_member_send(s->member, &env);
  if (rc != PS_OK)
    PS_WARN("replica_synced_send_failed", "backup=%u err=%s", backup,
            ps_err_name(rc));
}

/* A primary's duties after a view: its backups (a new one gets the whole
 * range first), the live set, replayed by every backup. */
static int primary_adopt(ps_server_t *s, owned_range_t *r, const ps_range_t *vr,
                         const ps_shard_live_t *live, size_t nlive) {
  int applied = 0;
  int rc = range_set_live(r, live, nlive, &applied);
  if (rc != PS_OK) return rc;
  if (applied) after_apply(s, r);
  rc = ps_repl_set_chain(s->repl, s->view, vr);
  if (rc != PS_OK) return rc;
  /* Forget the backups that left: one that comes back needs a snapshot. */
  r->nsnapped = keep_backups(r->snapped, r->nsnapped, vr);
  r->nsynced = keep_backups(r->synced, r->nsynced, vr);
  for (uint32_t k = 0; k < vr->nbackups; k++) {
    uint32_t b = vr->backups[k];
    if (!ps_range_backup_syncing(vr, b)) continue;
    if (listed(r->synced, r->nsynced, b)) {
      /* The scheduler missed our word (it was down): say it again. */
      send_replica_synced(s, r->begin, r->end, b, 0, 0);
      continue;
    }
    if (listed(r->snapped, r->nsnapped, b)) continue;
    rc = ps_repl_snapshot(s->repl, b, r->shard, r->dedup);
    if (rc != PS_OK) return rc;
    r->snapped[r->nsnapped++] = b;
  }
  /* After the snapshots: a new backup must have the range before a change
   * to it. */
  return ps_repl_live(s->repl, r->begin, r->end, live, nlive);
}

/* Answers the scheduler for every worker that joins at a step (see
 * proto NodeInfo.join_clock): ok when no range this server is the primary
 * of has applied that step yet. */
static void answer_joins(ps_server_t *s) {
  const ps_view_t *v = s->view;
  for (size_t i = 0; i < v->nnodes; i++) {
    const ps_node_t *n = &v->nodes[i];
    if (n->role != PS__ROLE__ROLE_WORKER || !n->joining) continue;
    uint64_t clock = 0;
    for (size_t j = 0; j < s->nranges; j++) {
      const owned_range_t *r = &s->ranges[j];
      if (!r->primary || r->shard == NULL) continue;
      uint64_t c = ps_shard_clock(r->shard);
      if (c > clock) clock = c;
    }
    Ps__JoinReply jr = PS__JOIN_REPLY__INIT;
    jr.node = n->id;
    jr.join_clock = n->join_clock;
    jr.ok = clock <= n->join_clock;
    jr.clock = clock;
    Ps__Envelope env = PS__ENVELOPE__INIT;
    env.body_case = PS__ENVELOPE__BODY_JOIN_REPLY;
    env.join_reply = &jr;
    if (s->member) ps_member_send(s->member, &env);
    PS_INFO("join_answered", "worker=%u join_clock=%llu ok=%d clock=%llu",
            n->id, (unsigned long long)n->join_clock, jr.ok,
            (unsigned long long)clock);
  }
}

/* Adopts view: every range it gives this node, as primary or backup, gets
 * an entry (the shard kept when this node held the range already: a backup
 * promoted to primary goes on from its replayed state), the others are
 * dropped. A range's first copies start from the model's initializer (or
 * the checkpoint being restored); a backup added later waits for its
 * primary's snapshot. Returns PS_OK or a failure that must stop the
 * server. */
static int adopt_view(ps_server_t *s, ps_view_t *view, char *err,
                      size_t errlen) {
  uint32_t me = s->node_id;
  size_t nmine = 0;
  for (size_t i = 0; i < view->nranges; i++) {
    const ps_range_t *vr = &view->ranges[i];
    if (vr->begin < vr->end &&
        (vr->server_id == me || ps_range_has_backup(vr, me)))
      nmine++;
  }
  int src = sparse_adopt(s, view, err, errlen);
  if (src != PS_OK) return src;
  ps_shard_live_t *live = NULL;
  size_t nlive = 0;
  int live_ok = live_set(view, &live, &nlive);
  owned_range_t *next = calloc(nmine ? nmine : 1, sizeof(*next));
  if (!live_ok || next == NULL) {
    free(live);
    free(next);
    snprintf(err, errlen, "out of memory adopting view epoch %llu",
             (unsigned long long)view->epoch);
    return PS_ERR_NOMEM;
  }
  /* A job's first view (or a restart's) starts every copy from the
   * initializer; later, only a range with no copy anywhere does. */
  int first = s->view == NULL;
  size_t k = 0;
  int rc = PS_OK;
  for (size_t i = 0; i < view->nranges && rc == PS_OK; i++) {
    const ps_range_t *vr = &view->ranges[i];
    int primary = vr->server_id == me;
    if (vr->begin >= vr->end || (!primary && !ps_range_has_backup(vr, me)))
      continue;
    owned_range_t *r = &next[k++];
    r->begin = vr->begin;
    r->end = vr->end;
    r->primary = primary;
    r->primary_id = vr->server_id;
    for (size_t j = 0; j < s->nranges; j++) {
      owned_range_t *old = &s->ranges[j];
      if (old->begin != vr->begin || old->end != vr->end) continue;
      r->shard = old->shard;
      r->dedup = old->dedup;
      r->parked = old->parked;
      if (old->primary && primary) {
        r->nsnapped = old->nsnapped;
        memcpy(r->snapped, old->snapped, sizeof(r->snapped));
        r->nsynced = old->nsynced;
        memcpy(r->synced, old->synced, sizeof(r->synced));
      }
      if (!primary && old->primary) {
        fail_parked(s, r, PS_ERR_STALE_EPOCH,
                    "this server is now a backup of the range");
        ps_repl_drop_chain(s->repl, r->begin, r->end);
      }
      if (primary && !old->primary)
        PS_WARN("promoted",
                "range=[%llu,%llu) epoch=%llu clock=%llu backups=%u",
                (unsigned long long)r->begin, (unsigned long long)r->end,
                (unsigned long long)view->epoch,
                (unsigned long long)(r->shard ? ps_shard_clock(r->shard) : 0),
                vr->nbackups);
      memset(old, 0, sizeof(*old));
    }
    if (r->dedup == NULL && (r->dedup = ps_dedup_new()) == NULL) {
      rc = PS_ERR_NOMEM;
      snprintf(err, errlen, "out of memory adopting view epoch %llu",
               (unsigned long long)view->epoch);
      break;
    }
    int from_init =
        r->shard == NULL && (primary || !ps_range_backup_syncing(vr, me));
    if (from_init) {
      r->shard = ps_shard_new(vr->begin, vr->end, &view->model, view->mode,
                              NULL, 0, &rc, err, errlen);
      if (r->shard == NULL) break;
      if (primary && !first)
        /* Every copy of the range was lost: the job goes on, but from the
         * initial weights for these keys. */
        PS_ERROR("range_reinitialized", "range=[%llu,%llu) epoch=%llu",
                 (unsigned long long)vr->begin, (unsigned long long)vr->end,
                 (unsigned long long)view->epoch);
      /* A first copy's live set is the view's; a backup's then follows its
       * primary's stream. */
      int ignored;
      rc = ps_shard_set_live(r->shard, live, nlive, &ignored);
    }
  }
  if (rc != PS_OK) {
    /* The server stops (the caller's promise); what moved is freed. */
    for (size_t i = 0; i < k; i++) owned_free(s, &next[i], "the server stops");
    free(next);
    free(live);
    return rc;
  }
  for (size_t j = 0; j < s->nranges; j++) {
    owned_range_t *old = &s->ranges[j];
    if (old->shard == NULL && old->dedup == NULL) continue;
    PS_WARN("range_dropped", "range=[%llu,%llu) role=%s epoch=%llu",
            (unsigned long long)old->begin, (unsigned long long)old->end,
            old->primary ? "primary" : "backup",
            (unsigned long long)view->epoch);
    owned_free(s, old, "the range moved to another server in a new view");
  }
  free(s->ranges);
  s->ranges = next;
  s->nranges = nmine;
  ps_view_destroy(&s->view);
  s->view = view;
  ps_repl_set_identity(s->repl, me, view->epoch);

  if (nlive != view->live_workers)
    PS_WARN("view_live_workers_mismatch",
            "epoch=%llu live_workers=%u alive_worker_nodes=%zu",
            (unsigned long long)view->epoch, view->live_workers, nlive);
  for (size_t i = 0; i < s->nranges && rc == PS_OK; i++) {
    owned_range_t *r = &s->ranges[i];
    if (!r->primary) continue;
    const ps_range_t *vr = NULL;
    for (size_t j = 0; j < view->nranges; j++)
      if (view->ranges[j].begin == r->begin && view->ranges[j].end == r->end)
        vr = &view->ranges[j];
    rc = primary_adopt(s, r, vr, live, nlive);
  }
  free(live);
  report_clock(s);
  if (rc != PS_OK) {
    snprintf(err, errlen, "adopting view epoch %llu: %s",
             (unsigned long long)view->epoch, ps_strerror(rc));
    return rc;
  }
  answer_joins(s);
  serve_deferred(s);
  return PS_OK;
}

/* replica.h: a new backup holds the range; the scheduler may promote it. */
static void repl_synced(void *arg, uint64_t begin, uint64_t end,
                        uint32_t backup, uint64_t bytes, uint64_t ms) {
  ps_server_t *s = arg;
  PS_INFO("re_replicated",
          "range=[%llu,%llu) backup=%u bytes=%llu duration_ms=%llu "
          "epoch=%llu",
          (unsigned long long)begin, (unsigned long long)end, backup,
          (unsigned long long)bytes, (unsigned long long)ms,
          (unsigned long long)view_epoch(s));
  for (size_t i = 0; i < s->nranges; i++) {
    owned_range_t *r = &s->ranges[i];
    if (r->primary && r->begin == begin && r->end == end &&
        listed(r->snapped, r->nsnapped, backup) &&
        !listed(r->synced, r->nsynced, backup))
      r->synced[r->nsynced++] = backup;
  }
  send_replica_synced(s, begin, end, backup, bytes, ms);
}

/* ---- checkpoints (issue #4) ---- */

static void saver_reply_cb(ps_saver_t *sv, Ps__CheckpointReply *r, void *arg) {
  ps_server_t *s = arg;
  if (s->member == NULL) return;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_REPLY;
  env.checkpoint_reply = r;
  int rc = ps_member_send(s->member, &env);
  if (rc != PS_OK)
    PS_WARN("checkpoint_reply_failed", "id=%llu err=%s",
            (unsigned long long)r->id, ps_err_name(rc));
}

static void handle_checkpoint_request(ps_server_t *s,
                                      const Ps__CheckpointRequest *req) {
  if (s->view == NULL || s->restoring) {
    Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
    r.id = req->id;
    r.code = PS_ERR_NOT_READY;
    r.message = (char *)(s->restoring ? "the server is still restoring"
                                      : "the server has no view yet");
    saver_reply_cb(s->saver, &r, s);
    return;
  }
  ps_shard_t **shards = calloc(s->nranges + 1, sizeof(*shards));
  if (shards == NULL) {
    Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
    r.id = req->id;
    r.code = PS_ERR_NOMEM;
    r.message = (char *)"server out of memory";
    saver_reply_cb(s->saver, &r, s);
    return;
  }
  /* The primaries write; the backups hold the same bits. */
  size_t nshards = 0;
  for (size_t i = 0; i < s->nranges; i++)
    if (s->ranges[i].primary && s->ranges[i].shard)
      shards[nshards++] = s->ranges[i].shard;
  ps_saver_ctx_t ctx = {
      .shards = shards,
      .nshards = nshards,
      .fingerprint = ps_checkpoint_fingerprint(&s->view->model),
      .view_epoch = s->view->epoch,
      .node_id = s->node_id,
  };
  ps_saver_request(s->saver, req, &ctx);
  free(shards);
}

static void on_member_message(ps_member_t *m, const Ps__Envelope *env,
                              void *arg) {
  ps_server_t *s = arg;
  if (s->stopping) return;
  if (env->body_case == PS__ENVELOPE__BODY_CHECKPOINT_REQUEST) {
    handle_checkpoint_request(s, env->checkpoint_request);
    return;
  }
  PS_WARN("unexpected_message", "from=scheduler body=%s",
          ps_body_name(env->body_case));
}

/* The first view of a restored job came and its ranges are loaded (or
 * could not be): adopt the newest view and put the weights in place. */
static void saver_restored_cb(ps_saver_t *sv, int status, const char *reason,
                              const ps_saver_range_t *loaded, size_t nloaded,
                              void *arg) {
  ps_server_t *s = arg;
  s->restoring = 0;
  ps_view_t *view = s->restore_view;
  s->restore_view = NULL;
  if (s->stopping || view == NULL) {
    ps_view_destroy(&view);
    return;
  }
  char err[512];
  if (status != PS_OK) {
    /* Nothing was loaded: a server must never serve guessed weights. */
    ps_view_destroy(&view);
    snprintf(err, sizeof(err), "restore refused: %s", reason);
    PS_ERROR("restore_failed", "err=%s reason=\"%s\"", ps_err_name(status),
             reason);
    ps_server_stop(s, status, err, 1);
    return;
  }
  int rc = adopt_view(s, view, err, sizeof(err));
  if (rc != PS_OK) {
    if (s->view != view) ps_view_destroy(&view);
    ps_server_stop(s, rc, err, 1);
    return;
  }
  for (size_t i = 0; i < s->nranges && rc == PS_OK; i++) {
    ps_shard_t *sh = s->ranges[i].shard;
    if (sh == NULL) continue; /* a backup waiting for its snapshot */
    const ps_saver_range_t *l = NULL;
    for (size_t j = 0; j < nloaded; j++)
      if (loaded[j].begin == ps_shard_begin(sh) &&
          loaded[j].end == ps_shard_end(sh))
        l = &loaded[j];
    if (l == NULL) {
      /* Only a view that moved this server's ranges during the restore
       * gets here; failover does not exist yet. */
      rc = PS_ERR_INVAL;
      snprintf(err, sizeof(err),
               "restore refused: range [%llu,%llu) of view epoch %llu was "
               "not loaded",
               (unsigned long long)ps_shard_begin(sh),
               (unsigned long long)ps_shard_end(sh),
               (unsigned long long)s->view->epoch);
      break;
    }
    rc = ps_shard_load(sh, l->weights, l->momentum, l->clock);
    if (rc != PS_OK)
      snprintf(err, sizeof(err), "restore refused: loading [%llu,%llu): %s",
               (unsigned long long)l->begin, (unsigned long long)l->end,
               ps_strerror(rc));
  }
  if (rc != PS_OK) {
    PS_ERROR("restore_failed", "err=%s reason=\"%s\"", ps_err_name(rc), err);
    ps_server_stop(s, rc, err, 1);
    return;
  }
  report_clock(s);
  char owned[256];
  PS_INFO("restored",
          "dir=%s step=%llu epoch=%llu mode=%s live_workers=%u ranges=%s",
          s->view->restore_dir ? s->view->restore_dir : "-",
          (unsigned long long)s->view->start_clock,
          (unsigned long long)s->view->epoch, mode_name(s->view->mode),
          s->view->live_workers, format_ranges(s, owned, sizeof(owned)));
}

/* Loads this server's ranges of view from the checkpoint the view names,
 * on the thread pool; the view is adopted when they are in. */
static void start_restore(ps_server_t *s, ps_view_t *view) {
  size_t n = 0;
  ps_range_t *mine = calloc(view->nranges + 1, sizeof(*mine));
  if (mine == NULL) {
    ps_view_destroy(&view);
    ps_server_stop(s, PS_ERR_NOMEM, "out of memory starting the restore", 1);
    return;
  }
  for (size_t i = 0; i < view->nranges; i++)
    if ((view->ranges[i].server_id == s->node_id ||
         ps_range_has_backup(&view->ranges[i], s->node_id)) &&
        view->ranges[i].begin < view->ranges[i].end)
      mine[n++] = view->ranges[i];
  PS_INFO("restore_start", "dir=%s step=%llu ranges=%zu epoch=%llu",
          view->restore_dir, (unsigned long long)view->start_clock, n,
          (unsigned long long)view->epoch);
  int rc = ps_saver_restore(s->saver, view->restore_dir, &view->model,
                            view->start_clock, mine, n);
  free(mine);
  if (rc != PS_OK) {
    ps_view_destroy(&view);
    ps_server_stop(s, rc, "cannot start the restore", 1);
    return;
  }
  s->restoring = 1;
  s->restore_view = view;
}

static void on_view(ps_member_t *m, ps_view_t *view, void *arg) {
  ps_server_t *s = arg;
  s->stats.views++;
  if (s->stopping) {
    ps_view_destroy(&view);
    return;
  }
  if (s->node_id == 0) s->node_id = ps_member_node_id(m);
  if (s->restoring) {
    /* The newest view is the one to adopt once the weights are in. */
    ps_view_destroy(&s->restore_view);
    s->restore_view = view;
    return;
  }
  if (view->restore_dir != NULL && s->view == NULL && s->nranges == 0 &&
      s->saver != NULL) {
    start_restore(s, view);
    return;
  }
  if (s->nranges > 0 && !same_model(s->view, view)) {
    /* The model and the mode are fixed for a job; weights built for one
     * cannot serve another. */
    char reason[160];
    snprintf(reason, sizeof(reason),
             "view epoch %llu changes the model or the consistency mode of "
             "the job",
             (unsigned long long)view->epoch);
    ps_view_destroy(&view);
    ps_server_stop(s, PS_ERR_PROTO, reason, 1);
    return;
  }
  char err[256];
  int rc = adopt_view(s, view, err, sizeof(err));
  if (rc != PS_OK) {
    if (s->view != view) ps_view_destroy(&view); /* else the server owns it */
    ps_server_stop(s, rc, err, 1);
    return;
  }
  uint64_t keys = 0;
  for (size_t i = 0; i < s->nranges; i++)
    keys += s->ranges[i].end - s->ranges[i].begin;
  char owned[256];
  PS_INFO("view_adopted",
          "epoch=%llu mode=%s live_workers=%u nodes=%zu ranges=%s keys=%llu "
          "model_keys=%llu",
          (unsigned long long)s->view->epoch, mode_name(s->view->mode),
          s->view->live_workers, s->view->nnodes,
          format_ranges(s, owned, sizeof(owned)), (unsigned long long)keys,
          (unsigned long long)s->view->model.total);
}

/* ---- life cycle ---- */

void ps_server_opts_init(ps_server_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->scheduler = "tcp://127.0.0.1:7000";
  o->bind = "tcp://127.0.0.1:*";
  o->advertise = NULL;
  o->heartbeat_ms = 100;
  o->scheduler_timeout_ms = 0;
  o->limits = ps_frame_default_limits;
  o->handle_signals = 1;
}

static char *dup_or_null(const char *str) {
  return str ? strdup(str) : NULL;
}

ps_server_t *ps_server_new(const ps_server_opts_t *o, int *err, char *errbuf,
                           size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  ps_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    return NULL;
  }
  s->limits = o->limits;
  s->scheduler = dup_or_null(o->scheduler);
  s->advertise = dup_or_null(o->advertise);
  if (s->scheduler == NULL || (o->advertise && s->advertise == NULL)) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }
  int rc = uv_loop_init(&s->loop);
  if (rc != 0) {
    *err = PS_ERR_IO;
    snprintf(errbuf, errlen, "uv_loop_init: %s", uv_strerror(rc));
    goto fail;
  }
  s->loop_ready = 1;
  ps_saver_cbs_t scbs = {
      .reply_cb = saver_reply_cb,
      .restored_cb = saver_restored_cb,
      .arg = s,
  };
  s->saver = ps_saver_new(&s->loop, &scbs);
  if (s->saver == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }
  uv_timer_init(&s->loop, &s->stop_timer);
  s->stop_timer.data = s;
  s->stop_timer_open = 1;
  uv_timer_init(&s->loop, &s->warn_limit.flush_timer);
  s->warn_limit.flush_timer.data = &s->warn_limit;
  s->warn_limit.flush_open = 1;
  s->zctx = zmq_ctx_new();
  if (s->zctx == NULL) {
    *err = PS_ERR_ZMQ;
    snprintf(errbuf, errlen, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
    goto fail;
  }
  s->deferred_tail = &s->deferred;
  ps_repl_cbs_t rcbs = {.push_done = repl_push_done, .synced = repl_synced};
  s->repl = ps_repl_new(&s->loop, s->zctx, &s->limits, &rcbs, s);
  if (s->repl == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errbuf, errlen, "out of memory");
    goto fail;
  }

  s->data = ps_zsock_new(&s->loop, s->zctx, ZMQ_ROUTER, o->bind, NULL,
                         &s->limits, on_data, s, err, errbuf, errlen);
  if (s->data == NULL) goto fail;
  snprintf(s->endpoint, sizeof(s->endpoint), "%s", ps_zsock_endpoint(s->data));
  const char *advertise = s->advertise && s->advertise[0]
                              ? s->advertise
                              : ps_zsock_endpoint(s->data);
  PS_INFO("start", "bind=%s endpoint=%s advertise=%s scheduler=%s", o->bind,
          ps_zsock_endpoint(s->data), advertise, s->scheduler);
  if (strstr(advertise, "0.0.0.0") || strstr(advertise, "*"))
    PS_WARN("advertise_unroutable",
            "advertise=%s hint=\"workers cannot connect to a wildcard "
            "address: set --advertise\"",
            advertise);

  if (o->handle_signals) {
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    s->sigterm.data = s;
    s->sigint.data = s;
    s->signals_open = 1;
    uv_signal_start(&s->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&s->sigint, signal_cb, SIGINT);
  }

  ps_member_opts_t mo = {
      .scheduler = s->scheduler,
      .role = PS__ROLE__ROLE_SERVER,
      .address = advertise,
      .model = NULL,
      .rank = -1,
      .heartbeat_ms = o->heartbeat_ms,
      .scheduler_timeout_ms = o->scheduler_timeout_ms,
  };
  ps_member_cbs_t cbs = {
      .registered_cb = on_registered,
      .view_cb = on_view,
      .shutdown_cb = on_shutdown,
      .arg = s,
  };
  s->member = ps_member_new(&s->loop, s->zctx, &mo, &cbs, err);
  if (s->member == NULL) {
    snprintf(errbuf, errlen, "cannot start the scheduler link to %s: %s",
             s->scheduler, ps_strerror(*err));
    goto fail;
  }
  ps_member_set_message_cb(s->member, on_member_message, s);
  *err = PS_OK;
  return s;

fail:
  ps_server_destroy(&s);
  return NULL;
}

int ps_server_run(ps_server_t *s) {
  if (!s->torn_down) uv_run(&s->loop, UV_RUN_DEFAULT);
  return s->exit_status;
}

const char *ps_server_endpoint(const ps_server_t *s) {
  return s->endpoint;
}

const ps_server_stats_t *ps_server_stats(const ps_server_t *s) {
  return &s->stats;
}

const char *ps_server_errmsg(const ps_server_t *s) {
  return s->errmsg;
}

void ps_server_destroy(ps_server_t **s_p) {
  ps_server_t *s = *s_p;
  if (s == NULL) return;
  *s_p = NULL;
  /* Work still on the thread pool finishes without calling back. */
  ps_saver_destroy(&s->saver);
  if (s->loop_ready) {
    teardown(s);
    /* Runs the close callbacks, after which the zsock and member memory is
     * freed and the loop holds nothing. */
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
  }
  if (s->zctx) zmq_ctx_term(s->zctx);
  ps_view_destroy(&s->restore_view);
  for (size_t i = 0; i < s->nranges; i++) {
    ps_shard_destroy(&s->ranges[i].shard);
    ps_dedup_destroy(&s->ranges[i].dedup);
  }
  free(s->ranges);
  deferred_free(s);
  free(s->scratch);
  sparse_free(s);
  ps_view_destroy(&s->view);
  free(s->scheduler);
  free(s->advertise);
  free(s);
}
