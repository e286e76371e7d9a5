/* psctl: asks the scheduler how the cluster is doing.
 *
 *   psctl [--scheduler EP] [--timeout-ms N] [--json] status
 *   psctl [--scheduler EP] [--timeout-ms N] health
 *   psctl [--scheduler EP] [--timeout-ms N] [--wait-ms N] [--dir DIR]
 *         [--json] checkpoint
 *   psctl [--scheduler EP] [--timeout-ms N] [--wait-ms N] [--json]
 *         drain|remove-server|add-server SERVER
 *   psctl [--scheduler EP] [--timeout-ms N] [--json] remove-worker ID
 *   psctl [--scheduler EP] [--timeout-ms N] [--interval-ms N]
 *         [--iterations N | -n N] [--json] top
 *
 * One StatusRequest on a DEALER socket, answered or not within the timeout:
 * psctl never hangs on a scheduler that is down (ZeroMQ would reconnect
 * forever), which is what makes `psctl health` usable as a healthcheck.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/config.h"
#include "common/err.h"
#include "common/frame.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/time.h"
#include "common/transport.h"
#include "proto/ps.pb-c.h"
#include "scheduler/placement.h"
#include "scheduler/top.h"

static const char *role_name(int role) {
  switch (role) {
    case PS__ROLE__ROLE_SCHEDULER:
      return "scheduler";
    case PS__ROLE__ROLE_SERVER:
      return "server";
    case PS__ROLE__ROLE_WORKER:
      return "worker";
    case PS__ROLE__ROLE_ADMIN:
      return "admin";
    default:
      return "unknown";
  }
}

static const char *state_name(int state) {
  switch (state) {
    case PS__NODE_STATE__NODE_STATE_ALIVE:
      return "alive";
    case PS__NODE_STATE__NODE_STATE_DEAD:
      return "dead";
    case PS__NODE_STATE__NODE_STATE_DONE:
      return "done";
    case PS__NODE_STATE__NODE_STATE_LEFT:
      return "left";
    default:
      return "unknown";
  }
}

static const char *mode_name(int mode) {
  return mode == PS__CONSISTENCY_MODE__MODE_ASP   ? "asp"
         : mode == PS__CONSISTENCY_MODE__MODE_SSP ? "ssp"
                                                  : "bsp";
}

/* "bsp", "asp", or "ssp (staleness 3)", for the text status. */
static const char *mode_text(const Ps__View *v, char *buf, size_t len) {
  if (v->mode != PS__CONSISTENCY_MODE__MODE_SSP) return mode_name(v->mode);
  snprintf(buf, len, "ssp (staleness %u)", v->staleness);
  return buf;
}

static uint64_t model_keys(const Ps__View *v) {
  uint64_t total = 0;
  if (v->model)
    for (size_t i = 0; i < v->model->n_tensors; i++)
      total += v->model->tensors[i]->length;
  return total;
}

static const Ps__NodeInfo *find_node(const Ps__View *v, uint32_t id) {
  for (size_t i = 0; i < v->n_nodes; i++)
    if (v->nodes[i]->id == id) return v->nodes[i];
  return NULL;
}

static int range_syncing(const Ps__KeyRange *r, uint32_t id) {
  for (size_t k = 0; k < r->n_syncing; k++)
    if (r->syncing[k] == id) return 1;
  return 0;
}

/* What a range can do now: ok, syncing, degraded or unavailable. */
static const char *range_state(const Ps__View *v, const Ps__KeyRange *r) {
  const Ps__NodeInfo *p = find_node(v, r->server_id);
  int alive = p != NULL && p->state == PS__NODE_STATE__NODE_STATE_ALIVE;
  return ps_place_state_name(ps_place_state(
      alive, (uint32_t)r->n_backups, (uint32_t)r->n_syncing, v->replication));
}

/* How many ranges server id is the primary / a backup of. */
static void server_roles(const Ps__View *v, uint32_t id, uint32_t *primary,
                         uint32_t *backup) {
  *primary = *backup = 0;
  for (size_t i = 0; i < v->n_ranges; i++) {
    const Ps__KeyRange *r = v->ranges[i];
    if (r->server_id == id) (*primary)++;
    for (size_t k = 0; k < r->n_backups; k++)
      if (r->backups[k] == id) (*backup)++;
  }
}

static void json_ids(const uint32_t *ids, size_t n) {
  putchar('[');
  for (size_t k = 0; k < n; k++) printf("%s%u", k ? "," : "", ids[k]);
  putchar(']');
}


