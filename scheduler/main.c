/* ps-scheduler: parses the options, builds the scheduler, runs its loop.
 * Exit status: PS_EXIT_* (common/config.h). */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>
#include <zmq.h>

#include "common/checkpoint.h"
#include "common/config.h"
#include "common/err.h"
#include "common/exporter.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/notify.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "common/view.h"
#include "proto/ps.pb-c.h"
#include "scheduler/scheduler.h"

static void describe_cb(void *arg, char *buf, size_t len) {
  ps_sched_describe(arg, buf, len);
}

static void stopping_cb(uv_signal_t *h, int signum) {
  ps_notify_stopping("stopping on %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
}

int main(int argc, char **argv) {
  char *bind = NULL, *checkpoint_dir = NULL, *restore = NULL,
       *state_file = NULL, *metrics_bind = NULL, *keys_dir = NULL,
       *key_file = NULL;
  int64_t servers = 1, workers = 1, heartbeat_timeout_ms = 400, ranges = 0;
  int64_t replication = 2, max_connections = 0;
  int64_t checkpoint_every_steps = 0, checkpoint_timeout_ms = 120000;
  int64_t staleness = -1; /* -1: not given */
  int64_t max_workers = 0, read_batch_ms = 2;
  double checkpoint_every_s = 0;
  int mode = 0, log_level = PS_LOG_INFO, rebalance = 1, insecure = 0;
  int view_deltas = 1, heartbeat_udp = 1;
  const ps_opt_t opts[] = {
      {"bind", PS_OPT_STRING, &bind, PS_DEFAULT_SCHEDULER, 0, 0, NULL,
       "ZeroMQ endpoint the scheduler listens on; servers, workers and psctl "
       "connect to it."},
      {"servers", PS_OPT_INT, &servers, "1", 1, 4096, NULL,
       "Number of servers the job expects; the first view is published once "
       "all have registered. While the job runs, a server may register in "
       "place of a dead one: it becomes a spare that takes missing "
       "backups; one started with --join is one server more and takes its "
       "share of the ranges."},
      {"ranges", PS_OPT_INT, &ranges, "0", 0, 65536, NULL,
       "Ranges the key space is cut into, at least one per server; 0: one "
       "per server. Whole ranges move when servers join or leave (ps-server "
       "--join, psctl add-server, remove-server), so a job that may run on "
       "2 to 4 servers wants a multiple of 2, 3 and 4, such as 12."},
      {"workers", PS_OPT_INT, &workers, "1", 1, 65535, NULL,
       "Number of workers the job expects; they get ranks 0 to workers-1. "
       "While the job runs, a worker may register in place of a dead one "
       "and takes its rank."},
      {"max-workers", PS_OPT_INT, &max_workers, "0", 0, 65535, NULL,
       "The most workers the job may grow to while it runs: a "
       "worker started with ps-worker --join takes a new rank (up to "
       "max-workers-1) once ranks 0 to workers-1 are held, and joins at a "
       "step the scheduler announces; psctl remove-worker takes one out at "
       "an announced step. 0: --workers (the job cannot grow)."},
      {"mode", PS_OPT_ENUM, &mode, "bsp", 0, 0, "bsp|asp|ssp",
       "Consistency mode: bsp applies step t once every live worker's "
       "gradient is in, asp applies each push on arrival, ssp (stale "
       "synchronous parallel) applies steps as bsp does but lets a worker "
       "run up to --staleness steps ahead of the slowest."},
      {"staleness", PS_OPT_INT, &staleness, "-1", -1, PS_SSP_STALENESS_MAX,
       NULL,
       "With --mode ssp (and only with it): the bound S on how many steps a "
       "worker may run ahead of the slowest; a worker at step c pulls "
       "weights of clock >= c - S. 0 gives bsp's weights bit for bit. Each "
       "server keeps S + 1 gradient sums of its ranges. -1: 3 with ssp."},
      {"replication", PS_OPT_INT, &replication, "2", 1, PS_MAX_REPLICAS, NULL,
       "Copies of each key range, the primary included: a push is acked "
       "once every copy holds it, and a dead primary's range fails over to "
       "a backup. 1: no replication. More than --servers is capped."},
      {"rebalance", PS_OPT_BOOL, &rebalance, "true", 0, 0, NULL,
       "After a failover, a server that registers in a dead one's place "
       "takes its share of the copies back, one copy at a time, and once its "
       "backups are in step it is handed primaries (a planned move, no "
       "failover timeout) until no live server leads two ranges more than "
       "another. false: it stays a spare until psctl add-server."},
      {"heartbeat-timeout-ms", PS_OPT_INT, &heartbeat_timeout_ms, "400", 10,
       3600000, NULL,
       "A node silent for this long is declared dead and a new view is "
       "published without it (a dead server's ranges fail over at once). "
       "Keep it several times the nodes' --heartbeat-ms."},
      {"read-batch-ms", PS_OPT_INT, &read_batch_ms, "2", 0, 100, NULL,
       "Read the socket at most once every this many ms, taking all that "
       "came meanwhile: each wakeup costs more than a heartbeat, and a "
       "thousand nodes send ten thousand a second. A message waits at most "
       "this much longer. 0: read each as soon as it arrives."},
      {"view-deltas", PS_OPT_BOOL, &view_deltas, "true", 0, 0, NULL,
       "Send a member that was sent the previous view only the nodes that "
       "changed since (a whole view at 1,000 nodes is 22 MB to send to "
       "all); false: every view whole."},
      {"heartbeat-udp", PS_OPT_BOOL, &heartbeat_udp, "true", 0, 0, NULL,
       "Take the nodes' heartbeats as signed UDP datagrams on the port of "
       "--bind (the same number, UDP) instead of on their ZeroMQ links: at "
       "1,000 nodes that costs the scheduler a fraction of the CPU. Each "
       "node learns the port and its key when it registers; one whose "
       "datagrams go unanswered heartbeats on its link again. false: "
       "heartbeats on the links only, and no UDP port."},
      {"checkpoint-dir", PS_OPT_STRING, &checkpoint_dir, NULL, 0, 0, NULL,
       "Base directory of checkpoints (each goes into ckpt-<step>/, LATEST "
       "names the newest); servers must see the same path. Needed for "
       "periodic checkpoints; psctl checkpoint --dir may name another."},
      {"checkpoint-every-steps", PS_OPT_INT, &checkpoint_every_steps, "0", 0,
       9007199254740991.0, NULL,
       "Write a checkpoint at every multiple of this step (BSP: exactly at "
       "that step boundary); 0: off."},
      {"checkpoint-every-s", PS_OPT_DOUBLE, &checkpoint_every_s, "0", 0,
       31536000, NULL,
       "Write a checkpoint at the next step boundary once this many seconds "
       "passed since the last one; 0: off."},
      {"checkpoint-timeout-ms", PS_OPT_INT, &checkpoint_timeout_ms, "120000",
       100, 86400000, NULL,
       "Give a checkpoint up (no MANIFEST is written) if the servers have "
       "not written it within this time."},
      {"restore", PS_OPT_STRING, &restore, NULL, 0, 0, NULL,
       "Start the job from this checkpoint: a ckpt-<step> directory, or a "
       "checkpoint base directory (its LATEST). Verified in full at start; "
       "any number of servers may load it. Workers resume at its step."},
      {"state-file", PS_OPT_STRING, &state_file, NULL, 0, 0, NULL,
       "Persist the scheduler's state (view, epoch, nodes, latest "
       "checkpoint) here on every change; a scheduler restarted with it "
       "takes over the running job, whose nodes keep their roles and "
       "ranges."},
      {"metrics-bind", PS_OPT_STRING, &metrics_bind, "", 0, 0, NULL,
       PS_METRICS_BIND_HELP},
      {"keys-dir", PS_OPT_STRING, &keys_dir, NULL, 0, 0, NULL,
       PS_KEYS_DIR_HELP},
      {"key", PS_OPT_STRING, &key_file, NULL, 0, 0, NULL, PS_KEY_FILE_HELP},
      {"max-connections", PS_OPT_INT, &max_connections, "4096", 0, 4294967295.0,
       NULL, PS_MAX_CONNECTIONS_HELP},
      {"insecure", PS_OPT_BOOL, &insecure, "false", 0, 0, NULL,
       PS_INSECURE_HELP},
      {"log-level", PS_OPT_ENUM, &log_level, "info", 0, 0,
       "debug|info|warn|error", "Lowest level of log lines written."},
  };
  const ps_config_t cfg = {
      .program = "ps-scheduler",
      .summary =
          "Membership, cluster view, barriers and checkpoints of a "
          "parameter-server job.",
      .usage = "[options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  char err[512];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc == PS_OK)
    rc = ps_config_check_endpoint("bind", bind, 1, err, sizeof(err));
  if (rc == PS_OK && metrics_bind && metrics_bind[0])
    rc = ps_exporter_check_bind("metrics-bind", metrics_bind, err, sizeof(err));
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  /* A state file that cannot be written would only show up as
   * state_save_failed later, with the job running unprotected. */
  if (state_file && state_file[0] &&
      ps_checkpoint_check_output(state_file, err, sizeof(err)) != PS_OK)
    return ps_config_refuse(&cfg, "option --state-file: %s", err);
  /* The table's mode choices are in the enum's order. */
  const int modes[] = {PS__CONSISTENCY_MODE__MODE_BSP,
                       PS__CONSISTENCY_MODE__MODE_ASP,
                       PS__CONSISTENCY_MODE__MODE_SSP};
  if (staleness >= 0 && modes[mode] != PS__CONSISTENCY_MODE__MODE_SSP)
    return ps_config_refuse(&cfg,
                            "option --staleness: only --mode ssp has a "
                            "staleness bound (--mode is %s)",
                            mode == 0 ? "bsp" : "asp");
  if (ranges != 0 && ranges < servers)
    return ps_config_refuse(&cfg,
                            "option --ranges: %lld is fewer than --servers "
                            "%lld (at least one range per server; 0 means one "
                            "each)",
                            (long long)ranges, (long long)servers);
  if (max_workers != 0 && max_workers < workers)
    return ps_config_refuse(&cfg,
                            "option --max-workers: %lld is below --workers "
                            "%lld (0 means --workers)",
                            (long long)max_workers, (long long)workers);
  if (staleness < 0)
    staleness = modes[mode] == PS__CONSISTENCY_MODE__MODE_SSP ? 3 : 0;
  ps_log_init("scheduler", (ps_log_level_t)log_level);
  ps_transport_tune_malloc();
  ps_keys_t *keys = NULL;
  if (ps_keys_for_program(keys_dir, key_file, insecure, PS_KEY_ROLE_SCHEDULER,
                          bind, &keys, err, sizeof(err)) != PS_OK)
    return ps_config_refuse(&cfg, "%s", err);
  ps_raise_nofile_limit();

  uv_loop_t loop;
  uv_loop_init(&loop);
  void *ctx = zmq_ctx_new();
  ps_sched_opts_t so = {
      .bind = bind,
      .servers = (uint32_t)servers,
      .workers = (uint32_t)workers,
      .ranges = (uint32_t)ranges,
      .max_workers = (uint32_t)max_workers,
      .mode = modes[mode],
      .staleness = (uint32_t)staleness,
      .heartbeat_timeout_ms = (int)heartbeat_timeout_ms,
      .read_batch_ms = (int)read_batch_ms,
      .full_views = !view_deltas,
      .heartbeat_udp = heartbeat_udp,
      .replication = (uint32_t)replication,
      .rebalance = rebalance,
      .handle_signals = 1,
      .checkpoint_dir = checkpoint_dir,
      .checkpoint_every_steps = (uint64_t)checkpoint_every_steps,
      .checkpoint_every_s = checkpoint_every_s,
      .checkpoint_timeout_ms = (int)checkpoint_timeout_ms,
      .restore = restore,
      .state_file = state_file,
      .metrics_bind = metrics_bind,
      .keys = keys,
      .max_connections = (uint64_t)max_connections,
  };
  int serr = PS_OK;
  ps_sched_t *s = ps_sched_new(&loop, ctx, &so, &serr, err, sizeof(err));
  int status = PS_EXIT_OK;
  if (s == NULL) {
    PS_ERROR("start_failed", "err=%s reason=\"%s\"", ps_err_name(serr), err);
    status = ps_config_exit_status(serr);
  } else {
    /* systemd (Type=notify): ready once bound; the watchdog is fed from
     * this loop; STOPPING=1 when a signal stops it. Nothing without
     * NOTIFY_SOCKET. The handles are unreferenced, so the loop still runs
     * dry once the scheduler shut the cluster down. */
    uv_timer_t notify_timer;
    uv_signal_t notify_sigterm, notify_sigint;
    int notifying = ps_notify_timer_start(&loop, &notify_timer, describe_cb, s);
    if (notifying) {
      uv_signal_init(&loop, &notify_sigterm);
      uv_signal_init(&loop, &notify_sigint);
      uv_signal_start(&notify_sigterm, stopping_cb, SIGTERM);
      uv_signal_start(&notify_sigint, stopping_cb, SIGINT);
      uv_unref((uv_handle_t *)&notify_sigterm);
      uv_unref((uv_handle_t *)&notify_sigint);
    }
    char line[256];
    ps_sched_describe(s, line, sizeof(line));
    ps_notify_ready("%s", line);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* The loop only runs dry once the scheduler shut the cluster down. */
    if (!ps_sched_finished(s)) status = PS_EXIT_FAILURE;
    ps_notify_stopping("job over, exiting");
    if (notifying) {
      uv_close((uv_handle_t *)&notify_timer, NULL);
      uv_close((uv_handle_t *)&notify_sigterm, NULL);
      uv_close((uv_handle_t *)&notify_sigint, NULL);
    }
    ps_sched_destroy(&s);
    uv_run(&loop, UV_RUN_DEFAULT); /* close callbacks */
  }
  uv_loop_close(&loop);
  /* Waits (up to the socket's linger) for the Shutdown broadcast to leave. */
  zmq_ctx_term(ctx);
  ps_keys_destroy(&keys);
  ps_config_free(&cfg);
  if (status == 0) PS_INFO("exit", "status=0");
  return status;
}
