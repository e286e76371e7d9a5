/* ps-fuzz-corpus OUTDIR: writes the seed corpora of the fuzzing harnesses
 * into OUTDIR/<harness>/gen-<name>: valid messages of every Envelope body
 * (proto/ps.proto) in the record format of tests/fuzz/fuzz_wire.h,
 * sequences that take a server and a scheduler through a job (views,
 * pushes, pulls, replication, snapshots, handovers; registration, failover,
 * joins, checkpoints, drains), checkpoint shard files and manifests made by
 * the real writers, scheduler state files, and config files with command
 * lines. The output is the same on every run (no clocks, no randomness),
 * so the committed corpus can be checked against it (check_corpus.sh).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/beat.h"
#include "common/checkpoint.h"
#include "common/codec.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/optimizer.h"
#include "common/view.h"
#include "fuzz_setup.h"
#include "fuzz_util.h"
#include "proto/ps.pb-c.h"

/* ---- output ------------------------------------------------------------ */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} buf_t;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "ps-fuzz-corpus: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void put(buf_t *b, const void *data, size_t len) {
  if (b->n + len > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + len) cap *= 2;
    b->p = realloc(b->p, cap);
    if (b->p == NULL) die("out of memory");
    b->cap = cap;
  }
  if (len) memcpy(b->p + b->n, data, len);
  b->n += len;
}

static void put_u8(buf_t *b, unsigned v) {
  uint8_t c = (uint8_t)v;
  put(b, &c, 1);
}

static void put_u16(buf_t *b, size_t v) {
  if (v > 0xffff) die("frame of %zu bytes does not fit a record", v);
  uint8_t c[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
  put(b, c, 2);
}

static const char *outdir;

static void save(const char *harness, const char *name, const buf_t *b) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", outdir, harness);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) die("mkdir %s", path);
  snprintf(path, sizeof(path), "%s/%s/gen-%s", outdir, harness, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(b->p, 1, b->n, f) != b->n || fclose(f) != 0)
    die("cannot write %s", path);
}

static void reset(buf_t *b) {
  b->n = 0;
}

/* ---- records (fuzz_wire.h) --------------------------------------------- */

typedef struct {
  const void *data;
  size_t len;
} frame_t;

/* A message record: env packed as it is (version included) and frames. */
static void rec_raw(buf_t *b, unsigned from, const Ps__Envelope *env,
                    const frame_t *frames, int nframes) {
  size_t len = ps__envelope__get_packed_size(env);
  uint8_t *h = malloc(len + 1);
  if (h == NULL) die("out of memory");
  ps__envelope__pack(env, h);
  put_u8(b, from & 0x7f);
  put_u8(b, (unsigned)(1 + nframes));
  put_u16(b, len);
  put(b, h, len);
  for (int i = 0; i < nframes; i++) {
    put_u16(b, frames[i].len);
    put(b, frames[i].data, frames[i].len);
  }
  free(h);
}

static void rec(buf_t *b, unsigned from, Ps__Envelope *env,
                const frame_t *frames, int nframes) {
  env->version = PS_PROTOCOL_VERSION;
  rec_raw(b, from, env, frames, nframes);
}

static void rec_control(buf_t *b, unsigned op, unsigned arg) {
  put_u8(b, 0x80 | (op & 0x7f));
  put_u16(b, arg);
}

/* ---- the model and views ----------------------------------------------- */

static Ps__TensorSpec tensor_w, tensor_b;
static Ps__TensorSpec *tensors[] = {&tensor_w, &tensor_b};
static Ps__SparseTableSpec table_emb;
static Ps__SparseTableSpec *tables[] = {&table_emb};

static void model_init(Ps__ModelSpec *m, float momentum, int sparse) {
  ps__tensor_spec__init(&tensor_w);
  tensor_w.name = "dense.w";
  tensor_w.length = FUZZ_MODEL_W;
  tensor_w.init = PS__INIT__INIT_UNIFORM;
  tensor_w.init_scale = 0.1f;
  ps__tensor_spec__init(&tensor_b);
  tensor_b.name = "dense.b";
  tensor_b.offset = FUZZ_MODEL_W;
  tensor_b.length = FUZZ_MODEL_B;
  ps__sparse_table_spec__init(&table_emb);
  table_emb.name = "emb";
  table_emb.dim = FUZZ_SPARSE_DIM;
  table_emb.init = PS__INIT__INIT_UNIFORM;
  table_emb.init_scale = 0.05f;
  ps__model_spec__init(m);
  m->n_tensors = 2;
  m->tensors = tensors;
  m->optimizer = PS__OPTIMIZER__OPT_SGD;
  m->learning_rate = 0.1f;
  m->momentum = momentum;
  m->seed = 7;
  if (sparse) {
    m->n_sparse_tables = 1;
    m->sparse_tables = tables;
  }
}

/* A view of the server harness's cluster: servers 1 and 2, workers 3 and
 * 4; range 0 [0, 800) led by 1, range 1 [800, 1600) led by 2. */
typedef struct {
  Ps__View v;
  Ps__NodeInfo nodes[6];
  Ps__NodeInfo *node_ptrs[6];
  Ps__KeyRange ranges[2];
  Ps__KeyRange *range_ptrs[2];
  uint32_t backups[2][2];
  uint32_t syncing[2][1];
  Ps__ModelSpec model;
} view_t;

typedef struct {
  uint64_t epoch;
  int asp;
  uint32_t lead[2];   /* primary of each range */
  uint32_t backup[2]; /* its backup, 0: none */
  int syncing[2];     /* the backup is still being filled */
  int worker_b_state; /* NodeState of worker 4 */
  int joining_worker; /* a worker 5 joining at step 3 */
} view_opts_t;

static void view_build(view_t *w, const view_opts_t *o) {
  memset(w, 0, sizeof(*w));
  ps__view__init(&w->v);
  model_init(&w->model, 0.9f, 1);
  static const char *addr[] = {
      "", "tcp://127.0.0.1:7101", "tcp://127.0.0.1:7102", "", "", ""};
  size_t n = o->joining_worker ? 5 : 4;
  for (size_t i = 0; i < n; i++) {
    Ps__NodeInfo *ni = &w->nodes[i];
    ps__node_info__init(ni);
    ni->id = (uint32_t)i + 1;
    ni->role = i < 2 ? PS__ROLE__ROLE_SERVER : PS__ROLE__ROLE_WORKER;
    ni->address = (char *)addr[i + 1];
    ni->state = PS__NODE_STATE__NODE_STATE_ALIVE;
    ni->rank = i >= 2 ? (uint32_t)i - 2 : 0;
    w->node_ptrs[i] = ni;
  }
  if (o->worker_b_state) w->nodes[3].state = o->worker_b_state;
  if (o->joining_worker) {
    w->nodes[4].rank = 1;
    w->nodes[4].join_clock = 3;
    w->nodes[4].joining = 1;
  }
  uint32_t live = 0;
  for (size_t i = 0; i < n; i++)
    live += w->nodes[i].role == PS__ROLE__ROLE_WORKER &&
            w->nodes[i].state == PS__NODE_STATE__NODE_STATE_ALIVE;
  for (int r = 0; r < 2; r++) {
    Ps__KeyRange *kr = &w->ranges[r];
    ps__key_range__init(kr);
    kr->begin = r == 0 ? 0 : FUZZ_RANGE_SPLIT;
    kr->end = r == 0 ? FUZZ_RANGE_SPLIT : FUZZ_MODEL_TOTAL;
    kr->server_id = o->lead[r];
    if (o->backup[r]) {
      w->backups[r][0] = o->backup[r];
      kr->n_backups = 1;
      kr->backups = w->backups[r];
      if (o->syncing[r]) {
        w->syncing[r][0] = o->backup[r];
        kr->n_syncing = 1;
        kr->syncing = w->syncing[r];
      }
    }
    w->range_ptrs[r] = kr;
  }
  w->v.epoch = o->epoch;
  w->v.n_nodes = n;
  w->v.nodes = w->node_ptrs;
  w->v.n_ranges = 2;
  w->v.ranges = w->range_ptrs;
  w->v.model = &w->model;
  w->v.mode =
      o->asp ? PS__CONSISTENCY_MODE__MODE_ASP : PS__CONSISTENCY_MODE__MODE_BSP;
  w->v.live_workers = live;
  w->v.replication = 2;
}

/* The first view of the job: node 1 leads range 0 alone (acks go out at
 * once), node 2 leads range 1 with node 1 as its backup. */
static const view_opts_t VIEW_FIRST = {
    .epoch = 1, .lead = {1, 2}, .backup = {0, 1}};
/* Both ranges with a backup in step, as replication 2 places them. */
static const view_opts_t VIEW_REPLICATED = {
    .epoch = 1, .lead = {1, 2}, .backup = {2, 1}};

static void rec_view(buf_t *b, const view_opts_t *o) {
  view_t w;
  view_build(&w, o);
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.epoch = o->epoch;
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &w.v;
  rec(b, 0, &env, NULL, 0);
}

/* ---- bodies ------------------------------------------------------------ */

static float values[FUZZ_MODEL_TOTAL];
static uint64_t keys[64];

static void env_init(Ps__Envelope *env, uint32_t sender, uint64_t epoch,
                     uint64_t request_id) {
  ps__envelope__init(env);
  env->sender = sender;
  env->epoch = epoch;
  env->request_id = request_id;
}