static void print_json(const char *endpoint, const Ps__Status *st) {
  const Ps__View *v = st->view;
  printf("{\"scheduler\":");
  ps_top_json_string(stdout, endpoint);
  printf(",\"epoch\":%" PRIu64
         ",\"mode\":\"%s\",\"staleness\":%u"
         ",\"uptime_ms\":%" PRIu64
         ",\"expected_servers\":%u,\"expected_workers\":%u,"
         "\"max_workers\":%u,\"live_workers\":%u,\"keys\":%" PRIu64
         ",\"replication\":%u,\"accept_failures\":%" PRIu64 ",\"nodes\":[",
         v->epoch, mode_name(v->mode), v->staleness, st->uptime_ms,
         st->expected_servers, st->expected_workers,
         st->max_workers ? st->max_workers : st->expected_workers,
         v->live_workers, model_keys(v), v->replication, st->accept_failures);
  for (size_t i = 0; i < v->n_nodes; i++) {
    const Ps__NodeInfo *n = v->nodes[i];
    printf("%s{\"id\":%u,\"role\":\"%s\",\"address\":", i ? "," : "", n->id,
           role_name(n->role));
    ps_top_json_string(stdout, n->address ? n->address : "");
    printf(",\"state\":\"%s\",\"last_heartbeat_ms\":%" PRIu64
           ",\"clock\":%" PRIu64 ",\"metrics_address\":",
           state_name(n->state), n->last_heartbeat_ms, n->clock);
    ps_top_json_string(stdout, n->metrics_address ? n->metrics_address : "");
    if (n->role == PS__ROLE__ROLE_SERVER) {
      uint32_t primary, backup;
      server_roles(v, n->id, &primary, &backup);
      printf(",\"primary_of\":%u,\"backup_of\":%u,\"active\":%s", primary,
             backup, n->active ? "true" : "false");
    } else if (n->role == PS__ROLE__ROLE_WORKER) {
      printf(",\"rank\":%u,\"join_clock\":%" PRIu64
             ",\"joining\":%s,\"leave_clock\":%" PRIu64,
             n->rank, n->join_clock, n->joining ? "true" : "false",
             n->leave_clock);
    }
    printf("}");
  }
  printf("],\"ranges\":[");
  for (size_t i = 0; i < v->n_ranges; i++) {
    const Ps__KeyRange *r = v->ranges[i];
    printf("%s{\"begin\":%" PRIu64 ",\"end\":%" PRIu64 ",\"keys\":%" PRIu64
           ",\"server_id\":%u,\"backups\":",
           i ? "," : "", r->begin, r->end, r->end - r->begin, r->server_id);
    json_ids(r->backups, r->n_backups);
    printf(",\"syncing\":");
    json_ids(r->syncing, r->n_syncing);
    printf(",\"state\":\"%s\"}", range_state(v, r));
  }
  printf("]");
  const Ps__CheckpointInfo *infos[2] = {st->last_checkpoint, st->checkpoint};
  const char *keys[2] = {"last_checkpoint", "checkpoint_in_progress"};
  for (int k = 0; k < 2; k++) {
    const Ps__CheckpointInfo *ci = infos[k];
    printf(",\"%s\":", keys[k]);
    if (ci == NULL) {
      printf("null");
      continue;
    }
    printf("{\"id\":%" PRIu64 ",\"step\":%" PRIu64 ",\"dir\":", ci->id,
           ci->step);
    ps_top_json_string(stdout, ci->dir ? ci->dir : "");
    printf(",\"age_ms\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"shards\":%u,\"duration_ms\":%" PRIu64 ",\"write_ms\":%" PRIu64
           ",\"reason\":",
           ci->age_ms, ci->bytes, ci->shards, ci->duration_ms, ci->write_ms);
    ps_top_json_string(stdout, ci->reason ? ci->reason : "");
    printf("}");
  }
  const Ps__CheckpointInfo *f = st->last_failure;
  printf(",\"last_checkpoint_failure\":");
  if (f == NULL) {
    printf("null");
  } else {
    printf("{\"id\":%" PRIu64 ",\"step\":%" PRIu64 ",\"dir\":", f->id, f->step);
    ps_top_json_string(stdout, f->dir ? f->dir : "");
    printf(",\"age_ms\":%" PRIu64 ",\"unix_ms\":%" PRIu64
           ",\"duration_ms\":%" PRIu64 ",\"reason\":",
           f->age_ms, f->created_unix_ms, f->duration_ms);
    ps_top_json_string(stdout, f->reason ? f->reason : "");
    printf(",\"code\":\"%s\",\"error\":", ps_err_name(f->code));
    ps_top_json_string(stdout, f->error ? f->error : "");
    printf("}");
  }
  printf("}\n");
}

static void print_checkpoints(const Ps__Status *st) {
  const Ps__CheckpointInfo *l = st->last_checkpoint, *c = st->checkpoint;
  if (l)
    printf("last checkpoint: step %" PRIu64
           "  %s  %.1f s ago  (%u shards, "
           "%.2f MB, %s)\n",
           l->step, l->dir ? l->dir : "-", (double)l->age_ms / 1e3, l->shards,
           (double)l->bytes / 1e6, l->reason && l->reason[0] ? l->reason : "-");
  else
    printf("last checkpoint: none\n");
  const Ps__CheckpointInfo *f = st->last_failure;
  if (f)
    printf("last checkpoint failed: step %" PRIu64
           " into %s, %.1f s ago (%s): "
           "%s\n",
           f->step, f->dir && f->dir[0] ? f->dir : "-", (double)f->age_ms / 1e3,
           f->reason && f->reason[0] ? f->reason : "-",
           f->error && f->error[0] ? f->error : ps_err_name(f->code));
  if (c)
    printf("checkpoint in progress: step %" PRIu64 " into %s for %.1f s (%s)\n",
           c->step, c->dir ? c->dir : "-", (double)c->age_ms / 1e3,
           c->reason && c->reason[0] ? c->reason : "-");
}

