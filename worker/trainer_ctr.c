#include "worker/trainer_ctr.h"

#include <cblas.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/notify.h"
#include "common/optimizer.h"
#include "common/time.h"
#include "worker/data/auc.h"
#include "worker/data/criteo.h"
#include "worker/model/ctr.h"
#include "worker/model/local_table.h"

/* Rows per evaluation batch: large enough for BLAS to run at speed. */
#define CTR_EVAL_BATCH 1024

struct ps__trainer_ctr_s {
  ps_trainer_opts_t o;
  ps_trainer_result_t *res;
  char errmsg[1200];
  char train_path[1024], test_path[1024];
  uint64_t train_rows;
  ps_ctr_t *model;
  ps_client_t *client;
  ps_local_table_t *local[2]; /* standalone: emb, wide */
  ps_criteo_t *reader;
  uint32_t rank, workers, dim;
  size_t nparams, max_batch, ncross;
  uint64_t start_step;
  /* The schedule declared in the model spec, resolved for this job's
   * worker count: what the servers apply, and --standalone itself. */
  ps_lr_schedule_spec_t sched;
  ps_optimizer_spec_t dense_opt;    /* --standalone: the servers' SGD */
  float *w, *v, *g;                 /* dense weights, momentum, gradient */
  float *emb, *wide, *gemb, *gwide; /* rows of a batch's ids */
  ps_criteo_row_t *rows;
  /* Test predictions, grown as the test file is read. */
  float *tp;
  uint8_t *ty;
  size_t tcap, ntest;
  double test_auc, test_log_loss;
};

