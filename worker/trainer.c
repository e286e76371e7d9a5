#include "worker/trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/codec.h"
#include "common/config.h"
#include "common/err.h"
#include "common/init.h"
#include "common/log.h"
#include "common/notify.h"
#include "common/optimizer.h"
#include "common/time.h"
#include "worker/compute/compute.h"
#include "worker/data/idx.h"
#include "worker/metrics_csv.h"
#include "worker/model/net.h"
#include "worker/progress.h"
#include "worker/trainer_ctr.h"

/* How often the progress line (opts.progress_line) is drawn: often enough
 * to look live, rarely enough to cost nothing next to a step. */
#define TRAINER_LINE_NS 250000000ull

/* Evaluation batches: large enough for BLAS to run at full speed. The CNN's
 * are smaller: its im2col and activation buffers take about 1 MB per
 * image. */
#define TRAINER_EVAL_BATCH 500
#define TRAINER_EVAL_BATCH_CNN 128

struct ps_trainer_s {
  ps_trainer_opts_t o;
  char errmsg[512];
  ps_dataset_t train;
  ps_dataset_t test;
  ps_compute_t *compute;
  ps_net_t *net;
  ps_client_t *client;
  uint32_t rank, workers;
  size_t nparams;
  int push_layers; /* push per layer as gradients arrive (PS_PUSH_LAYER) */
  /* The most layer pushes of one step in flight at once, for the log. */
  size_t layer_pushes_max;
  /* w, g and xb move to and from the device every step: host memory from
   * the backend (page-locked on a GPU). */
  float *w;    /* weights, the whole key space */
  /* PS_PUSH_PULL_FUSED with layered pushes: the step's push-pulls write
   * the next step's weights here (the net may still read w), then the two
   * swap (NULL otherwise: the whole-model push-pull, once backward is done,
   * writes w itself); w_clock is the clock w holds after the step
   * (UINT64_MAX: none, pull). */
  float *w_next;
  uint64_t w_clock;
  int fused;
  /* The optimizer state (standalone only): ps_optimizer_state_slots
   * planes of nparams floats; and the updates applied so far. */
  float *v;
  uint64_t updates;
  /* The model declared to the cluster: the net's tensors with the
   * optimizer and schedule of the options; sched is its schedule resolved
   * for this job's worker count (what the servers apply). */
  ps_model_t model;
  ps_tensor_spec_t *coded_tensors; /* model.tensors with the codecs set */
  ps_optimizer_spec_t opt;
  /* The job's SSP staleness bound (0: BSP, ASP, standalone): an
   * evaluation pulls at clock + staleness, so that its weights are those
   * of the clock exactly. */
  uint32_t staleness;
  /* Every pull's weights, against the clock the step needed (SSP: at most
   * staleness steps behind, which the servers enforce): pulls, the most
   * steps one was behind, and how many were further behind than that. */
  uint64_t pulls, pull_max_lag, pull_beyond_bound;
  ps_lr_schedule_spec_t sched;
  float *g;    /* gradient of this worker's batch */
  /* w and g when allocated here; on the CPU they are the net's own
   * parameters and gradient (ps_net_params_host), pulled into and pushed
   * from in place: two copies of the model a step fewer. */
  float *w_mem, *w_next_mem, *g_mem;
  float *xb;   /* the batch, gathered */
  uint8_t *yb; /* its labels, also from the backend */
  uint32_t *perm;
  uint64_t perm_epoch; /* the epoch perm holds; UINT64_MAX: none yet */
  ps_trainer_result_t res;
  /* This worker's first step: 0, the step of the checkpoint the job was
   * restored from, or the step a worker that rejoined a running job
   * contributes from; global steps (data order, schedule) continue from
   * there. */
  uint64_t start_step;
  int leaving; /* issue #16: this worker's leave step came */
  /* The current step's time in pulls and pushes (for the stats). */
  uint64_t step_pull_ns, step_push_ns;
  ps_metrics_csv_t *csv; /* --metrics-csv; NULL: none */
  /* model PS_NET_CTR: its own loop, to which every call is handed. */
  ps__trainer_ctr_t *ctr;
};