static void print_table(const char *endpoint, const Ps__Status *st) {
  const Ps__View *v = st->view;
  /* Per role, by state: the header counts the living against what the
   * job expects, and the others apart (a dead node and its replacement
   * are two entries). */
  uint32_t count[2][5] = {{0}};
  int addr_w = 7; /* "ADDRESS" */
  for (size_t i = 0; i < v->n_nodes; i++) {
    const Ps__NodeInfo *n = v->nodes[i];
    int role = n->role == PS__ROLE__ROLE_SERVER   ? 0
               : n->role == PS__ROLE__ROLE_WORKER ? 1
                                                  : -1;
    if (role >= 0 && n->state >= 0 && n->state < 5) count[role][n->state]++;
    int w = (int)strlen(n->address ? n->address : "");
    if (w > addr_w) addr_w = w;
  }
  printf("scheduler %s  up %.1f s", endpoint, (double)st->uptime_ms / 1e3);
  if (st->accept_failures)
    printf("  (failed to accept %" PRIu64 " connections: out of files?)",
           st->accept_failures);
  printf("\n");
  char mode[48];
  if (v->epoch == 0)
    printf("epoch 0 (view not published yet)  mode %s\n",
           mode_text(v, mode, sizeof(mode)));
  else
    printf("epoch %" PRIu64 "  mode %s  live workers %u/%u\n", v->epoch,
           mode_text(v, mode, sizeof(mode)), v->live_workers,
           st->expected_workers);
  const char *roles[2] = {"servers", "workers"};
  const uint32_t expected[2] = {st->expected_servers, st->expected_workers};
  printf("registered:");
  for (int r = 0; r < 2; r++) {
    printf("%s %u/%u %s alive", r ? "," : "",
           count[r][PS__NODE_STATE__NODE_STATE_ALIVE], expected[r], roles[r]);
    const int others[3] = {PS__NODE_STATE__NODE_STATE_DONE,
                           PS__NODE_STATE__NODE_STATE_DEAD,
                           PS__NODE_STATE__NODE_STATE_LEFT};
    int shown = 0;
    for (int k = 0; k < 3; k++) {
      if (count[r][others[k]] == 0) continue;
      printf("%s%u %s", shown++ ? ", " : " (", count[r][others[k]],
             state_name(others[k]));
    }
    if (shown) printf(")");
  }
  printf("\n");
  print_checkpoints(st);
  printf("\n");

  printf("%4s  %-7s  %-*s  %-5s  %14s  %10s  %s\n", "ID", "ROLE", addr_w,
         "ADDRESS", "STATE", "LAST HEARTBEAT", "CLOCK", "HOLDS");
  for (size_t i = 0; i < v->n_nodes; i++) {
    const Ps__NodeInfo *n = v->nodes[i];
    char heard[32], holds[64] = "-";
    snprintf(heard, sizeof(heard), "%" PRIu64 " ms ago", n->last_heartbeat_ms);
    if (n->role == PS__ROLE__ROLE_SERVER) {
      uint32_t primary, backup;
      server_roles(v, n->id, &primary, &backup);
      snprintf(holds, sizeof(holds), "primary of %u, backup of %u%s", primary,
               backup, n->active ? "" : " (spare)");
    } else if (n->role == PS__ROLE__ROLE_WORKER) {
      if (n->joining)
        snprintf(holds, sizeof(holds), "rank %u, joining at step %" PRIu64,
                 n->rank, n->join_clock);
      else if (n->leave_clock)
        snprintf(
            holds, sizeof(holds),
            "rank %u, steps %" PRIu64 " to %" PRIu64 " (%s)", n->rank,
            n->join_clock, n->leave_clock - 1,
            n->state == PS__NODE_STATE__NODE_STATE_LEFT ? "left" : "leaving");
      else if (n->join_clock)
        snprintf(holds, sizeof(holds), "rank %u, joined at step %" PRIu64,
                 n->rank, n->join_clock);
      else
        snprintf(holds, sizeof(holds), "rank %u", n->rank);
    }
    printf("%4u  %-7s  %-*s  %-5s  %14s  %10" PRIu64 "  %s\n", n->id,
           role_name(n->role), addr_w,
           n->address && n->address[0] ? n->address : "-", state_name(n->state),
           heard, n->clock, holds);
  }
  if (v->n_nodes == 0) printf("  (no node has registered)\n");

  printf("\n");
  if (v->n_ranges == 0) {
    printf("ranges: none yet (cut when every expected node has registered)\n");
    return;
  }
  printf(
      "replication %u (copies of each range, primary included; "
      "* = backup still syncing)\n",
      v->replication);
  printf("%-12s  %-12s  %-12s  %-16s  %-16s  %s\n", "BEGIN", "END", "KEYS",
         "PRIMARY", "BACKUPS", "STATE");
  for (size_t i = 0; i < v->n_ranges; i++) {
    const Ps__KeyRange *r = v->ranges[i];
    const Ps__NodeInfo *owner = find_node(v, r->server_id);
    char primary[40], backups[64] = "-";
    snprintf(primary, sizeof(primary), "%u (%s)", r->server_id,
             owner ? state_name(owner->state) : "not in view");
    size_t len = 0;
    for (size_t k = 0; k < r->n_backups && len < sizeof(backups); k++)
      len += (size_t)snprintf(backups + len, sizeof(backups) - len, "%s%u%s",
                              k ? " " : "", r->backups[k],
                              range_syncing(r, r->backups[k]) ? "*" : "");
    printf("%-12" PRIu64 "  %-12" PRIu64 "  %-12" PRIu64 "  %-16s  %-16s  %s\n",
           r->begin, r->end, r->end - r->begin, primary, backups,
           range_state(v, r));
  }
  printf("key space: %" PRIu64 " keys (%" PRIu64 " bytes of float32)\n",
         model_keys(v), model_keys(v) * 4);
}

/* While psctl checkpoint waits, it asks the scheduler how the checkpoint
 * is doing this often and prints the answer. */
#define PSCTL_PROGRESS_MS 2000

static uint64_t next_request_id(void) {
  static uint64_t id;
  if (id == 0) id = ps_now_ns() | 1;
  return ++id;
}

static int send_request(void *sock, const char *endpoint, Ps__Envelope *env) {
  env->request_id = next_request_id();
  if (ps_msg_send(sock, NULL, env, NULL, 0) != PS_OK) {
    fprintf(stderr, "psctl: cannot send to %s: %s\n", endpoint,
            zmq_strerror(zmq_errno()));
    return 1;
  }
  return 0;
}

/* Receives the next answer until the deadline. Returns 0 with *out set
 * (caller frees with ps_msg_close), 1 at the deadline, or -1 with the
 * reason printed. */
static int recv_answer(void *sock, const char *endpoint, uint64_t deadline,
                       ps_msg_t *out) {
  for (;;) {
    uint64_t now = ps_now_ms();
    if (now >= deadline) return 1;
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&item, 1, (long)(deadline - now));
    if (n < 0) {
      fprintf(stderr, "psctl: poll failed: %s\n", zmq_strerror(zmq_errno()));
      return -1;
    }
    if (n == 0) continue;
    char why[256];
    int rc = ps_msg_recv(sock, 0, NULL, out, why, sizeof(why));
    if (rc == PS_ERR_TIMEOUT) continue;
    if (rc != PS_OK) {
      fprintf(stderr, "psctl: bad answer from %s: %s (%s)\n", endpoint, why,
              ps_err_name(rc));
      ps_msg_close(out);
      return -1;
    }
    return 0;
  }
}

/* 0 if m (the answer to a request) has the body wanted; else 1 with the
 * reason printed (an Error, or another body). */
static int check_answer(const char *endpoint, const ps_msg_t *m,
                        Ps__Envelope__BodyCase want) {
  if (m->env->body_case == PS__ENVELOPE__BODY_ERROR) {
    fprintf(stderr, "psctl: the scheduler at %s refused: %s (%s)\n", endpoint,
            m->env->error->message, ps_err_name(m->env->error->code));
    return 1;
  }
  if (m->env->body_case != want ||
      (want == PS__ENVELOPE__BODY_STATUS && m->env->status->view == NULL)) {
    fprintf(stderr, "psctl: the scheduler at %s answered with %s, not %s\n",
            endpoint, ps_body_name(m->env->body_case), ps_body_name(want));
    return 1;
  }
  return 0;
}

/* With CURVE a scheduler that does not admit our key never answers: the
 * handshake fails before a message can. */
