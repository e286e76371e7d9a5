/* The checkpoint coordinator: runs one coordinated checkpoint at a time
 * across the servers of a job (ARCHITECTURE "Failure semantics" 5).
 *
 * BSP: it picks a step boundary T (the next multiple of every_steps, or a
 * little past the highest clock the servers reported), asks every server to
 * write its shards as of clock T into base/ckpt-<T>, and waits. A server
 * already past T answers "late" with its clock; the attempt is dropped and
 * a new one picks a later T (a fresh id; up to PS_COORD_MAX_ATTEMPTS). Once
 * every server's files are durable the coordinator writes the MANIFEST,
 * last, then base/LATEST. ASP has no boundary: servers write what they hold
 * when the request arrives (best effort), and the manifest's step is the
 * least clock among the files.
 *
 * A checkpoint fails (done_cb with the reason; no MANIFEST is written, so
 * nothing can restore from it) when a server refuses or dies, when the job
 * ends before T is reached, or after timeout_ms. An attempt failed or
 * dropped has its shard files and directory removed, at once and again when
 * a server reports files it finished later, so a full disk is not filled
 * further by attempts that will never be checkpoints.
 *
 * Pure coordination over callbacks: the scheduler forwards replies and
 * membership changes and sends what send_cb asks for. Loop thread only.
 */
#ifndef PS_SCHEDULER_COORDINATOR_H
#define PS_SCHEDULER_COORDINATOR_H

#include <stddef.h>
#include <stdint.h>

#include "common/checkpoint.h"
#include "common/view.h"
#include "proto/ps.pb-c.h"

#define PS_COORD_MAX_ATTEMPTS 8

typedef struct ps_coord_s ps_coord_t;

/* A checkpoint written. */
typedef struct {
  uint64_t id, step;
  char dir[PS_CHECKPOINT_PATH_MAX]; /* the checkpoint directory */
  char name[PS_CHECKPOINT_NAME_MAX];
  uint64_t bytes;       /* all shard files */
  uint32_t shards;      /* files */
  uint64_t duration_ms; /* start to MANIFEST durable */
  uint64_t write_ms;    /* the slowest server: snapshot to durable */
  uint64_t created_unix_ms;
  int attempts;
  const char *reason; /* what asked for it (a static string) */
} ps_coord_result_t;

typedef struct {
  /* Send req to the server with this node id. */
  void (*send_cb)(ps_coord_t *c, uint32_t node_id, Ps__CheckpointRequest *req,
                  void *arg);
  /* The checkpoint ended: PS_OK with res, or a failure and why (res NULL). */
  void (*done_cb)(ps_coord_t *c, int status, const char *reason,
                  const ps_coord_result_t *res, void *arg);
  void *arg;
} ps_coord_cbs_t;

typedef struct {
  const char *base;        /* absolute; gets base/ckpt-<step> */
  const char *reason;      /* static string: "psctl", "every_steps", ... */
  uint64_t every_steps;    /* > 0: T is the next multiple of this */
  const uint32_t *servers; /* node ids of the servers to ask */
  size_t nservers;
  uint64_t max_clock;      /* the highest clock the servers reported */
  const ps_model_t *model; /* copied */
  int mode;                /* PS__CONSISTENCY_MODE__* */
  uint64_t view_epoch;
  int timeout_ms; /* > 0 */
} ps_coord_start_t;

/* next_id: the id of the first checkpoint (ids are never reused, so a
 * late reply to an old request cannot be mistaken for a new one). NULL when
 * out of memory. Caller owns the result. */
ps_coord_t *ps_coord_new(const ps_coord_cbs_t *cbs, uint64_t next_id);

/* Cancels a checkpoint in progress (no callback) and frees; *c_p = NULL. */
void ps_coord_destroy(ps_coord_t **c_p);

/* Starts a checkpoint. Returns PS_OK, or PS_ERR_REFUSED (one is running),
 * PS_ERR_INVAL, PS_ERR_IO (the directory cannot be made), PS_ERR_NOMEM with
 * err; then no callback follows. */
int ps_coord_start(ps_coord_t *c, const ps_coord_start_t *st, uint64_t now_ms,
                   char *err, size_t errlen);

/* A CheckpointReply from server node_id. */
void ps_coord_on_reply(ps_coord_t *c, uint32_t node_id,
                       const Ps__CheckpointReply *r, uint64_t now_ms);

/* Server node_id is gone (dead, left). */
void ps_coord_server_lost(ps_coord_t *c, uint32_t node_id);

/* No more steps will be applied: servers short of the step are told so and
 * fail the checkpoint at once instead of at the timeout. */
void ps_coord_job_finished(ps_coord_t *c);

/* Checks the timeout. */
void ps_coord_tick(ps_coord_t *c, uint64_t now_ms);

/* Ends a checkpoint in progress with done_cb(code, reason). */
void ps_coord_fail(ps_coord_t *c, int code, const char *reason);

int ps_coord_active(const ps_coord_t *c);
/* Of the checkpoint in progress (or, inside done_cb, the one that ended): */
const char *ps_coord_base(const ps_coord_t *c);
const char *ps_coord_dir(const ps_coord_t *c);
const char *ps_coord_reason(const ps_coord_t *c);
uint64_t ps_coord_id(const ps_coord_t *c);
uint64_t ps_coord_step(const ps_coord_t *c);
uint64_t ps_coord_started_ms(const ps_coord_t *c);
/* The id the next attempt will take (persisted by the scheduler). */
uint64_t ps_coord_next_id(const ps_coord_t *c);
void ps_coord_set_next_id(ps_coord_t *c, uint64_t next_id);

#endif
