/* ps-worker: trains a Fashion-MNIST classifier (MLP or CNN, on the CPU or a
 * GPU) or a CTR model (worker/trainer_ctr.h), alone (--standalone) or as one
 * worker of a parameter-server cluster. Parses options, builds the trainer,
 * runs it. Exit status: 0 done, 1 failed, 2 bad usage or configuration. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/config.h"
#include "common/err.h"
#include "common/exporter.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "worker/client/client_defaults.h"
#include "worker/metrics.h"
#include "worker/trainer.h"

static volatile sig_atomic_t stop_requested;

/* The first signal asks the trainer to stop after its step; the alarm makes
 * sure the process is gone within seconds even if a call to the cluster is
 * stuck waiting on peers that died; a second signal ends it at once. */
#define STOP_GRACE_S 5

static void on_signal(int sig) {
  if (stop_requested || sig == SIGALRM) {
    static const char msg[] = "ps-worker: did not stop in time, exiting\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    _exit(PS_EXIT_FAILURE);
  }
  stop_requested = sig;
  alarm(STOP_GRACE_S);
}

static void install_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
}

int main(int argc, char **argv) {
  char *scheduler = NULL, *data_dir = NULL, *report = NULL, *dump = NULL;
  char *device = NULL, *metrics_bind = NULL, *metrics_csv = NULL;
  char *keys_dir = NULL, *key_file = NULL;
  char *ctr_train = NULL, *ctr_test = NULL, *ctr_hidden = NULL;
  char *ctr_cross = NULL;
  int64_t ctr_embed_dim, ctr_id_space;
  double ctr_sparse_scale, ctr_sparse_lr = 0;
  int ctr_sparse_opt = 0;
  int ctr_sparse_norm = 1, ctr_dot = 0;
  int insecure = 0;
  int standalone = 0, eval_every_epoch = 1, log_level = PS_LOG_INFO;
  int join_new_rank = 0;
  int lr_schedule = PS_LR_COSINE, normalize = 1, model = PS_NET_MLP;
  int optimizer = PS_OPTIMIZER_SGD;
  int push = PS_PUSH_AUTO;
  int push_pull = PS_PUSH_PULL_FUSED;
  int codec = 0, pull_codec = 0; /* indices into the lists of --codec */
  double topk_fraction;
  char *tensor_codecs = NULL;
  /* --log-format: the index in "auto|logfmt|pretty". */
  enum { LOG_FORMAT_AUTO, LOG_FORMAT_LOGFMT, LOG_FORMAT_PRETTY };
  int log_format = LOG_FORMAT_AUTO;
  int64_t epochs, batch_size, seed, threads, max_steps, rank, timeout_ms,
      connect_timeout_ms, heartbeat_ms, progress_ms, resend_ms;
  double lr, momentum, beta1, beta2, epsilon, l1, l2, ftrl_beta;
  int64_t warmup_steps, step_delay_ms;

  const ps_opt_t opts[] = {
      {"scheduler", PS_OPT_STRING, &scheduler, PS_DEFAULT_SCHEDULER, 0, 0, NULL,
       "scheduler endpoint to register with (distributed mode)"},
      {"standalone", PS_OPT_BOOL, &standalone, "false", 0, 0, NULL,
       "train alone, no cluster: SGD applied locally"},
      {"data-dir", PS_OPT_STRING, &data_dir, PS_TRAINER_DEFAULT_DATA_DIR, 0, 0,
       NULL, "folder of {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"},
      {"epochs", PS_OPT_INT, &epochs, PS_OPT_DEF(PS_TRAINER_DEFAULT_EPOCHS), 1,
       1000000, NULL, "passes over the training set"},
      {"batch-size", PS_OPT_INT, &batch_size,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_BATCH_SIZE), 1, 65536, NULL,
       "examples per step per worker (global batch = workers x this)"},
      {"optimizer", PS_OPT_ENUM, &optimizer, "sgd", 0, 0,
       "sgd|add|adagrad|adam|ftrl",
       "the servers' optimizer (declared to the cluster; add is for "
       "counters)"},
      {"lr", PS_OPT_DOUBLE, &lr, PS_OPT_DEF(PS_TRAINER_DEFAULT_LR), 0, 10, NULL,
       "learning rate (FTRL: alpha), declared to the cluster"},
      {"lr-schedule", PS_OPT_ENUM, &lr_schedule, "cosine", 0, 0,
       "constant|cosine",
       "learning-rate schedule over epochs x steps, applied by the servers "
       "(every worker the same)"},
      {"warmup-steps", PS_OPT_INT, &warmup_steps, "0", 0, 9007199254740991.0,
       NULL, "linear learning-rate warm-up over the first steps"},
      {"momentum", PS_OPT_DOUBLE, &momentum,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_MOMENTUM), 0, 0.999, NULL,
       "SGD momentum (--optimizer sgd only)"},
      {"beta1", PS_OPT_DOUBLE, &beta1, PS_OPT_DEF(PS_TRAINER_DEFAULT_BETA1), 0,
       0.999999, NULL, "Adam's first-moment decay (--optimizer adam only)"},
      {"beta2", PS_OPT_DOUBLE, &beta2, PS_OPT_DEF(PS_TRAINER_DEFAULT_BETA2),
       1e-9, 0.999999999, NULL,
       "Adam's second-moment decay (--optimizer adam only)"},
      {"epsilon", PS_OPT_DOUBLE, &epsilon,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_EPSILON), 1e-30, 1, NULL,
       "Adam's and Adagrad's denominator term"},
      {"l1", PS_OPT_DOUBLE, &l1, "0", 0, 1e9, NULL,
       "FTRL's L1 strength (weights exactly 0 while |z| <= l1)"},
      {"l2", PS_OPT_DOUBLE, &l2, "0", 0, 1e9, NULL, "FTRL's L2 strength"},
      {"ftrl-beta", PS_OPT_DOUBLE, &ftrl_beta,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_FTRL_BETA), 0, 1e9, NULL,
       "FTRL's beta (the per-coordinate rate's smoothing)"},
      {"seed", PS_OPT_INT, &seed, PS_OPT_DEF(PS_TRAINER_DEFAULT_SEED), 0,
       9007199254740991.0, NULL,
       "seed of the initial weights and of the data order"},
      {"threads", PS_OPT_INT, &threads, PS_OPT_DEF(PS_TRAINER_DEFAULT_THREADS),
       1, 256, NULL, "BLAS threads"},
      {"device", PS_OPT_STRING, &device, PS_TRAINER_DEFAULT_DEVICE, 0, 0, NULL,
       "auto|cpu|cuda|cuda:N: where to compute; auto takes GPU 0 when one "
       "is usable, else the CPU"},
      {"model", PS_OPT_ENUM, &model, "mlp", 0, 0, "mlp|cnn|ctr",
       "mlp: 784-256-128-10; cnn: 2 x (conv 3x3 pad 1, ReLU, max pool 2), "
       "3136-128-10; ctr: click-through rate on Criteo-format files "
       "(per-field embeddings and wide weights in sparse tables, an MLP over "
       "them and the 13 integer features; CPU; every worker the same)"},
      {"ctr-train", PS_OPT_STRING, &ctr_train, NULL, 0, 0, NULL,
       "ctr: training file, Criteo text, plain or gzip (default: "
       "DATA_DIR/train.txt.gz or DATA_DIR/train.txt)"},
      {"ctr-test", PS_OPT_STRING, &ctr_test, NULL, 0, 0, NULL,
       "ctr: test file (default: DATA_DIR/test.txt.gz or DATA_DIR/test.txt)"},
      {"embed-dim", PS_OPT_INT, &ctr_embed_dim,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_CTR_EMBED_DIM), 1, 64, NULL,
       "ctr: floats per categorical id's embedding"},
      {"ctr-hidden", PS_OPT_STRING, &ctr_hidden, PS_TRAINER_DEFAULT_CTR_HIDDEN,
       0, 0, NULL, "ctr: widths of the MLP's hidden layers, comma separated"},
      {"ctr-id-space", PS_OPT_INT, &ctr_id_space, "0", 0, 9007199254740991.0,
       NULL,
       "ctr: hash categorical ids into [0, this) per field (0: 64-bit "
       "ids, no collisions to speak of)"},
      {"ctr-sparse-scale", PS_OPT_DOUBLE, &ctr_sparse_scale,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_CTR_SPARSE_SCALE), 0.001, 100000, NULL,
       "ctr: factor on the embedding and wide rows' gradients: their "
       "learning rate is lr x this"},
      {"ctr-cross", PS_OPT_STRING, &ctr_cross, "", 0, 0, NULL,
       "ctr: crossed fields, e.g. 1x2,3x4 (C1 with C2, C3 with C4): each "
       "row's pair of ids is one more wide weight, learnt per pair seen "
       "(wide&deep's cross-product features); empty: none"},
      {"ctr-dot", PS_OPT_BOOL, &ctr_dot, "false", 0, 0, NULL,
       "ctr: feed the embeddings' 325 pairwise dot products to the MLP too "
       "(DLRM's interaction layer)"},
      {"ctr-sparse-optimizer", PS_OPT_ENUM, &ctr_sparse_opt, "sgd", 0, 0,
       "sgd|adagrad|ftrl",
       "ctr: the sparse tables' optimizer, applied by the servers (sgd: the "
       "model's --optimizer; adagrad and ftrl: a rate per row, with "
       "--ctr-sparse-lr; ftrl also --l1 and --l2). Distributed only."},
      {"ctr-sparse-lr", PS_OPT_DOUBLE, &ctr_sparse_lr, "0.05", 1e-9, 1000, NULL,
       "ctr: the sparse tables' learning rate (FTRL's alpha) under "
       "--ctr-sparse-optimizer adagrad|ftrl"},
      {"ctr-sparse-norm", PS_OPT_ENUM, &ctr_sparse_norm, "count", 0, 0,
       "batch|count",
       "ctr: a sparse row's gradient is its share of the batch mean "
       "(batch: the true gradient) or the mean over the row's own "
       "occurrences in the batch (count: frequent and rare ids move alike)"},
      {"push", PS_OPT_ENUM, &push, "auto", 0, 0, "auto|model|layer",
       "gradient pushes: the whole model after backward, or each layer as "
       "soon as it is computed (auto: per layer on a GPU)"},
      {"push-pull", PS_OPT_ENUM, &push_pull, "fused", 0, 0, "fused|separate",
       "mlp, cnn: fused: each push of a step brings back the next step's "
       "weights in its reply (one round trip per step); separate: a push, "
       "then a pull at the next step (the same weights; 4 messages per "
       "piece and step instead of 2, or 3 for one that waits for the step; "
       "with --codec both ways in the tensors' codecs)"},
      {"codec", PS_OPT_ENUM, &codec, "none", 0, 0, "none|fp16|int8|topk",
       "how gradient pushes of every dense tensor travel: float32, IEEE "
       "half, int8 with a scale per 256 keys, or the largest "
       "--topk-fraction of each request with error feedback (declared to "
       "the cluster; mlp and cnn)"},
      {"pull-codec", PS_OPT_ENUM, &pull_codec, "auto", 0, 0,
       "auto|none|fp16|int8",
       "how weight pulls travel (auto: fp16 with --codec fp16, int8 with "
       "int8 and topk, else none)"},
      {"tensor-codecs", PS_OPT_STRING, &tensor_codecs, NULL, 0, 0, NULL,
       "NAME=CODEC,...: these tensors' pushes in another codec than "
       "--codec's, e.g. fc1.weight=topk,fc3.bias=none (pulls as "
       "--pull-codec says, auto by each tensor's codec)"},
      {"topk-fraction", PS_OPT_DOUBLE, &topk_fraction, "0.01", 1e-6, 1, NULL,
       "--codec topk: the fraction of each request's values sent"},
      {"max-steps", PS_OPT_INT, &max_steps, "0", 0, 9007199254740991.0, NULL,
       "stop after this many global steps (0: no limit)"},
      {"step-delay-ms", PS_OPT_INT, &step_delay_ms, "0", 0, 60000, NULL,
       "sleep this long in every training step: a straggler, for tests and "
       "benchmarks of --mode ssp (0: none; not with --model ctr)"},
      {"report", PS_OPT_STRING, &report, NULL, 0, 0, NULL,
       "write a JSON report of the run here (this worker evaluates)"},
      {"dump-weights", PS_OPT_STRING, &dump, NULL, 0, 0, NULL,
       "write the final weights here as raw float32 little-endian (--model "
       "ctr: the dense weights, then the click probability of every test "
       "row)"},
      {"metrics-csv", PS_OPT_STRING, &metrics_csv, NULL, 0, 0, NULL,
       "write the run's figures here as CSV, one row per progress interval, "
       "per epoch and at the end: time_s, kind, epoch, step, steps, loss, "
       "lr, samples_per_sec, test_loss, test_accuracy (deploy/plot.sh draws "
       "them)"},
      {"rank", PS_OPT_INT, &rank, "-1", -1, 1000000, NULL,
       "requested worker rank (-1: any)"},
      {"join", PS_OPT_BOOL, &join_new_rank, "false", 0, 0, NULL,
       "grow a running job by one worker: take a new rank (up to "
       "the scheduler's --max-workers) when every rank below its --workers "
       "is held, and start at the step the scheduler announces; the global "
       "batch grows by --batch-size from that step (README \"Workers join "
       "and leave\")"},
      {"timeout-ms", PS_OPT_INT, &timeout_ms,
       PS_OPT_DEF(PS_CLIENT_DEFAULT_TIMEOUT_MS), 1, 86400000, NULL,
       "deadline of one push or pull"},
      {"connect-timeout-ms", PS_OPT_INT, &connect_timeout_ms,
       PS_OPT_DEF(PS_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS), 1, 86400000, NULL,
       "deadline to register and get the cluster view"},
      {"heartbeat-ms", PS_OPT_INT, &heartbeat_ms,
       PS_OPT_DEF(PS_CLIENT_DEFAULT_HEARTBEAT_MS), 10, 3600000, NULL,
       "interval of heartbeats to the scheduler"},
      {"resend-ms", PS_OPT_INT, &resend_ms,
       PS_OPT_DEF(PS_CLIENT_DEFAULT_RESEND_MS), 0, 86400000, NULL,
       "resend a request unanswered this long on a fresh connection "
       "(0: never)"},
      {"progress-ms", PS_OPT_INT, &progress_ms,
       PS_OPT_DEF(PS_TRAINER_DEFAULT_PROGRESS_MS), 1, 86400000, NULL,
       "interval of progress lines"},
      {"normalize", PS_OPT_BOOL, &normalize, "true", 0, 0, NULL,
       "standardize pixels with the training set's mean and deviation"},
      {"keys-dir", PS_OPT_STRING, &keys_dir, NULL, 0, 0, NULL,
       PS_KEYS_DIR_HELP},
      {"key", PS_OPT_STRING, &key_file, NULL, 0, 0, NULL, PS_KEY_FILE_HELP},
      {"insecure", PS_OPT_BOOL, &insecure, "false", 0, 0, NULL,
       PS_INSECURE_HELP " Not needed with --standalone."},
      {"log-level", PS_OPT_ENUM, &log_level, "info", 0, 0,
       "debug|info|warn|error", "lowest level logged"},
      {"log-format", PS_OPT_ENUM, &log_format, "auto", 0, 0,
       "auto|logfmt|pretty",
       "logfmt: key=value lines on stderr, one per event; pretty: the same "
       "lines, but progress as one line redrawn in place below them (epoch, "
       "step, a bar, loss, test accuracy, samples/s, ETA) instead of "
       "event=progress lines; auto: pretty when stderr is a terminal (and "
       "TERM is not dumb), else logfmt"},
      {"metrics-bind", PS_OPT_STRING, &metrics_bind, "", 0, 0, NULL,
       PS_METRICS_BIND_HELP},
      {"eval-every-epoch", PS_OPT_BOOL, &eval_every_epoch, "true", 0, 0, NULL,
       "evaluate on the test set after every epoch, not only at the end"},
  };
  const ps_config_t cfg = {
      .program = "ps-worker",
      .summary =
          "Train a Fashion-MNIST classifier (MLP or CNN, CPU or GPU), or a "
          "click-through-rate model on Criteo-format data (ctr), alone or "
          "as a worker of a parameter-server cluster.",
      .usage = "[options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };

  char err[512];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc == PS_OK && !standalone)
    rc = ps_config_check_endpoint("scheduler", scheduler, 0, err, sizeof(err));
  if (rc == PS_OK && metrics_bind && metrics_bind[0])
    rc = ps_exporter_check_bind("metrics-bind", metrics_bind, err,
                                sizeof(err));
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  if (join_new_rank && (standalone || model == PS_NET_CTR))
    return ps_config_refuse(
        &cfg,
        "option --join: only a distributed mlp or cnn "
        "worker joins a running job with a new rank%s",
        standalone ? " (not --standalone)" : " (not --model ctr)");
  /* Found out only after the whole run, a bad path would lose its result. */
  const char *outputs[][2] = {{"report", report},
                              {"dump-weights", dump},
                              {"metrics-csv", metrics_csv}};
  for (size_t i = 0; i < sizeof(outputs) / sizeof(outputs[0]); i++) {
    if (outputs[i][1] == NULL || outputs[i][1][0] == '\0') continue;
    if (ps_checkpoint_check_output(outputs[i][1], err, sizeof(err)) != PS_OK)
      return ps_config_refuse(&cfg, "option --%s: %s", outputs[i][0], err);
  }
  ps_log_init("worker", (ps_log_level_t)log_level);
  ps_transport_tune_malloc();
  ps_log_set_format(log_format == LOG_FORMAT_PRETTY   ? PS_LOG_FORMAT_PRETTY
                    : log_format == LOG_FORMAT_LOGFMT ? PS_LOG_FORMAT_LOGFMT
                                                      : ps_log_format_auto());
  if (!standalone) {
    /* Checked and announced here; libps-client loads them again. */
    ps_keys_t *keys = NULL;
    if (ps_keys_for_program(keys_dir, key_file, insecure, PS_KEY_ROLE_WORKER,
                            NULL, &keys, err, sizeof(err)) != PS_OK)
      return ps_config_refuse(&cfg, "%s", err);
    ps_keys_destroy(&keys);
  }
  ps_raise_nofile_limit();
  install_signals();

  ps_trainer_opts_t to;
  ps_trainer_opts_init(&to);
  to.standalone = standalone;
  to.data_dir = data_dir;
  to.epochs = epochs;
  to.batch_size = batch_size;
  to.learning_rate = lr;
  to.momentum = momentum;
  to.lr_schedule = (ps_lr_schedule_t)lr_schedule;
  to.optimizer = optimizer;
  to.beta1 = beta1;
  to.beta2 = beta2;
  to.epsilon = epsilon;
  to.l1 = l1;
  to.l2 = l2;
  to.ftrl_beta = ftrl_beta;
  to.warmup_steps = (uint64_t)warmup_steps;
  to.normalize = normalize;
  to.seed = (uint64_t)seed;
  to.threads = (int)threads;
  to.device = device;
  to.model = (ps_net_kind_t)model;
  to.push = (ps_push_mode_t)push;
  to.push_pull = (ps_push_pull_mode_t)push_pull;
  to.max_steps = (uint64_t)max_steps;
  to.step_delay_ms = (uint32_t)step_delay_ms;
  to.report_path = report;
  to.dump_path = dump;
  to.metrics_csv_path = metrics_csv;
  to.eval_every_epoch = eval_every_epoch;
  to.progress_s = (double)progress_ms / 1000.0;
  to.progress_line = ps_log_format() == PS_LOG_FORMAT_PRETTY;
  to.client.scheduler = scheduler;
  to.client.rank = rank;
  to.client.join_new_rank = join_new_rank;
  to.client.timeout_ms = (int)timeout_ms;
  to.client.connect_timeout_ms = (int)connect_timeout_ms;
  to.client.heartbeat_ms = (int)heartbeat_ms;
  to.client.resend_ms = (int)resend_ms;
  to.client.keys_dir = keys_dir;
  to.client.key_file = key_file;
  to.stop = &stop_requested;
  to.ctr_train = ctr_train;
  to.ctr_test = ctr_test;
  to.ctr_embed_dim = (uint32_t)ctr_embed_dim;
  to.ctr_hidden = ctr_hidden;
  to.ctr_id_space = (uint64_t)ctr_id_space;
  to.ctr_sparse_scale = ctr_sparse_scale;
  to.ctr_sparse_norm = ctr_sparse_norm;
  to.ctr_dot = ctr_dot;
  to.ctr_cross = ctr_cross;
  static const int sparse_kinds[] = {PS_OPTIMIZER_SGD, PS_OPTIMIZER_ADAGRAD,
                                     PS_OPTIMIZER_FTRL};
  to.ctr_sparse_optimizer = sparse_kinds[ctr_sparse_opt];
  to.ctr_sparse_lr = ctr_sparse_lr;
  /* --codec's list is PS_CODEC_* in order; --pull-codec's after "auto". */
  to.push_codec = codec;
  to.pull_codec = pull_codec - 1; /* -1: auto */
  to.topk_fraction = topk_fraction;
  to.tensor_codecs = tensor_codecs && tensor_codecs[0] ? tensor_codecs : NULL;

  /* Served from the start, so /healthz says "starting" while the worker
   * loads its data and waits for the others. */
  static ps_trainer_stats_t stats;
  ps_trainer_stats_init(&stats);
  ps_worker_metrics_t *metrics = NULL;
  if (metrics_bind && metrics_bind[0]) {
    metrics = ps_worker_metrics_start(metrics_bind, &stats, err, sizeof(err));
    if (metrics == NULL) {
      PS_ERROR("start_failed", "error=%s msg=\"%s\"",
               ps_err_name(PS_ERR_CONFIG), err);
      fprintf(stderr, "ps-worker: %s\n", err);
      ps_config_free(&cfg);
      return PS_EXIT_FAILURE;
    }
    to.stats = &stats;
    to.metrics_address = ps_worker_metrics_address(metrics);
  }

  int exit_code = PS_EXIT_OK;
  int terr = PS_OK;
  ps_trainer_t *t = ps_trainer_new(&to, &terr, err, sizeof(err));
  if (t == NULL) {
    PS_ERROR("start_failed", "error=%s msg=\"%s\"", ps_err_name(terr), err);
    fprintf(stderr, "ps-worker: %s\n", err);
    exit_code = ps_config_exit_status(terr);
  } else {
    rc = ps_trainer_run(t);
    if (rc != PS_OK) {
      PS_ERROR("train_failed", "error=%s msg=\"%s\"", ps_err_name(rc),
               ps_trainer_errmsg(t));
      fprintf(stderr, "ps-worker: %s\n", ps_trainer_errmsg(t));
      exit_code = ps_config_exit_status(rc);
    }
    ps_trainer_destroy(&t);
  }
  atomic_store(&stats.phase,
               exit_code == 0 ? PS_TRAINER_FINISHED : PS_TRAINER_FAILED);
  ps_worker_metrics_stop(&metrics);
  ps_config_free(&cfg);
  return exit_code;
}