static void trainer_fail(ps_trainer_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void trainer_fail(ps_trainer_t *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(t->errmsg, sizeof(t->errmsg), PS_OK, fmt, ap);
  va_end(ap);
}

void ps_trainer_stats_init(ps_trainer_stats_t *st) {
  memset(st, 0, sizeof(*st));
  ps_hist_init(&st->step_seconds, ps_hist_seconds_bounds,
               ps_hist_seconds_nbounds, 1e-9);
  ps_gauge_set(&st->test_accuracy, NAN);
  ps_gauge_set(&st->test_loss, NAN);
}

/* Counts one step done in step_ns, with the pull and push time that
 * train_step measured. */
static void stats_step(ps_trainer_t *t, uint64_t step, uint64_t step_ns) {
  ps_trainer_stats_t *st = t->o.stats;
  if (st == NULL) return;
  uint64_t waits = t->step_pull_ns + t->step_push_ns;
  ps_counter_add(&st->pull_wait_ns, t->step_pull_ns);
  ps_counter_add(&st->push_wait_ns, t->step_push_ns);
  ps_counter_add(&st->compute_ns, step_ns > waits ? step_ns - waits : 0);
  ps_hist_observe(&st->step_seconds, step_ns);
  ps_counter_add(&st->samples, (uint64_t)t->o.batch_size);
  ps_counter_add(&st->steps, 1);
  ps_gauge_set(&st->step, (double)(step + 1));
  ps_gauge_set(&st->train_loss, t->res.train_loss);
  if (t->client != NULL) {
    uint64_t dup = ps_client_duplicate_acks(t->client);
    uint64_t had = ps_counter_get(&st->duplicate_acks);
    if (dup > had) ps_counter_add(&st->duplicate_acks, dup - had);
  }
}

void ps_trainer_opts_init(ps_trainer_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->standalone = 0;
  o->data_dir = PS_TRAINER_DEFAULT_DATA_DIR;
  o->epochs = PS_TRAINER_DEFAULT_EPOCHS;
  o->batch_size = PS_TRAINER_DEFAULT_BATCH_SIZE;
  o->learning_rate = PS_TRAINER_DEFAULT_LR;
  o->momentum = PS_TRAINER_DEFAULT_MOMENTUM;
  o->lr_schedule = PS_LR_COSINE;
  o->optimizer = PS_OPTIMIZER_SGD;
  o->beta1 = PS_TRAINER_DEFAULT_BETA1;
  o->beta2 = PS_TRAINER_DEFAULT_BETA2;
  o->epsilon = PS_TRAINER_DEFAULT_EPSILON;
  o->ftrl_beta = PS_TRAINER_DEFAULT_FTRL_BETA;
  o->normalize = 1;
  o->seed = PS_TRAINER_DEFAULT_SEED;
  o->threads = PS_TRAINER_DEFAULT_THREADS;
  o->device = PS_TRAINER_DEFAULT_DEVICE;
  o->model = PS_NET_MLP;
  o->push = PS_PUSH_AUTO;
  o->max_steps = 0;
  o->eval_every_epoch = 1;
  o->ctr_embed_dim = PS_TRAINER_DEFAULT_CTR_EMBED_DIM;
  o->ctr_hidden = PS_TRAINER_DEFAULT_CTR_HIDDEN;
  o->ctr_sparse_scale = PS_TRAINER_DEFAULT_CTR_SPARSE_SCALE;
  o->ctr_sparse_norm = 1;
  o->progress_s = PS_TRAINER_DEFAULT_PROGRESS_MS / 1000.0;
  ps_client_opts_init(&o->client);
  o->client.scheduler = PS_DEFAULT_SCHEDULER;
}

/* splitmix64 as a counter generator: value k of a stream is a pure function
 * of (stream, k), so every worker draws the same numbers. */
static uint64_t rng_next(uint64_t *state) {
  *state += 0x9e3779b97f4a7c15ull;
  return ps_mix64(*state);
}

/* Uniform in [0, bound) by multiply-shift; the bias (bound / 2^64) is far
 * below anything a shuffle of a data set could show. */
static uint32_t rng_below(uint64_t *state, uint32_t bound) {
  return (uint32_t)(((unsigned __int128)rng_next(state) * bound) >> 64);
}

void ps_trainer_goodbye(ps_client_t *c, int rc, int stopped, int sig,
                        const char *errmsg) {
  int drc;
  if (rc != PS_OK) {
    char reason[128];
    snprintf(reason, sizeof(reason), "worker failed: %.100s", errmsg);
    drc = ps_client_leave(c, reason);
  } else if (stopped && sig) {
    drc = ps_client_leave(c, sig == SIGINT ? "stopped by SIGINT"
                                           : "stopped by SIGTERM");
  } else {
    drc = ps_client_done(c);
  }
  if (drc != PS_OK && rc == PS_OK && !stopped)
    PS_WARN("done_failed", "error=%s msg=\"%s\"", ps_err_name(drc),
            ps_client_errmsg(c));
}

float ps_trainer_lr_factor(ps_lr_schedule_t schedule, uint64_t step,
                           uint64_t total_steps) {
  ps_lr_schedule_spec_t s = {.kind = schedule == PS_LR_COSINE
                                         ? PS_LR_SCHEDULE_COSINE
                                         : PS_LR_SCHEDULE_CONSTANT,
                             .total_steps = total_steps};
  return ps_lr_factor(&s, step);
}

/* A tensor's codecs for push codec push (issue #15): the pull codec the
 * options give, or the one that goes with push. */
static void set_codecs(ps_tensor_spec_t *ts, const ps_trainer_opts_t *o,
                       int push) {
  ts->push_codec = push;
  ts->pull_codec = o->pull_codec >= 0      ? o->pull_codec
                   : push == PS_CODEC_FP16 ? PS_CODEC_FP16
                   : push == PS_CODEC_NONE ? PS_CODEC_NONE
                                           : PS_CODEC_INT8;
  ts->topk_fraction = push == PS_CODEC_TOPK ? (float)o->topk_fraction : 0;
}

/* --tensor-codecs "NAME=CODEC,...": those tensors' push codecs. */
static int apply_tensor_codecs(ps_trainer_t *t, const char *list) {
  const char *p = list;
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    char name[PS_NAME_MAX], codec[16];
    if (eq == NULL || eq == p || (size_t)(eq - p) >= sizeof(name) ||
        len - (size_t)(eq - p) - 1 >= sizeof(codec)) {
      trainer_fail(t, "--tensor-codecs: \"%.*s\" is not NAME=CODEC", (int)len,
                   p);
      return PS_ERR_CONFIG;
    }
    snprintf(name, sizeof(name), "%.*s", (int)(eq - p), p);
    snprintf(codec, sizeof(codec), "%.*s", (int)(len - (size_t)(eq - p) - 1),
             eq + 1);
    int c = ps_codec_parse(codec);
    if (c < 0) {
      trainer_fail(t,
                   "--tensor-codecs: codec \"%s\" of tensor \"%s\" is not "
                   "none, fp16, int8 or topk",
                   codec, name);
      return PS_ERR_CONFIG;
    }
    size_t i = 0;
    while (i < t->model.ntensors && strcmp(t->coded_tensors[i].name, name)) i++;
    if (i == t->model.ntensors) {
      char names[512] = "";
      for (size_t j = 0; j < t->model.ntensors; j++)
        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                 j ? ", " : "", t->coded_tensors[j].name);
      trainer_fail(t,
                   "--tensor-codecs: the model has no tensor \"%s\" (it "
                   "has %s)",
                   name, names);
      return PS_ERR_CONFIG;
    }
    set_codecs(&t->coded_tensors[i], &t->o, c);
    p += len;
    if (*p == ',') p++;
  }
  return PS_OK;
}

/* The optimizer the options declare: only the settings its kind uses (the
 * others' defaults, --momentum 0.9 say, mean nothing to Adam). */
static void opts_optimizer(const ps_trainer_opts_t *o, ps_optimizer_spec_t *p) {
  memset(p, 0, sizeof(*p));
  p->kind = o->optimizer;
  if (o->optimizer != PS_OPTIMIZER_ADD)
    p->learning_rate = (float)o->learning_rate;
  switch (o->optimizer) {
    case PS_OPTIMIZER_SGD:
      p->momentum = (float)o->momentum;
      break;
    case PS_OPTIMIZER_ADAM:
      p->beta1 = (float)o->beta1;
      p->beta2 = (float)o->beta2;
      p->epsilon = (float)o->epsilon;
      break;
    case PS_OPTIMIZER_ADAGRAD:
      p->epsilon = (float)o->epsilon;
      break;
    case PS_OPTIMIZER_FTRL:
      p->l1 = (float)o->l1;
      p->l2 = (float)o->l2;
      p->ftrl_beta = (float)o->ftrl_beta;
      break;
    default:
      break;
  }
}

void ps_trainer_permutation(uint32_t *perm, uint32_t n, uint64_t seed,
                            uint64_t epoch) {
  uint64_t state = ps_mix64(seed ^ ps_mix64(epoch + 0x5eed5eedull));
  for (uint32_t i = 0; i < n; i++) perm[i] = i;
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = rng_below(&state, i);
    uint32_t tmp = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = tmp;
  }
}

static int load_split(ps_trainer_t *t, const char *prefix, ps_dataset_t *ds) {
  char images[1024], labels[1024], err[512];
  int n1 = snprintf(images, sizeof(images), "%s/%s-images-idx3-ubyte.gz",
                    t->o.data_dir, prefix);
  int n2 = snprintf(labels, sizeof(labels), "%s/%s-labels-idx1-ubyte.gz",
                    t->o.data_dir, prefix);
  if (n1 < 0 || (size_t)n1 >= sizeof(images) || n2 < 0 ||
      (size_t)n2 >= sizeof(labels)) {
    trainer_fail(t, "data directory path too long: %s", t->o.data_dir);
    return PS_ERR_CONFIG;
  }
  int rc = ps_idx_load_dataset(images, labels, ds, err, sizeof(err));
  if (rc != PS_OK) {
    trainer_fail(t, "cannot load the %s set: %s", prefix, err);
    return rc;
  }
  return PS_OK;
}

static int check_opts(ps_trainer_t *t) {
  const ps_trainer_opts_t *o = &t->o;
  if (o->epochs < 1) {
    trainer_fail(t, "epochs %" PRId64 " must be at least 1", o->epochs);
    return PS_ERR_CONFIG;
  }
  if (o->batch_size < 1 || o->batch_size > (1 << 16)) {
    trainer_fail(t, "batch size %" PRId64 " not in [1, 65536]", o->batch_size);
    return PS_ERR_CONFIG;
  }
  if (!(o->learning_rate > 0.0) || !isfinite(o->learning_rate)) {
    trainer_fail(t, "learning rate %g must be > 0", o->learning_rate);
    return PS_ERR_CONFIG;
  }
  if (!(o->momentum >= 0.0 && o->momentum < 1.0)) {
    trainer_fail(t, "momentum %g not in [0, 1)", o->momentum);
    return PS_ERR_CONFIG;
  }
  ps_optimizer_spec_t opt;
  opts_optimizer(o, &opt);
  char why[256];
  if (ps_optimizer_check(&opt, "--optimizer", why, sizeof(why)) != PS_OK) {
    trainer_fail(t, "%s", why);
    return PS_ERR_CONFIG;
  }
  if (o->threads < 0) {
    trainer_fail(t, "threads %d must be >= 0", o->threads);
    return PS_ERR_CONFIG;
  }
  if (o->model != PS_NET_MLP && o->model != PS_NET_CNN &&
      o->model != PS_NET_CTR) {
    trainer_fail(t, "unknown model %d", (int)o->model);
    return PS_ERR_CONFIG;
  }
  if (o->push != PS_PUSH_AUTO && o->push != PS_PUSH_MODEL &&
      o->push != PS_PUSH_LAYER) {
    trainer_fail(t, "unknown push mode %d", (int)o->push);
    return PS_ERR_CONFIG;
  }
  if (o->push_pull != PS_PUSH_PULL_FUSED &&
      o->push_pull != PS_PUSH_PULL_SEPARATE) {
    trainer_fail(t, "unknown push-pull mode %d", (int)o->push_pull);
    return PS_ERR_CONFIG;
  }
  if (o->data_dir == NULL || o->data_dir[0] == '\0') {
    trainer_fail(t, "no data directory given");
    return PS_ERR_CONFIG;
  }
  return PS_OK;
}