static int psctl_keyed;

static void print_no_answer(const char *endpoint, int64_t timeout_ms) {
  fprintf(stderr,
          "psctl: no answer from the scheduler at %s within %" PRId64
          " ms (is ps-scheduler running and reachable there%s?)\n",
          endpoint, timeout_ms,
          psctl_keyed ? ", and does its --keys-dir hold our admin key's .pub"
                      : "");
}

/* Sends env and waits for the answer (a want body, or an Error) until the
 * deadline. Returns 0 with *out set (caller frees with ps_msg_close), or 1
 * with the reason printed. */
static int ask(void *sock, const char *endpoint, int64_t timeout_ms,
               Ps__Envelope *env, Ps__Envelope__BodyCase want, ps_msg_t *out,
               uint64_t *elapsed_ms) {
  uint64_t start = ps_now_ms();
  uint64_t deadline = start + (uint64_t)timeout_ms;
  if (send_request(sock, endpoint, env) != 0) return 1;
  for (;;) {
    ps_msg_t m;
    int rc = recv_answer(sock, endpoint, deadline, &m);
    if (rc < 0) return 1;
    if (rc > 0) break;
    if (m.request_id != env->request_id) { /* an earlier request's */
      ps_msg_close(&m);
      continue;
    }
    if (check_answer(endpoint, &m, want) != 0) {
      ps_msg_close(&m);
      return 1;
    }
    *out = m;
    *elapsed_ms = ps_now_ms() - start;
    return 0;
  }
  print_no_answer(endpoint, timeout_ms);
  return 1;
}

static void status_request_init(Ps__Envelope *env, Ps__StatusRequest *sr) {
  ps__status_request__init(sr);
  ps__envelope__init(env);
  env->body_case = PS__ENVELOPE__BODY_STATUS_REQUEST;
  env->status_request = sr;
}

static int query_status(void *sock, const char *endpoint, int64_t timeout_ms,
                        ps_msg_t *out, uint64_t *elapsed_ms) {
  Ps__StatusRequest sr;
  Ps__Envelope env;
  status_request_init(&env, &sr);
  return ask(sock, endpoint, timeout_ms, &env, PS__ENVELOPE__BODY_STATUS, out,
             elapsed_ms);
}

/* One progress line from a status answer, on stderr (stdout stays the
 * result, for scripts). */
static void print_progress(const Ps__Status *st, uint64_t waited_ms,
                           void *arg) {
  (void)arg;
  const Ps__CheckpointInfo *c = st->checkpoint;
  if (c)
    fprintf(stderr,
            "psctl: waiting for checkpoint (%.1f s): step %" PRIu64
            " into %s, in progress for %.1f s (%s)\n",
            (double)waited_ms / 1e3, c->step, c->dir ? c->dir : "-",
            (double)c->age_ms / 1e3,
            c->reason && c->reason[0] ? c->reason : "-");
  else
    fprintf(stderr,
            "psctl: waiting for checkpoint (%.1f s): the scheduler reports "
            "none in progress yet\n",
            (double)waited_ms / 1e3);
  fflush(stderr);
}

/* Sends env (a request the scheduler answers when the work is done) and
 * waits for its answer, a want body, up to wait_ms; meanwhile asks for the
 * status every PSCTL_PROGRESS_MS and hands it to progress. A scheduler
 * that does not answer one of those within timeout_ms ends the wait.
 * Returns 0 with *out set (caller frees with ps_msg_close), or 1 with the
 * reason printed (what says what did not finish in time). */
static int await_long(void *sock, const char *endpoint, int64_t timeout_ms,
                      int64_t wait_ms, Ps__Envelope *env,
                      Ps__Envelope__BodyCase want,
                      void (*progress)(const Ps__Status *st, uint64_t waited_ms,
                                       void *arg),
                      void *arg, const char *what, ps_msg_t *out) {
  uint64_t start = ps_now_ms();
  uint64_t deadline = start + (uint64_t)wait_ms;
  if (send_request(sock, endpoint, env) != 0) return 1;
  uint64_t want_id = env->request_id;
  uint64_t probe_id = 0, probe_deadline = 0;
  uint64_t next_probe = start + PSCTL_PROGRESS_MS;
  ps_msg_t m;
  for (;;) {
    uint64_t now = ps_now_ms();
    if (now >= deadline) {
      fprintf(stderr,
              "psctl: %s after %" PRId64
              " ms (--wait-ms); the scheduler goes on with it (see psctl "
              "status)\n",
              what, wait_ms);
      return 1;
    }
    if (probe_id != 0 && now >= probe_deadline) {
      print_no_answer(endpoint, timeout_ms);
      return 1;
    }
    if (probe_id == 0 && now >= next_probe) {
      Ps__StatusRequest sr;
      Ps__Envelope probe;
      status_request_init(&probe, &sr);
      if (send_request(sock, endpoint, &probe) != 0) return 1;
      probe_id = probe.request_id;
      probe_deadline = now + (uint64_t)timeout_ms;
    }
    uint64_t until = probe_id ? probe_deadline : next_probe;
    if (until > deadline) until = deadline;
    int rc = recv_answer(sock, endpoint, until, &m);
    if (rc < 0) return 1;
    if (rc > 0) continue;
    if (m.request_id == probe_id) {
      if (check_answer(endpoint, &m, PS__ENVELOPE__BODY_STATUS) != 0) {
        ps_msg_close(&m);
        return 1;
      }
      progress(m.env->status, ps_now_ms() - start, arg);
      ps_msg_close(&m);
      probe_id = 0;
      next_probe = ps_now_ms() + PSCTL_PROGRESS_MS;
      continue;
    }
    if (m.request_id != want_id) {
      ps_msg_close(&m);
      continue;
    }
    if (check_answer(endpoint, &m, want) != 0) {
      ps_msg_close(&m);
      return 1;
    }
    *out = m;
    return 0;
  }
}

/* psctl checkpoint: asks for one at the next step boundary and waits until
 * its MANIFEST is durable, up to wait_ms. Meanwhile it asks for the status
 * every PSCTL_PROGRESS_MS and prints the checkpoint's progress; a
 * scheduler that does not answer one of those (or the first) within
 * timeout_ms ends the wait. */
