/* The config parser (common/config.c, ps_config_load): an INI file, the
 * environment and command-line flags through one option table, the
 * scheduler's (scheduler/main.c, copied: every option type, bounds, a
 * default-less string), then the endpoint checks the daemons make.
 *
 * Input: u8 flags, then the file's text up to the first NUL byte, then
 * argv[1..] separated by NUL bytes.
 *   bit 0: the file is given as --config=PATH (first on the command line),
 *          else through PS_CONFIG
 *   bit 1: positional arguments are taken (at most 2), as psctl takes a
 *          command
 *   bit 2: the last argument is not a flag but the value of PS_WORKERS
 *
 * What must hold after a load that succeeds: every value inside its
 * option's bounds (nothing clamped, nothing out of range let through),
 * every enum a valid index, every string with a default set.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/err.h"
#include "common/exporter.h"
#include "common/view.h"
#include "fuzz_util.h"

#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "fuzz_config: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                \
    }                                                                         \
  } while (0)

#define MAX_ARGS 64

static char *bind_ep, *checkpoint_dir, *restore, *state_file, *metrics_bind;
static int64_t servers, workers, heartbeat_timeout_ms, replication;
static int64_t checkpoint_every_steps, checkpoint_timeout_ms;
static double checkpoint_every_s;
static int mode, log_level, rebalance;

static const ps_opt_t opts[] = {
    {"bind", PS_OPT_STRING, &bind_ep, PS_DEFAULT_SCHEDULER, 0, 0, NULL, "b"},
    {"servers", PS_OPT_INT, &servers, "1", 1, 4096, NULL, "s"},
    {"workers", PS_OPT_INT, &workers, "1", 1, 65535, NULL, "w"},
    {"mode", PS_OPT_ENUM, &mode, "bsp", 0, 0, "bsp|asp", "m"},
    {"replication", PS_OPT_INT, &replication, "2", 1, PS_MAX_REPLICAS, NULL,
     "r"},
    {"rebalance", PS_OPT_BOOL, &rebalance, "true", 0, 0, NULL, "r"},
    {"heartbeat-timeout-ms", PS_OPT_INT, &heartbeat_timeout_ms, "400", 10,
     3600000, NULL, "h"},
    {"checkpoint-dir", PS_OPT_STRING, &checkpoint_dir, NULL, 0, 0, NULL, "c"},
    {"checkpoint-every-steps", PS_OPT_INT, &checkpoint_every_steps, "0", 0,
     9007199254740991.0, NULL, "c"},
    {"checkpoint-every-s", PS_OPT_DOUBLE, &checkpoint_every_s, "0", 0, 31536000,
     NULL, "c"},
    {"checkpoint-timeout-ms", PS_OPT_INT, &checkpoint_timeout_ms, "120000", 100,
     86400000, NULL, "c"},
    {"restore", PS_OPT_STRING, &restore, NULL, 0, 0, NULL, "r"},
    {"state-file", PS_OPT_STRING, &state_file, NULL, 0, 0, NULL, "s"},
    {"metrics-bind", PS_OPT_STRING, &metrics_bind, "", 0, 0, NULL, "m"},
    {"log-level", PS_OPT_ENUM, &log_level, "info", 0, 0,
     "debug|info|warn|error", "l"},
};

static const ps_config_t cfg = {
    .program = "ps-scheduler",
    .summary = "fuzz_config",
    .usage = "[options]",
    .opts = opts,
    .nopts = sizeof(opts) / sizeof(opts[0]),
};

static void check_loaded(void) {
  for (size_t i = 0; i < cfg.nopts; i++) {
    const ps_opt_t *o = &cfg.opts[i];
    switch (o->type) {
      case PS_OPT_INT: {
        int64_t v = *(int64_t *)o->target;
        CHECK((double)v >= o->min && (double)v <= o->max);
        break;
      }
      case PS_OPT_DOUBLE: {
        double v = *(double *)o->target;
        CHECK(isfinite(v) && v >= o->min && v <= o->max);
        break;
      }
      case PS_OPT_BOOL:
        CHECK(*(int *)o->target == 0 || *(int *)o->target == 1);
        break;
      case PS_OPT_ENUM: {
        int v = *(int *)o->target, n = 1;
        for (const char *p = o->choices; *p; p++) n += *p == '|';
        CHECK(v >= 0 && v < n);
        break;
      }
      case PS_OPT_STRING:
        if (o->def != NULL) CHECK(*(char **)o->target != NULL);
        break;
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *dir;
  static char path[600], config_flag[700];
  if (dir == NULL) {
    /* --help and --version print to stdout. */
    if (freopen("/dev/null", "w", stdout) == NULL) abort();
    dir = fuzz_scratch_dir("config");
    snprintf(path, sizeof(path), "%s/fuzz.conf", dir);
    snprintf(config_flag, sizeof(config_flag), "--config=%s", path);
  }
  if (size == 0) return 0;
  unsigned flags = data[0];
  /* A NUL-terminated copy: argv points into it. */
  char *text = malloc(size);
  CHECK(text != NULL);
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  size_t len = size - 1;
  size_t file_len = strlen(text);
  fuzz_write_file(path, text, file_len);

  char *argv[MAX_ARGS + 2];
  int argc = 0;
  argv[argc++] = (char *)"ps-scheduler";
  if (flags & 1) argv[argc++] = config_flag;
  for (size_t at = file_len + 1; at < len && argc < MAX_ARGS;) {
    argv[argc++] = text + at;
    at += strlen(text + at) + 1;
  }
  argv[argc] = NULL;
  const char *env_workers = NULL;
  if ((flags & 4) && argc > 1 + (int)(flags & 1)) env_workers = argv[--argc];
  if (flags & 1)
    unsetenv("PS_CONFIG");
  else
    setenv("PS_CONFIG", path, 1);
  if (env_workers)
    setenv("PS_WORKERS", env_workers, 1);
  else
    unsetenv("PS_WORKERS");

  const char *positional[2];
  int npositional = 0;
  char err[1024];
  int rc = ps_config_load(&cfg, argc, argv, (flags & 2) ? positional : NULL, 2,
                          &npositional, err, sizeof(err));
  if (rc == PS_OK) {
    check_loaded();
    CHECK(npositional >= 0 && npositional <= 2);
    /* What the daemons check next (scheduler/main.c, ps-server/main.c). */
    ps_config_check_endpoint("bind", bind_ep, 1, err, sizeof(err));
    if (restore)
      ps_config_check_endpoint("scheduler", restore, 0, err, sizeof(err));
    if (metrics_bind && metrics_bind[0])
      ps_exporter_check_bind("metrics-bind", metrics_bind, err, sizeof(err));
    ps_config_free(&cfg);
  } else {
    CHECK(rc == 1 || (rc == PS_ERR_CONFIG && err[0] != '\0'));
    /* Freed on failure already; again is harmless. */
    ps_config_free(&cfg);
  }
  CHECK(bind_ep == NULL && state_file == NULL);
  free(text);
  return 0;
}