ps_trainer_t *ps_trainer_new(const ps_trainer_opts_t *o, int *err, char *errmsg,
                             size_t errlen) {
  ps_trainer_t *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errmsg, errlen, "out of memory");
    return NULL;
  }
  t->o = *o;
  int rc = check_opts(t);
  if (rc != PS_OK) goto fail;
  if (o->model == PS_NET_CTR) {
    const char *no = o->metrics_csv_path        ? "metrics-csv"
                     : o->push == PS_PUSH_LAYER ? "push layer"
                     : o->step_delay_ms         ? "step-delay-ms"
                     : o->push_codec || o->pull_codec > 0 || o->tensor_codecs
                         ? "codec"
                         : NULL;
    if (no != NULL) {
      trainer_fail(t, "--%s is not supported with --model ctr", no);
      rc = PS_ERR_CONFIG;
      goto fail;
    }
    t->ctr = ps__trainer_ctr_new(o, &t->res, &rc, t->errmsg,
                                 sizeof(t->errmsg));
    if (t->ctr == NULL) goto fail;
    return t;
  }
  if (o->metrics_csv_path && o->metrics_csv_path[0]) {
    char why[1200];
    t->csv = ps_metrics_csv_open(o->metrics_csv_path, why, sizeof(why));
    if (t->csv == NULL) {
      trainer_fail(t, "%s", why);
      rc = PS_ERR_IO;
      goto fail;
    }
  }

  /* The device first: a GPU asked for and missing is refused before
   * seconds go into loading the data. */
  char err2[512], note[640];
  ps_compute_opts_t copts = {
      .threads = o->threads,
      .rank_hint = o->standalone ? -1 : (long)o->client.rank,
  };
  int crc = PS_OK, gpu_unusable = 0;
  t->compute =
      ps_compute_open_probed(o->device, &copts, NULL, note, sizeof(note),
                             &gpu_unusable, &crc, err2, sizeof(err2));
  if (t->compute == NULL) {
    trainer_fail(t, "%s", err2);
    rc = crc != PS_OK ? crc : PS_ERR_CONFIG;
    goto fail;
  }
  /* A GPU that is there but cannot be used is a broken machine, not a CPU
   * one: --device auto still trains on the CPU, but says so as an error
   * with the driver's and the runtime's versions. */
  if (gpu_unusable)
    PS_ERROR("gpu_unusable", "requested=%s backend=cpu reason=\"%s\"",
             o->device, note);
  /* Which device a run used is the first thing to know about its speed. */
  PS_INFO("device", "requested=%s backend=%s device=\"%s\"%s%s%s",
          o->device ? o->device : "cpu", ps_compute_name(t->compute),
          ps_compute_describe(t->compute), note[0] ? " reason=\"" : "", note,
          note[0] ? "\"" : "");
  uint64_t t0 = ps_now_ns();
  rc = load_split(t, "train", &t->train);
  if (rc == PS_OK) rc = load_split(t, "t10k", &t->test);
  if (rc != PS_OK) goto fail;
  if (t->train.dim != t->test.dim) {
    trainer_fail(t, "train images are %zu pixels, test images %zu",
                 t->train.dim, t->test.dim);
    rc = PS_ERR_FORMAT;
    goto fail;
  }
  double mean = 0.0, std = 1.0;
  if (o->normalize) {
    ps_dataset_stats(&t->train, &mean, &std);
    if (!(std > 0.0)) {
      trainer_fail(t, "training images are all the same value %g", mean);
      rc = PS_ERR_FORMAT;
      goto fail;
    }
    ps_dataset_standardize(&t->train, mean, std);
    ps_dataset_standardize(&t->test, mean, std);
  }
  PS_INFO("data",
          "dir=%s train=%zu test=%zu dim=%zu mean=%.4f std=%.4f "
          "load_s=%.2f",
          o->data_dir, t->train.n, t->test.n, t->train.dim, mean, std,
          (double)(ps_now_ns() - t0) * 1e-9);

  ps_net_opts_t no = {
      .kind = o->model,
      .in_h = t->train.rows,
      .in_w = t->train.cols,
      .learning_rate = (float)o->learning_rate,
      .momentum = (float)o->momentum,
      .seed = o->seed,
  };
  size_t eval_batch =
      o->model == PS_NET_CNN ? TRAINER_EVAL_BATCH_CNN : TRAINER_EVAL_BATCH;
  no.max_batch =
      (size_t)o->batch_size > eval_batch ? (size_t)o->batch_size : eval_batch;
  if ((size_t)t->train.rows * t->train.cols != t->train.dim) {
    trainer_fail(t, "train images are %zu values, not %ux%u pixels",
                 t->train.dim, t->train.rows, t->train.cols);
    rc = PS_ERR_FORMAT;
    goto fail;
  }
  t->net = ps_net_new(t->compute, &no, err2, sizeof(err2));
  if (t->net == NULL) {
    trainer_fail(t, "%s", err2);
    rc = PS_ERR_NOMEM;
    goto fail;
  }
  t->nparams = ps_net_num_params(t->net);
  size_t b = (size_t)o->batch_size;
  t->push_layers =
      !o->standalone &&
      (o->push == PS_PUSH_LAYER ||
       (o->push == PS_PUSH_AUTO && ps_compute_is_async(t->compute)));
  /* Coded tensors push-pull in their codecs, as they push and pull. */
  t->fused = !o->standalone && o->push_pull == PS_PUSH_PULL_FUSED;
  t->w_clock = UINT64_MAX;
  /* On the CPU the weights go straight into the net's parameters and the
   * gradient is pushed from where backward wrote it (ps_net_params_host):
   * two copies of the model a step fewer. Not the weights with layered
   * push-pulls: those bring the next step's while backward still reads
   * these (into w_next, swapped in after the step). */
  if (!(t->fused && t->push_layers)) t->w = ps_net_params_host(t->net);
  t->g = ps_net_grad_host(t->net);
  if (t->w == NULL)
    t->w = t->w_mem =
        ps_compute_host_alloc(t->compute, t->nparams * sizeof(float));
  if (t->g == NULL)
    t->g = t->g_mem =
        ps_compute_host_alloc(t->compute, t->nparams * sizeof(float));
  if (t->fused && t->push_layers)
    t->w_next = t->w_next_mem =
        ps_compute_host_alloc(t->compute, t->nparams * sizeof(float));
  t->xb = ps_compute_host_alloc(t->compute, b * t->train.dim * sizeof(float));
  /* Pinned like xb: the labels' upload is then asynchronous too. */
  t->yb = ps_compute_host_alloc(t->compute, b);
  t->perm = calloc(t->train.n, sizeof(uint32_t));
  t->perm_epoch = UINT64_MAX;
  /* The net's tensors, with the optimizer and the schedule the servers
   * are to apply. The horizon goes in epochs: the worker count that turns
   * it into steps is the scheduler's to tell. */
  t->model = *ps_net_model(t->net);
  if (o->push_codec != PS_CODEC_NONE || o->pull_codec > 0 || o->tensor_codecs) {
    t->coded_tensors = calloc(t->model.ntensors, sizeof(*t->coded_tensors));
    if (t->coded_tensors == NULL) {
      trainer_fail(t, "out of memory");
      rc = PS_ERR_NOMEM;
      goto fail;
    }
    for (size_t i = 0; i < t->model.ntensors; i++) {
      t->coded_tensors[i] = t->model.tensors[i];
      set_codecs(&t->coded_tensors[i], o, o->push_codec);
    }
    t->model.tensors = t->coded_tensors;
    if (o->tensor_codecs &&
        (rc = apply_tensor_codecs(t, o->tensor_codecs)) != PS_OK)
      goto fail;
  }
  opts_optimizer(o, &t->opt);
  t->model.optimizer = t->opt.kind;
  t->model.learning_rate = t->opt.learning_rate;
  t->model.momentum = t->opt.momentum;
  t->model.beta1 = t->opt.beta1;
  t->model.beta2 = t->opt.beta2;
  t->model.epsilon = t->opt.epsilon;
  t->model.l1 = t->opt.l1;
  t->model.l2 = t->opt.l2;
  t->model.ftrl_beta = t->opt.ftrl_beta;
  t->model.lr_schedule = (ps_lr_schedule_spec_t){
      .kind = o->lr_schedule == PS_LR_COSINE ? PS_LR_SCHEDULE_COSINE
                                             : PS_LR_SCHEDULE_CONSTANT,
      .warmup_steps = o->warmup_steps,
      .epochs = (uint64_t)o->epochs,
      .examples_per_epoch = t->train.n,
      .worker_batch = b,
  };
  size_t slots = (size_t)ps_optimizer_state_slots(&t->opt);
  if (o->standalone && slots) t->v = calloc(t->nparams * slots, sizeof(float));
  if (!t->w || !t->g || !t->xb || !t->yb || !t->perm ||
      (t->fused && t->push_layers && !t->w_next) ||
      (o->standalone && slots && !t->v)) {
    trainer_fail(t, "out of memory");
    rc = PS_ERR_NOMEM;
    goto fail;
  }
  memset(t->w, 0, t->nparams * sizeof(float));
  memset(t->g, 0, t->nparams * sizeof(float));

  if (o->standalone) {
    t->rank = 0;
    t->workers = 1;
    ps_net_init_params(t->net, t->w);
  } else {
    char cerr[512] = "";
    crc = PS_OK;
    t->client = ps_client_new(&o->client, &t->model, &crc, cerr, sizeof(cerr));
    if (t->client == NULL) {
      trainer_fail(t, "cannot join the cluster at %s: %s",
                   o->client.scheduler ? o->client.scheduler : "(none)",
                   cerr[0] ? cerr : ps_strerror(crc));
      rc = crc != PS_OK ? crc : PS_ERR_PEER;
      goto fail;
    }
    if (o->metrics_address && o->metrics_address[0] &&
        ps_client_set_metrics_address(t->client, o->metrics_address) != PS_OK)
      PS_WARN("metrics_address_unsent", "address=%s reason=\"%s\"",
              o->metrics_address, ps_client_errmsg(t->client));
    t->rank = ps_client_rank(t->client);
    t->workers = ps_client_num_workers(t->client);
    ps_log_set_node(ps_client_node_id(t->client));
    if (ps_view_mode(ps_client_view(t->client)) == PS_MODE_SSP)
      t->staleness = ps_view_staleness(ps_client_view(t->client));
    /* A restored job starts at the checkpoint's step, a worker that
     * rejoins a running one at the step the servers wait for it from; the
     * first step pulls the weights as of that clock, and the data order
     * follows from the step. */
    t->start_step = ps_client_start_clock(t->client);
    /* systemd (Type=notify): registered and holding a view. */
    ps_notify_ready("worker rank %u of %u, registered, from step %llu", t->rank,
                    t->workers, (unsigned long long)t->start_step);
    /* A worker that grew the job (--join) has a rank past --workers. */
    if (t->workers == 0 ||
        (t->rank >= t->workers && !o->client.join_new_rank)) {
      trainer_fail(t, "the scheduler gave rank %u of %u workers", t->rank,
                   t->workers);
      rc = PS_ERR_PROTO;
      goto fail;
    }
  }
  uint64_t global_batch = (uint64_t)t->workers * b;
  if (global_batch > t->train.n) {
    trainer_fail(t,
                 "global batch %" PRIu64
                 " (%u workers x batch size %zu) "
                 "exceeds the %zu training examples",
                 global_batch, t->workers, b, t->train.n);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  t->res.steps_per_epoch = t->train.n / global_batch;
  /* What the scheduler made of the horizon (the same formula). */
  t->sched = t->model.lr_schedule;
  char serr[256];
  if (ps_lr_schedule_resolve(&t->sched, t->workers, serr, sizeof(serr)) !=
      PS_OK) {
    trainer_fail(t, "%s", serr);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  t->res.workers = t->workers;
  t->res.rank = t->rank;
  t->res.test_accuracy = -1.0;
  t->res.test_loss = -1.0;
  t->res.test_auc = -1.0;
  t->res.train_loss = -1.0;
  return t;

fail:
  *err = rc;
  snprintf(errmsg, errlen, "%s", t->errmsg);
  ps_trainer_destroy(&t);
  return NULL;
}

void ps_trainer_destroy(ps_trainer_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  ps_trainer_t *t = *t_p;
  ps__trainer_ctr_destroy(&t->ctr);
  ps_client_destroy(&t->client);
  ps_metrics_csv_close(&t->csv);
  ps_net_destroy(&t->net);
  if (t->compute != NULL) {
    ps_compute_host_free(t->compute, t->w_mem);
    ps_compute_host_free(t->compute, t->w_next_mem);
    ps_compute_host_free(t->compute, t->g_mem);
    ps_compute_host_free(t->compute, t->xb);
    ps_compute_host_free(t->compute, t->yb);
  }
  ps_compute_destroy(&t->compute);
  ps_dataset_clear(&t->train);
  ps_dataset_clear(&t->test);
  free(t->v);
  free(t->perm);
  free(t->coded_tensors);
  free(t);
  *t_p = NULL;
}

const ps_trainer_result_t *ps_trainer_result(const ps_trainer_t *t) {
  return &t->res;
}

const char *ps_trainer_errmsg(const ps_trainer_t *t) {
  return t->ctr ? ps__trainer_ctr_errmsg(t->ctr) : t->errmsg;
}

static int stop_signal(const ps_trainer_t *t) {
  return t->o.stop != NULL ? (int)*t->o.stop : 0;
}

static int should_stop(ps_trainer_t *t) {
  if (stop_signal(t)) return 1;
  if (t->client != NULL && ps_client_shutting_down(t->client)) return 1;
  return 0;
}

/* A call that failed because the cluster is going away ends the run like a
 * stop, not as an error of this worker. */
static int cluster_gone(ps_trainer_t *t, int rc) {
  return t->client != NULL &&
         (rc == PS_ERR_SHUTDOWN || ps_client_shutting_down(t->client));
}

/* The weights as of clock (all gradients of steps < clock applied; SSP:
 * of clock - staleness at least). need: the clock the weights must have
 * reached for the pull to keep SSP's bound (clock for a training step). */
/* Records the clock the last pull or push-pull brought against the one
 * the step needed (SSP's bound: need - staleness). */
static void note_pull(ps_trainer_t *t, uint64_t need) {
  uint64_t got = ps_client_last_pull_clock(t->client);
  t->pulls++;
  if (got < need) {
    uint64_t lag = need - got;
    if (lag > t->pull_max_lag) t->pull_max_lag = lag;
    if (lag > t->staleness) t->pull_beyond_bound++;
  }
}

static int fetch_weights(ps_trainer_t *t, uint64_t clock, uint64_t need) {
  if (t->client == NULL) return PS_OK;
  int rc = ps_client_pull(t->client, 0, t->nparams, t->w, clock);
  if (rc == PS_OK) note_pull(t, need);
  if (rc != PS_OK)
    trainer_fail(t, "pull of the weights at clock %" PRIu64 " failed: %s",
                 clock, ps_client_errmsg(t->client));
  return rc;
}

/* A device that failed (a GPU lost) makes every value since meaningless:
 * the run ends with the backend's reason. */
static int device_failed(ps_trainer_t *t, const char *when, uint64_t step) {
  const char *e = ps_compute_error(t->compute);
  if (e == NULL) return 0;
  trainer_fail(t, "%s device failed %s step %" PRIu64 ": %s",
               ps_compute_name(t->compute), when, step, e);
  return 1;
}

static int evaluate(ps_trainer_t *t, uint64_t clock) {
  /* SSP answers a pull at c with weights of clock >= c - staleness: asking
   * for clock + staleness gets those of clock itself (nobody pushes past
   * the last step), the same for every worker and every run. */
  int rc = fetch_weights(t, clock + t->staleness, clock);
  if (rc != PS_OK) return rc;
  ps_net_set_params(t->net, t->w);
  rc = ps_net_evaluate(t->net, &t->test, &t->res.test_loss,
                       &t->res.test_accuracy);
  if (rc != PS_OK) trainer_fail(t, "evaluation failed: %s", ps_strerror(rc));
  if (rc == PS_OK && t->o.stats) {
    ps_gauge_set(&t->o.stats->test_accuracy, t->res.test_accuracy);
    ps_gauge_set(&t->o.stats->test_loss, t->res.test_loss);
    ps_counter_add(&t->o.stats->evaluations, 1);
  }
  if (rc == PS_OK && device_failed(t, "evaluating after", clock))
    rc = PS_ERR_IO;
  return rc;
}

/* PS_PUSH_PULL_FUSED: the push-pulls brought the weights as of clock step
 * + 1, into w_next (layered: swapped in now) or w itself. */
static void next_weights(ps_trainer_t *t, uint64_t step) {
  note_pull(t, step + 1);
  if (t->w_next != NULL) {
    float *w = t->w;
    t->w = t->w_next;
    t->w_next = w;
  }
  t->w_clock = step + 1;
}

/* The layered push: each layer's push starts as soon as its gradient is on
 * the host, while the device computes the layers below and the pushes of
 * the layers above are on the wire; all are waited for at the end, so a
 * step costs one round trip, not one per layer. Every layer's copy is
 * waited for even after a failure (the copies write into t->g), and every
 * started push too (they read from it). */
static int push_layers(ps_trainer_t *t, uint64_t step) {
  int rc = PS_OK;
  size_t begin, count, started = 0;
  uint64_t tickets[PS_NET_MAX_GROUPS];
  size_t tbegin[PS_NET_MAX_GROUPS], tcount[PS_NET_MAX_GROUPS];
  while (ps_net_gradient_next(t->net, &begin, &count)) {
    if (rc != PS_OK) continue;
    if (device_failed(t, "at", step)) {
      rc = PS_ERR_IO;
      continue;
    }
    if (started == PS_NET_MAX_GROUPS) { /* net.c's static assert holds */
      trainer_fail(t, "model has more than %d layers to push",
                   PS_NET_MAX_GROUPS);
      rc = PS_ERR_INVAL;
      continue;
    }
    rc = t->fused ? ps_client_pushpull_start(
                        t->client, begin, count, t->g + begin, step,
                        t->w_next + begin, &tickets[started])
                  : ps_client_push_start(t->client, begin, count, t->g + begin,
                                         step, &tickets[started]);
    if (rc != PS_OK) {
      trainer_fail(t,
                   "push of the gradient of keys [%zu, %zu) of step %" PRIu64
                   " failed to start: %s",
                   begin, begin + count, step, ps_client_errmsg(t->client));
      continue;
    }
    tbegin[started] = begin;
    tcount[started] = count;
    started++;
  }
  if (started > t->layer_pushes_max) t->layer_pushes_max = started;
  uint64_t p0 = ps_now_ns();
  size_t covered = 0;
  for (size_t i = 0; i < started; i++) {
    covered += tcount[i];
    int wrc = ps_client_wait(t->client, tickets[i]);
    if (wrc != PS_OK && rc == PS_OK) {
      rc = wrc;
      trainer_fail(t,
                   "push of the gradient of keys [%zu, %zu) of step %" PRIu64
                   " failed: %s",
                   tbegin[i], tbegin[i] + tcount[i], step,
                   ps_client_errmsg(t->client));
    }
  }
  t->step_push_ns += ps_now_ns() - p0;
  /* The layers' push-pulls brought the next step's weights, if they
   * cover every key (else the next step pulls). */
  if (rc == PS_OK && t->fused && covered == t->nparams) next_weights(t, step);
  return rc;
}

/* Where this worker's batch of step starts in the job's stream of
 * examples (worker/trainer.h): (batches before it) x batch. A worker that
 * does not contribute to step (its leave step came in meanwhile) gets
 * PS_ERR_SHUTDOWN with t->leaving set. */
static int batch_start(ps_trainer_t *t, uint64_t step, uint64_t *first) {
  uint64_t b = (uint64_t)t->o.batch_size;
  if (t->client == NULL) {
    *first = step * b;
    return PS_OK;
  }
  uint32_t index, count;
  uint64_t before;
  int rc = ps_client_step_share(t->client, step, &index, &count, &before);
  if (rc != PS_OK) {
    trainer_fail(t, "the worker set of step %" PRIu64 ": %s", step,
                 ps_strerror(rc));
    return rc;
  }
  if (index == UINT32_MAX) {
    uint64_t leave = ps_client_leave_clock(t->client);
    if (leave != 0 && leave <= step) {
      t->leaving = 1;
      return PS_ERR_SHUTDOWN;
    }
    trainer_fail(t,
                 "rank %u is not among the %u workers of step %" PRIu64
                 " in view %" PRIu64,
                 t->rank, count, step,
                 ps_view_epoch(ps_client_view(t->client)));
    return PS_ERR_PROTO;
  }
  *first = (before + index) * b;
  return PS_OK;
}

static int train_step(ps_trainer_t *t, uint64_t step, double *loss) {
  size_t b = (size_t)t->o.batch_size;
  /* Each epoch's permutation gives the stream its first epoch_len
   * examples. */
  uint64_t epoch_len = t->res.steps_per_epoch * t->workers * (uint64_t)b;
  uint64_t first;
  int rc = batch_start(t, step, &first);
  if (rc != PS_OK) return rc;
  size_t dim = t->train.dim;
  for (size_t i = 0; i < b; i++) {
    uint64_t pos = first + i, epoch = pos / epoch_len;
    if (epoch != t->perm_epoch) {
      ps_trainer_permutation(t->perm, (uint32_t)t->train.n, t->o.seed, epoch);
      t->perm_epoch = epoch;
    }
    uint32_t idx = t->perm[pos % epoch_len];
    memcpy(t->xb + i * dim, t->train.x + (size_t)idx * dim,
           dim * sizeof(float));
    t->yb[i] = t->train.y[idx];
  }
  uint64_t p0 = ps_now_ns();
  /* Fused: the previous step's push-pull brought them (BSP: bitwise what
   * a pull at this clock gives). */
  rc = t->w_clock == step ? PS_OK : fetch_weights(t, step, step);
  t->w_clock = UINT64_MAX;
  t->step_pull_ns = ps_now_ns() - p0;
  t->step_push_ns = 0;
  if (rc != PS_OK) return rc;
  ps_net_set_params(t->net, t->w);
  if (t->push_layers) {
    *loss = ps_net_gradient_begin(t->net, t->xb, t->yb, b, t->g);
    if (device_failed(t, "at", step) || !isfinite(*loss)) {
      size_t kb, kc;
      while (ps_net_gradient_next(t->net, &kb, &kc)) {
      }
      if (device_failed(t, "at", step)) return PS_ERR_IO;
      trainer_fail(t,
                   "loss is %g at step %" PRIu64
                   ": training diverged (learning rate %g too high?)",
                   *loss, step, t->o.learning_rate);
      return PS_ERR_INVAL;
    }
    return push_layers(t, step);
  }
  *loss = ps_net_gradient(t->net, t->xb, t->yb, b, t->g);
  if (device_failed(t, "at", step)) return PS_ERR_IO;
  if (!isfinite(*loss)) {
    trainer_fail(t,
                 "loss is %g at step %" PRIu64
                 ": training diverged (learning rate %g too high?)",
                 *loss, step, t->o.learning_rate);
    return PS_ERR_INVAL;
  }
  if (t->client == NULL) {
    /* The servers' rule: the same kernel, schedule and update count. */
    ps_optimizer_apply(&t->opt, t->w, t->w, t->v, t->nparams, t->g, t->nparams,
                       1.0f, ps_lr_factor(&t->sched, step), ++t->updates);
    return PS_OK;
  }
  uint64_t push0 = ps_now_ns();
  rc = t->fused
           ? ps_client_pushpull(t->client, 0, t->nparams, t->g, step, t->w)
           : ps_client_push(t->client, 0, t->nparams, t->g, step);
  t->step_push_ns = ps_now_ns() - push0;
  if (rc != PS_OK)
    trainer_fail(t, "%s of the gradient of step %" PRIu64 " failed: %s",
                 t->fused ? "push-pull" : "push", step,
                 ps_client_errmsg(t->client));
  else if (t->fused)
    next_weights(t, step);
  return rc;
}

static int write_all(FILE *f, const void *p, size_t bytes) {
  return fwrite(p, 1, bytes, f) == bytes ? 0 : -1;
}

/* Writes through a temporary file and a rename, so a reader never sees half
 * a file. */
static int write_file(ps_trainer_t *t, const char *path, const char *what,
                      int (*fill)(ps_trainer_t *, FILE *)) {
  char tmp[1100];
  int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof(tmp)) {
    trainer_fail(t, "%s path too long: %s", what, path);
    return PS_ERR_CONFIG;
  }
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    trainer_fail(t, "cannot write the %s %s: %s", what, tmp, strerror(errno));
    return PS_ERR_IO;
  }
  int bad = fill(t, f);
  int saved = errno;
  if (fflush(f) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (fclose(f) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (!bad && rename(tmp, path) != 0) {
    bad = 1;
    saved = errno;
  }
  if (bad) {
    unlink(tmp);
    trainer_fail(t, "cannot write the %s %s: %s", what, path, strerror(saved));
    return PS_ERR_IO;
  }
  return PS_OK;
}

static int fill_dump(ps_trainer_t *t, FILE *f) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (size_t i = 0; i < t->nparams; i++) {
    uint32_t u;
    memcpy(&u, &t->w[i], 4);
    u = __builtin_bswap32(u);
    if (write_all(f, &u, 4) != 0) return -1;
  }
  return 0;
#else
  return write_all(f, t->w, t->nparams * sizeof(float));
#endif
}