static void ctr_fail(ps__trainer_ctr_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void ctr_fail(ps__trainer_ctr_t *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(t->errmsg, sizeof(t->errmsg), PS_OK, fmt, ap);
  va_end(ap);
}

const char *ps__trainer_ctr_errmsg(const ps__trainer_ctr_t *t) {
  return t->errmsg;
}

/* dir/name.gz if it exists, else dir/name. */
static void default_path(char *out, size_t len, const char *dir,
                         const char *name) {
  snprintf(out, len, "%s/%s.gz", dir, name);
  if (access(out, F_OK) != 0) snprintf(out, len, "%s/%s", dir, name);
}

ps__trainer_ctr_t *ps__trainer_ctr_new(const ps_trainer_opts_t *o,
                                       ps_trainer_result_t *res, int *err,
                                       char *errmsg, size_t errlen) {
  ps__trainer_ctr_t *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    *err = PS_ERR_NOMEM;
    snprintf(errmsg, errlen, "out of memory");
    return NULL;
  }
  t->o = *o;
  t->res = res;
  int rc = PS_OK;
  char why[1100];
  if (o->device && strcmp(o->device, "auto") != 0 &&
      strcmp(o->device, "cpu") != 0) {
    ctr_fail(t, "model ctr runs on the CPU only, not on device %s",
             o->device);
    rc = PS_ERR_UNSUPPORTED;
    goto fail;
  }
  if (o->ctr_train && o->ctr_train[0])
    snprintf(t->train_path, sizeof(t->train_path), "%s", o->ctr_train);
  else
    default_path(t->train_path, sizeof(t->train_path), o->data_dir,
                 "train.txt");
  if (o->ctr_test && o->ctr_test[0])
    snprintf(t->test_path, sizeof(t->test_path), "%s", o->ctr_test);
  else
    default_path(t->test_path, sizeof(t->test_path), o->data_dir, "test.txt");
  if (o->threads > 0) openblas_set_num_threads(o->threads);

  ps_ctr_opts_t mo;
  ps_ctr_opts_init(&mo);
  mo.embed_dim = o->ctr_embed_dim;
  mo.dot_interactions = o->ctr_dot;
  if ((o->ctr_hidden && o->ctr_hidden[0] &&
       ps_ctr_parse_hidden(&mo, o->ctr_hidden, why, sizeof(why)) != PS_OK) ||
      (o->ctr_cross &&
       ps_ctr_parse_cross(&mo, o->ctr_cross, why, sizeof(why)) != PS_OK)) {
    ctr_fail(t, "%s", why);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  mo.learning_rate = (float)o->learning_rate;
  mo.momentum = (float)o->momentum;
  mo.seed = o->seed;
  if (o->ctr_sparse_optimizer != PS_OPTIMIZER_SGD) {
    if (o->standalone) {
      ctr_fail(t, "--ctr-sparse-optimizer %s: --standalone has SGD only",
               ps_optimizer_name(o->ctr_sparse_optimizer));
      rc = PS_ERR_CONFIG;
      goto fail;
    }
    ps_optimizer_spec_t *so = &mo.sparse_optimizer;
    memset(so, 0, sizeof(*so));
    so->kind = o->ctr_sparse_optimizer;
    so->learning_rate = (float)o->ctr_sparse_lr;
    if (so->kind == PS_OPTIMIZER_ADAGRAD) {
      so->epsilon = 1e-6f;
    } else {
      so->l1 = (float)o->l1;
      so->l2 = (float)o->l2;
      so->ftrl_beta = 1.0f;
    }
    if (ps_optimizer_check(so, "--ctr-sparse-optimizer", why, sizeof(why)) !=
        PS_OK) {
      ctr_fail(t, "%s", why);
      rc = PS_ERR_CONFIG;
      goto fail;
    }
    mo.has_sparse_optimizer = 1;
  }
  uint64_t t0 = ps_now_ns();
  rc = ps_criteo_count(t->train_path, &t->train_rows, why, sizeof(why));
  if (rc != PS_OK) {
    ctr_fail(t, "cannot read the training set: %s", why);
    goto fail;
  }
  if (access(t->test_path, R_OK) != 0) {
    ctr_fail(t, "cannot read the test set %s: %s", t->test_path,
             strerror(errno));
    rc = PS_ERR_IO;
    goto fail;
  }
  PS_INFO("data",
          "train=%s test=%s train_rows=%" PRIu64 " count_s=%.2f", t->train_path,
          t->test_path, t->train_rows, (double)(ps_now_ns() - t0) * 1e-9);

  /* The schedule goes into the spec with its horizon in epochs: the
   * worker count that turns it into steps is the scheduler's to tell (the
   * steps per epoch below follow the same formula). */
  mo.lr_schedule = (ps_lr_schedule_spec_t){
      .kind = o->lr_schedule == PS_LR_COSINE ? PS_LR_SCHEDULE_COSINE
                                             : PS_LR_SCHEDULE_CONSTANT,
      .warmup_steps = o->warmup_steps,
      .epochs = (uint64_t)o->epochs,
      .examples_per_epoch = t->train_rows,
      .worker_batch = (uint64_t)o->batch_size,
  };
  t->max_batch = (size_t)o->batch_size > CTR_EVAL_BATCH ? (size_t)o->batch_size
                                                         : CTR_EVAL_BATCH;
  mo.max_batch = t->max_batch;
  t->model = ps_ctr_new(&mo, why, sizeof(why));
  if (t->model == NULL) {
    ctr_fail(t, "%s", why);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  t->dim = mo.embed_dim;
  t->ncross = mo.ncross;
  t->nparams = ps_ctr_num_params(t->model);
  t->dense_opt = (ps_optimizer_spec_t){.kind = PS_OPTIMIZER_SGD,
                                       .learning_rate = mo.learning_rate,
                                       .momentum = mo.momentum};

  size_t b = t->max_batch, cells = b * PS_CRITEO_CATEG;
  t->w = calloc(t->nparams, sizeof(float));
  t->g = calloc(t->nparams, sizeof(float));
  t->emb = malloc(cells * t->dim * sizeof(float));
  t->gemb = malloc(cells * t->dim * sizeof(float));
  /* The wide table's keys: the fields' ids and the crossed ids. */
  t->wide = malloc((cells + b * t->ncross) * sizeof(float));
  t->gwide = malloc((cells + b * t->ncross) * sizeof(float));
  t->rows = malloc(b * sizeof(*t->rows));
  if (!t->w || !t->g || !t->emb || !t->gemb || !t->wide || !t->gwide ||
      !t->rows) {
    ctr_fail(t, "out of memory");
    rc = PS_ERR_NOMEM;
    goto fail;
  }
  const ps_model_t *spec = ps_ctr_model(t->model);
  if (o->standalone) {
    t->rank = 0;
    t->workers = 1;
    ps_ctr_init_params(t->model, t->w);
    if (o->momentum > 0) t->v = calloc(t->nparams, sizeof(float));
    for (int k = 0; k < 2; k++) t->local[k] = ps_local_table_new(&spec->sparse[k], spec);
    if ((o->momentum > 0 && t->v == NULL) || !t->local[0] || !t->local[1]) {
      ctr_fail(t, "out of memory");
      rc = PS_ERR_NOMEM;
      goto fail;
    }
  } else {
    char cerr[512] = "";
    int crc = PS_OK;
    t->client = ps_client_new(&o->client, spec, &crc, cerr, sizeof(cerr));
    if (t->client == NULL) {
      ctr_fail(t, "cannot join the cluster at %s: %s",
               o->client.scheduler ? o->client.scheduler : "(none)",
               cerr[0] ? cerr : ps_strerror(crc));
      rc = crc != PS_OK ? crc : PS_ERR_PEER;
      goto fail;
    }
    if (ps_view_mode(ps_client_view(t->client)) == PS_MODE_SSP) {
      ctr_fail(t,
               "--model ctr cannot train in a --mode ssp job: its sparse "
               "tables keep one pending sum per row, not one per step (run "
               "the scheduler with --mode bsp or asp)");
      /* Leave, not Done: the job cannot run, so it ends now. */
      ps_client_leave(t->client, "--model ctr in a --mode ssp job");
      rc = PS_ERR_CONFIG;
      goto fail;
    }
    t->rank = ps_client_rank(t->client);
    t->workers = ps_client_num_workers(t->client);
    ps_log_set_node(ps_client_node_id(t->client));
    t->start_step = ps_client_start_clock(t->client);
    ps_notify_ready("worker rank %u of %u, registered, from step %llu",
                    t->rank, t->workers, (unsigned long long)t->start_step);
    if (t->workers == 0 || t->rank >= t->workers) {
      ctr_fail(t, "the scheduler gave rank %u of %u workers", t->rank,
               t->workers);
      rc = PS_ERR_PROTO;
      goto fail;
    }
  }
  uint64_t global_batch = (uint64_t)t->workers * (uint64_t)o->batch_size;
  if (global_batch > t->train_rows) {
    ctr_fail(t,
             "global batch %" PRIu64 " (%u workers x batch size %" PRId64
             ") exceeds the %" PRIu64 " training rows of %s",
             global_batch, t->workers, o->batch_size, t->train_rows,
             t->train_path);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  ps_criteo_opts_t ro;
  ps_criteo_opts_init(&ro);
  ro.id_space = o->ctr_id_space;
  ro.rank = t->rank;
  ro.workers = t->workers;
  ro.block = (uint32_t)o->batch_size;
  t->reader = ps_criteo_open(t->train_path, &ro, why, sizeof(why));
  if (t->reader == NULL) {
    ctr_fail(t, "%s", why);
    rc = PS_ERR_IO;
    goto fail;
  }
  res->steps_per_epoch = t->train_rows / global_batch;
  /* What the scheduler made of the horizon (the same formula). */
  t->sched = spec->lr_schedule;
  if (ps_lr_schedule_resolve(&t->sched, t->workers, why, sizeof(why)) !=
      PS_OK) {
    ctr_fail(t, "%s", why);
    rc = PS_ERR_CONFIG;
    goto fail;
  }
  res->workers = t->workers;
  res->rank = t->rank;
  res->test_accuracy = -1.0;
  res->test_loss = -1.0;
  res->test_auc = -1.0;
  res->train_loss = -1.0;
  return t;

fail:
  *err = rc;
  snprintf(errmsg, errlen, "%s", t->errmsg);
  ps__trainer_ctr_destroy(&t);
  return NULL;
}

void ps__trainer_ctr_destroy(ps__trainer_ctr_t **t_p) {
  if (t_p == NULL || *t_p == NULL) return;
  ps__trainer_ctr_t *t = *t_p;
  ps_client_destroy(&t->client);
  ps_criteo_destroy(&t->reader);
  ps_ctr_destroy(&t->model);
  for (int k = 0; k < 2; k++) ps_local_table_destroy(&t->local[k]);
  free(t->w);
  free(t->v);
  free(t->g);
  free(t->emb);
  free(t->wide);
  free(t->gemb);
  free(t->gwide);
  free(t->rows);
  free(t->tp);
  free(t->ty);
  free(t);
  *t_p = NULL;
}

static int stop_signal(const ps__trainer_ctr_t *t) {
  return t->o.stop != NULL ? (int)*t->o.stop : 0;
}

static int cluster_gone(ps__trainer_ctr_t *t, int rc) {
  return t->client != NULL &&
         (rc == PS_ERR_SHUTDOWN || ps_client_shutting_down(t->client));
}

/* Dense weights as of clock, the embedding rows of keys[0, nf) (the
 * fields' ids) and the wide rows of keys[0, n) (crossed ids too). */
static int pull(ps__trainer_ctr_t *t, uint64_t clock, const uint64_t *keys,
                size_t nf, size_t n, int dense) {
  int rc = PS_OK;
  if (t->client == NULL) {
    rc = ps_local_table_pull(t->local[0], keys, nf, t->emb);
    if (rc == PS_OK) rc = ps_local_table_pull(t->local[1], keys, n, t->wide);
    if (rc != PS_OK) ctr_fail(t, "out of memory for %zu sparse rows", n);
    return rc;
  }
  if (dense) {
    rc = ps_client_pull(t->client, 0, t->nparams, t->w, clock);
    if (rc != PS_OK) {
      ctr_fail(t, "pull of the dense weights at clock %" PRIu64 " failed: %s",
               clock, ps_client_errmsg(t->client));
      return rc;
    }
  }
  rc = ps_client_sparse_pull(t->client, PS_CTR_EMB_TABLE, keys, nf, t->emb);
  if (rc == PS_OK)
    rc = ps_client_sparse_pull(t->client, PS_CTR_WIDE_TABLE, keys, n, t->wide);
  if (rc != PS_OK)
    ctr_fail(t, "sparse pull of %zu rows failed: %s", n,
             ps_client_errmsg(t->client));
  return rc;
}

/* Reads this worker's next n rows of the epoch. */
static int read_batch(ps__trainer_ctr_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int rc = ps_criteo_next(t->reader, &t->rows[i]);
    if (rc == 1) continue;
    if (rc == 0)
      ctr_fail(t,
               "%s ended after %" PRIu64 " lines, before this worker's rows "
               "of the epoch (it had %" PRIu64 " rows at start)",
               t->train_path, ps_criteo_lines(t->reader), t->train_rows);
    else
      ctr_fail(t, "%s", ps_criteo_errmsg(t->reader));
    return rc == 0 ? PS_ERR_FORMAT : rc;
  }
  return PS_OK;
}

static int train_step(ps__trainer_ctr_t *t, uint64_t step, double *loss) {
  size_t b = (size_t)t->o.batch_size;
  int rc = read_batch(t, b);
  if (rc != PS_OK) return rc;
  const uint64_t *keys;
  size_t nk = ps_ctr_batch_keys(t->model, t->rows, b, &keys);
  size_t nf = ps_ctr_field_keys(t->model);
  rc = pull(t, step, keys, nf, nk, 1);
  if (rc != PS_OK) return rc;
  *loss = ps_ctr_gradient(t->model, t->w, t->emb, t->wide, t->rows, b, t->g,
                          t->gemb, t->gwide);
  if (!isfinite(*loss)) {
    ctr_fail(t,
             "loss is %g at step %" PRIu64
             ": training diverged (learning rate %g too high?)",
             *loss, step, t->o.learning_rate);
    return PS_ERR_INVAL;
  }
  /* A sparse row's gradient is its rows' share of the batch mean: an id
   * seen once in a batch of B gets 1/B of a dense weight's step, one seen in
   * every row a whole step. Under SGD, with ids drawn from a Zipf law, that
   * is a rate too small for the tail and too large for the head. With
   * ctr_sparse_norm the rows' gradients are means over their own
   * occurrences instead (x B / count): every row moves as if it had a batch
   * of its own. ctr_sparse_scale then sets the rows' rate against the
   * dense weights'. The schedule is not applied here: the servers put it
   * on every tensor and table (ps/model.h), --standalone below alike. */
  float fs = (float)t->o.ctr_sparse_scale;
  const uint32_t *counts = ps_ctr_key_counts(t->model);
  for (size_t k = 0; k < nk; k++) {
    float s = t->o.ctr_sparse_norm ? fs * (float)b / (float)counts[k] : fs;
    if (s == 1.0f) continue;
    if (k < nf)
      for (size_t j = 0; j < t->dim; j++) t->gemb[k * t->dim + j] *= s;
    t->gwide[k] *= s;
  }
  if (t->client == NULL) {
    /* The servers' rule: the same kernels at the schedule's factor. */
    float f = ps_lr_factor(&t->sched, step);
    ps_optimizer_apply(&t->dense_opt, t->w, t->w, t->v, t->nparams, t->g,
                       t->nparams, 1.0f, f, 0);
    rc = ps_local_table_push(t->local[0], keys, nf, t->gemb, f);
    if (rc == PS_OK)
      rc = ps_local_table_push(t->local[1], keys, nk, t->gwide, f);
    if (rc != PS_OK) ctr_fail(t, "out of memory for %zu sparse rows", nk);
    return rc;
  }
  rc = ps_client_sparse_push(t->client, PS_CTR_EMB_TABLE, keys, nf, t->gemb,
                             step);
  if (rc == PS_OK)
    rc = ps_client_sparse_push(t->client, PS_CTR_WIDE_TABLE, keys, nk,
                               t->gwide, step);
  if (rc != PS_OK) {
    ctr_fail(t, "sparse push of %zu rows of step %" PRIu64 " failed: %s", nk,
             step, ps_client_errmsg(t->client));
    return rc;
  }
  rc = ps_client_push(t->client, 0, t->nparams, t->g, step);
  if (rc != PS_OK)
    ctr_fail(t, "push of the dense gradient of step %" PRIu64 " failed: %s",
             step, ps_client_errmsg(t->client));
  return rc;
}

/* AUC and log loss of the weights as of clock on the whole test file. */
static int evaluate(ps__trainer_ctr_t *t, uint64_t clock) {
  if (t->client != NULL) {
    int rc = ps_client_pull(t->client, 0, t->nparams, t->w, clock);
    if (rc != PS_OK) {
      ctr_fail(t, "pull of the dense weights at clock %" PRIu64 " failed: %s",
               clock, ps_client_errmsg(t->client));
      return rc;
    }
  }
  ps_criteo_opts_t ro;
  ps_criteo_opts_init(&ro);
  ro.id_space = t->o.ctr_id_space;
  char why[1100];
  ps_criteo_t *r = ps_criteo_open(t->test_path, &ro, why, sizeof(why));
  if (r == NULL) {
    ctr_fail(t, "%s", why);
    return PS_ERR_IO;
  }
  size_t n = 0;
  int rc = PS_OK, more = 1;
  while (more && rc == PS_OK) {
    size_t b = 0;
    while (b < CTR_EVAL_BATCH && (more = ps_criteo_next(r, &t->rows[b])) == 1)
      b++;
    if (more < 0) {
      ctr_fail(t, "%s", ps_criteo_errmsg(r));
      rc = more;
      break;
    }
    if (b == 0) break;
    if (n + b > t->tcap) {
      size_t cap = t->tcap ? t->tcap * 2 : 65536;
      float *tp = realloc(t->tp, cap * sizeof(float));
      if (tp) t->tp = tp;
      uint8_t *ty = realloc(t->ty, cap);
      if (ty) t->ty = ty;
      if (!tp || !ty) {
        ctr_fail(t, "out of memory for %zu test predictions", cap);
        rc = PS_ERR_NOMEM;
        break;
      }
      t->tcap = cap;
    }
    const uint64_t *keys;
    size_t nk = ps_ctr_batch_keys(t->model, t->rows, b, &keys);
    rc = pull(t, clock, keys, ps_ctr_field_keys(t->model), nk, 0);
    if (rc != PS_OK) break;
    ps_ctr_predict(t->model, t->w, t->emb, t->wide, t->rows, b, t->tp + n);
    for (size_t i = 0; i < b; i++) t->ty[n + i] = t->rows[i].label;
    n += b;
  }
  ps_criteo_destroy(&r);
  if (rc != PS_OK) return rc;
  double auc;
  if (ps_auc(t->tp, t->ty, n, &auc) != PS_OK) {
    ctr_fail(t, "the test set %s has %zu rows of one class only: no AUC",
             t->test_path, n);
    return PS_ERR_FORMAT;
  }
  size_t hits = 0;
  t->ntest = n;
  for (size_t i = 0; i < n; i++) hits += (t->tp[i] >= 0.5f) == (t->ty[i] == 1);
  t->res->test_auc = auc;
  t->res->test_loss = ps_log_loss(t->tp, t->ty, n);
  t->res->test_accuracy = (double)hits / (double)n;
  if (t->o.stats) {
    ps_gauge_set(&t->o.stats->test_accuracy, t->res->test_accuracy);
    ps_gauge_set(&t->o.stats->test_loss, t->res->test_loss);
    ps_counter_add(&t->o.stats->evaluations, 1);
  }
  return PS_OK;
}

static int write_report(ps__trainer_ctr_t *t) {
  const char *path = t->o.report_path;
  const ps_trainer_result_t *r = t->res;
  char tmp[1100];
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (f == NULL) {
    ctr_fail(t, "cannot write the report %s: %s", tmp, strerror(errno));
    return PS_ERR_IO;
  }
  int n = fprintf(
      f,
      "{\n  \"mode\": \"%s\",\n  \"model\": \"ctr\",\n  \"backend\": \"cpu\",\n"
      "  \"train\": \"%s\",\n  \"test\": \"%s\",\n"
      "  \"test_auc\": %.6f,\n  \"test_log_loss\": %.6f,\n"
      "  \"test_loss\": %.6f,\n  \"test_accuracy\": %.6f,\n"
      "  \"train_loss\": %.6f,\n  \"samples_per_sec\": %.1f,\n"
      "  \"wall_seconds\": %.3f,\n  \"epochs\": %" PRId64
      ",\n  \"steps\": %" PRIu64 ",\n  \"steps_per_epoch\": %" PRIu64
      ",\n  \"train_rows\": %" PRIu64
      ",\n  \"workers\": %u,\n  \"batch_size\": %" PRId64
      ",\n  \"learning_rate\": %g,\n  \"momentum\": %g,\n"
      "  \"lr_schedule\": \"%s\",\n  \"warmup_steps\": %" PRIu64
      ",\n  \"lr_total_steps\": %" PRIu64
      ",\n  \"sparse_scale\": %g,\n"
      "  \"sparse_norm\": \"%s\",\n"
      "  \"embed_dim\": %u,\n  \"dot_interactions\": %s,\n"
      "  \"crosses\": \"%s\",\n"
      "  \"hidden\": \"%s\",\n  \"params\": %zu,\n"
      "  \"seed\": %" PRIu64 "\n}\n",
      t->client ? "distributed" : "standalone", t->train_path, t->test_path,
      r->test_auc, r->test_loss, r->test_loss, r->test_accuracy, r->train_loss,
      r->samples_per_sec, r->wall_seconds, r->epochs, r->steps,
      r->steps_per_epoch, t->train_rows, r->workers, t->o.batch_size,
      t->o.learning_rate, t->o.momentum,
      t->sched.kind == PS_LR_SCHEDULE_COSINE ? "cosine" : "constant",
      t->sched.warmup_steps, t->sched.total_steps, t->o.ctr_sparse_scale,
      t->o.ctr_sparse_norm ? "count" : "batch", t->dim,
      t->o.ctr_dot ? "true" : "false", t->o.ctr_cross ? t->o.ctr_cross : "",
      t->o.ctr_hidden ? t->o.ctr_hidden : "", t->nparams, t->o.seed);
  int bad = n < 0;
  if (fclose(f) != 0) bad = 1;
  if (!bad && rename(tmp, path) != 0) bad = 1;
  if (bad) {
    ctr_fail(t, "cannot write the report %s: %s", path, strerror(errno));
    unlink(tmp);
    return PS_ERR_IO;
  }
  return PS_OK;
}

static int write_floats(FILE *f, const float *v, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &v[i], 4);
    u = __builtin_bswap32(u);
    if (fwrite(&u, 4, 1, f) != 1) return -1;
  }
  return 0;
#else
  return fwrite(v, sizeof(float), n, f) == n ? 0 : -1;
#endif
}