static void rec_push(buf_t *b, unsigned from, uint32_t worker, uint64_t epoch,
                     uint64_t rid, uint64_t key, uint64_t count, uint64_t clock,
                     uint64_t seq) {
  Ps__Push p = PS__PUSH__INIT;
  p.key_begin = key;
  p.count = count;
  p.clock = clock;
  p.seq = seq;
  Ps__Envelope env;
  env_init(&env, worker, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &p;
  frame_t f = {values, count * sizeof(float)};
  rec(b, from, &env, &f, 1);
}

/* A PushPull of values in codec (issue #15), its reply asked in
 * pull_codec; top-k sends a tenth of the keys. */
static void rec_pushpull(buf_t *b, unsigned from, uint32_t worker,
                         uint64_t epoch, uint64_t rid, uint64_t key,
                         uint64_t count, uint64_t clock, uint64_t seq,
                         int codec, int pull_codec) {
  static unsigned char enc[FUZZ_MODEL_TOTAL * 8];
  static float scratch[FUZZ_MODEL_TOTAL];
  Ps__PushPull p = PS__PUSH_PULL__INIT;
  p.key_begin = key;
  p.count = count;
  p.clock = clock;
  p.seq = seq;
  p.codec = (Ps__Codec)codec;
  p.pull_codec = (Ps__Codec)pull_codec;
  Ps__Envelope env;
  env_init(&env, worker, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_PUSH_PULL;
  env.push_pull = &p;
  frame_t f = {values, count * sizeof(float)};
  if (codec != PS_CODEC_NONE) {
    uint64_t k = ps_codec_topk_count(count, 0.1f);
    f.data = enc;
    f.len = ps_codec_encode(codec, values, count, k, enc, scratch);
  }
  rec(b, from, &env, &f, 1);
}

static void rec_pull(buf_t *b, unsigned from, uint32_t worker, uint64_t epoch,
                     uint64_t rid, uint64_t key, uint64_t count,
                     uint64_t clock) {
  Ps__Pull p = PS__PULL__INIT;
  p.key_begin = key;
  p.count = count;
  p.clock = clock;
  Ps__Envelope env;
  env_init(&env, worker, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_PULL;
  env.pull = &p;
  rec(b, from, &env, NULL, 0);
}

static void rec_sparse_push(buf_t *b, unsigned from, uint32_t worker,
                            uint64_t epoch, uint64_t rid, const uint64_t *k,
                            size_t n) {
  Ps__SparsePush p = PS__SPARSE_PUSH__INIT;
  p.table = "emb";
  p.nkeys = n;
  p.seq = rid;
  Ps__Envelope env;
  env_init(&env, worker, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PUSH;
  env.sparse_push = &p;
  frame_t f[2] = {{k, n * sizeof(uint64_t)},
                  {values, n * FUZZ_SPARSE_DIM * sizeof(float)}};
  rec(b, from, &env, f, 2);
}

static void rec_sparse_pull(buf_t *b, unsigned from, uint32_t worker,
                            uint64_t epoch, uint64_t rid, const uint64_t *k,
                            size_t n) {
  Ps__SparsePull p = PS__SPARSE_PULL__INIT;
  p.table = "emb";
  p.nkeys = n;
  Ps__Envelope env;
  env_init(&env, worker, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_SPARSE_PULL;
  env.sparse_pull = &p;
  frame_t f = {k, n * sizeof(uint64_t)};
  rec(b, from, &env, &f, 1);
}

/* A primary's Replicate of a worker's push to range 1. */
static void rec_replicate_push(buf_t *b, unsigned from, uint32_t primary,
                               uint64_t epoch, uint64_t rid, uint32_t worker,
                               uint64_t seq, uint64_t key, uint64_t count,
                               uint64_t clock) {
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = FUZZ_RANGE_SPLIT;
  r.range_end = FUZZ_MODEL_TOTAL;
  r.kind = PS__REPLICATE_KIND__REPL_PUSH;
  r.worker = worker;
  r.seq = seq;
  r.key_begin = key;
  r.count = count;
  r.clock = clock;
  Ps__Envelope env;
  env_init(&env, primary, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = &r;
  frame_t f = {values, count * sizeof(float)};
  rec(b, from, &env, &f, 1);
}

/* A primary's REPL_PUSHES to range 1: n pushes of count values at key
 * from worker, seqs seq, seq + 1, ..., one frame each. */
static void rec_replicate_pushes(buf_t *b, unsigned from, uint32_t primary,
                                 uint64_t epoch, uint64_t rid, uint32_t worker,
                                 uint64_t seq, uint64_t key, uint64_t count,
                                 uint64_t clock, int n) {
  Ps__ReplPush p[4];
  Ps__ReplPush *pp[4];
  frame_t f[4];
  for (int i = 0; i < n && i < 4; i++) {
    ps__repl_push__init(&p[i]);
    p[i].worker = worker;
    p[i].seq = seq + (uint64_t)i;
    p[i].key_begin = key;
    p[i].count = count;
    p[i].clock = clock;
    pp[i] = &p[i];
    f[i] = (frame_t){values, count * sizeof(float)};
  }
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = FUZZ_RANGE_SPLIT;
  r.range_end = FUZZ_MODEL_TOTAL;
  r.kind = PS__REPLICATE_KIND__REPL_PUSHES;
  r.n_pushes = (size_t)n;
  r.pushes = pp;
  Ps__Envelope env;
  env_init(&env, primary, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = &r;
  rec(b, from, &env, f, n);
}

/* A primary's REPL_STEP of range 1: step clock applied with a sum (or a
 * skip to clock_after without one), naming worker's push seq. */
static void rec_replicate_step(buf_t *b, unsigned from, uint32_t primary,
                               uint64_t epoch, uint64_t rid, uint32_t worker,
                               uint64_t seq, uint64_t clock,
                               uint64_t clock_after, int sum) {
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = FUZZ_RANGE_SPLIT;
  r.range_end = FUZZ_MODEL_TOTAL;
  r.kind = PS__REPLICATE_KIND__REPL_STEP;
  r.clock = clock;
  r.clock_after = clock_after;
  r.sum = sum != 0;
  r.count = sum ? FUZZ_MODEL_TOTAL - FUZZ_RANGE_SPLIT : 0;
  r.step_scale = 0.5f;
  r.n_step_workers = 1;
  r.step_workers = &worker;
  r.n_step_seqs = 1;
  r.step_seqs = &seq;
  Ps__Envelope env;
  env_init(&env, primary, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = &r;
  frame_t f = {values, r.count * sizeof(float)};
  rec(b, from, &env, &f, sum ? 1 : 0);
}

static void rec_replicate_live(buf_t *b, unsigned from, uint32_t primary,
                               uint64_t epoch, uint64_t rid) {
  uint32_t live[2] = {FUZZ_WORKER_A, FUZZ_WORKER_B};
  uint64_t from_step[2] = {0, 0};
  Ps__Replicate r = PS__REPLICATE__INIT;
  r.range_begin = FUZZ_RANGE_SPLIT;
  r.range_end = FUZZ_MODEL_TOTAL;
  r.kind = PS__REPLICATE_KIND__REPL_LIVE;
  r.n_live = 2;
  r.live = live;
  r.n_live_from = 2;
  r.live_from = from_step;
  Ps__Envelope env;
  env_init(&env, primary, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_REPLICATE;
  env.replicate = &r;
  rec(b, from, &env, NULL, 0);
}

/* A snapshot of range 1 from its primary: head, then weights, momentum
 * and the BSP sum of offsets [0, 100) in chunks. */
static void rec_snapshot(buf_t *b, unsigned from, uint32_t primary,
                         uint64_t epoch, uint64_t rid) {
  const uint64_t len = FUZZ_MODEL_TOTAL - FUZZ_RANGE_SPLIT;
  uint64_t live[4] = {FUZZ_WORKER_A, 0, FUZZ_WORKER_B, 0};
  uint64_t contrib[2] = {FUZZ_WORKER_A, 100};
  /* One dedup record: ps_dedup_record_t is {u32 worker, u32 pad, u64 seq
   * ...}; its size is the server's to check, so an empty frame is the
   * valid one here. */
  Ps__ReplicaSnapshot h = PS__REPLICA_SNAPSHOT__INIT;
  h.range_begin = FUZZ_RANGE_SPLIT;
  h.range_end = FUZZ_MODEL_TOTAL;
  h.clock = 2;
  h.state_slots = 1;
  h.acc_lo = 0;
  h.acc_hi = 100;
  h.nlive = 2;
  h.ncontrib = 1;
  h.ndedup = 0;
  h.nchunks = 4;
  Ps__Envelope env;
  env_init(&env, primary, epoch, rid);
  env.body_case = PS__ENVELOPE__BODY_REPLICA_SNAPSHOT;
  env.replica_snapshot = &h;
  frame_t f[3] = {{live, sizeof(live)}, {contrib, sizeof(contrib)}, {"", 0}};
  rec(b, from, &env, f, 3);
  struct {
    int array;
    uint64_t offset, count;
  } chunks[4] = {{PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS, 0, len / 2},
                 {PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS, len / 2, len / 2},
                 {PS__SNAPSHOT_ARRAY__SNAP_STATE, 0, len},
                 {PS__SNAPSHOT_ARRAY__SNAP_SUM, 0, 100}};
  for (int i = 0; i < 4; i++) {
    Ps__ReplicaChunk c = PS__REPLICA_CHUNK__INIT;
    c.range_begin = FUZZ_RANGE_SPLIT;
    c.range_end = FUZZ_MODEL_TOTAL;
    c.array = (Ps__SnapshotArray)chunks[i].array;
    c.offset = chunks[i].offset;
    c.count = chunks[i].count;
    env_init(&env, primary, epoch, rid);
    env.body_case = PS__ENVELOPE__BODY_REPLICA_CHUNK;
    env.replica_chunk = &c;
    /* The weights come in two frames, as a primary's blocks do. */
    size_t bytes = chunks[i].count * sizeof(float);
    if (chunks[i].array == PS__SNAPSHOT_ARRAY__SNAP_WEIGHTS) {
      frame_t cf[2] = {{values, bytes / 2}, {values, bytes - bytes / 2}};
      rec(b, from, &env, cf, 2);
    } else {
      frame_t cf = {values, bytes};
      rec(b, from, &env, &cf, 1);
    }
  }
}

static void rec_handover(buf_t *b, uint64_t id, int range, uint32_t to,
                         int cancel) {
  Ps__Handover h = PS__HANDOVER__INIT;
  h.id = id;
  h.range_begin = range == 0 ? 0 : FUZZ_RANGE_SPLIT;
  h.range_end = range == 0 ? FUZZ_RANGE_SPLIT : FUZZ_MODEL_TOTAL;
  h.to = to;
  h.cancel = cancel;
  Ps__Envelope env;
  env_init(&env, 0, 0, 0);
  env.body_case = PS__ENVELOPE__BODY_HANDOVER;
  env.handover = &h;
  rec(b, 0, &env, NULL, 0);
}

/* ---- frame: every body ------------------------------------------------- */

/* One valid message of every Envelope body, each its own seed. */
static void gen_frame(void) {
  buf_t b = {0};
  Ps__Envelope env;
  Ps__ModelSpec model;
  model_init(&model, 0.9f, 1);
  view_t w;
  view_build(&w, &VIEW_REPLICATED);

#define ONE(name, body_case_, field, value, frames, nframes) \
  do {                                                       \
    reset(&b);                                               \
    env_init(&env, 3, 1, 42);                                \
    env.body_case = body_case_;                              \
    env.field = value;                                       \
    rec(&b, 1, &env, frames, nframes);                       \
    save("frame", name, &b);                                 \
  } while (0)

  Ps__Register reg = PS__REGISTER__INIT;
  reg.role = PS__ROLE__ROLE_WORKER;
  reg.model = &model;
  reg.rank = 0xffffffffu;
  ONE("register", PS__ENVELOPE__BODY_REGISTER, register_, &reg, NULL, 0);
  Ps__RegisterReply rr = PS__REGISTER_REPLY__INIT;
  rr.node_id = 3;
  rr.num_workers = 2;
  ONE("register_reply", PS__ENVELOPE__BODY_REGISTER_REPLY, register_reply, &rr,
      NULL, 0);
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  hb.clock = 5;
  ONE("heartbeat", PS__ENVELOPE__BODY_HEARTBEAT, heartbeat, &hb, NULL, 0);
  ONE("view", PS__ENVELOPE__BODY_VIEW, view, &w.v, NULL, 0);
  Ps__Push push = PS__PUSH__INIT;
  push.count = 100;
  push.clock = 1;
  push.seq = 1;
  frame_t f100 = {values, 400};
  ONE("push", PS__ENVELOPE__BODY_PUSH, push, &push, &f100, 1);
  Ps__Pull pull = PS__PULL__INIT;
  pull.count = 100;
  ONE("pull", PS__ENVELOPE__BODY_PULL, pull, &pull, NULL, 0);
  Ps__PullReply prep = PS__PULL_REPLY__INIT;
  prep.count = 100;
  frame_t two[2] = {{values, 160}, {values, 240}};
  ONE("pull_reply", PS__ENVELOPE__BODY_PULL_REPLY, pull_reply, &prep, two, 2);
  Ps__Ack ack = PS__ACK__INIT;
  ack.clock = 3;
  ack.duplicate = 1;
  ONE("ack", PS__ENVELOPE__BODY_ACK, ack, &ack, NULL, 0);
  Ps__Error e = PS__ERROR__INIT;
  e.code = PS_ERR_STALE_EPOCH;
  e.message = "request epoch 2, server view epoch 1";
  ONE("error", PS__ENVELOPE__BODY_ERROR, error, &e, NULL, 0);
  Ps__Barrier bar = PS__BARRIER__INIT;
  bar.name = "epoch-end";
  ONE("barrier", PS__ENVELOPE__BODY_BARRIER, barrier, &bar, NULL, 0);
  Ps__Done done = PS__DONE__INIT;
  ONE("done", PS__ENVELOPE__BODY_DONE, done, &done, NULL, 0);
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = "signal SIGTERM";
  ONE("shutdown", PS__ENVELOPE__BODY_SHUTDOWN, shutdown, &sd, NULL, 0);
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  ONE("status_request", PS__ENVELOPE__BODY_STATUS_REQUEST, status_request, &sr,
      NULL, 0);
  Ps__CheckpointInfo info = PS__CHECKPOINT_INFO__INIT;
  info.id = 2;
  info.step = 8;
  info.dir = "/var/lib/ps/checkpoints/ckpt-000000000008";
  info.shards = 2;
  info.reason = "psctl";
  Ps__Status st = PS__STATUS__INIT;
  st.view = &w.v;
  st.uptime_ms = 1000;
  st.expected_servers = 2;
  st.expected_workers = 2;
  st.last_checkpoint = &info;
  ONE("status", PS__ENVELOPE__BODY_STATUS, status, &st, NULL, 0);
  Ps__DrainCommand dc = PS__DRAIN_COMMAND__INIT;
  dc.server = 1;
  ONE("drain_command", PS__ENVELOPE__BODY_DRAIN_COMMAND, drain_command, &dc,
      NULL, 0);
  Ps__RemoveWorkerCommand rwc = PS__REMOVE_WORKER_COMMAND__INIT;
  rwc.worker = 3;
  ONE("remove_worker_command", PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND,
      remove_worker_command, &rwc, NULL, 0);
  Ps__CheckpointRequest creq = PS__CHECKPOINT_REQUEST__INIT;
  creq.id = 1;
  creq.step = 2;
  creq.dir = "/var/lib/ps/checkpoints/ckpt-000000000002";
  ONE("checkpoint_request", PS__ENVELOPE__BODY_CHECKPOINT_REQUEST,
      checkpoint_request, &creq, NULL, 0);
  Ps__CheckpointShard cs = PS__CHECKPOINT_SHARD__INIT;
  cs.file = "shard-000000000002-0000000000000000.psck";
  cs.end = 800;
  cs.bytes = 6528;
  cs.crc32c = 0x1234abcdu;
  cs.clock = 2;
  cs.server_id = 1;
  Ps__CheckpointShard *csp[1] = {&cs};
  Ps__CheckpointReply crep = PS__CHECKPOINT_REPLY__INIT;
  crep.id = 1;
  crep.clock = 2;
  crep.written = 1;
  crep.n_shards = 1;
  crep.shards = csp;
  crep.write_us = 900;
  ONE("checkpoint_reply", PS__ENVELOPE__BODY_CHECKPOINT_REPLY, checkpoint_reply,
      &crep, NULL, 0);
  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  cc.dir = "";
  ONE("checkpoint_command", PS__ENVELOPE__BODY_CHECKPOINT_COMMAND,
      checkpoint_command, &cc, NULL, 0);
  ONE("checkpoint_info", PS__ENVELOPE__BODY_CHECKPOINT_INFO, checkpoint_info,
      &info, NULL, 0);
  Ps__SparsePush sp = PS__SPARSE_PUSH__INIT;
  sp.table = "emb";
  sp.nkeys = 4;
  keys[0] = 3, keys[1] = 9, keys[2] = 27, keys[3] = 81;
  frame_t spf[2] = {{keys, 32}, {values, 4 * FUZZ_SPARSE_DIM * 4}};
  ONE("sparse_push", PS__ENVELOPE__BODY_SPARSE_PUSH, sparse_push, &sp, spf, 2);
  Ps__SparsePull spl = PS__SPARSE_PULL__INIT;
  spl.table = "emb";
  spl.nkeys = 4;
  ONE("sparse_pull", PS__ENVELOPE__BODY_SPARSE_PULL, sparse_pull, &spl, spf, 1);
  Ps__SparsePullReply spr = PS__SPARSE_PULL_REPLY__INIT;
  spr.table = "emb";
  spr.nkeys = 4;
  spr.dim = FUZZ_SPARSE_DIM;
  ONE("sparse_pull_reply", PS__ENVELOPE__BODY_SPARSE_PULL_REPLY,
      sparse_pull_reply, &spr, &spf[1], 1);
  Ps__Replicate rp = PS__REPLICATE__INIT;
  rp.range_begin = 800;
  rp.range_end = 1600;
  rp.worker = 3;
  rp.seq = 1;
  rp.key_begin = 800;
  rp.count = 100;
  ONE("replicate_push", PS__ENVELOPE__BODY_REPLICATE, replicate, &rp, &f100, 1);
  uint32_t step_worker = 3;
  uint64_t step_seq = 1;
  Ps__Replicate rstep = rp;
  rstep.kind = PS__REPLICATE_KIND__REPL_STEP;
  rstep.clock = 1;
  rstep.clock_after = 2;
  rstep.sum = 1;
  rstep.step_scale = 0.5f;
  rstep.n_step_workers = 1;
  rstep.step_workers = &step_worker;
  rstep.n_step_seqs = 1;
  rstep.step_seqs = &step_seq;
  ONE("replicate_step", PS__ENVELOPE__BODY_REPLICATE, replicate, &rstep, &f100,
      1);
  Ps__ReplPush rpush[2] = {PS__REPL_PUSH__INIT, PS__REPL_PUSH__INIT};
  Ps__ReplPush *rpushp[2] = {&rpush[0], &rpush[1]};
  for (int i = 0; i < 2; i++) {
    rpush[i].worker = 3;
    rpush[i].seq = 2 + (uint64_t)i;
    rpush[i].key_begin = 800;
    rpush[i].count = 100;
  }
  Ps__Replicate rpushes = PS__REPLICATE__INIT;
  rpushes.range_begin = 800;
  rpushes.range_end = 1600;
  rpushes.kind = PS__REPLICATE_KIND__REPL_PUSHES;
  rpushes.n_pushes = 2;
  rpushes.pushes = rpushp;
  frame_t f100x2[2] = {f100, f100};
  ONE("replicate_pushes", PS__ENVELOPE__BODY_REPLICATE, replicate, &rpushes,
      f100x2, 2);
  Ps__PushPull pp = PS__PUSH_PULL__INIT;
  pp.count = 100;
  pp.clock = 1;
  pp.seq = 2;
  ONE("push_pull", PS__ENVELOPE__BODY_PUSH_PULL, push_pull, &pp, &f100, 1);

  /* Coded payloads (common/codec.h): each codec where the wire takes it. */
  static unsigned char coded[4096];
  static float scratch[100];
  uint64_t topk = ps_codec_topk_count(100, 0.1f);
  Ps__Push cpush = push;
  const char *push_names[] = {"", "push_fp16", "push_int8", "push_topk"};
  for (int c = PS_CODEC_FP16; c <= PS_CODEC_TOPK; c++) {
    cpush.codec = c;
    frame_t cf = {coded, ps_codec_encode(c, values, 100, topk, coded, scratch)};
    ONE(push_names[c], PS__ENVELOPE__BODY_PUSH, push, &cpush, &cf, 1);
  }
  /* A push-pull's push in each codec, its reply asked in the pull codecs
   * (issue #15): fp16 both ways, int8 both ways, top-k with int8 replies. */
  Ps__PushPull cpp = pp;
  const char *pp_names[] = {"", "push_pull_fp16", "push_pull_int8",
                            "push_pull_topk"};
  for (int c = PS_CODEC_FP16; c <= PS_CODEC_TOPK; c++) {
    cpp.codec = c;
    cpp.pull_codec = c == PS_CODEC_TOPK ? PS_CODEC_INT8 : c;
    frame_t cf = {coded, ps_codec_encode(c, values, 100, topk, coded, scratch)};
    ONE(pp_names[c], PS__ENVELOPE__BODY_PUSH_PULL, push_pull, &cpp, &cf, 1);
  }
  Ps__PullReply cprep = PS__PULL_REPLY__INIT;
  cprep.count = 100;
  cprep.codec = PS_CODEC_INT8;
  frame_t cint8 = {coded,
                   ps_codec_encode(PS_CODEC_INT8, values, 100, 0, coded, NULL)};
  ONE("pull_reply_int8", PS__ENVELOPE__BODY_PULL_REPLY, pull_reply, &cprep,
      &cint8, 1);
  Ps__Replicate crp = rp;
  crp.codec = PS_CODEC_INT8;
  ONE("replicate_push_int8", PS__ENVELOPE__BODY_REPLICATE, replicate, &crp,
      &cint8, 1);
  uint32_t live[2] = {3, 4};
  uint64_t live_from[2] = {0, 0};
  Ps__Replicate rl = PS__REPLICATE__INIT;
  rl.range_begin = 800;
  rl.range_end = 1600;
  rl.kind = PS__REPLICATE_KIND__REPL_LIVE;
  rl.n_live = 2;
  rl.live = live;
  rl.n_live_from = 2;
  rl.live_from = live_from;
  ONE("replicate_live", PS__ENVELOPE__BODY_REPLICATE, replicate, &rl, NULL, 0);
  Ps__ReplicaSnapshot snap = PS__REPLICA_SNAPSHOT__INIT;
  snap.range_begin = 800;
  snap.range_end = 1600;
  snap.acc_hi = 10;
  snap.nlive = 1;
  snap.ncontrib = 1;
  snap.nchunks = 2;
  uint64_t pair16[2] = {3, 0};
  frame_t snf[3] = {{pair16, 16}, {pair16, 16}, {"", 0}};
  ONE("replica_snapshot", PS__ENVELOPE__BODY_REPLICA_SNAPSHOT, replica_snapshot,
      &snap, snf, 3);
  Ps__ReplicaSynced rs = PS__REPLICA_SYNCED__INIT;
  rs.range_begin = 800;
  rs.range_end = 1600;
  rs.backup = 1;
  rs.bytes = 6400;
  ONE("replica_synced", PS__ENVELOPE__BODY_REPLICA_SYNCED, replica_synced, &rs,
      NULL, 0);
  Ps__JoinReply jr = PS__JOIN_REPLY__INIT;
  jr.node = 5;
  jr.join_clock = 3;
  jr.ok = 1;
  jr.clock = 2;
  ONE("join_reply", PS__ENVELOPE__BODY_JOIN_REPLY, join_reply, &jr, NULL, 0);
  Ps__ReplicaChunk rc = PS__REPLICA_CHUNK__INIT;
  rc.range_begin = 800;
  rc.range_end = 1600;
  rc.count = 100;
  ONE("replica_chunk", PS__ENVELOPE__BODY_REPLICA_CHUNK, replica_chunk, &rc,
      two, 2);
  Ps__Handover ho = PS__HANDOVER__INIT;
  ho.id = 1;
  ho.range_end = 800;
  ho.to = 2;
  ONE("handover", PS__ENVELOPE__BODY_HANDOVER, handover, &ho, NULL, 0);
  Ps__HandoverReady hr = PS__HANDOVER_READY__INIT;
  hr.id = 1;
  hr.range_end = 800;
  hr.clock = 4;
  ONE("handover_ready", PS__ENVELOPE__BODY_HANDOVER_READY, handover_ready, &hr,
      NULL, 0);
#undef ONE

  /* Refused ones, each for its own reason. */
  reset(&b);
  env_init(&env, 3, 1, 7);
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &push;
  env.version = 2;
  rec_raw(&b, 1, &env, &f100, 1);
  save("frame", "bad-version", &b);

  reset(&b);
  env_init(&env, 3, 1, 7);
  rec(&b, 1, &env, NULL, 0);
  save("frame", "bad-no-body", &b);

  reset(&b);
  env_init(&env, 3, 1, 7);
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &push;
  frame_t short_frame = {values, 396};
  rec(&b, 1, &env, &short_frame, 1);
  save("frame", "bad-push-size", &b);

  /* A pull reply of 33 frames: one more than a message may carry. */
  reset(&b);
  frame_t many[PS_MAX_PAYLOAD_FRAMES + 1];
  for (int i = 0; i <= PS_MAX_PAYLOAD_FRAMES; i++)
    many[i] = (frame_t){values, 4};
  prep.count = PS_MAX_PAYLOAD_FRAMES + 1;
  env_init(&env, 2, 1, 7);
  env.body_case = PS__ENVELOPE__BODY_PULL_REPLY;
  env.pull_reply = &prep;
  rec(&b, 1, &env, many, PS_MAX_PAYLOAD_FRAMES + 1);
  save("frame", "bad-too-many-frames", &b);

  /* The same messages on a PAIR, and under small limits. */
  reset(&b);
  rec_control(&b, 1, 0);
  env_init(&env, 3, 1, 9);
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &push;
  rec(&b, 0, &env, &f100, 1);
  rec_control(&b, 2, 64);
  rec(&b, 0, &env, &f100, 1);
  rec_control(&b, 3, 100);
  env.body_case = PS__ENVELOPE__BODY_VIEW;
  env.view = &w.v;
  rec(&b, 0, &env, NULL, 0);
  save("frame", "pair-and-limits", &b);
  free(b.p);
}

/* ---- server ------------------------------------------------------------ */

/* Keys of table "emb" that node `owner` holds under the first view. */
static size_t sparse_keys_of(uint32_t owner, uint64_t *out, size_t max) {
  view_t w;
  view_build(&w, &VIEW_FIRST);
  char err[256];
  ps_view_t *v = ps_view_from_pb(&w.v, err, sizeof(err));
  if (v == NULL) die("the generator's view is refused: %s", err);
  uint64_t salt = ps_sparse_salt("emb");
  size_t n = 0;
  for (uint64_t id = 1; n < max && id < 100000; id += 7)
    if (ps_view_sparse_owner(v, salt, id) == (int64_t)owner) out[n++] = id;
  ps_view_destroy(&v);
  return n;
}

static void gen_server(void) {
  buf_t b = {0};
  const uint32_t A = FUZZ_WORKER_A, B = FUZZ_WORKER_B;
  const uint64_t half = FUZZ_RANGE_SPLIT / 2;

  /* BSP: both workers push step 0 in two slices each; a pull for step 1
   * waits until the step is applied, another is served at once. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_pull(&b, A, A, 1, 1, 0, FUZZ_RANGE_SPLIT, 1);
  rec_push(&b, A, A, 1, 2, 0, half, 0, 1);
  rec_push(&b, A, A, 1, 3, half, half, 0, 2);
  rec_push(&b, B, B, 1, 4, 0, half, 0, 1);
  rec_push(&b, B, B, 1, 5, half, half, 0, 2);
  rec_pull(&b, B, B, 1, 6, 100, 300, 1);
  save("server", "bsp-step", &b);

  /* BSP push-pulls in codecs (issue #15): A's int8 with fp16 replies, B's
   * top-k with int8 replies, then A's resend (a duplicate, answered with
   * the weights) and B's next step in fp16 both ways. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_pushpull(&b, A, A, 1, 1, 0, FUZZ_RANGE_SPLIT, 0, 1, PS_CODEC_INT8,
               PS_CODEC_FP16);
  rec_pushpull(&b, B, B, 1, 2, 0, FUZZ_RANGE_SPLIT, 0, 1, PS_CODEC_TOPK,
               PS_CODEC_INT8);
  rec_pushpull(&b, A, A, 1, 3, 0, FUZZ_RANGE_SPLIT, 0, 1, PS_CODEC_INT8,
               PS_CODEC_FP16);
  rec_pushpull(&b, B, B, 1, 4, 0, FUZZ_RANGE_SPLIT, 1, 2, PS_CODEC_FP16,
               PS_CODEC_FP16);
  save("server", "pushpull-coded", &b);

  /* A resend of an applied push is acked as a duplicate; one older than
   * the window is refused. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_push(&b, A, A, 1, 1, 0, 64, 0, 5);
  rec_push(&b, A, A, 1, 1, 0, 64, 0, 5);
  rec_push(&b, A, A, 1, 2, 0, 64, 1, 1);
  save("server", "duplicate-push", &b);

  /* ASP: pushes apply on arrival. */
  reset(&b);
  view_opts_t asp = VIEW_FIRST;
  asp.asp = 1;
  rec_view(&b, &asp);
  rec_push(&b, A, A, 1, 1, 16, 200, 0, 1);
  rec_pull(&b, B, B, 1, 2, 0, FUZZ_RANGE_SPLIT, 0);
  rec_push(&b, B, B, 1, 3, 0, FUZZ_RANGE_SPLIT, 0, 1);
  save("server", "asp", &b);

  /* Both ranges replicated: a push goes to the backup first and is acked
   * once the backup acks it (control 1); one the backup refuses (control
   * 2: it follows a view where node 1 leads nothing) fails. */
  reset(&b);
  rec_view(&b, &VIEW_REPLICATED);
  rec_push(&b, A, A, 1, 1, 0, FUZZ_RANGE_SPLIT, 0, 1);
  rec_pull(&b, A, A, 1, 2, 0, 32, 0);
  rec_control(&b, 1, 0);
  rec_push(&b, B, B, 1, 3, 0, FUZZ_RANGE_SPLIT, 0, 1);
  rec_control(&b, 2, 0);
  save("server", "replicated-push", &b);

  /* A new backup of range 0: the primary sends it a snapshot first. */
  reset(&b);
  view_opts_t new_backup = VIEW_REPLICATED;
  new_backup.syncing[0] = 1;
  rec_view(&b, &new_backup);
  rec_push(&b, A, A, 1, 1, 0, 64, 0, 1);
  rec_control(&b, 1, 0);
  new_backup.epoch = 2;
  new_backup.syncing[0] = 0;
  rec_view(&b, &new_backup);
  rec_push(&b, B, B, 2, 2, 0, 64, 0, 1);
  rec_control(&b, 1, 0);
  save("server", "primary-snapshot", &b);

  /* Sparse rows this server holds, pushed and pulled; one it does not. */
  reset(&b);
  uint64_t mine[16];
  size_t nmine = sparse_keys_of(FUZZ_SERVER_ID, mine, 16);
  uint64_t theirs[1];
  sparse_keys_of(FUZZ_PEER_ID, theirs, 1);
  rec_view(&b, &VIEW_FIRST);
  rec_sparse_push(&b, A, A, 1, 1, mine, nmine);
  rec_sparse_pull(&b, B, B, 1, 2, mine, nmine);
  rec_sparse_pull(&b, B, B, 1, 3, theirs, 1);
  save("server", "sparse", &b);

  /* The backup side: node 2 replays pushes and a live set to range 1. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_replicate_live(&b, 2, FUZZ_PEER_ID, 1, 1);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 2, A, 1, FUZZ_RANGE_SPLIT, 400, 0);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 3, B, 1, FUZZ_RANGE_SPLIT, 800, 0);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 3, B, 1, FUZZ_RANGE_SPLIT, 800, 0);
  save("server", "backup-replay", &b);

  /* Coalesced pushes: three in one message, then the same again (every
   * one a duplicate now). */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_replicate_live(&b, 2, FUZZ_PEER_ID, 1, 1);
  rec_replicate_pushes(&b, 2, FUZZ_PEER_ID, 1, 2, A, 1, FUZZ_RANGE_SPLIT, 64, 0,
                       3);
  rec_replicate_pushes(&b, 2, FUZZ_PEER_ID, 1, 3, A, 1, FUZZ_RANGE_SPLIT, 64, 0,
                       3);
  save("server", "backup-pushes", &b);

  /* A new backup of range 1 is filled by a snapshot, then replays. */
  reset(&b);
  view_opts_t syncing = VIEW_FIRST;
  syncing.syncing[1] = 1;
  rec_view(&b, &syncing);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 1, A, 1, FUZZ_RANGE_SPLIT, 8, 0);
  rec_snapshot(&b, 2, FUZZ_PEER_ID, 1, 2);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 3, A, 3, FUZZ_RANGE_SPLIT, 8, 2);
  save("server", "snapshot", &b);

  /* BSP step by step: a step's sum, a skip, a step already held. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_replicate_step(&b, 2, FUZZ_PEER_ID, 1, 1, A, 1, 0, 1, 1);
  rec_replicate_step(&b, 2, FUZZ_PEER_ID, 1, 2, A, 2, 1, 3, 0);
  rec_replicate_step(&b, 2, FUZZ_PEER_ID, 1, 3, A, 2, 1, 2, 1);
  save("server", "step", &b);

  /* Replication that overtakes our view waits for it. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_replicate_live(&b, 2, FUZZ_PEER_ID, 2, 1);
  view_opts_t next = VIEW_FIRST;
  next.epoch = 2;
  rec_view(&b, &next);
  save("server", "deferred", &b);

  /* A planned handover of range 0 to node 2: pushes wait, pulls go on; the
   * next view makes node 2 the primary and this node its backup. */
  reset(&b);
  rec_view(&b, &VIEW_REPLICATED);
  rec_push(&b, A, A, 1, 1, 0, 64, 0, 1);
  rec_handover(&b, 7, 0, FUZZ_PEER_ID, 0);
  rec_push(&b, A, A, 1, 2, 0, 64, 0, 2);
  rec_pull(&b, A, A, 1, 3, 0, 64, 0);
  rec_control(&b, 1, 0);
  view_opts_t moved = VIEW_REPLICATED;
  moved.epoch = 2;
  moved.lead[0] = FUZZ_PEER_ID;
  moved.backup[0] = FUZZ_SERVER_ID;
  rec_view(&b, &moved);
  rec_replicate_live(&b, 2, FUZZ_PEER_ID, 2, 3);
  save("server", "handover", &b);

  reset(&b);
  rec_view(&b, &VIEW_REPLICATED);
  rec_handover(&b, 7, 0, FUZZ_PEER_ID, 0);
  rec_handover(&b, 7, 0, FUZZ_PEER_ID, 1);
  rec_push(&b, A, A, 1, 1, 0, 64, 0, 1);
  save("server", "handover-cancel", &b);

  /* Node 2 died: this node, its backup, leads range 1 now. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_replicate_push(&b, 2, FUZZ_PEER_ID, 1, 1, A, 1, FUZZ_RANGE_SPLIT, 100, 0);
  view_opts_t failover = VIEW_FIRST;
  failover.epoch = 2;
  failover.lead[1] = FUZZ_SERVER_ID;
  failover.backup[1] = 0;
  rec_view(&b, &failover);
  rec_push(&b, A, A, 2, 2, FUZZ_RANGE_SPLIT, 100, 0, 1);
  rec_push(&b, B, B, 1, 3, FUZZ_RANGE_SPLIT, 100, 0, 1);
  rec_pull(&b, B, B, 2, 4, 0, FUZZ_MODEL_TOTAL, 1);
  save("server", "failover", &b);

  /* Worker 4 died, a worker 5 joins at step 3. */
  reset(&b);
  rec_view(&b, &VIEW_FIRST);
  rec_push(&b, A, A, 1, 1, 0, FUZZ_RANGE_SPLIT, 0, 1);
  view_opts_t join = VIEW_FIRST;
  join.epoch = 2;
  join.worker_b_state = PS__NODE_STATE__NODE_STATE_DEAD;
  join.joining_worker = 1;
  rec_view(&b, &join);
  rec_push(&b, 5, 5, 2, 2, 0, FUZZ_RANGE_SPLIT, 3, 1);
  rec_pull(&b, A, A, 2, 3, 0, FUZZ_RANGE_SPLIT, 4);
  save("server", "join", &b);

  /* What is refused: no view yet, a newer epoch, keys of another range or
   * across two, bodies a server does not serve, an Error, a bad frame. */
  reset(&b);
  rec_pull(&b, A, A, 1, 1, 0, 16, 0);
  rec_view(&b, &VIEW_FIRST);
  rec_pull(&b, A, A, 9, 2, 0, 16, 0);
  rec_pull(&b, A, A, 1, 3, FUZZ_RANGE_SPLIT, 16, 0);
  rec_pull(&b, A, A, 1, 4, FUZZ_RANGE_SPLIT - 8, 16, 0);
  rec_push(&b, A, A, 1, 5, FUZZ_RANGE_SPLIT - 8, 16, 0, 1);
  Ps__Envelope env;
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  env_init(&env, A, 1, 6);
  env.body_case = PS__ENVELOPE__BODY_STATUS_REQUEST;
  env.status_request = &sr;
  rec(&b, A, &env, NULL, 0);
  Ps__Error e = PS__ERROR__INIT;
  e.code = PS_ERR_PROTO;
  e.message = "confused";
  env_init(&env, A, 1, 7);
  env.body_case = PS__ENVELOPE__BODY_ERROR;
  env.error = &e;
  rec(&b, A, &env, NULL, 0);
  Ps__Push p = PS__PUSH__INIT;
  p.count = 16;
  env_init(&env, A, 1, 8);
  env.body_case = PS__ENVELOPE__BODY_PUSH;
  env.push = &p;
  frame_t shortf = {values, 60};
  rec(&b, A, &env, &shortf, 1);
  rec_replicate_push(&b, 3, 3, 1, 9, A, 1, FUZZ_RANGE_SPLIT, 8, 0);
  save("server", "refused", &b);
  free(b.p);
}

/* ---- scheduler --------------------------------------------------------- */

static uint64_t next_rid;

static void sched_register(buf_t *b, unsigned from, int role, const char *addr,
                           Ps__ModelSpec *model, uint32_t rank) {
  Ps__Register r = PS__REGISTER__INIT;
  r.role = (Ps__Role)role;
  r.address = (char *)addr;
  r.model = model;
  r.rank = rank;
  Ps__Envelope env;
  env_init(&env, 0, 0, ++next_rid);
  env.body_case = PS__ENVELOPE__BODY_REGISTER;
  env.register_ = &r;
  rec(b, from, &env, NULL, 0);
}

/* Config byte, then servers 1 and 2 and workers 3 and 4 register (each
 * from its own sender): the first view (epoch 1) goes out. */
static void sched_start(buf_t *b, unsigned config, Ps__ModelSpec *model) {
  reset(b);
  next_rid = 0;
  put_u8(b, config);
  sched_register(b, 1, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7101", NULL, 0);
  sched_register(b, 2, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7102", NULL, 0);
  sched_register(b, 3, PS__ROLE__ROLE_WORKER, "", model, 0xffffffffu);
  sched_register(b, 4, PS__ROLE__ROLE_WORKER, "", model, 0xffffffffu);
}

static void sched_heartbeat(buf_t *b, uint32_t node, uint64_t epoch,
                            uint64_t clock) {
  Ps__Heartbeat hb = PS__HEARTBEAT__INIT;
  hb.clock = clock;
  Ps__Envelope env;
  env_init(&env, node, epoch, ++next_rid);
  env.body_case = PS__ENVELOPE__BODY_HEARTBEAT;
  env.heartbeat = &hb;
  rec(b, node, &env, NULL, 0);
}

static void sched_simple(buf_t *b, unsigned from, uint32_t node, uint64_t epoch,
                         int body_case, void *body) {
  Ps__Envelope env;
  env_init(&env, node, epoch, ++next_rid);
  env.body_case = (Ps__Envelope__BodyCase)body_case;
  /* Every body is a pointer in the same union. */
  env.heartbeat = body;
  rec(b, from, &env, NULL, 0);
}

static void sched_barrier(buf_t *b, uint32_t node, const char *name) {
  Ps__Barrier bar = PS__BARRIER__INIT;
  bar.name = (char *)name;
  sched_simple(b, node, node, 1, PS__ENVELOPE__BODY_BARRIER, &bar);
}

static void sched_ckpt_reply(buf_t *b, uint32_t node, uint64_t id,
                             uint64_t step, int written, uint64_t begin,
                             uint64_t end) {
  char name[64];
  snprintf(name, sizeof(name), "shard-%012llu-%016llx.psck",
           (unsigned long long)step, (unsigned long long)begin);
  Ps__CheckpointShard cs = PS__CHECKPOINT_SHARD__INIT;
  cs.file = name;
  cs.begin = begin;
  cs.end = end;
  cs.bytes = 80 + 2 * (24 + (end - begin) * 4);
  cs.crc32c = 0x5eed0000u + (uint32_t)node;
  cs.clock = step;
  cs.server_id = node;
  Ps__CheckpointShard *csp[1] = {&cs};
  Ps__CheckpointReply r = PS__CHECKPOINT_REPLY__INIT;
  r.id = id;
  r.clock = step;
  r.written = written;
  if (written) {
    r.n_shards = 1;
    r.shards = csp;
    r.write_us = 1500;
  }
  sched_simple(b, node, node, 1, PS__ENVELOPE__BODY_CHECKPOINT_REPLY, &r);
}

/* A heartbeat datagram record (fuzz_scheduler.c): "PSB1", the type, the
 * node, seq, epoch and clock, little-endian, untagged (the harness signs
 * datagrams of this length with the node's key). */
static void sched_beat(buf_t *b, uint32_t node, uint64_t seq, uint64_t epoch,
                       uint64_t clock) {
  uint8_t d[PS_BEAT_BYTES - 16] = {'P', 'S', 'B', '1', PS_BEAT_BEAT};
  for (int i = 0; i < 4; i++) d[8 + i] = (uint8_t)(node >> (8 * i));
  for (int i = 0; i < 8; i++) {
    d[16 + i] = (uint8_t)(seq >> (8 * i));
    d[24 + i] = (uint8_t)(epoch >> (8 * i));
    d[32 + i] = (uint8_t)(clock >> (8 * i));
  }
  put_u8(b, node & 0x7f);
  put_u8(b, 1);
  put_u16(b, sizeof(d));
  put(b, d, sizeof(d));
}

static void gen_scheduler(void) {
  buf_t b = {0};
  Ps__ModelSpec model, other;
  model_init(&model, 0.9f, 1);
  model_init(&other, 0.5f, 0);
  const unsigned cfg = FUZZ_SCHED_DEFAULT_CONFIG;

  sched_start(&b, cfg, &model);
  for (uint32_t n = 1; n <= 4; n++) sched_heartbeat(&b, n, 1, 1);
  rec_control(&b, 0, 0);
  save("scheduler", "start", &b);

  /* Heartbeats by datagram: taken (clocks), a replay, an epoch ahead, a
   * silent worker's that keep it alive, then one from a node declared
   * dead (fenced), and one too short. */
  sched_start(&b, cfg, &model);
  for (uint32_t n = 1; n <= 4; n++) sched_beat(&b, n, 1, 1, 2);
  sched_beat(&b, 1, 1, 1, 3);
  sched_beat(&b, 2, 2, 9, 3);
  rec_control(&b, 4, 100);
  sched_beat(&b, 4, 2, 1, 3);
  rec_control(&b, 0, 0);
  rec_control(&b, 3, 100);
  rec_control(&b, 0, 0);
  sched_beat(&b, 3, 2, 1, 3);
  sched_beat(&b, 1, 2, 0, 4);
  save("scheduler", "beats", &b);

  /* Heartbeats carry the servers' clocks past step 4: the periodic check
   * asks for a checkpoint at step 4; both servers accept, then write. */
  sched_start(&b, cfg, &model);
  sched_heartbeat(&b, 1, 1, 3);
  sched_heartbeat(&b, 2, 1, 3);
  rec_control(&b, 0, 0);
  sched_ckpt_reply(&b, 1, 1, 4, 0, 0, 0);
  sched_ckpt_reply(&b, 2, 1, 4, 0, 0, 0);
  sched_ckpt_reply(&b, 1, 1, 4, 1, 0, 800);
  sched_ckpt_reply(&b, 2, 1, 4, 1, 800, 1600);
  save("scheduler", "checkpoint-periodic", &b);

  /* psctl checkpoint (its own directory is the scratch one), a server late
   * for the step, the retry written. */
  sched_start(&b, cfg, &model);
  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  cc.dir = "/var/lib/ps/checkpoints";
  sched_simple(&b, 5, 0, 0, PS__ENVELOPE__BODY_CHECKPOINT_COMMAND, &cc);
  Ps__CheckpointReply late = PS__CHECKPOINT_REPLY__INIT;
  late.id = 1;
  late.code = PS_ERR_REFUSED;
  late.message = "past the step";
  late.late = 1;
  late.clock = 3;
  sched_simple(&b, 1, 1, 1, PS__ENVELOPE__BODY_CHECKPOINT_REPLY, &late);
  sched_ckpt_reply(&b, 1, 2, 5, 1, 0, 800);
  sched_ckpt_reply(&b, 2, 2, 5, 1, 800, 1600);
  sched_simple(&b, 6, 0, 0, PS__ENVELOPE__BODY_CHECKPOINT_COMMAND, &cc);
  save("scheduler", "checkpoint-psctl", &b);

  /* Barriers, status, then both workers done: the job ends. */
  sched_start(&b, cfg, &model);
  sched_barrier(&b, 3, "epoch-end");
  sched_barrier(&b, 4, "epoch-end");
  Ps__StatusRequest sr = PS__STATUS_REQUEST__INIT;
  sched_simple(&b, 5, 0, 0, PS__ENVELOPE__BODY_STATUS_REQUEST, &sr);
  Ps__Done done = PS__DONE__INIT;
  sched_simple(&b, 3, 3, 1, PS__ENVELOPE__BODY_DONE, &done);
  sched_simple(&b, 4, 4, 1, PS__ENVELOPE__BODY_DONE, &done);
  save("scheduler", "job-end", &b);

  /* Server 2 goes silent: range 1 fails over to node 1; a new server 5
   * registers as a spare and node 1 reports it synced. */
  sched_start(&b, cfg, &model);
  sched_heartbeat(&b, 1, 1, 2);
  rec_control(&b, 2, 100);
  sched_heartbeat(&b, 1, 1, 2);
  sched_heartbeat(&b, 2, 1, 2);
  sched_register(&b, 5, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7105", NULL, 0);
  rec_control(&b, 0, 0);
  Ps__ReplicaSynced rs = PS__REPLICA_SYNCED__INIT;
  rs.range_begin = 0;
  rs.range_end = 800;
  rs.backup = 5;
  rs.bytes = 6400;
  sched_simple(&b, 1, 1, 3, PS__ENVELOPE__BODY_REPLICA_SYNCED, &rs);
  rs.range_begin = 800;
  rs.range_end = 1600;
  sched_simple(&b, 1, 1, 3, PS__ENVELOPE__BODY_REPLICA_SYNCED, &rs);
  rec_control(&b, 0, 0);
  save("scheduler", "failover", &b);

  /* Worker 4 goes silent; a new worker takes its rank and joins once both
   * servers confirm its step. */
  sched_start(&b, cfg, &model);
  sched_heartbeat(&b, 1, 1, 5);
  sched_heartbeat(&b, 2, 1, 5);
  rec_control(&b, 4, 100);
  sched_register(&b, 5, PS__ROLE__ROLE_WORKER, "", &model, 1);
  Ps__JoinReply jr = PS__JOIN_REPLY__INIT;
  jr.node = 5;
  jr.join_clock = 7;
  jr.ok = 1;
  jr.clock = 5;
  sched_simple(&b, 1, 1, 3, PS__ENVELOPE__BODY_JOIN_REPLY, &jr);
  sched_simple(&b, 2, 2, 3, PS__ENVELOPE__BODY_JOIN_REPLY, &jr);
  rec_control(&b, 0, 0);
  save("scheduler", "worker-join", &b);

  /* psctl drain 1: its primary moves to node 2 (HandoverReady), then it is
   * told to go. No checkpoints: one in progress holds every move. */
  sched_start(&b, cfg & ~0x80u, &model);
  Ps__DrainCommand dc = PS__DRAIN_COMMAND__INIT;
  dc.server = 1;
  sched_simple(&b, 5, 0, 0, PS__ENVELOPE__BODY_DRAIN_COMMAND, &dc);
  rec_control(&b, 0, 0);
  Ps__HandoverReady hr = PS__HANDOVER_READY__INIT;
  hr.id = 1;
  hr.range_begin = 0;
  hr.range_end = 800;
  hr.clock = 2;
  sched_simple(&b, 1, 1, 1, PS__ENVELOPE__BODY_HANDOVER_READY, &hr);
  rec_control(&b, 0, 0);
  save("scheduler", "drain", &b);

  /* A worker leaves on SIGTERM: the scheduler shuts the cluster down. */
  sched_start(&b, cfg, &model);
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = "signal SIGTERM";
  sched_simple(&b, 3, 3, 1, PS__ENVELOPE__BODY_SHUTDOWN, &sd);
  save("scheduler", "leave", &b);

  /* Registrations refused: a role that does not register, a worker with
   * another model, a rank taken; then messages from nobody, from the past,
   * and bodies the scheduler does not take. */
  sched_start(&b, cfg, &model);
  sched_register(&b, 5, PS__ROLE__ROLE_ADMIN, "", NULL, 0);
  sched_register(&b, 6, PS__ROLE__ROLE_WORKER, "", &other, 0);
  sched_register(&b, 7, PS__ROLE__ROLE_WORKER, "", &model, 1);
  sched_heartbeat(&b, 9, 1, 0);
  sched_heartbeat(&b, 3, 7, 0);
  Ps__Push push = PS__PUSH__INIT;
  sched_simple(&b, 3, 3, 1, PS__ENVELOPE__BODY_PUSH, &push);
  save("scheduler", "refused", &b);

  /* Other configurations: one server and one worker in ASP; three servers
   * with three copies and no rebalance. */
  reset(&b);
  next_rid = 0;
  put_u8(&b, 0x08 | 0x10); /* 1 server, 1 worker, asp, 1 copy */
  sched_register(&b, 1, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7101", NULL, 0);
  sched_register(&b, 2, PS__ROLE__ROLE_WORKER, "", &model, 0);
  sched_heartbeat(&b, 1, 1, 9);
  sched_simple(&b, 2, 2, 1, PS__ENVELOPE__BODY_DONE, &done);
  save("scheduler", "asp-single", &b);

  reset(&b);
  next_rid = 0;
  put_u8(&b, 2 | 4 | 0x30 | 0x80); /* 3 servers, 2 workers, 3 copies */
  sched_register(&b, 1, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7101", NULL, 0);
  sched_register(&b, 2, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7102", NULL, 0);
  sched_register(&b, 3, PS__ROLE__ROLE_SERVER, "tcp://127.0.0.1:7103", NULL, 0);
  sched_register(&b, 4, PS__ROLE__ROLE_WORKER, "", &model, 0xffffffffu);
  sched_register(&b, 5, PS__ROLE__ROLE_WORKER, "", &model, 0xffffffffu);
  rec_control(&b, 3, 100);
  sched_heartbeat(&b, 1, 1, 1);
  rec_control(&b, 0, 0);
  save("scheduler", "three-copies", &b);
  free(b.p);
}

/* ---- checkpoint -------------------------------------------------------- */

#define CK_W 60
#define CK_B 40
#define CK_TOTAL (CK_W + CK_B)

static void ck_item(buf_t *b, unsigned kind, unsigned index, const void *data,
                    size_t len) {
  put_u8(b, kind);
  put_u8(b, index);
  put_u16(b, len);
  put(b, data, len);
}

static uint8_t *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) die("cannot read %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *p = malloc((size_t)n + 1);
  if (p == NULL || fread(p, 1, (size_t)n, f) != (size_t)n) die("read %s", path);
  fclose(f);
  *len = (size_t)n;
  return p;
}

/* A checkpoint written by the real writers into tmp: shards of the given
 * bounds at clocks, and its MANIFEST. With sparse, the model has a sparse
 * table with its own optimizer (Adam: rows of weights, moments and the
 * update count) and shard i holds i + 1 of its rows in a sparse section. */
static void ck_write(const char *tmp, float momentum, int asp, int sparse,
                     const uint64_t *bounds, const uint64_t *clocks,
                     int nshards) {
  ps_tensor_spec_t t[2] = {
      {.name = "w",
       .length = CK_W,
       .init = PS_INIT_UNIFORM,
       .init_scale = 0.1f},
      {.name = "b", .offset = CK_W, .length = CK_B, .init = PS_INIT_ZERO},
  };
  ps_model_t model = {
      .ntensors = 2,
      .tensors = t,
      .total = CK_TOTAL,
      .optimizer = PS_OPTIMIZER_SGD,
      .learning_rate = 0.1f,
      .momentum = momentum,
      .seed = 11,
  };
  ps_sparse_spec_t table = {
      .name = "emb",
      .dim = 2,
      .init = PS_INIT_UNIFORM,
      .init_scale = 0.1f,
      .has_optimizer = 1,
      .optimizer = {.kind = PS_OPTIMIZER_ADAM,
                    .learning_rate = 0.01f,
                    .beta1 = 0.9f,
                    .beta2 = 0.999f,
                    .epsilon = 1e-8f},
  };
  table.salt = ps_sparse_salt(table.name);
  if (sparse) {
    model.nsparse = 1;
    model.sparse = &table;
  }
  size_t rf = ps_optimizer_row_floats(&table.optimizer, table.dim);
  uint64_t fp = ps_checkpoint_fingerprint(&model);
  ps_checkpoint_file_t files[4];
  uint64_t step = UINT64_MAX;
  for (int i = 0; i < nshards; i++) step = clocks[i] < step ? clocks[i] : step;
  char err[1024];
  for (int i = 0; i < nshards; i++) {
    ps_checkpoint_shard_meta_t meta = {
        .fingerprint = fp,
        .begin = bounds[i],
        .end = bounds[i + 1],
        .clock = clocks[i],
        .view_epoch = 3,
        .checkpoint_id = 2,
        .mode = asp ? PS__CONSISTENCY_MODE__MODE_ASP
                    : PS__CONSISTENCY_MODE__MODE_BSP,
        .state_slots = momentum != 0.0f,
    };
    /* Every tensor piece counts the shard's clock in updates. */
    uint64_t steps[4], nsteps = 0;
    if (bounds[i] < CK_W) {
      steps[2 * nsteps] = 0;
      steps[2 * nsteps++ + 1] = clocks[i];
    }
    if (bounds[i + 1] > CK_W) {
      steps[2 * nsteps] = 1;
      steps[2 * nsteps++ + 1] = clocks[i];
    }
    snprintf(files[i].file, sizeof(files[i].file), "shard-%d.psck", i);
    ps_checkpoint_file_stat_t st;
    /* One record (PS_CHECKPOINT_SECTION_SPARSE): table 0, i + 1 rows. */
    uint8_t rec[16 + 4 * (8 + 8 * sizeof(float))];
    uint64_t nrows = (uint64_t)i + 1;
    size_t rec_bytes = 16 + (size_t)nrows * (8 + rf * sizeof(float));
    fuzz_put_u32(rec, 0);
    fuzz_put_u32(rec + 4, (uint32_t)rf);
    memcpy(rec + 8, &nrows, 8); /* LE hosts, as the writers */
    for (uint64_t r = 0; r < nrows; r++) {
      uint64_t id = 10 * r + (uint64_t)i + 1;
      memcpy(rec + 16 + r * 8, &id, 8);
      memcpy(rec + 16 + nrows * 8 + r * rf * sizeof(float), values + r,
             rf * sizeof(float));
    }
    if (ps_checkpoint_shard_write_sparse(
            tmp, files[i].file, &meta, values + bounds[i],
            momentum != 0.0f ? values + bounds[i] + 1 : NULL, steps,
            (size_t)nsteps, sparse ? rec : NULL, sparse ? rec_bytes : 0, NULL,
            0, &st, err, sizeof(err)) != PS_OK)
      die("%s", err);
    files[i].begin = bounds[i];
    files[i].end = bounds[i + 1];
    files[i].bytes = st.bytes;
    files[i].crc32c = st.crc32c;
    files[i].clock = clocks[i];
    files[i].server_id = (uint32_t)i + 1;
  }
  ps_checkpoint_manifest_t m = {
      .id = 2,
      .step = step,
      .view_epoch = 3,
      .mode =
          asp ? PS__CONSISTENCY_MODE__MODE_ASP : PS__CONSISTENCY_MODE__MODE_BSP,
      .num_servers = (uint32_t)nshards,
      .model = model,
      .fingerprint = fp,
      .created_unix_ms = 1764000000000ull,
      .nshards = (size_t)nshards,
      .shards = files,
  };
  if (ps_checkpoint_manifest_write(tmp, &m, err, sizeof(err)) != PS_OK)
    die("%s", err);
}

/* flags, selector, then the MANIFEST (as a body for the harness to frame,
 * or as the file) and the shard files, and LATEST. */
static void ck_seed(const char *tmp, const char *name, int body, int nshards,
                    int latest) {
  buf_t b = {0};
  put_u8(&b, body ? 1 : 0);
  put_u16(&b, 0x1234);
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", tmp, PS_CHECKPOINT_MANIFEST);
  size_t len;
  uint8_t *f = slurp(path, &len);
  if (body)
    ck_item(&b, 0, 0, f + 24, len - 28);
  else
    ck_item(&b, 3, 0, f, len);
  free(f);
  for (int i = 0; i < nshards; i++) {
    snprintf(path, sizeof(path), "%s/shard-%d.psck", tmp, i);
    f = slurp(path, &len);
    ck_item(&b, 1, (unsigned)i, f, len);
    free(f);
  }
  if (latest) ck_item(&b, 2, 0, "ckpt-1\n", 7);
  save("checkpoint", name, &b);
  free(b.p);
}

static void gen_checkpoint(void) {
  char tmp[] = "/tmp/ps-fuzz-corpus-XXXXXX";
  if (mkdtemp(tmp) == NULL) die("mkdtemp");
  const uint64_t two[] = {0, 48, CK_TOTAL}, clocks2[] = {6, 6};
  ck_write(tmp, 0.9f, 0, 0, two, clocks2, 2);
  ck_seed(tmp, "two-shards", 0, 2, 1);
  ck_seed(tmp, "two-shards-body", 1, 2, 0);
  const uint64_t one[] = {0, CK_TOTAL}, clocks1[] = {4};
  ck_write(tmp, 0.0f, 0, 0, one, clocks1, 1);
  ck_seed(tmp, "one-shard-no-momentum", 0, 1, 1);
  const uint64_t three[] = {0, 16, 64, CK_TOTAL}, clocks3[] = {9, 7, 8};
  ck_write(tmp, 0.5f, 1, 0, three, clocks3, 3);
  ck_seed(tmp, "asp-three-shards", 1, 3, 1);
  /* A shard file alone. */
  buf_t b = {0};
  put_u8(&b, 0);
  put_u16(&b, 0);
  char path[1024];
  snprintf(path, sizeof(path), "%s/shard-1.psck", tmp);
  size_t len;
  uint8_t *f = slurp(path, &len);
  ck_item(&b, 1, 1, f, len);
  free(f);
  save("checkpoint", "shard-alone", &b);
  free(b.p);
  /* Both halves of issue #14: optimizer state and a sparse section. */
  ck_write(tmp, 0.9f, 0, 1, two, clocks2, 2);
  ck_seed(tmp, "sparse-rows", 0, 2, 1);
  char cmd[1100];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
  if (system(cmd) != 0) die("%s", cmd);
}

/* ---- state ------------------------------------------------------------- */

static const uint8_t STATE_MAGIC[8] = {'P', 'S', 'S', 'C', 'H', 'S', 'T', 'A'};

static void state_seed(const char *name, const Ps__SchedulerState *st,
                       int framed_by_harness) {
  size_t len = ps__scheduler_state__get_packed_size(st);
  uint8_t *body = malloc(len + 1);
  if (body == NULL) die("out of memory");
  ps__scheduler_state__pack(st, body);
  buf_t b = {0};
  if (framed_by_harness) {
    put_u8(&b, 3); /* the harness frames it and takes the options from it */
    put(&b, body, len);
  } else {
    put_u8(&b, 0);
    uint8_t h[24] = {0};
    memcpy(h, STATE_MAGIC, 8);
    fuzz_put_u32(h + 8, 1);
    fuzz_put_u32(h + 16, (uint32_t)len);
    put(&b, h, 24);
    put(&b, body, len);
    uint8_t crc[4];
    fuzz_put_u32(crc, ps_crc32c(ps_crc32c(0, h, 24), body, len));
    put(&b, crc, 4);
  }
  save("state", name, &b);
  free(b.p);
  free(body);
}

static void gen_state(void) {
  view_t w;
  view_build(&w, &VIEW_REPLICATED);
  w.v.epoch = 3;
  Ps__CheckpointInfo last = PS__CHECKPOINT_INFO__INIT;
  last.id = 4;
  last.step = 8;
  last.dir = "/var/lib/ps/checkpoints/ckpt-000000000008";
  last.bytes = 13056;
  last.duration_ms = 40;
  last.shards = 2;
  last.created_unix_ms = 1764000000000ull;
  last.reason = "every_steps";
  last.write_ms = 3;
  uint64_t dead[4] = {0, 0, 0, 0};
  uint64_t heard[4] = {1764000000000ull, 1764000000000ull, 1764000000000ull,
                       1764000000000ull};
  Ps__SchedulerState st = PS__SCHEDULER_STATE__INIT;
  st.format_version = 1;
  st.view = &w.v;
  st.published = 1;
  st.expected_servers = 2;
  st.expected_workers = 2;
  st.model_node = 3;
  st.next_checkpoint_id = 5;
  st.last_checkpoint = &last;
  st.start_ms_unix = 1763990000000ull;
  st.replication = 2;
  st.n_dead_epochs = 4;
  st.dead_epochs = dead;
  st.n_last_heard_unix_ms = 4;
  st.last_heard_unix_ms = heard;
  state_seed("running", &st, 0);
  state_seed("running-body", &st, 1);

  /* Server 2 died at epoch 2; node 1 leads both ranges, a backup of range
   * 1 is still syncing (a restart republishes). */
  view_opts_t o = VIEW_REPLICATED;
  o.epoch = 3;
  o.lead[1] = 1;
  o.backup[1] = 0;
  o.backup[0] = 0;
  view_build(&w, &o);
  w.nodes[1].state = PS__NODE_STATE__NODE_STATE_DEAD;
  dead[1] = 2;
  st.view = &w.v;
  state_seed("dead-server", &st, 1);
  view_build(&w, &VIEW_REPLICATED);
  w.v.epoch = 4;
  uint32_t sync1[1] = {2};
  w.ranges[0].n_syncing = 1;
  w.ranges[0].syncing = sync1;
  st.view = &w.v;
  dead[1] = 0;
  state_seed("syncing", &st, 1);

  /* Before the first view: two nodes registered, no ranges. */
  view_build(&w, &VIEW_FIRST);
  w.v.epoch = 0;
  w.v.n_nodes = 2;
  w.v.n_ranges = 0;
  w.v.model = NULL;
  st.view = &w.v;
  st.published = 0;
  st.last_checkpoint = NULL;
  st.n_dead_epochs = st.n_last_heard_unix_ms = 2;
  state_seed("unpublished", &st, 1);

  view_build(&w, &VIEW_REPLICATED);
  st.view = &w.v;
  st.published = 1;
  st.finished = 1;
  state_seed("finished", &st, 0);
}

/* ---- config ------------------------------------------------------------ */

static void config_seed(const char *name, unsigned flags, const char *file,
                        const char *const *args) {
  buf_t b = {0};
  put_u8(&b, flags);
  put(&b, file, strlen(file));
  for (const char *const *a = args; a && *a; a++) {
    put_u8(&b, 0);
    put(&b, *a, strlen(*a));
  }
  save("config", name, &b);
  free(b.p);
}

static void gen_config(void) {
  static const char scheduler_conf[] =
      "# ps-scheduler, as ps-scheduler.service starts it.\n"
      "bind = tcp://127.0.0.1:7000\n"
      "servers = 2\n"
      "workers = 2\n"
      "mode = bsp\n"
      "replication = 2\n"
      "heartbeat-timeout-ms = 2000\n"
      "state-file = /var/lib/ps/scheduler.state\n"
      "checkpoint-dir = /var/lib/ps/checkpoints\n"
      "# checkpoint-every-steps = 1000\n"
      "log-level = info\n";
  static const char sectioned[] =
      "[job]\n"
      "servers=3\n"
      "workers = 8\n"
      "mode = asp ; inline comment\n"
      "[checkpoints]\n"
      "checkpoint_every_s = 90.5\n"
      "checkpoint-every-steps = 9007199254740991\n"
      "checkpoint-timeout-ms = 100\n"
      "rebalance = no\n"
      "metrics-bind = 127.0.0.1:9100\n";
  static const char bad[] =
      "servers = 0\n"
      "workers = many\n";
  const char *none[] = {NULL};
  const char *flags_args[] = {"--servers",
                              "4",
                              "--mode=asp",
                              "--rebalance",
                              "--checkpoint-every-s",
                              "1e3",
                              "--bind",
                              "tcp://*:7000",
                              NULL};
  const char *help[] = {"--help", NULL};
  const char *positional[] = {"status", "--json", "--", "--not-a-flag", NULL};
  const char *env_workers[] = {"--log-level", "debug", "17", NULL};
  const char *missing[] = {"--heartbeat-timeout-ms", NULL};
  config_seed("scheduler-conf", 1, scheduler_conf, none);
  config_seed("scheduler-conf-env", 0, scheduler_conf, flags_args);
  config_seed("sections", 1, sectioned, none);
  config_seed("bad-values", 1, bad, none);
  config_seed("help", 1, "", help);
  config_seed("positional", 3, "", positional);
  config_seed("env-workers", 5, "mode = bsp\n", env_workers);
  config_seed("missing-value", 1, "", missing);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  outdir = argv[1];
  if (mkdir(outdir, 0755) != 0 && errno != EEXIST) die("mkdir %s", outdir);
  for (size_t i = 0; i < FUZZ_MODEL_TOTAL; i++)
    values[i] = (float)((int)(i % 17) - 8) / 64.0f;
  gen_frame();
  gen_server();
  gen_scheduler();
  gen_checkpoint();
  gen_state();
  gen_config();
  return 0;
}