static int run_checkpoint(void *sock, const char *endpoint, int64_t timeout_ms,
                          int64_t wait_ms, const char *dir, int json) {
  /* As given: the scheduler takes it inside its --checkpoint-dir. */
  const char *abs = dir ? dir : "";
  /* First, is anyone there? */
  ps_msg_t m;
  uint64_t elapsed = 0;
  if (query_status(sock, endpoint, timeout_ms, &m, &elapsed) != 0) return 1;
  ps_msg_close(&m);

  Ps__CheckpointCommand cc = PS__CHECKPOINT_COMMAND__INIT;
  cc.dir = (char *)abs;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_CHECKPOINT_COMMAND;
  env.checkpoint_command = &cc;
  if (await_long(sock, endpoint, timeout_ms, wait_ms, &env,
                 PS__ENVELOPE__BODY_CHECKPOINT_INFO, print_progress, NULL,
                 "checkpoint not complete", &m) != 0)
    return 1;
  const Ps__CheckpointInfo *ci = m.env->checkpoint_info;
  /* The rate is over the servers' writing, not the wait for the step. */
  double secs = (double)(ci->write_ms ? ci->write_ms : 1) / 1e3;
  double mbps = (double)ci->bytes / 1e6 / secs;
  if (json) {
    printf("{\"id\":%" PRIu64 ",\"step\":%" PRIu64 ",\"dir\":", ci->id,
           ci->step);
    ps_top_json_string(stdout, ci->dir ? ci->dir : "");
    printf(",\"shards\":%u,\"bytes\":%" PRIu64 ",\"duration_ms\":%" PRIu64
           ",\"write_ms\":%" PRIu64 ",\"mbps\":%.1f}\n",
           ci->shards, ci->bytes, ci->duration_ms, ci->write_ms, mbps);
  } else {
    printf("checkpoint %" PRIu64 ": step %" PRIu64
           " written to %s (%u shards, "
           "%.2f MB; %" PRIu64 " ms from the request, written in %" PRIu64
           " ms, %.1f MB/s)\n",
           ci->id, ci->step, ci->dir ? ci->dir : "-", ci->shards,
           (double)ci->bytes / 1e6, ci->duration_ms, ci->write_ms, mbps);
  }
  ps_msg_close(&m);
  return 0;
}

/* The copies a server holds and the ranges it leads, in view v. */
static void server_share(const Ps__View *v, uint32_t id, uint32_t *copies,
                         uint32_t *leads) {
  *copies = *leads = 0;
  for (size_t i = 0; i < v->n_ranges; i++) {
    const Ps__KeyRange *r = v->ranges[i];
    int backup = 0;
    for (size_t k = 0; k < r->n_backups; k++) backup |= r->backups[k] == id;
    *leads += r->server_id == id;
    *copies += r->server_id == id || backup;
  }
}

/* The server psctl drain, remove-server or add-server waits on. */
typedef struct {
  uint32_t id;
  const char *doing; /* "draining", "removing", "adding" */
} server_wait_t;

/* psctl drain's (remove-server's, add-server's) progress: what the server
 * still holds and leads. */
static void print_drain_progress(const Ps__Status *st, uint64_t waited_ms,
                                 void *arg) {
  const server_wait_t *w = arg;
  uint32_t copies, leads;
  server_share(st->view, w->id, &copies, &leads);
  const Ps__NodeInfo *n = find_node(st->view, w->id);
  fprintf(stderr,
          "psctl: %s server %u (%.1f s): %s, holds %u cop%s, leads %u "
          "range(s), epoch %" PRIu64 "\n",
          w->doing, w->id, (double)waited_ms / 1e3,
          n ? state_name(n->state) : "not in view", copies,
          copies == 1 ? "y" : "ies", leads, st->view->epoch);
  fflush(stderr);
}

/* The server named by arg: a node id, or its address. 0 with the reason
 * printed when the view has no such server. */
static uint32_t resolve_server(const Ps__View *v, const char *arg) {
  char *end = NULL;
  unsigned long id = strtoul(arg, &end, 10);
  int numeric = end != arg && *end == '\0';
  for (size_t i = 0; i < v->n_nodes; i++) {
    const Ps__NodeInfo *n = v->nodes[i];
    if (n->role != PS__ROLE__ROLE_SERVER) continue;
    if (numeric ? n->id == id : (n->address && strcmp(n->address, arg) == 0))
      return n->id;
  }
  fprintf(stderr,
          "psctl: no server %s in the cluster (give a server's node id or "
          "address, as psctl status lists them)\n",
          arg);
  return 0;
}

/* psctl drain SERVER (its primaries move to backups, then it is told to
 * exit), remove-server SERVER (each of its copies is made elsewhere first)
 * or add-server SERVER (a spare takes its share); waits for the end up to
 * wait_ms. */