/* --dump-weights: the dense weights as of the last evaluation's clock,
 * then the model's click probability of every test row in file order (a
 * function of every sparse row the test set touches), all float32 LE. */
static int write_dump(ps__trainer_ctr_t *t) {
  const char *path = t->o.dump_path;
  char tmp[1100];
  snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    ctr_fail(t, "cannot write the weights dump %s: %s", tmp, strerror(errno));
    return PS_ERR_IO;
  }
  int bad = write_floats(f, t->w, t->nparams) != 0 ||
            write_floats(f, t->tp, t->ntest) != 0;
  int saved = errno;
  if (fclose(f) != 0 && !bad) {
    bad = 1;
    saved = errno;
  }
  if (!bad && rename(tmp, path) != 0) {
    bad = 1;
    saved = errno;
  }
  if (bad) {
    ctr_fail(t, "cannot write the weights dump %s: %s", path, strerror(saved));
    unlink(tmp);
    return PS_ERR_IO;
  }
  return PS_OK;
}

/* Positions the reader at this worker's first row of global step step. */
static int seek_step(ps__trainer_ctr_t *t, uint64_t step) {
  if (ps_criteo_rewind(t->reader) != PS_OK) {
    ctr_fail(t, "%s", ps_criteo_errmsg(t->reader));
    return PS_ERR_IO;
  }
  uint64_t skip = step % t->res->steps_per_epoch;
  for (uint64_t s = 0; s < skip; s++) {
    int rc = read_batch(t, (size_t)t->o.batch_size);
    if (rc != PS_OK) return rc;
  }
  return PS_OK;
}

