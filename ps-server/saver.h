/* The server's side of checkpoints: writes this server's shards at the step
 * the scheduler asks for, and loads them back when a job is restored.
 *
 * Writing. A CheckpointRequest names a step T and a directory. In BSP a
 * shard's weights change only when a step is applied, so its state "as of
 * clock T" lasts from the apply that brings it to T until the next apply.
 * The saver copies (snapshots) the weights and optimizer state of each shard
 * inside that window: when the request arrives if the shard is at T, else right
 * after the apply that brings it there (ps_saver_shard_applied, which the
 * server calls before anything else can touch the shard). The copies are
 * written on libuv's thread pool, so the loop goes on serving and training
 * is not held up by the disk; the price is one copy of the server's state in
 * memory while it is written. A shard already past T is answered "late",
 * with its clock, and the scheduler picks a later step. In ASP there is no
 * step boundary: the shards are snapshotted when the request arrives (best
 * effort; the files record each shard's clock).
 *
 * The saver answers each request twice through reply_cb: at once (accepted,
 * late, or refused), and once the files are durable (written, with their
 * names, sizes and CRC32C) or could not be written.
 *
 * Restoring. ps_saver_restore reads the manifest of a checkpoint directory
 * and the shard files that overlap the given ranges, all verified, on the
 * thread pool, and hands the weights to restored_cb on the loop.
 *
 * Loop thread only (the one that runs loop).
 */
#ifndef PS_SERVER_SAVER_H
#define PS_SERVER_SAVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/view.h"
#include "proto/ps.pb-c.h"
#include "shard.h"
#include "sparse.h"

typedef struct ps_saver_s ps_saver_t;

/* A sparse table's rows of one range as loaded from a checkpoint. */
typedef struct {
  uint64_t nrows;
  uint64_t *ids;
  float *rows; /* nrows whole rows (ps_sparse_table_row_floats each) */
  /* The table's admission sketch (PS_CHECKPOINT_SECTION_SKETCH), or NULL
   * when the checkpoint has none. */
  uint32_t *sketch;
  size_t sketch_cells;
} ps_saver_rows_t;

/* One range as loaded from a checkpoint: end - begin weights, the
 * optimizer state (ps_model_state_slots times as many, NULL when 0), the
 * model's tensors' update counts (one per tensor) and the range's sparse
 * rows (weights and optimizer state, whole). Owned by the saver; valid
 * during restored_cb only. */
typedef struct {
  uint64_t begin, end;
  uint64_t clock;
  float *weights;
  float *state;
  uint64_t *tensor_steps;
  ps_saver_rows_t *sparse; /* one per sparse table of the model */
  size_t nsparse;
} ps_saver_range_t;

typedef struct {
  /* An answer for the scheduler; the reply and what it points to are valid
   * during the call only. */
  void (*reply_cb)(ps_saver_t *sv, Ps__CheckpointReply *reply, void *arg);
  /* A restore ended: status PS_OK with n ranges, or the failure and why. */
  void (*restored_cb)(ps_saver_t *sv, int status, const char *reason,
                      const ps_saver_range_t *ranges, size_t n, void *arg);
  void *arg;
} ps_saver_cbs_t;

/* What the saver needs to know about the server when a request arrives. */
typedef struct {
  ps_shard_t *const *shards; /* the server's shards now */
  size_t nshards;
  /* sparse[i]: the nsparse sparse tables of shard i's range. */
  ps_sparse_table_t *const *const *sparse;
  size_t nsparse;
  uint64_t fingerprint; /* ps_checkpoint_fingerprint of the job's model */
  uint64_t view_epoch;
  uint32_t node_id;
} ps_saver_ctx_t;

/* Caller owns the result (ps_saver_destroy). NULL when out of memory. */
ps_saver_t *ps_saver_new(uv_loop_t *loop, const ps_saver_cbs_t *cbs);

/* A CheckpointRequest from the scheduler. A request with a new id replaces
 * one still waiting for its step; the same id again (the scheduler saying
 * the job finished) fails the shards that have not reached the step. */
void ps_saver_request(ps_saver_t *sv, const Ps__CheckpointRequest *req,
                      const ps_saver_ctx_t *ctx);

/* shard just applied a step (its clock moved); tables are its range's
 * ntables sparse tables, with the step applied too. */
void ps_saver_shard_applied(ps_saver_t *sv, const ps_shard_t *shard,
                            ps_sparse_table_t *const *tables, size_t ntables);

/* Starts loading ranges[0..n) from the checkpoint directory dir for a job
 * of model, whose step must be step. parts[0..nparts) are the view's sparse
 * partitions (its non-empty ranges, in order: ps_view_sparse_range): every
 * shard file's sparse rows are read and each row goes to the loaded range
 * that is its partition now, whatever number of servers wrote them.
 * Returns PS_OK (restored_cb follows) or PS_ERR_NOMEM / PS_ERR_INVAL at
 * once. */
int ps_saver_restore(ps_saver_t *sv, const char *dir, const ps_model_t *model,
                     uint64_t step, const ps_range_t *ranges, size_t n,
                     const ps_range_t *parts, size_t nparts);

/* 1 while a write or a restore runs on the thread pool. */
int ps_saver_busy(const ps_saver_t *sv);

/* Frees the saver now, or, if work is still on the thread pool, once it is
 * done (the loop must run until then); no callback runs after this. Sets
 * *sv_p to NULL. */
void ps_saver_destroy(ps_saver_t **sv_p);

#endif