static int run_drain(void *sock, const char *endpoint, int64_t timeout_ms,
                     int64_t wait_ms, const char *which, int action, int json) {
  ps_msg_t m;
  uint64_t elapsed = 0;
  if (query_status(sock, endpoint, timeout_ms, &m, &elapsed) != 0) return 1;
  uint32_t id = resolve_server(m.env->status->view, which);
  char address[256] = "-";
  uint32_t copies = 0, leads = 0;
  if (id != 0) {
    const Ps__NodeInfo *n = find_node(m.env->status->view, id);
    if (n && n->address) snprintf(address, sizeof(address), "%s", n->address);
    server_share(m.env->status->view, id, &copies, &leads);
  }
  ps_msg_close(&m);
  if (id == 0) return 1;

  Ps__DrainCommand dc = PS__DRAIN_COMMAND__INIT;
  dc.server = id;
  dc.action = (Ps__ServerAction)action;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_DRAIN_COMMAND;
  env.drain_command = &dc;
  int add = action == PS__SERVER_ACTION__SERVER_ADD;
  server_wait_t w = {id, add ? "adding"
                         : action == PS__SERVER_ACTION__SERVER_REMOVE
                             ? "removing"
                             : "draining"};
  uint64_t start = ps_now_ms();
  if (await_long(sock, endpoint, timeout_ms, wait_ms, &env,
                 PS__ENVELOPE__BODY_ACK, print_drain_progress, &w,
                 add ? "add-server not complete" : "drain not complete",
                 &m) != 0)
    return 1;
  uint64_t ms = ps_now_ms() - start;
  uint64_t clock = m.env->ack->clock;
  ps_msg_close(&m);
  /* What it holds now (add-server: its share). */
  uint32_t copies_now = 0, leads_now = 0;
  if (add && query_status(sock, endpoint, timeout_ms, &m, &elapsed) == 0) {
    server_share(m.env->status->view, id, &copies_now, &leads_now);
    ps_msg_close(&m);
  }
  if (json) {
    printf("{\"server\":%u,\"address\":", id);
    ps_top_json_string(stdout, address);
    printf(
        ",\"action\":\"%s\",\"ranges_moved\":%u,\"copies\":%u,"
        "\"leads\":%u,\"clock\":%" PRIu64 ",\"duration_ms\":%" PRIu64 "}\n",
        add                                          ? "add"
        : action == PS__SERVER_ACTION__SERVER_REMOVE ? "remove"
                                                     : "drain",
        add ? leads_now : leads, add ? copies_now : copies, add ? leads_now : 0,
        clock, ms);
  } else if (add) {
    printf(
        "added server %u (%s): it holds %u cop%s and leads %u range(s) "
        "after %" PRIu64 " ms, at step %" PRIu64 "\n",
        id, address, copies_now, copies_now == 1 ? "y" : "ies", leads_now, ms,
        clock);
  } else if (action == PS__SERVER_ACTION__SERVER_REMOVE) {
    printf(
        "removed server %u (%s): its %u cop%s moved to other servers "
        "(each synced before it was dropped) in %" PRIu64
        " ms, at step %" PRIu64 "; it was told to exit\n",
        id, address, copies, copies == 1 ? "y" : "ies", ms, clock);
  } else {
    printf("drained server %u (%s): the %u range(s) it led moved to backups "
           "in %" PRIu64 " ms, at step %" PRIu64 "; it was told to exit\n",
           id, address, leads, ms, clock);
  }
  return 0;
}

/* psctl remove-worker ID (issue #16): the worker leaves the job for good
 * at a step the scheduler picks and announces; answered at once with that
 * step (the worker stops there on its own). */
static int run_remove_worker(void *sock, const char *endpoint,
                             int64_t timeout_ms, const char *which, int json) {
  unsigned long id = strtoul(which, NULL, 10); /* checked by main */
  Ps__RemoveWorkerCommand rw = PS__REMOVE_WORKER_COMMAND__INIT;
  rw.worker = (uint32_t)id;
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_REMOVE_WORKER_COMMAND;
  env.remove_worker_command = &rw;
  env.request_id = 1;
  ps_msg_t m;
  uint64_t elapsed = 0;
  if (ask(sock, endpoint, timeout_ms, &env, PS__ENVELOPE__BODY_ACK, &m,
          &elapsed) != 0)
    return 1;
  uint64_t step = m.env->ack->clock;
  ps_msg_close(&m);
  if (json)
    printf("{\"worker\":%lu,\"leave_clock\":%" PRIu64 "}\n", id, step);
  else
    printf("worker %lu leaves the job at step %" PRIu64
           " (it contributes to the steps before it)\n",
           id, step);
  return 0;
}

/* psctl stop: the scheduler ends the job and tells every node (an admin
 * key only, so CURVE only). */
static int run_stop(void *sock, const char *endpoint, int64_t timeout_ms,
                    int json) {
  Ps__Shutdown sd = PS__SHUTDOWN__INIT;
  sd.reason = (char *)"psctl stop";
  Ps__Envelope env = PS__ENVELOPE__INIT;
  env.body_case = PS__ENVELOPE__BODY_SHUTDOWN;
  env.shutdown = &sd;
  env.request_id = 1;
  ps_msg_t m;
  uint64_t elapsed = 0;
  if (ask(sock, endpoint, timeout_ms, &env, PS__ENVELOPE__BODY_ACK, &m,
          &elapsed) != 0)
    return 1;
  ps_msg_close(&m);
  if (json)
    printf("{\"stopped\":true,\"ms\":%" PRIu64 "}\n", elapsed);
  else
    printf("the scheduler at %s stops the job and every node\n", endpoint);
  return 0;
}

/* psctl keygen: a key pair into --out, no scheduler involved. */
static int run_keygen(const ps_config_t *cfg, const char *role_name,
                      const char *out, const char *name) {
  ps_key_role_t role;
  if (role_name == NULL || ps_key_role_parse(role_name, &role) != PS_OK)
    return ps_config_refuse(cfg,
                            "keygen needs --role scheduler|server|worker|admin");
  if (out == NULL || out[0] == '\0')
    return ps_config_refuse(cfg, "keygen needs --out DIR");
  char err[512];
  const char *n = name && name[0] ? name : role_name;
  int rc = ps_keys_generate(out, n, role, err, sizeof(err));
  if (rc != PS_OK) {
    fprintf(stderr, "psctl: keygen: %s\n", err);
    ps_config_free(cfg);
    return PS_EXIT_FAILURE;
  }
  printf("%s/%s.key (secret, mode 0600) and %s/%s.pub: key of role %s\n",
         out, n, out, n, role_name);
  ps_config_free(cfg);
  return PS_EXIT_OK;
}

/* psctl top: a sample to start from, then one table (or JSON object) per
 * interval with the rates since the sample before, iterations times (0:
 * until killed). A scheduler that does not answer ends it (exit 1). */
static int run_top(void *sock, const char *endpoint, int64_t timeout_ms,
                   int64_t interval_ms, int64_t iterations, int json) {
  ps_top_opts_t to = {
      .scheduler = endpoint,
      .json = json,
      .clear = !json && isatty(STDOUT_FILENO),
      .scrape_timeout_ms = timeout_ms,
  };
  ps_top_t *top = ps_top_new(&to);
  if (top == NULL) {
    fprintf(stderr, "psctl: out of memory\n");
    return 1;
  }
  if (to.clear) fputs("\033[H\033[2J", stdout);
  int64_t printed = 0;
  uint64_t next = ps_now_ms();
  int status = 0;
  for (;;) {
    ps_msg_t m;
    uint64_t elapsed = 0;
    if (query_status(sock, endpoint, timeout_ms, &m, &elapsed) != 0) {
      status = 1;
      break;
    }
    ps_top_sample(top, m.env->status);
    ps_msg_close(&m);
    if (ps_top_samples(top) >= 2) {
      ps_top_print(top, stdout);
      if (iterations > 0 && ++printed >= iterations) break;
    }
    next += (uint64_t)interval_ms;
    uint64_t now = ps_now_ms();
    if (next < now) next = now; /* a slow round: no catching up */
    while (now < next) {
      uint64_t ms = next - now;
      struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
      now = ps_now_ms();
    }
  }
  ps_top_destroy(&top);
  return status;
}