int ps__trainer_ctr_run(ps__trainer_ctr_t *t) {
  ps_trainer_result_t *r = t->res;
  const ps_trainer_opts_t *o = &t->o;
  uint64_t spe = r->steps_per_epoch;
  uint64_t total = spe * (uint64_t)o->epochs;
  if (o->max_steps > 0 && o->max_steps < total) total = o->max_steps;
  uint64_t global_batch = (uint64_t)t->workers * (uint64_t)o->batch_size;
  int evaluator =
      t->rank == 0 || o->report_path != NULL || o->dump_path != NULL;
  ps_trainer_stats_t *st = o->stats;
  PS_INFO("train_start",
          "mode=%s model=ctr rank=%u workers=%u batch_size=%" PRId64
          " global_batch=%" PRIu64 " lr=%g lr_schedule=%s warmup_steps=%" PRIu64
          " lr_total_steps=%" PRIu64
          " sparse_scale=%g sparse_norm=%s"
          " momentum=%g"
          " epochs=%" PRId64 " steps_per_epoch=%" PRIu64 " steps=%" PRIu64
          " params=%zu embed_dim=%u threads=%d",
          t->client ? "distributed" : "standalone", t->rank, t->workers,
          o->batch_size, global_batch, o->learning_rate,
          t->sched.kind == PS_LR_SCHEDULE_COSINE ? "cosine" : "constant",
          t->sched.warmup_steps, t->sched.total_steps, o->ctr_sparse_scale,
          o->ctr_sparse_norm ? "count" : "batch", o->momentum, o->epochs, spe,
          total, t->nparams, t->dim, o->threads);
  if (st) {
    ps_gauge_set(&st->rank, t->rank);
    ps_gauge_set(&st->workers, t->workers);
    ps_gauge_set(&st->total_steps, (double)total);
    atomic_store(&st->phase, PS_TRAINER_TRAINING);
  }
  uint64_t step = t->start_step < total ? t->start_step : total;
  int rc = step > 0 ? seek_step(t, step) : PS_OK;
  uint64_t start_ns = ps_now_ns(), eval_ns = 0, last_ns = start_ns;
  uint64_t last_step = step, evaluated_at = UINT64_MAX;
  double progress_loss = 0.0, epoch_loss = 0.0;
  uint64_t progress_n = 0, epoch_n = 0;
  for (; rc == PS_OK && step < total; step++) {
    ps_notify_watchdog_kick();
    if (stop_signal(t) ||
        (t->client != NULL && ps_client_shutting_down(t->client))) {
      r->stopped = 1;
      break;
    }
    /* Issue #16: psctl remove-worker. The CTR data stays cut by rank: the
     * others do not take over this worker's share. */
    uint64_t leave = t->client ? ps_client_leave_clock(t->client) : 0;
    if (leave != 0 && step >= leave) {
      r->left = 1;
      PS_INFO("worker_leaves", "step=%" PRIu64 " leave_clock=%" PRIu64, step,
              leave);
      break;
    }
    if (step % spe == 0) {
      epoch_loss = 0.0;
      epoch_n = 0;
      if (step > t->start_step && (rc = seek_step(t, step)) != PS_OK) break;
    }
    double loss;
    uint64_t s0 = ps_now_ns();
    rc = train_step(t, step, &loss);
    if (rc != PS_OK) {
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
    if (st) {
      ps_counter_add(&st->steps, 1);
      ps_counter_add(&st->samples, (uint64_t)o->batch_size);
      ps_counter_add(&st->compute_ns, now - s0);
      ps_hist_observe(&st->step_seconds, now - s0);
      ps_gauge_set(&st->step, (double)(step + 1));
      ps_gauge_set(&st->train_loss, r->train_loss);
    }
    double dt = (double)(now - last_ns) * 1e-9;
    if (dt >= o->progress_s && step + 1 < total) {
      double sps = (double)((step + 1 - last_step) * global_batch) / dt;
      if (st) ps_gauge_set(&st->samples_per_sec, sps);
      PS_INFO("progress",
              "epoch=%" PRIu64 " step=%" PRIu64 " steps=%" PRIu64
              " loss=%.4f samples_per_sec=%.0f",
              step / spe + 1, step + 1, total,
              progress_loss / (double)progress_n, sps);
      last_ns = now;
      last_step = step + 1;
      progress_loss = 0.0;
      progress_n = 0;
    }
    if ((step + 1) % spe == 0) {
      uint64_t epoch = (step + 1) / spe;
      r->epochs = (int64_t)epoch;
      if (st) ps_gauge_set(&st->epoch, (double)epoch);
      /* In a cluster every worker evaluates between epochs, the
       * evaluator's figures printed: the others would otherwise wait in
       * their next pull for the evaluator's next push, as long as a pass
       * over the test file takes, and past --timeout-ms on a big one
       * (seen: 1M test rows on a loaded machine, worker 1's pull failed
       * after 30 s). The same weights give the same figures. */
      int mid = step + 1 < total;
      int eval_here = evaluator || (t->client != NULL && mid);
      if (eval_here && (o->eval_every_epoch || !mid)) {
        uint64_t e0 = ps_now_ns();
        rc = evaluate(t, step + 1);
        eval_ns += ps_now_ns() - e0;
        last_ns += ps_now_ns() - e0;
        if (rc != PS_OK) {
          if (cluster_gone(t, rc)) {
            rc = PS_OK;
            r->stopped = 1;
            step++;
          }
          break;
        }
        evaluated_at = step + 1;
        if (!evaluator) continue;
        PS_INFO("epoch",
                "epoch=%" PRIu64 " step=%" PRIu64
                " train_loss=%.4f test_auc=%.4f test_log_loss=%.4f"
                " elapsed_s=%.1f",
                epoch, step + 1, r->train_loss, r->test_auc, r->test_loss,
                (double)(ps_now_ns() - start_ns) * 1e-9);
        printf("epoch %" PRIu64 ": train loss %.4f, test AUC %.4f, test log "
               "loss %.4f\n",
               epoch, r->train_loss, r->test_auc, r->test_loss);
        fflush(stdout);
      }
    }
  }
  r->steps = step;
  uint64_t end_ns = ps_now_ns();
  double train_s = (double)(end_ns - start_ns - eval_ns) * 1e-9;
  r->samples_per_sec =
      train_s > 0 ? (double)((step - t->start_step) * global_batch) / train_s
                  : 0.0;
  if (rc == PS_OK && !r->stopped && !r->left && evaluator && step > 0 &&
      evaluated_at != step) {
    rc = evaluate(t, step);
    if (rc == PS_OK) evaluated_at = step;
  }
  r->wall_seconds = (double)(ps_now_ns() - start_ns) * 1e-9;
  if (st) ps_gauge_set(&st->samples_per_sec, r->samples_per_sec);
  if (rc == PS_OK && !r->stopped && !r->left && evaluator && o->report_path)
    rc = write_report(t);
  if (rc == PS_OK && !r->stopped && !r->left && evaluator && o->dump_path &&
      evaluated_at == step && step > 0)
    rc = write_dump(t);
  int sig = stop_signal(t);
  if (t->client != NULL)
    ps_trainer_goodbye(t->client, rc, r->stopped, sig, t->errmsg);
  if (rc != PS_OK) return rc;
  int ev = evaluator && evaluated_at == step && step > 0;
  PS_INFO("train_done",
          "steps=%" PRIu64 " epochs=%" PRId64 " train_loss=%.4f%s"
          " samples_per_sec=%.0f wall_s=%.1f stopped=%d",
          r->steps, r->epochs, r->train_loss, ev ? " evaluated=1" : "",
          r->samples_per_sec, r->wall_seconds, r->stopped);
  printf("%s%s training: %" PRIu64 " steps (%" PRId64 " full epochs of %" PRIu64
         " steps), %u worker%s x batch %" PRId64 ", in %.1f s, %.0f samples/s\n",
         r->stopped ? "stopped " : "", t->client ? "distributed" : "standalone",
         r->steps, r->epochs, spe, t->workers, t->workers == 1 ? "" : "s",
         o->batch_size, r->wall_seconds, r->samples_per_sec);
  if (ev)
    printf("test AUC %.4f, test log loss %.4f, train loss %.4f\n", r->test_auc,
           r->test_loss, r->train_loss);
  fflush(stdout);
  return PS_OK;
}
