/* ps-server: parses the options, builds the server, runs it. Exit status:
 * PS_EXIT_* (common/config.h). */
#include <stdint.h>
#include <stdio.h>

#include "common/config.h"
#include "common/err.h"
#include "common/exporter.h"
#include "common/log.h"
#include "common/sockmon.h"
#include "common/transport.h"
#include "server.h"

int main(int argc, char **argv) {
  char *scheduler = NULL, *bind = NULL, *advertise = NULL,
       *metrics_bind = NULL, *keys_dir = NULL, *key_file = NULL;
  int64_t heartbeat_ms = 0, scheduler_timeout_ms = 0, max_message_bytes = 0;
  int64_t max_sparse_keys = 0, max_inflight = 0, max_connections = 0;
  int64_t sparse_max_bytes = 0, sparse_admit_after = 0;
  int log_level = PS_LOG_INFO, nonfinite = 0, insecure = 0, join = 0;

  const ps_opt_t opts[] = {
      {"scheduler", PS_OPT_STRING, &scheduler, PS_DEFAULT_SCHEDULER, 0, 0, NULL,
       "Endpoint of the scheduler to register with."},
      {"bind", PS_OPT_STRING, &bind, "tcp://127.0.0.1:*", 0, 0, NULL,
       "Endpoint the data socket binds; a * port lets ZeroMQ pick a free "
       "one."},
      {"advertise", PS_OPT_STRING, &advertise, NULL, 0, 0, NULL,
       "Endpoint workers are told to connect to. Default: the endpoint "
       "actually bound. Needed when binding 0.0.0.0 or behind NAT."},
      {"join", PS_OPT_BOOL, &join, "false", 0, 0, NULL,
       "Join a running job as one more server, beyond the scheduler's "
       "--servers: copies of ranges move to it one at a time (each synced "
       "before the old one is dropped) until every server holds its share. "
       "Without it, a server that registers while the job runs fills a dead "
       "server's place as a spare."},
      {"heartbeat-ms", PS_OPT_INT, &heartbeat_ms, "100", 10, 600000, NULL,
       "Interval between heartbeats to the scheduler, in milliseconds."},
      {"scheduler-timeout-ms", PS_OPT_INT, &scheduler_timeout_ms, "60000", 0,
       86400000, NULL,
       "Stop with an error (exit 1) after the scheduler was silent this "
       "long, long enough for it to be restarted; the wait is logged every "
       "5 s. 0 waits forever."},
      {"max-message-bytes", PS_OPT_INT, &max_message_bytes, "1073741824", 4,
       1099511627776.0, NULL,
       "Largest payload frame accepted or sent, in bytes; bigger requests "
       "are refused with TOO_BIG."},
      {"max-sparse-keys", PS_OPT_INT, &max_sparse_keys, "1048576", 1,
       4294967296.0, NULL,
       "Rows one sparse push or pull may name; more are refused with "
       "TOO_BIG. With the model's dense ranges it also sets the largest "
       "frame the server accepts at all (bigger ones are dropped, with the "
       "connection, before they are read)."},
      {"sparse-max-bytes", PS_OPT_INT, &sparse_max_bytes, "0", 0,
       1099511627776.0, NULL,
       "Memory cap of the sparse rows this server holds, in bytes (0: none). "
       "Split evenly over the model's tables and the copies a server holds "
       "when every server leads one range; past it the least recently "
       "pushed rows are evicted and read as their initializer again "
       "(ps_server_sparse_evictions_total)."},
      {"sparse-admit-after", PS_OPT_INT, &sparse_admit_after, "1", 1, 65535,
       NULL,
       "Pushes of a sparse id before it gets a row (counted in a count-min "
       "sketch); earlier pushes are dropped and the id reads as its "
       "initializer. 1 admits every id at its first push."},
      {"max-inflight-per-peer", PS_OPT_INT, &max_inflight, "1024", 1,
       4294967295.0, NULL,
       "Requests one worker may have waiting on this server (pushes not yet "
       "on every backup, BSP pulls for a step to come); more are refused. "
       "libps-client keeps 8 in flight per server."},
      {"max-connections", PS_OPT_INT, &max_connections, "4096", 0, 4294967295.0,
       NULL, PS_MAX_CONNECTIONS_HELP},
      {"metrics-bind", PS_OPT_STRING, &metrics_bind, "", 0, 0, NULL,
       PS_METRICS_BIND_HELP},
      {"nonfinite", PS_OPT_ENUM, &nonfinite, "reject", 0, 0, "reject|skip",
       "A push holding NaN or Inf never reaches the weights: reject answers "
       "it with an error (the worker's call fails), skip applies it as "
       "zeros (a BSP step still counts it) and counts it in "
       "ps_server_nonfinite_pushes_total."},
      {"keys-dir", PS_OPT_STRING, &keys_dir, NULL, 0, 0, NULL,
       PS_KEYS_DIR_HELP},
      {"key", PS_OPT_STRING, &key_file, NULL, 0, 0, NULL, PS_KEY_FILE_HELP},
      {"insecure", PS_OPT_BOOL, &insecure, "false", 0, 0, NULL,
       PS_INSECURE_HELP},
      {"log-level", PS_OPT_ENUM, &log_level, "info", 0, 0,
       "debug|info|warn|error", "Least severe level logged."},
  };
  const ps_config_t cfg = {
      .program = "ps-server",
      .summary =
          "Parameter server: holds key ranges of the model's dense "
          "tensors and applies the optimizer on push.",
      .usage = "[options]",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };

  char err[512];
  int rc = ps_config_load(&cfg, argc, argv, NULL, 0, NULL, err, sizeof(err));
  if (rc == 1) return PS_EXIT_OK;
  if (rc == PS_OK)
    rc = ps_config_check_endpoint("scheduler", scheduler, 0, err, sizeof(err));
  if (rc == PS_OK)
    rc = ps_config_check_endpoint("bind", bind, 1, err, sizeof(err));
  if (rc == PS_OK && advertise && advertise[0])
    rc = ps_config_check_endpoint("advertise", advertise, 0, err, sizeof(err));
  if (rc == PS_OK && metrics_bind && metrics_bind[0])
    rc = ps_exporter_check_bind("metrics-bind", metrics_bind, err,
                                sizeof(err));
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  ps_log_init("server", (ps_log_level_t)log_level);
  ps_transport_tune_malloc();
  ps_keys_t *keys = NULL;
  if (ps_keys_for_program(keys_dir, key_file, insecure, PS_KEY_ROLE_SERVER,
                          bind, &keys, err, sizeof(err)) != PS_OK)
    return ps_config_refuse(&cfg, "%s", err);
  ps_raise_nofile_limit();

  ps_server_opts_t so;
  ps_server_opts_init(&so);
  so.scheduler = scheduler;
  so.bind = bind;
  so.advertise = advertise;
  so.heartbeat_ms = (int)heartbeat_ms;
  so.scheduler_timeout_ms = (int)scheduler_timeout_ms;
  so.join = join == 1;
  so.limits.max_payload_bytes = (size_t)max_message_bytes;
  so.metrics_bind = metrics_bind;
  so.max_sparse_keys = (uint64_t)max_sparse_keys;
  so.sparse_max_bytes = (uint64_t)sparse_max_bytes;
  so.sparse_admit_after = (uint32_t)sparse_admit_after;
  so.max_inflight_per_peer = (uint32_t)max_inflight;
  so.nonfinite = nonfinite == 1 ? PS_SERVER_NONFINITE_SKIP
                                : PS_SERVER_NONFINITE_REJECT;
  so.keys = keys;
  so.max_connections = (uint64_t)max_connections;

  int status = PS_OK;
  ps_server_t *server = ps_server_new(&so, &status, err, sizeof(err));
  if (server == NULL) {
    PS_ERROR("start_failed", "status=%s reason=\"%s\"", ps_err_name(status),
             err);
    ps_keys_destroy(&keys);
    ps_config_free(&cfg);
    return ps_config_exit_status(status);
  }
  status = ps_server_run(server);
  if (status != PS_OK)
    fprintf(stderr, "ps-server: %s\n", ps_server_errmsg(server));
  ps_server_destroy(&server);
  ps_keys_destroy(&keys);
  ps_config_free(&cfg);
  return status == PS_OK ? PS_EXIT_OK : PS_EXIT_FAILURE;
}