int main(int argc, char **argv) {
  char *endpoint = NULL, *dir = NULL;
  char *keys_dir = NULL, *key_file = NULL, *role = NULL, *out_dir = NULL,
       *key_name = NULL;
  int64_t timeout_ms = 3000, wait_ms = 300000;
  int64_t interval_ms = 1000, iterations = 0;
  int json = 0, insecure = 0;
  const ps_opt_t opts[] = {
      {"scheduler", PS_OPT_STRING, &endpoint, PS_DEFAULT_SCHEDULER, 0, 0, NULL,
       "Endpoint of the scheduler to ask."},
      {"timeout-ms", PS_OPT_INT, &timeout_ms, "3000", 1, 3600000, NULL,
       "Give up (exit 1) if the scheduler has not answered a request "
       "within this time (every command; checkpoint asks for progress "
       "every 2 s while it waits)."},
      {"json", PS_OPT_BOOL, &json, "false", 0, 0, NULL,
       "status, checkpoint: print one JSON object instead of text, for "
       "scripts."},
      {"dir", PS_OPT_STRING, &dir, NULL, 0, 0, NULL,
       "checkpoint: directory to write it under (ckpt-<step>/ in it), "
       "inside the scheduler's --checkpoint-dir: a path relative to it, or "
       "an absolute one within it; default: that directory itself."},
      {"wait-ms", PS_OPT_INT, &wait_ms, "300000", 1, 86400000, NULL,
       "checkpoint, drain: give up waiting (exit 1) after this long; the "
       "scheduler goes on with it."},
      {"interval-ms", PS_OPT_INT, &interval_ms, "1000", 100, 3600000, NULL,
       "top: refresh this often (rates are over the last interval)."},
      {"iterations", PS_OPT_INT, &iterations, "0", 0, 1000000000, NULL,
       "top: stop (exit 0) after this many refreshes; 0: until Ctrl-C. "
       "Also -n N."},
      {"keys-dir", PS_OPT_STRING, &keys_dir, NULL, 0, 0, NULL,
       PS_KEYS_DIR_HELP " psctl's role is admin. Default: "
       PS_DEFAULT_KEYS_DIR " when psctl may read its admin.key (the "
       "package makes it), else none."},
      {"key", PS_OPT_STRING, &key_file, NULL, 0, 0, NULL, PS_KEY_FILE_HELP},
      {"insecure", PS_OPT_BOOL, &insecure, "false", 0, 0, NULL,
       PS_INSECURE_HELP},
      {"role", PS_OPT_STRING, &role, NULL, 0, 0, NULL,
       "keygen: the key's role, scheduler|server|worker|admin."},
      {"out", PS_OPT_STRING, &out_dir, NULL, 0, 0, NULL,
       "keygen: the directory to write NAME.key (mode 0600) and NAME.pub "
       "into; made (mode 0700) if missing. An existing key is never "
       "overwritten."},
      {"name", PS_OPT_STRING, &key_name, NULL, 0, 0, NULL,
       "keygen: the key's name (its files' names). Default: the role."},
  };
  const ps_config_t cfg = {
      .program = "psctl",
      .summary =
          "Ask the scheduler of a parameter-server job. Commands: "
          "status (nodes and what they hold, key ranges with their primary, "
          "backups and state, epoch, consistency mode (ssp: with its "
          "staleness), checkpoints), health (exit 0 "
          "if the scheduler answers in time, else 1), checkpoint (write "
          "one at the next step boundary and wait until it is complete), "
          "drain SERVER (move every range the server leads to a backup in "
          "step, drop it from every chain and tell it to exit 0: planned "
          "maintenance without a failover; SERVER is its node id or "
          "address), "
          "remove-server SERVER (as drain, but each copy the server holds "
          "is first made on another server and synced, so no range has "
          "fewer copies meanwhile), "
          "add-server SERVER (a spare server, one that registered without "
          "--join, takes its share: copies move to it one at a time, each "
          "synced before the old one goes, then primaries are evened out; "
          "waits until nothing is left to move), "
          "top (a table of the nodes refreshed every --interval-ms, like "
          "top: servers' ranges, pushes/s, pulls/s and MB/s in, workers' "
          "step, steps/s, samples/s, loss and test accuracy; the rates come "
          "from the /metrics of daemons started with --metrics-bind; "
          "redrawn in place on a terminal, else one snapshot after "
          "another; --json: one object per refresh, per line), "
          "remove-worker ID (issue #16: the worker with node id ID "
          "leaves the job for good at a step the scheduler picks ahead of "
          "every clock and prints; the rest go on, the global batch and the "
          "data shards re-cut at that step), "
          "stop (end the job: every node stops; needs an admin key), "
          "keygen --role R --out DIR [--name NAME] (write a CURVE key "
          "pair: NAME.key, secret, mode 0600, and NAME.pub).",
      .usage =
          "[options] status|health|checkpoint|drain SERVER|"
          "remove-server SERVER|add-server SERVER|remove-worker ID|top|stop|"
          "keygen",
      .opts = opts,
      .nopts = sizeof(opts) / sizeof(opts[0]),
  };
  const char *args[2];
  int nargs = 0;
  char err[512];
  /* -n N, as top and watch take it, is --iterations N. */
  char **av = calloc((size_t)argc + 1, sizeof(*av));
  if (av == NULL) {
    fprintf(stderr, "psctl: out of memory\n");
    return PS_EXIT_FAILURE;
  }
  for (int i = 0; i < argc; i++)
    av[i] = strcmp(argv[i], "-n") == 0 ? (char *)"--iterations" : argv[i];
  int rc = ps_config_load(&cfg, argc, av, args, 2, &nargs, err, sizeof(err));
  free(av);
  if (rc == 1) return PS_EXIT_OK;
  if (rc == PS_OK)
    rc = ps_config_check_endpoint("scheduler", endpoint, 0, err, sizeof(err));
  if (rc != PS_OK) return ps_config_refuse(&cfg, "%s", err);
  int is_status = nargs == 1 && strcmp(args[0], "status") == 0;
  int is_health = nargs == 1 && strcmp(args[0], "health") == 0;
  int is_checkpoint = nargs == 1 && strcmp(args[0], "checkpoint") == 0;
  int drain_action = -1;
  if (nargs >= 1 && strcmp(args[0], "drain") == 0)
    drain_action = PS__SERVER_ACTION__SERVER_DRAIN;
  else if (nargs >= 1 && strcmp(args[0], "remove-server") == 0)
    drain_action = PS__SERVER_ACTION__SERVER_REMOVE;
  else if (nargs >= 1 && strcmp(args[0], "add-server") == 0)
    drain_action = PS__SERVER_ACTION__SERVER_ADD;
  int is_drain = drain_action >= 0;
  int is_top = nargs == 1 && strcmp(args[0], "top") == 0;
  int is_stop = nargs == 1 && strcmp(args[0], "stop") == 0;
  int is_remove = nargs >= 1 && strcmp(args[0], "remove-worker") == 0;
  if (is_remove && nargs != 2)
    return ps_config_refuse(&cfg,
                            "remove-worker needs one ID: the worker's "
                            "node id, as psctl status lists it");
  if (nargs == 1 && strcmp(args[0], "keygen") == 0)
    return run_keygen(&cfg, role, out_dir, key_name);
  if (is_drain && nargs != 2)
    return ps_config_refuse(&cfg,
                            "%s needs one SERVER: its node id or address, as "
                            "psctl status lists them",
                            args[0]);
  if (!is_status && !is_health && !is_checkpoint && !is_drain && !is_top &&
      !is_stop && !is_remove) {
    if (nargs == 1)
      return ps_config_refuse(&cfg,
                              "unknown command \"%s\": expected status, "
                              "health, checkpoint, drain, remove-server, "
                              "add-server, remove-worker, top, stop or keygen",
                              args[0]);
    return ps_config_refuse(&cfg,
                            "expected one command, status, health, "
                            "checkpoint, drain, remove-server, add-server, "
                            "remove-worker, top, stop or keygen");
  }
  if (is_remove) {
    char *end = NULL;
    unsigned long id = strtoul(args[1], &end, 10);
    if (args[1][0] < '0' || args[1][0] > '9' || *end != '\0' || id == 0 ||
        id > UINT32_MAX)
      return ps_config_refuse(&cfg,
                              "remove-worker \"%s\": expected a worker's "
                              "node id (a positive integer, as psctl status "
                              "lists it)",
                              args[1]);
  }
  ps_log_init("psctl", PS_LOG_WARN);
  /* The package's node keys (deploy/debian/postinst): an admin on the node
   * runs `psctl status` with nothing to add. Only when psctl may read the
   * admin key, so a user without it still gets the error that asks for
   * --keys-dir or --insecure. */
  if ((keys_dir == NULL || keys_dir[0] == '\0') && !insecure &&
      access(PS_DEFAULT_KEYS_DIR "/admin.key", R_OK) == 0) {
    free(keys_dir); /* the options' strings are freed with the config */
    if ((keys_dir = strdup(PS_DEFAULT_KEYS_DIR)) == NULL) {
      fprintf(stderr, "psctl: out of memory\n");
      ps_config_free(&cfg);
      return PS_EXIT_FAILURE;
    }
  }
  ps_keys_t *keys = NULL;
  if (ps_keys_for_program(keys_dir, key_file, insecure, PS_KEY_ROLE_ADMIN,
                          NULL, &keys, err, sizeof(err)) != PS_OK)
    return ps_config_refuse(&cfg, "%s", err);
  psctl_keyed = keys != NULL;

  void *ctx = zmq_ctx_new();
  void *sock = zmq_socket(ctx, ZMQ_DEALER);
  int status = 1;
  if (sock == NULL) {
    fprintf(stderr, "psctl: zmq_socket: %s\n", zmq_strerror(zmq_errno()));
    goto out;
  }
  /* Linger 0: an unanswered request must not keep psctl from exiting;
   * send timeout 0: nor a scheduler that refused the handshake (no pipe
   * left to send on), see ps_zsock_configure. */
  int zero = 0;
  zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
  zmq_setsockopt(sock, ZMQ_SNDTIMEO, &zero, sizeof(zero));
  if (keys && ps_keys_apply(sock, keys, ps_keys_scheduler_key(keys), err,
                            sizeof(err)) != PS_OK) {
    fprintf(stderr, "psctl: %s\n", err);
    goto out;
  }
  if (ps_zmq_connect(sock, endpoint) != 0) {
    fprintf(stderr, "psctl: cannot connect to %s: %s\n", endpoint,
            zmq_strerror(zmq_errno()));
    goto out;
  }
  if (is_checkpoint) {
    status = run_checkpoint(sock, endpoint, timeout_ms, wait_ms, dir, json);
    goto out;
  }
  if (is_drain) {
    status = run_drain(sock, endpoint, timeout_ms, wait_ms, args[1],
                       drain_action, json);
    goto out;
  }
  if (is_remove) {
    status = run_remove_worker(sock, endpoint, timeout_ms, args[1], json);
    goto out;
  }
  if (is_stop) {
    status = run_stop(sock, endpoint, timeout_ms, json);
    goto out;
  }
  if (is_top) {
    status = run_top(sock, endpoint, timeout_ms, interval_ms, iterations, json);
    goto out;
  }
  ps_msg_t m;
  uint64_t elapsed = 0;
  if (query_status(sock, endpoint, timeout_ms, &m, &elapsed) != 0) goto out;
  const Ps__Status *st = m.env->status;
  if (is_health) {
    printf("ok: scheduler %s answered in %" PRIu64 " ms (epoch %" PRIu64
           ", %zu nodes, live workers %u)\n",
           endpoint, elapsed, st->view->epoch, st->view->n_nodes,
           st->view->live_workers);
  } else if (json) {
    print_json(endpoint, st);
  } else {
    print_table(endpoint, st);
  }
  ps_msg_close(&m);
  status = 0;
out:
  if (sock) zmq_close(sock);
  zmq_ctx_term(ctx);
  ps_keys_destroy(&keys);
  ps_config_free(&cfg);
  return status;
}
