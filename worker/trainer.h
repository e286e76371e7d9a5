/* The training loop of ps-worker, shared by --standalone and distributed mode.
 *
 * Data order is a function of (seed, epoch) only: every epoch is a seeded
 * Fisher-Yates permutation of all training examples, the same on every
 * worker. Global step s of an epoch takes perm[s*W*B, (s+1)*W*B) and the
 * worker of rank r its slice [r*B, (r+1)*B), so W workers of batch B see
 * exactly the data of one standalone process of batch W*B, and BSP training
 * gives the same weights to float rounding. An epoch has floor(N / (W*B))
 * steps; the examples left over are skipped that epoch.
 * When workers join or leave a running job (issue #16, common/workset.h),
 * the epochs' permutations, each cut to those floor(N / (W*B)) x W*B
 * examples, are read as one stream: step t takes the next count(t) x B
 * examples of it, count(t) the workers of step t, and the i-th of them by
 * rank its i-th batch; W stays the job's --workers for the number of
 * steps and the learning-rate schedule. With a fixed set of W workers
 * that is the layout above.
 *
 * A distributed step t pulls all weights as of clock t, computes the mean
 * gradient of the worker's batch and pushes it as clock t; the server sums
 * the workers' gradients and applies SGD with scale 1/W. A standalone step
 * applies the same kernel (ps_apply_sgd) itself with scale 1.
 *
 * Optimizer and learning-rate schedule are part of the model spec (issue
 * #14): the servers apply both (common/optimizer.h), at the BSP step, and
 * a standalone run applies the same kernel with the same schedule itself.
 * The schedule's total is epochs x steps per epoch, so every worker of a
 * job must be given the same --epochs (the scheduler refuses one that
 * was not: its model spec differs). Only the settings the chosen
 * optimizer uses are declared (--momentum is SGD's, --beta1 Adam's...).
 *
 * Features are standardized with the mean and deviation of the training
 * set (the same bits on every worker, as the data is the same).
 *
 * After each epoch rank 0 pulls the weights and evaluates them on the test
 * set. Progress goes to the log (common/log.h), a summary to stdout. Rank 0
 * writes the report and the weights dump. A trainer belongs to the thread
 * that created it; only the stop flag may be set from elsewhere (a signal
 * handler).
 */
#ifndef PS_TRAINER_H
#define PS_TRAINER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "common/metrics.h"
#include "ps/client.h"

/* Defaults of ps_trainer_opts_t, shared with ps-worker's option table
 * (PS_OPT_DEF, common/config.h); plain literals. */
#define PS_TRAINER_DEFAULT_DATA_DIR "/usr/share/datasets/fashion-mnist"
#define PS_TRAINER_DEFAULT_EPOCHS 10
#define PS_TRAINER_DEFAULT_BATCH_SIZE 32
#define PS_TRAINER_DEFAULT_LR 0.02
#define PS_TRAINER_DEFAULT_MOMENTUM 0.9
#define PS_TRAINER_DEFAULT_BETA1 0.9
#define PS_TRAINER_DEFAULT_BETA2 0.999
#define PS_TRAINER_DEFAULT_EPSILON 1e-8
#define PS_TRAINER_DEFAULT_FTRL_BETA 1.0
#define PS_TRAINER_DEFAULT_SEED 1
#define PS_TRAINER_DEFAULT_THREADS 1
#define PS_TRAINER_DEFAULT_DEVICE "auto"
#define PS_TRAINER_DEFAULT_PROGRESS_MS 2000
#define PS_TRAINER_DEFAULT_CTR_EMBED_DIM 16
#define PS_TRAINER_DEFAULT_CTR_HIDDEN "256,128"
#define PS_TRAINER_DEFAULT_CTR_SPARSE_SCALE 0.5
#include "worker/model/net.h"

typedef struct ps_trainer_s ps_trainer_t;

/* How a distributed step's gradient goes to the servers. */
typedef enum {
  /* PS_PUSH_LAYER on a backend that computes asynchronously (a GPU),
   * PS_PUSH_MODEL otherwise. */
  PS_PUSH_AUTO = 0,
  /* One push of the whole key space after the backward pass. */
  PS_PUSH_MODEL = 1,
  /* One push per layer (its weight and bias) as soon as its gradient is on
   * the host, last layer first, while the device computes the layers below
   * it. The servers count values per worker per step, so a step is applied
   * once every layer of every worker is in. */
  PS_PUSH_LAYER = 2,
} ps_push_mode_t;

/* How a distributed step gets the next step's weights (MLP and CNN). */
typedef enum {
  /* Each push of step t is a push-pull (ps_client_pushpull): its reply
   * carries the weights of step t + 1, so a step costs one round trip; only
   * the first step pulls. The same weights as PS_PUSH_PULL_SEPARATE. */
  PS_PUSH_PULL_FUSED = 0,
  /* A push of step t, then a pull at clock t + 1 at the next step. */
  PS_PUSH_PULL_SEPARATE = 1,
} ps_push_pull_mode_t;