static int fill_report(ps_trainer_t *t, FILE *f) {
  const ps_trainer_result_t *r = &t->res;
  uint64_t pulls = t->pulls, max_lag = t->pull_max_lag,
           beyond = t->pull_beyond_bound;
  /* Payload bytes this worker moved (issue #15: the codecs' saving). */
  uint64_t push_bytes = 0, pull_bytes = 0;
  if (t->client) ps_client_wire_bytes(t->client, &push_bytes, &pull_bytes);
  int n = fprintf(
      f,
      "{\n"
      "  \"mode\": \"%s\",\n"
      "  \"model\": \"%s\",\n"
      "  \"backend\": \"%s\",\n"
      "  \"test_accuracy\": %.6f,\n"
      "  \"test_loss\": %.6f,\n"
      "  \"train_loss\": %.6f,\n"
      "  \"samples_per_sec\": %.1f,\n"
      "  \"wall_seconds\": %.3f,\n"
      "  \"epochs\": %" PRId64
      ",\n"
      "  \"steps\": %" PRIu64
      ",\n"
      "  \"start_step\": %" PRIu64
      ",\n"
      "  \"steps_per_epoch\": %" PRIu64
      ",\n"
      "  \"workers\": %u,\n"
      "  \"batch_size\": %" PRId64
      ",\n"
      "  \"global_batch_size\": %" PRIu64
      ",\n"
      "  \"learning_rate\": %g,\n"
      "  \"optimizer\": \"%s\",\n"
      "  \"momentum\": %g,\n"
      "  \"lr_schedule\": \"%s\",\n"
      "  \"seed\": %" PRIu64
      ",\n"
      "  \"staleness\": %u,\n"
      "  \"pulls\": %" PRIu64
      ",\n"
      "  \"pull_max_lag\": %" PRIu64
      ",\n"
      "  \"pull_beyond_bound\": %" PRIu64
      ",\n"
      "  \"push_codec\": \"%s\",\n"
      "  \"pull_codec\": \"%s\",\n"
      "  \"push_bytes\": %" PRIu64
      ",\n"
      "  \"pull_bytes\": %" PRIu64
      ",\n"
      "  \"bytes_per_step\": %.1f,\n"
      "  \"rank\": %u,\n"
      "  \"left\": %s\n"
      "}\n",
      t->client ? "distributed" : "standalone", ps_net_kind_name(t->o.model),
      ps_compute_name(t->compute), r->test_accuracy, r->test_loss,
      r->train_loss, r->samples_per_sec, r->wall_seconds, r->epochs, r->steps,
      t->start_step, r->steps_per_epoch, r->workers, t->o.batch_size,
      (uint64_t)r->workers * (uint64_t)t->o.batch_size, t->o.learning_rate,
      ps_optimizer_name(t->opt.kind), t->o.momentum,
      t->o.lr_schedule == PS_LR_COSINE ? "cosine" : "constant", t->o.seed,
      t->staleness, pulls, max_lag, beyond, ps_codec_name(t->o.push_codec),
      ps_codec_name(t->model.ntensors ? t->model.tensors[0].pull_codec : 0),
      push_bytes, pull_bytes,
      r->steps > t->start_step ? (double)(push_bytes + pull_bytes) /
                                     (double)(r->steps - t->start_step)
                               : 0.0,
      t->rank, r->left ? "true" : "false");
  return n < 0 ? -1 : 0;
}

