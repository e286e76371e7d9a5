/* The scheduler's state file (scheduler/state.c, ps__sched_state_load): a
 * scheduler started with --state-file on the input, then made to use what
 * it loaded as a restarted scheduler does: psctl asks for the status, every
 * node of the file heartbeats, the periodic check runs (a republished view,
 * deaths), the state is saved again and the status asked once more.
 *
 * The first byte says how to read the rest:
 *   bit 0: the rest is a SchedulerState body, which the harness frames (its
 *          magic, version and CRC32C) so that the fuzzer works on the
 *          protobuf; else the rest is the file as it is.
 *   bit 1, with bit 0: the scheduler gets the job's options from the body
 *          (servers, workers, mode, replication) so that it takes the job
 *          over; else 2 servers, 2 workers, BSP, 2 copies, which a
 *          mismatched file is refused against.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/time.h"
#include "fuzz_util.h"
#include "fuzz_wire.h"
#include "scheduler/sched_int.h"

#define STATE_VERSION 1
static const uint8_t STATE_MAGIC[8] = {'P', 'S', 'S', 'C', 'H', 'S', 'T', 'A'};
/* Heartbeats go to at most this many of the file's nodes. */
#define MAX_BEATS 16

static uv_loop_t loop;
static fuzz_wire_t *wire;
static const char *dir;
static char path[600];

/* The framed file (common/checkpoint.h) around body. */
static void write_framed(const uint8_t *body, size_t len) {
  uint8_t *f = malloc(24 + len + 4);
  if (f == NULL) abort();
  memcpy(f, STATE_MAGIC, 8);
  fuzz_put_u32(f + 8, STATE_VERSION);
  fuzz_put_u32(f + 12, 0);
  fuzz_put_u32(f + 16, (uint32_t)len);
  fuzz_put_u32(f + 20, (uint32_t)((uint64_t)len >> 32));
  if (len) memcpy(f + 24, body, len);
  fuzz_put_u32(f + 24 + len, ps_crc32c(0, f, 24 + len));
  fuzz_write_file(path, f, 24 + len + 4);
  free(f);
}

/* The options of the job in body, where they are ones a scheduler takes. */
static void options_from(const uint8_t *body, size_t len, ps_sched_opts_t *o) {
  Ps__SchedulerState *st = ps__scheduler_state__unpack(NULL, len, body);
  if (st == NULL) return;
  if (st->expected_servers >= 1 && st->expected_servers <= 64)
    o->servers = st->expected_servers;
  if (st->expected_workers >= 1 && st->expected_workers <= 64)
    o->workers = st->expected_workers;
  if (st->view && (st->view->mode == PS__CONSISTENCY_MODE__MODE_BSP ||
                   st->view->mode == PS__CONSISTENCY_MODE__MODE_ASP))
    o->mode = (int)st->view->mode;
  uint32_t copies = st->replication ? st->replication : 1;
  if (copies <= PS_MAX_REPLICAS) o->replication = copies;
  ps__scheduler_state__free_unpacked(st, NULL);
}

static void deliver(ps_sched_t *s, unsigned from, Ps__Envelope *env) {
  ps_msg_t m;
  char err[512];
  int rc = fuzz_wire_deliver_env(wire, from, env, &m, err, sizeof(err));
  ps__sched_dispatch(s, &m, rc, err);
  ps_msg_close(&m);
}

static void ask_status(ps_sched_t *s) {
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.request_id = 1;
  env.body_case = PS__ENVELOPE__BODY_STATUS_REQUEST;
  env.status_request = &sr;
  deliver(s, 0, &env);
}

static void heartbeats(ps_sched_t *s) {
  size_t n = s->nnodes < MAX_BEATS ? s->nnodes : MAX_BEATS;
  for (size_t i = 0; i < n && !ps_sched_finished(s); i++) {
    Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
    hb.clock = s->nodes[i].clock;
    Ps__Envelope env = PS__ENVELOPE__INIT;
    env.sender = s->nodes[i].id;
    env.epoch = s->epoch;
    env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    deliver(s, s->nodes[i].id, &env);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned serial;
  if (wire == NULL) {
    fuzz_quiet_logs("fuzz_state");
    if (uv_loop_init(&loop) != 0) abort();
    wire = fuzz_wire_new(1);
    dir = fuzz_scratch_dir("state");
    snprintf(path, sizeof(path), "%s/scheduler.state", dir);
  }
  if (size == 0) return 0;
  unsigned flags = data[0];
  const uint8_t *rest = data + 1;
  size_t len = size - 1;
  if (flags & 1)
    write_framed(rest, len);
  else
    fuzz_write_file(path, rest, len);

  char bind[64];
  snprintf(bind, sizeof(bind), "inproc://fuzz-state-%u", serial++);
  ps_sched_opts_t o = {
      .bind = bind,
      .servers = 2,
      .workers = 2,
      .mode = PS__CONSISTENCY_MODE__MODE_BSP,
      .heartbeat_timeout_ms = 1000,
      .replication = 2,
      .state_file = path,
  };
  if ((flags & 3) == 3) options_from(rest, len, &o);
  int err;
  char why[1200];
  ps_sched_t *s =
      ps_sched_new(&loop, fuzz_wire_ctx(wire), &o, &err, why, sizeof(why));
  if (s != NULL) {
    ask_status(s);
    heartbeats(s);
    if (!ps_sched_finished(s)) ps__sched_check(s, ps_now_ms());
    if (!ps_sched_finished(s)) ps__sched_state_save(s);
    ask_status(s);
    ps_sched_destroy(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  fuzz_empty_dir(dir);
  fuzz_pace_reaper();
  return 0;
}