typedef enum {
  PS_LR_CONSTANT = 0,
  PS_LR_COSINE = 1, /* f(t) = (1 + cos(pi t / T)) / 2, T = epochs x steps */
} ps_lr_schedule_t;

/* What the trainer is doing, for /healthz. */
typedef enum {
  PS_TRAINER_STARTING = 0, /* loading data, joining the cluster */
  PS_TRAINER_TRAINING = 1,
  PS_TRAINER_FINISHED = 2, /* ran to its end (or was stopped) */
  PS_TRAINER_FAILED = 3,
} ps_trainer_phase_t;

/* The trainer's figures for /metrics (worker/metrics.h), written by the
 * trainer's thread as it goes and read by another: single-writer atomics
 * (common/metrics.h), so the training loop takes no lock for them. */
typedef struct {
  _Atomic int phase;              /* ps_trainer_phase_t */
  ps_counter_t steps;             /* steps this worker computed and pushed */
  ps_counter_t samples;           /* examples in those steps */
  ps_counter_t pull_wait_ns;      /* in pulls of the weights before a step */
  ps_counter_t compute_ns;        /* forward, backward, batch gathering */
  ps_counter_t push_wait_ns;      /* in pushes of the gradient until acked */
  ps_counter_t evaluations;       /* test-set evaluations */
  ps_counter_t duplicate_acks;    /* ps_client_duplicate_acks */
  ps_hist_t step_seconds;         /* one step, pull to ack */
  ps_gauge_t step;                /* global steps done */
  ps_gauge_t total_steps;         /* the run's last step */
  ps_gauge_t epoch;               /* whole epochs done */
  ps_gauge_t train_loss;          /* mean batch loss of the current epoch */
  ps_gauge_t test_accuracy;       /* of the last evaluation; NaN: none yet */
  ps_gauge_t test_loss;
  ps_gauge_t samples_per_sec;     /* the job's, over the last progress line */
  ps_gauge_t rank, workers;
} ps_trainer_stats_t;

/* Zeroes st, test figures NaN, the histogram's buckets set. */
void ps_trainer_stats_init(ps_trainer_stats_t *st);

typedef struct {
  int standalone; /* 1: no cluster, apply SGD locally */
  const char
      *data_dir; /* holds {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz */
  int64_t epochs;
  int64_t batch_size; /* per worker */
  double learning_rate;
  double momentum;
  ps_lr_schedule_t lr_schedule;
  int optimizer;                /* PS_OPTIMIZER_* */
  double beta1, beta2, epsilon; /* Adam (epsilon: Adagrad too) */
  double l1, l2, ftrl_beta;     /* FTRL */
  uint64_t warmup_steps;        /* linear warm-up of the schedule */
  int normalize;           /* standardize features with the train set's stats */
  uint64_t seed;           /* weights and data order */
  int threads;             /* BLAS threads */
  const char *device;      /* "auto", "cpu", "cuda", "cuda:N" */
  ps_net_kind_t model;     /* which classifier */
  ps_push_mode_t push;     /* distributed mode */
  ps_push_pull_mode_t push_pull; /* distributed mode */
  uint64_t max_steps;      /* stop after this many global steps; 0: no limit */
  /* Sleep this long in every training step: a straggler, for tests and
   * benchmarks of SSP (0: none). MLP and CNN only. */
  uint32_t step_delay_ms;
  const char *report_path; /* JSON report; NULL: none */
  const char *dump_path;   /* raw float32 LE weights; NULL: none */
  int eval_every_epoch;    /* evaluate after every epoch, not only at the end */
  double progress_s;       /* seconds between progress lines */
  /* Draw a progress line for a person (common/log.h's status line, with
   * PS_LOG_FORMAT_PRETTY) a few times a second instead of logging
   * event=progress lines. */
  int progress_line;
  ps_client_opts_t client; /* distributed mode */
  /* Set to the signal number by a signal handler: the trainer stops after
   * the current step, tells the cluster it leaves (which ends the job) and
   * returns PS_OK with result.stopped set. May be NULL. */
  volatile sig_atomic_t *stop;
  /* Figures for /metrics, updated after every step; NULL: none. */
  ps_trainer_stats_t *stats;
  /* Where they are served ("HOST:PORT"), told to the scheduler for psctl
   * top; NULL: nowhere. */
  const char *metrics_address;
  /* The run's figures as CSV (worker/metrics_csv.h); NULL: none. */
  const char *metrics_csv_path;
  /* model PS_NET_CTR (worker/trainer_ctr.h): Criteo text files (plain or
   * gzip; NULL: data_dir/train.txt[.gz], data_dir/test.txt[.gz]), the
   * embedding dim, the hidden layers ("256,128"), the id space of hashed
   * categorical ids (0: 64-bit), and the factor on sparse rows' gradients
   * (their learning rate relative to the dense weights'). */
  const char *ctr_train;
  const char *ctr_test;
  uint32_t ctr_embed_dim;
  const char *ctr_hidden;
  uint64_t ctr_id_space;
  double ctr_sparse_scale;
  /* 1: a sparse row's gradient is the mean over its occurrences in the
   * batch, not its share of the batch mean (worker/trainer_ctr.c). */
  int ctr_sparse_norm;
  /* 1: the embeddings' pairwise dot products go into the MLP too. */
  int ctr_dot;
  const char *ctr_cross; /* "1x2,3x4": crossed fields, NULL for none */
  /* The sparse tables' own optimizer, applied by the servers:
   * PS_OPTIMIZER_SGD (the model's, default), _ADAGRAD or _FTRL, with
   * ctr_sparse_lr (FTRL: alpha; beta 1, --l1 and --l2). */
  int ctr_sparse_optimizer;
  double ctr_sparse_lr;
  /* Codecs (issue #15) declared for every dense tensor: PS_CODEC_* of
   * pushes and of pulls (none, fp16, int8; -1: fp16 for fp16 pushes, int8
   * for int8 and topk, else none), and the top-k fraction for
   * PS_CODEC_TOPK pushes. tensor_codecs ("fc1.weight=int8,fc2.bias=none",
   * NULL for none) gives some tensors another push codec. All 0: raw
   * float32. mlp and cnn only. */
  int push_codec;
  int pull_codec;
  double topk_fraction;
  const char *tensor_codecs;
} ps_trainer_opts_t;