/* One row of --metrics-csv at global step step (steps done), with the
 * learning rate of the last of them. */
static void csv_row(ps_trainer_t *t, const char *kind, double time_s,
                    uint64_t epoch, uint64_t step, uint64_t steps, double loss,
                    double samples_per_sec, double test_loss,
                    double test_accuracy) {
  if (t->csv == NULL) return;
  ps_metrics_csv_row_t row = {
      .time_s = time_s,
      .kind = kind,
      .epoch = epoch,
      .step = step,
      .steps = steps,
      .loss = loss,
      .lr = t->o.learning_rate *
            (double)ps_lr_factor(&t->sched, step ? step - 1 : 0),
      .samples_per_sec = samples_per_sec,
      .test_loss = test_loss,
      .test_accuracy = test_accuracy,
  };
  ps_metrics_csv_row(t->csv, &row);
}

/* The job's samples/s from this worker's first step to step, over train_ns
 * of training (evaluations left out). */
static double run_rate(const ps_trainer_t *t, uint64_t train_ns, uint64_t step,
                       uint64_t global_batch) {
  if (train_ns == 0 || step <= t->start_step) return NAN;
  return (double)((step - t->start_step) * global_batch) / (double)train_ns *
         1e9;
}

/* Issue #16: 1 when this worker's leave step (psctl remove-worker) is
 * step or before: it stops before computing it. */
