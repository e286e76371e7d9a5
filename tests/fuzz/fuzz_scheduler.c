/* The scheduler's dispatch (scheduler/scheduler.c, ps__sched_dispatch): a
 * fresh scheduler per input, configured by the input's first byte
 * (fuzz_setup.h), fed the input's messages in-process.
 *
 * Each message record is received with ps_msg_recv from one of eight
 * senders, each with its own routing id, so nodes have routes of their
 * own; ps__sched_dispatch serves it as the socket's callback would:
 * registration, heartbeats, barriers, Done, leaving, status, checkpoints
 * (command and replies), ReplicaSynced, JoinReply, HandoverReady, drains.
 * Replies and views go out on the scheduler's own socket to routes it does
 * not know (ROUTER_MANDATORY refuses them), as to nodes that went away.
 *
 * Control records run the periodic check (ps__sched_check), which declares
 * the silent dead, fails over, re-replicates, starts checkpoints and
 * handovers: op 0 checks now; op k > 0 first makes node k silent for
 * arg * FUZZ_SCHED_SILENCE_UNIT_MS more.
 *
 * A message record whose first frame starts "PSB1" is a heartbeat
 * datagram of --heartbeat-udp instead (ps__sched_beat_datagram; see
 * beat_datagram below for how it is signed).
 *
 * Checkpoints go into a scratch directory, emptied after every input: an
 * absolute directory in a CheckpointCommand is replaced by it (a fuzz input
 * must not make directories anywhere on the machine); a relative one is
 * left to be refused.
 */
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "common/beat.h"
#include "common/err.h"
#include "common/time.h"
#include "fuzz_setup.h"
#include "fuzz_util.h"
#include "fuzz_wire.h"
#include "scheduler/sched_int.h"

static uv_loop_t loop;
static fuzz_wire_t *wire;
static const char *ckpt_dir;

static ps_sched_t *sched_new(unsigned config) {
  static unsigned serial;
  char bind[64];
  snprintf(bind, sizeof(bind), "inproc://fuzz-scheduler-%u", serial++);
  ps_sched_opts_t o = {
      .bind = bind,
      .servers = FUZZ_SCHED_SERVERS(config),
      .workers = FUZZ_SCHED_WORKERS(config),
      .mode = FUZZ_SCHED_ASP(config) ? PS__CONSISTENCY_MODE__MODE_ASP
                                     : PS__CONSISTENCY_MODE__MODE_BSP,
      .heartbeat_timeout_ms = FUZZ_SCHED_HEARTBEAT_TIMEOUT_MS,
      .replication = FUZZ_SCHED_REPLICATION(config),
      .rebalance = (int)FUZZ_SCHED_REBALANCE(config),
  };
  if (FUZZ_SCHED_CHECKPOINTS(config)) {
    o.checkpoint_dir = ckpt_dir;
    o.checkpoint_every_steps = FUZZ_SCHED_CKPT_EVERY;
  }
  int err;
  char why[512];
  ps_sched_t *s =
      ps_sched_new(&loop, fuzz_wire_ctx(wire), &o, &err, why, sizeof(why));
  if (s == NULL) {
    fprintf(stderr, "fuzz_scheduler: ps_sched_new: %s\n", why);
    abort();
  }
  return s;
}

/* A node that has been silent for ms more than it has. */
static void silence(ps_sched_t *s, uint32_t id, uint64_t ms) {
  sched_node_t *n = ps__sched_node_by_id(s, id);
  if (n == NULL) return;
  n->last_seen_ms = n->last_seen_ms > ms ? n->last_seen_ms - ms : 0;
}

/* A record whose first frame starts "PSB1" is a heartbeat datagram
 * (common/beat.h) instead: of PS_BEAT_BYTES - 16 bytes, it is signed here
 * with its node's key (keys are given to every node that lacks one, as
 * registration with --heartbeat-udp does), so that the taken paths run;
 * any other length goes as it is, to be refused. */
static void beat_datagram(ps_sched_t *s, const uint8_t *p, size_t len) {
  struct sockaddr_in from = {.sin_family = AF_INET,
                             .sin_port = htons(9),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (size_t i = 0; i < s->nnodes; i++) {
    sched_node_t *n = &s->nodes[i];
    if (n->beat_keyed) continue;
    memset(n->beat_key, (int)n->id, sizeof(n->beat_key));
    n->beat_keyed = 1;
  }
  uint8_t d[PS_BEAT_BYTES];
  int type;
  uint32_t id;
  if (len == PS_BEAT_BYTES - 16) {
    memcpy(d, p, len);
    memset(d + len, 0, 16);
    ps_beat_t b;
    if (ps_beat_peek(d, sizeof(d), &type, &id) == PS_OK) {
      b.type = type;
      b.node_id = id;
      b.seq = fuzz_get_u64(d + 16);
      b.epoch = fuzz_get_u64(d + 24);
      b.clock = fuzz_get_u64(d + 32);
      const sched_node_t *n = ps__sched_node_by_id(s, id);
      if (n != NULL) ps_beat_pack(&b, n->beat_key, d);
    }
    ps__sched_beat_datagram(s, d, sizeof(d), (struct sockaddr *)&from);
    return;
  }
  ps__sched_beat_datagram(s, p, len, (struct sockaddr *)&from);
}

/* Serves m as the socket's callback does, with its checkpoint directory, if
 * absolute, replaced by the scratch one for the call. */
static void dispatch(ps_sched_t *s, ps_msg_t *m, int rc, const char *err) {
  Ps__CheckpointCommand *cc = NULL;
  char *dir = NULL;
  if (rc == PS_OK &&
      m->env->body_case == PS__ENVELOPE__BODY_CHECKPOINT_COMMAND) {
    cc = m->env->checkpoint_command;
    dir = cc->dir;
    if (dir != NULL && dir[0] == '/') cc->dir = (char *)ckpt_dir;
  }
  ps__sched_dispatch(s, m, rc, err);
  if (cc != NULL) cc->dir = dir; /* the header's own, for ps_msg_close */
  ps_msg_close(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (wire == NULL) {
    fuzz_quiet_logs("fuzz_scheduler");
    if (uv_loop_init(&loop) != 0) abort();
    wire = fuzz_wire_new(FUZZ_WIRE_MEMBERS);
    ckpt_dir = fuzz_scratch_dir("scheduler");
  }
  if (size == 0) return 0;
  ps_sched_t *s = sched_new(data[0]);
  fuzz_input_t in = {data + 1, size - 1};
  fuzz_record_t r;
  while (!ps_sched_finished(s) && fuzz_next_record(&in, &r)) {
    if (r.control) {
      if (r.op > 0)
        silence(s, r.op, (uint64_t)r.arg * FUZZ_SCHED_SILENCE_UNIT_MS);
      ps__sched_check(s, ps_now_ms());
      continue;
    }
    if (r.nframes >= 1 && r.len[0] >= 4 && memcmp(r.frame[0], "PSB1", 4) == 0) {
      beat_datagram(s, r.frame[0], r.len[0]);
      continue;
    }
    ps_msg_t m;
    char err[512];
    int rc = fuzz_wire_deliver(wire, &r, NULL, &m, err, sizeof(err));
    dispatch(s, &m, rc, err);
  }
  ps_sched_destroy(&s);
  uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks free it */
  fuzz_empty_dir(ckpt_dir);
  fuzz_pace_reaper();
  return 0;
}