/* What a run measured; filled by ps_trainer_run. The test metrics are those
 * of the last evaluation (rank 0 only: other ranks leave them negative). */
typedef struct {
  double test_accuracy;
  double test_loss;
  double test_auc;        /* model ctr only; else negative */
  double train_loss;      /* mean batch loss of the last (partial) epoch */
  double samples_per_sec; /* all workers' samples over training time */
  double wall_seconds;    /* the training loop, evaluations included */
  uint64_t steps;         /* global steps done */
  uint64_t steps_per_epoch;
  int64_t epochs; /* whole epochs done */
  uint32_t workers;
  uint32_t rank;
  int stopped; /* 1 if the stop flag or a cluster shutdown ended it */
  /* Issue #16: 1 if the worker left the job at its leave step (psctl
   * remove-worker): steps is that step; no final evaluation. */
  int left;
} ps_trainer_result_t;

/* Fills o with the defaults (the values ps-worker documents). */
void ps_trainer_opts_init(ps_trainer_opts_t *o);

/* Loads the data, builds the backend and the model, and in distributed mode
 * connects to the cluster (which may wait for the other workers). Returns
 * NULL with *err (PS_ERR_CONFIG for a bad option, PS_ERR_UNSUPPORTED for a
 * GPU asked for that cannot be used, another code otherwise) and errmsg
 * filled. Caller owns the result. */
ps_trainer_t *ps_trainer_new(const ps_trainer_opts_t *o, int *err, char *errmsg,
                             size_t errlen);

/* Trains to the end (epochs, max_steps, the stop flag, or a cluster
 * shutdown), evaluates, writes the report and the dump, and tells the
 * cluster this worker is done. A run cut short by the stop flag or by the
 * cluster's shutdown skips the final evaluation, report and dump, and
 * returns PS_OK with result.stopped set. Returns an error with the message
 * in ps_trainer_errmsg when a step, the evaluation or a write fails; then
 * the worker leaves the cluster, which ends the job. */
int ps_trainer_run(ps_trainer_t *t);

const ps_trainer_result_t *ps_trainer_result(const ps_trainer_t *t);
const char *ps_trainer_errmsg(const ps_trainer_t *t);

/* Sends Done if connected, frees everything, sets *t_p to NULL. */
void ps_trainer_destroy(ps_trainer_t **t_p);

/* Ends a worker's membership: Leave with the reason when the run failed
 * (rc) or a signal (sig) stopped it, which tells the scheduler to end the
 * job rather than let the others wait; Done when it finished. A failed
 * Done of a finished run is logged. */
void ps_trainer_goodbye(ps_client_t *c, int rc, int stopped, int sig,
                        const char *errmsg);

/* The schedule's factor on the learning rate at global step step of a run
 * of total_steps steps (epochs x steps per epoch). */
float ps_trainer_lr_factor(ps_lr_schedule_t schedule, uint64_t step,
                           uint64_t total_steps);

/* The permutation of [0, n) for (seed, epoch): a Fisher-Yates shuffle driven
 * by a ps_mix64 counter generator. Exposed for tests. */
void ps_trainer_permutation(uint32_t *perm, uint32_t n, uint64_t seed,
                            uint64_t epoch);

#endif