static int leave_now(ps_trainer_t *t, uint64_t step) {
  if (t->client == NULL) return 0;
  uint64_t leave = ps_client_leave_clock(t->client);
  if (leave == 0 || step < leave) return 0;
  /* The view came after the worker passed the step (it was slower than
   * the scheduler's margin): the steps since count it, but the others
   * read the data without it from the leave step on. */
  if (step > leave)
    PS_WARN("left_late", "leave_clock=%" PRIu64 " step=%" PRIu64, leave, step);
  t->leaving = 1;
  return 1;
}

int ps_trainer_run(ps_trainer_t *t) {
  if (t->ctr != NULL) return ps__trainer_ctr_run(t->ctr);
  ps_trainer_result_t *r = &t->res;
  const ps_trainer_opts_t *o = &t->o;
  uint64_t spe = r->steps_per_epoch;
  uint64_t total = spe * (uint64_t)o->epochs;
  if (o->max_steps > 0 && o->max_steps < total) total = o->max_steps;
  uint64_t global_batch = (uint64_t)t->workers * (uint64_t)o->batch_size;
  /* Rank 0 evaluates; so does any worker asked for a report or a dump, so
   * the job's result survives the loss of rank 0. */
  int evaluator =
      t->rank == 0 || o->report_path != NULL || o->dump_path != NULL;

  PS_INFO(
      "train_start",
      "mode=%s rank=%u workers=%u batch_size=%" PRId64 " global_batch=%" PRIu64
      " optimizer=%s lr=%g lr_schedule=%s warmup_steps=%" PRIu64
      " momentum=%g"
      " epochs=%" PRId64 " steps_per_epoch=%" PRIu64 " steps=%" PRIu64
      " model=%s params=%zu backend=%s threads=%d push=%s"
      " push_pull=%s",
      t->client ? "distributed" : "standalone", t->rank, t->workers,
      o->batch_size, global_batch, ps_optimizer_name(t->opt.kind),
      o->learning_rate, o->lr_schedule == PS_LR_COSINE ? "cosine" : "constant",
      o->warmup_steps, o->momentum, o->epochs, spe, total,
      ps_net_kind_name(o->model), t->nparams, ps_compute_name(t->compute),
      o->threads,
      t->client == NULL ? "none"
      : t->push_layers  ? "layer"
                        : "model",
      t->client == NULL ? "none"
      : t->fused        ? "fused"
                        : "separate");

  uint64_t start_ns = ps_now_ns();
  uint64_t eval_ns = 0; /* time spent evaluating, kept out of rates */
  uint64_t last_ns = start_ns, last_step = t->start_step, last_eval_ns = 0;
  double progress_loss = 0.0, epoch_loss = 0.0;
  uint64_t progress_n = 0, epoch_n = 0;
  uint64_t evaluated_at = UINT64_MAX; /* clock of the last evaluation */
  /* The progress line's figures: the last interval's rate and mean loss. */
  uint64_t line_ns = 0;
  double line_sps = NAN, line_loss = NAN;
  int rc = PS_OK;
  uint64_t step = t->start_step;
  if (step > 0)
    PS_INFO("train_resume",
            "step=%" PRIu64 " epoch=%" PRIu64 " steps_left=%" PRIu64, step,
            step / spe + 1, step < total ? total - step : 0);
  /* A worker that joined as the job ended (the scheduler does not know
   * the job's length: its join step may be past the last) has nothing left
   * to compute; it evaluates the final model like the others. */
  if (step > total) step = total;
  if (step > 0) r->epochs = (int64_t)(step / spe);
  ps_trainer_stats_t *st = o->stats;
  if (st) {
    ps_gauge_set(&st->rank, t->rank);
    ps_gauge_set(&st->workers, t->workers);
    ps_gauge_set(&st->total_steps, (double)total);
    ps_gauge_set(&st->step, (double)step);
    ps_gauge_set(&st->epoch, (double)r->epochs);
    atomic_store(&st->phase, PS_TRAINER_TRAINING);
  }

  for (; step < total; step++) {
    /* The worker's loop is this one: a step that hangs starves systemd's
     * watchdog, as a stuck event loop does in the other daemons. */
    ps_notify_watchdog_kick();
    if (should_stop(t)) {
      r->stopped = 1;
      break;
    }
    if (leave_now(t, step)) break;
    if (step % spe == 0) {
      epoch_loss = 0.0;
      epoch_n = 0;
    }
    double loss;
    uint64_t step_t0 = ps_now_ns();
    if (o->step_delay_ms) {
      /* A straggler (--step-delay-ms); a signal cuts it short. */
      struct timespec d = {(time_t)(o->step_delay_ms / 1000),
                           (long)(o->step_delay_ms % 1000) * 1000000L};
      nanosleep(&d, NULL);
    }
    rc = train_step(t, step, &loss);
    if (rc != PS_OK) {
      if (t->leaving) {
        rc = PS_OK;
        break;
      }
      if (cluster_gone(t, rc)) {
        rc = PS_OK;
        r->stopped = 1;
      }
      break;
    }
    progress_loss += loss;
    progress_n++;
    epoch_loss += loss;
    epoch_n++;
    r->train_loss = epoch_loss / (double)epoch_n;

    uint64_t now = ps_now_ns();
    stats_step(t, step, now - step_t0);
    double dt = (double)(now - last_ns) * 1e-9;
    if (dt >= o->progress_s && step + 1 < total) {
      /* Evaluation is not training: keep it out of the rate. */
      double train_dt = dt - (double)(eval_ns - last_eval_ns) * 1e-9;
      if (st && train_dt > 0)
        ps_gauge_set(&st->samples_per_sec,
                     (double)((step + 1 - last_step) * global_batch) /
                         train_dt);
      if (train_dt > 0)
        line_sps =
            (double)((step + 1 - last_step) * global_batch) / train_dt;
      csv_row(t, "progress", (double)(now - start_ns) * 1e-9, step / spe + 1,
              step + 1, total, progress_loss / (double)progress_n,
              train_dt > 0 ? line_sps : NAN, NAN, NAN);
      if (!o->progress_line)
        PS_INFO("progress",
                "epoch=%" PRIu64 " step=%" PRIu64 " steps=%" PRIu64
                " loss=%.4f lr=%.5f samples_per_sec=%.0f",
                step / spe + 1, step + 1, total,
                progress_loss / (double)progress_n,
                o->learning_rate * (double)ps_lr_factor(&t->sched, step),
                train_dt > 0 ? line_sps : 0.0);
      ps_notify_status("training: step %" PRIu64 " of %" PRIu64
                       ", epoch %" PRIu64 ", loss %.4f",
                       step + 1, total, step / spe + 1,
                       progress_loss / (double)progress_n);
      last_ns = now;
      last_eval_ns = eval_ns;
      last_step = step + 1;
      line_loss = progress_loss / (double)progress_n;
      progress_loss = 0.0;
      progress_n = 0;
    }
    if (o->progress_line && (now - line_ns >= TRAINER_LINE_NS ||
                             step + 1 == total)) {
      line_ns = now;
      double sps = line_sps;
      if (isnan(sps)) { /* before the first interval: since the start */
        double s = (double)(now - start_ns - eval_ns) * 1e-9;
        if (s > 0)
          sps = (double)((step + 1 - t->start_step) * global_batch) / s;
      }
      ps_progress_t p = {
          .epoch = step / spe + 1,
          .epochs = (total + spe - 1) / spe,
          .step = step + 1,
          .steps = total,
          .loss = progress_n ? progress_loss / (double)progress_n : line_loss,
          .test_accuracy =
              evaluated_at != UINT64_MAX ? r->test_accuracy : NAN,
          .samples_per_sec = sps,
          .eta_s = sps > 0 ? (double)((total - step - 1) * global_batch) / sps
                           : NAN,
      };
      char line[512];
      ps_progress_format(&p, ps_log_status_width(), line, sizeof(line));
      ps_log_status(line);
    }

    if ((step + 1) % spe == 0) {
      uint64_t epoch = (step + 1) / spe;
      r->epochs = (int64_t)epoch;
      if (st) ps_gauge_set(&st->epoch, (double)epoch);
      int last = step + 1 == total;
      double elapsed = (double)(now - start_ns) * 1e-9;
      /* Before this epoch's evaluation, which is no training. */
      double epoch_sps =
          run_rate(t, now - start_ns - eval_ns, step + 1, global_batch);
      if (evaluator && (o->eval_every_epoch || last)) {
        uint64_t e0 = ps_now_ns();
        rc = evaluate(t, step + 1);
        eval_ns += ps_now_ns() - e0;
        if (rc != PS_OK) {
          if (cluster_gone(t, rc)) {
            rc = PS_OK;
            r->stopped = 1;
            step++; /* this step's gradient was pushed */
          }
          break;
        }
        evaluated_at = step + 1;
        csv_row(t, "epoch", elapsed, epoch, step + 1, total, r->train_loss,
                epoch_sps,
                r->test_loss, r->test_accuracy);
        PS_INFO("epoch",
                "epoch=%" PRIu64 " step=%" PRIu64
                " train_loss=%.4f test_loss=%.4f test_accuracy=%.4f"
                " elapsed_s=%.1f",
                epoch, step + 1, r->train_loss, r->test_loss, r->test_accuracy,
                elapsed);
      } else {
        csv_row(t, "epoch", elapsed, epoch, step + 1, total, r->train_loss,
                epoch_sps,
                NAN, NAN);
        PS_INFO("epoch",
                "epoch=%" PRIu64 " step=%" PRIu64
                " train_loss=%.4f"
                " elapsed_s=%.1f",
                epoch, step + 1, r->train_loss, elapsed);
      }
    }
  }
  r->steps = step;
  if (t->leaving) {
    r->left = 1;
    PS_INFO("worker_leaves", "step=%" PRIu64 " start_step=%" PRIu64, step,
            t->start_step);
  }
  /* What follows (warnings, the final evaluation, the summary) goes below
   * the last progress line. */
  if (o->progress_line) ps_log_status_end();
  uint64_t train_end_ns = ps_now_ns();
  double train_s = (double)(train_end_ns - start_ns - eval_ns) * 1e-9;
  r->samples_per_sec =
      train_s > 0 ? (double)((step - t->start_step) * global_batch) / train_s
                  : 0.0;

  int sig = stop_signal(t);
  if (sig)
    ps_notify_stopping("stopping on %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
  else
    ps_notify_stopping("training over at step %" PRIu64, step);
  if (rc == PS_OK && r->stopped) {
    PS_WARN("stopped", "step=%" PRIu64 " reason=%s", step,
            sig ? (sig == SIGINT ? "SIGINT" : "SIGTERM") : "cluster_shutdown");
  }
  /* A stopped worker leaves promptly: a final pull could wait on workers
   * that are gone. */
  /* A worker that left evaluates nothing: the job goes on without it. */
  if (rc == PS_OK && !r->stopped && !r->left && evaluator && step > 0) {
    if (evaluated_at != step) {
      rc = evaluate(t, step);
      if (rc == PS_OK) evaluated_at = step;
    }
    /* Either way t->w now holds the weights as of clock step. */
  }
  r->wall_seconds = (double)(ps_now_ns() - start_ns) * 1e-9;
  if (st) ps_gauge_set(&st->samples_per_sec, r->samples_per_sec);
  if (rc == PS_OK && step > 0) {
    int ev = evaluated_at == step;
    csv_row(t, "final", r->wall_seconds, (step - 1) / spe + 1, step, total,
            r->train_loss, r->samples_per_sec, ev ? r->test_loss : NAN,
            ev ? r->test_accuracy : NAN);
  }

  /* One that left writes its report (start_step, steps, left), no dump. */
  if (rc == PS_OK && !r->stopped && r->left && o->report_path != NULL)
    rc = write_file(t, o->report_path, "report", fill_report);
  if (rc == PS_OK && !r->stopped && !r->left && evaluator) {
    if (o->dump_path != NULL)
      rc = write_file(t, o->dump_path, "weights dump", fill_dump);
    if (rc == PS_OK && o->report_path != NULL)
      rc = write_file(t, o->report_path, "report", fill_report);
  }

  /* Done when the job is over; Leave when this worker quits before that
   * (signal, error), which tells the scheduler to end the job rather than
   * let the others wait for a worker that will not come back. */
  if (t->client != NULL) {
    /* How stale the weights of this worker's pulls were (SSP's bound: a
     * lag of at most the staleness; beyond_bound counts any further). */
    PS_INFO("pull_lag",
            "pulls=%" PRIu64 " max_lag=%" PRIu64 " beyond_bound=%" PRIu64
            " staleness=%u",
            t->pulls, t->pull_max_lag, t->pull_beyond_bound, t->staleness);
    ps_trainer_goodbye(t->client, rc, r->stopped, sig, t->errmsg);
  }
  if (rc != PS_OK) return rc;

  /* How many of a step's layer pushes were on the wire together: every
   * layer of the model when nothing serialises them. */
  if (t->client != NULL && t->push_layers)
    PS_INFO("layer_pushes", "max_in_flight=%zu", t->layer_pushes_max);
  if (evaluator && evaluated_at == step && step > 0)
    PS_INFO("train_done",
            "steps=%" PRIu64 " epochs=%" PRId64
            " train_loss=%.4f"
            " test_loss=%.4f test_accuracy=%.4f samples_per_sec=%.0f"
            " wall_s=%.1f stopped=%d",
            r->steps, r->epochs, r->train_loss, r->test_loss, r->test_accuracy,
            r->samples_per_sec, r->wall_seconds, r->stopped);
  else
    PS_INFO("train_done",
            "steps=%" PRIu64 " epochs=%" PRId64
            " train_loss=%.4f"
            " samples_per_sec=%.0f wall_s=%.1f stopped=%d",
            r->steps, r->epochs, r->train_loss, r->samples_per_sec,
            r->wall_seconds, r->stopped);
  printf("%s%s training: %" PRIu64 " steps (%" PRId64 " full epochs of %" PRIu64
         " steps), %u worker%s x batch %" PRId64
         ", in %.1f s, %.0f samples/s\n",
         r->stopped ? "stopped " : "", t->client ? "distributed" : "standalone",
         r->steps, r->epochs, spe, t->workers, t->workers == 1 ? "" : "s",
         o->batch_size, r->wall_seconds, r->samples_per_sec);
  if (evaluator && evaluated_at == step && step > 0)
    printf("test accuracy %.4f, test loss %.4f, train loss %.4f\n",
           r->test_accuracy, r->test_loss, r->train_loss);
  fflush(stdout);
  return PS_OK;
}
