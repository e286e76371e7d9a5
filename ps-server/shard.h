/* A dense shard: the state a server keeps for one contiguous range
 * [begin, end) of the key space, and the consistency rules that change it.
 *
 * It holds the weights (initialised per tensor with ps_init_fill, so any split
 * of the key space gives the same bits), the optimizer state (k floats per
 * key, k = ps_model_state_slots, as k planes of the range's length; each
 * tensor's optimizer uses the first planes it needs), the number of updates
 * applied to each tensor piece (Adam's step count), the BSP gradient
 * accumulator and the server clock: the number of BSP steps applied.
 * The learning-rate schedule's step is the BSP step applied, or an ASP
 * push's step.
 *
 * BSP: a push carries the worker's step and is accepted only for step ==
 * clock, from a worker of the live set; its values are summed into the
 * accumulator. The step is applied with the mean gradient, and the clock
 * advances, once every live worker has pushed the whole range. Contributions
 * are counted per worker, not in total: a worker that pushed step t and then
 * left (Done, death) stays in step t's mean, and the workers still live must
 * still push, so a worker finishing first cannot cut the others' step short.
 * A worker that rejoined a running job is waited for only from its
 * from_step on (ps_shard_set_live).
 * SSP (stale synchronous parallel, staleness S): steps are applied as in
 * BSP, one at a time, in order, each with the mean of its contributions,
 * so S = 0 is BSP bit for bit. A push for step t is accepted while
 * clock <= t <= clock + S and summed into its step's own accumulator (a
 * ring of S + 1, so memory is (S + 1) x the range); a step whose
 * contributions came in early is applied when the clock reaches it
 * (ps_shard_apply_ready). The server answers a pull at worker clock c once
 * the clock is >= c - S (the shard only keeps the clock).
 * ASP: a push is applied on arrival, scaled by 1/live workers so the step
 * per sample matches BSP's; the clock is the highest step seen + 1, so a
 * pull reply still says which steps it may contain.
 * OPT_ADD (counters, the chaos ledger): w += g exactly, whatever the model's
 * learning rate, momentum and schedule; ASP pushes are not scaled and a BSP
 * step adds the sum of its contributions, not the mean.
 *
 * Weights are kept in blocks of PS_SHARD_BLOCK_KEYS keys, each an immutable
 * version while anyone outside the shard references it: a pull reply is sent
 * straight from a version (ps_shard_runs, ps_shard_pin), and ZeroMQ's I/O
 * thread drops the reference when it has written the bytes
 * (ps_shard_unpin, a zmq_free_fn). An apply to a block whose version is
 * pinned writes the new weights into a fresh version (out-of-place kernel,
 * no extra pass over the pushed keys; only the block's keys outside the
 * push are copied) and the old one is reused once released. An unpinned
 * block is updated in place. So the data plane copies nothing, and a pull
 * never sees a half-applied push.
 *
 * Pure state, no sockets and no logging: the server module drives it. Not
 * thread-safe; one thread (the server's loop) owns a shard. The only
 * exception is ps_shard_unpin, which any thread may call, also after the
 * shard was destroyed.
 */
#ifndef PS_SERVER_SHARD_H
#define PS_SERVER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

typedef struct ps_shard_s ps_shard_t;

/* Keys per block of weights (1 MiB of float32): the unit of copy-on-write.
 * Small enough that a push rarely copies much beside itself, large enough
 * that a 16 MiB pull reply is a handful of frames. */
#define PS_SHARD_BLOCK_KEYS (1u << 18)

/* One immutable copy of one block's weights; see ps_shard_pin. */
typedef struct ps_shard_version_s ps_shard_version_t;

/* A contiguous run of weights, as ps_shard_runs describes a slice. */
typedef struct {
  const float *data;
  uint64_t count;
  ps_shard_version_t *version; /* what to pin to send data without a copy */
  /* 1 when the run is worth sending without a copy: a pinned version makes
   * the next apply to its block copy the keys outside that apply, so short
   * runs in long blocks are cheaper copied. */
  int zero_copy;
} ps_shard_run_t;

/* The piece [begin, end) (range offsets) of the model's tensor `tensor`
 * that the range holds, and its optimizer. */
typedef struct {
  size_t tensor;
  uint64_t begin, end;
  ps_optimizer_spec_t optimizer;
} ps_shard_segment_t;

/* Counters for tests and metrics. */
typedef struct {
  uint64_t versions;      /* block buffers allocated now (live + spare) */
  uint64_t versions_peak; /* the most there ever were at once */
  uint64_t cow_applies;   /* block applies that wrote a fresh version */
  uint64_t cow_copied;    /* keys copied by those (outside the push) */
  uint64_t torn_applies;  /* BSP steps applied in place to pinned blocks
                             for want of memory */
  uint64_t skipped_steps; /* BSP steps no live worker contributed to (every
                             live worker joined later: ps_shard_set_live) */
} ps_shard_stats_t;

/* Creates the shard for [begin, end) of model, in consistency mode
 * (PS__CONSISTENCY_MODE__*), with the nlive worker node ids in live
 * contributing to each BSP step (copied). Nothing of model is kept: the
 * weights are initialised from its tensors and its optimizer settings are
 * copied. Returns NULL and fills
 * *err and errbuf on a bad range (empty, beyond the model), an unsupported
 * mode or optimizer, a worker listed twice, or out of memory.
 * Caller owns the result (ps_shard_destroy). */
ps_shard_t *ps_shard_new(uint64_t begin, uint64_t end, const ps_model_t *model,
                         int mode, const uint32_t *live, size_t nlive, int *err,
                         char *errbuf, size_t errlen);

/* The same with SSP's staleness bound (0 to PS_SSP_STALENESS_MAX; only
 * MODE_SSP may have one above 0, else PS_ERR_INVAL). ps_shard_new is this
 * with staleness 0. */
ps_shard_t *ps_shard_new_ssp(uint64_t begin, uint64_t end,
                             const ps_model_t *model, int mode,
                             uint32_t staleness, const uint32_t *live,
                             size_t nlive, int *err, char *errbuf,
                             size_t errlen);

/* The same, calling tick(tick_arg) after every block of keys it fills (a
 * few ms each; NULL: none). A server builds its shards on its loop, which
 * sends nothing meanwhile: a range of tens of MB takes most of a second,
 * and without a heartbeat from the tick the scheduler would declare the
 * server dead. */
typedef void (*ps_shard_tick_fn)(void *arg);
ps_shard_t *ps_shard_new_tick(uint64_t begin, uint64_t end,
                              const ps_model_t *model, int mode,
                              uint32_t staleness, const uint32_t *live,
                              size_t nlive, ps_shard_tick_fn tick,
                              void *tick_arg, int *err, char *errbuf,
                              size_t errlen);

/* Frees the shard and sets *s_p to NULL. NULL-safe. Versions still pinned
 * are freed by their last ps_shard_unpin. */
void ps_shard_destroy(ps_shard_t **s_p);

uint64_t ps_shard_begin(const ps_shard_t *s);
uint64_t ps_shard_end(const ps_shard_t *s);
/* BSP: steps applied. ASP: the highest step pushed + 1 (0 before any). */
uint64_t ps_shard_clock(const ps_shard_t *s);
int ps_shard_mode(const ps_shard_t *s);
size_t ps_shard_live_workers(const ps_shard_t *s);
/* Values received for the current BSP step, from all workers (0 in ASP). */
uint64_t ps_shard_received(const ps_shard_t *s);
/* The SSP staleness bound (0 in BSP and ASP). */
uint32_t ps_shard_staleness(const ps_shard_t *s);
/* Values received for step (0 outside [clock, clock + staleness]). */
uint64_t ps_shard_pending_received(const ps_shard_t *s, uint64_t step);

/* 1 if [key_begin, key_begin + count) is non-empty and inside the shard. */
int ps_shard_contains(const ps_shard_t *s, uint64_t key_begin, uint64_t count);

/* Pushes worker's gradient g of count values for keys [key_begin, key_begin
 * + count) as the worker's step. worker is the sender's node id. g is only
 * read, during the call, and may be the received frame itself. On PS_OK,
 * *applied (if non-NULL) is 1 when the push completed a BSP step or was
 * applied at once (ASP), else 0.
 * Refused, with nothing changed and the reason in errbuf:
 *   PS_ERR_UNKNOWN_KEY  the slice is empty or not inside the shard;
 *   PS_ERR_REFUSED      a live worker's step is below its from_step (a
 *                       push from before it rejoined; see
 *                       ps_shard_set_live); BSP only: step != clock (a
 *                       smaller step is a duplicate or stale push, a larger
 *                       one comes from a worker that did not pull first;
 *                       SSP: step outside [clock, clock + staleness]),
 *                       worker is not in the live set, or the worker would
 *                       push more values than the range holds for this step
 *                       (a duplicate);
 *   PS_ERR_NOMEM        no memory to track one more contributor. */
int ps_shard_push(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                  uint64_t count, const float *g, uint64_t step, int *applied,
                  char *errbuf, size_t errlen);

/* The same in two phases, so that the server can acknowledge a push before
 * it spends the time to apply it: ps_shard_push_begin makes every check
 * and reservation ps_shard_push does (the same refusals, and nothing
 * changed on one), and sets *clock_after (if non-NULL) to the clock the
 * shard will have; ps_shard_push_end, with the same arguments and g, then
 * applies and cannot fail. Nothing else may touch the shard in between
 * (a pull would not see the push); unpins may. */
int ps_shard_push_begin(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                        uint64_t count, uint64_t step, uint64_t *clock_after,
                        char *errbuf, size_t errlen);
void ps_shard_push_end(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                       uint64_t count, const float *g, uint64_t step,
                       int *applied);

/* SSP: after a step was applied (a push, a live-set change, another call
 * of this), applies the next one if every worker it waits for pushed it
 * already, and returns 1; else 0 (always in BSP and ASP). One step per
 * call, so the caller can act at every clock (a checkpoint waits for one,
 * parked pulls for another): loop while it returns 1. */
int ps_shard_apply_ready(ps_shard_t *s);

/* What the range's sparse rows (ps-server/sparse.h) need to follow the
 * same rules as its dense keys. ps_shard_check_step: PS_OK if worker may
 * push for step now (the step and live-set checks of ps_shard_push_begin,
 * the same refusals). ps_shard_push_scale: what an ASP push is scaled by
 * (1 / live workers). ps_shard_step_scale: what the last BSP step applied
 * scaled its sum by (1 / contributors), read when ps_shard_push_end or
 * ps_shard_set_live says a step applied; that step is ps_shard_clock - 1.
 * OPT_ADD ignores both (ps_optimizer_apply adds the sum exactly).
 * ps_shard_check_step refuses every step in SSP (PS_ERR_UNSUPPORTED): the
 * sparse rows keep one pending sum, not one per step. */
int ps_shard_check_step(const ps_shard_t *s, uint32_t worker, uint64_t step,
                        char *errbuf, size_t errlen);
float ps_shard_push_scale(const ps_shard_t *s);
float ps_shard_step_scale(const ps_shard_t *s);

/* Replication one step at a time (BSP, ps-server/replica.h).
 *
 * ps_shard_step_sum, on the primary: the sum the last BSP step applied
 * (ps_shard_end - ps_shard_begin values; SGD pieces already times the
 * schedule's factor), its step in *step and the scale it was applied with
 * in *scale; NULL when a push of the next step has written over it or no
 * step was applied. Valid until the next push.
 *
 * ps_shard_follow_step, on a backup: the primary moved the clock from step
 * to clock_after, first applying sum (NULL: none; else the range's length
 * in values) times scale as step. The copy's own part of a step (what a
 * snapshot brought) is dropped: sum holds every contribution. *applied
 * (if non-NULL) says whether the clock moved. A copy already at
 * clock_after ignores it (its snapshot was taken later): PS_OK, *applied
 * 0. Refused (PS_ERR_REFUSED, nothing changed) when the copy's clock is not
 * step, or when the shard is not BSP.
 *
 * ps_shard_set_live_only: installs the live set (as ps_shard_set_live)
 * but never completes or skips a step: a backup that follows its
 * primary's steps learns of those from ps_shard_follow_step. PS_OK,
 * PS_ERR_INVAL or PS_ERR_NOMEM (nothing changed). */
const float *ps_shard_step_sum(const ps_shard_t *s, uint64_t *step,
                               float *scale);
int ps_shard_follow_step(ps_shard_t *s, uint64_t step, const float *sum,
                         float scale, uint64_t clock_after, int *applied,
                         char *errbuf, size_t errlen);
/* Copies the current weights of [key_begin, key_begin + count) into out.
 * Returns PS_OK or PS_ERR_UNKNOWN_KEY (with errbuf) if the slice is empty or
 * not inside the shard. */
int ps_shard_read(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  float *out, char *errbuf, size_t errlen);

/* Describes the current weights of [key_begin, key_begin + count) as runs,
 * one per block it touches, in key order, into runs[0..max). Returns the
 * number of runs the slice needs (more than max: only max were filled), or
 * PS_ERR_UNKNOWN_KEY (with errbuf) if the slice is not inside the shard.
 * The runs are valid until the next call that changes the shard, unless
 * pinned. */
int ps_shard_runs(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  ps_shard_run_t *runs, int max, char *errbuf, size_t errlen);

/* Takes a reference on v: the values of every run that named it stay
 * unchanged (and allocated) until the matching ps_shard_unpin, whatever is
 * pushed or whether the shard is destroyed meanwhile. Loop thread. */
void ps_shard_pin(ps_shard_version_t *v);

/* Drops a reference taken by ps_shard_pin. Any thread; the signature is a
 * zmq_free_fn (data is ignored, version is the hint), so a frame built with
 * zmq_msg_init_data(.., ps_shard_unpin, version) releases it when ZeroMQ is
 * done. */
void ps_shard_unpin(void *data, void *version);

/* A contiguous copy of the whole range's current weights (ps_shard_end -
 * ps_shard_begin values), owned by the shard and valid until the next call
 * that changes it; NULL if out of memory. Costs a copy of the range: for
 * checkpoints and tests, not the data plane. */
const float *ps_shard_weights(ps_shard_t *s);

/* The optimizer state (*slots planes of end - begin floats, slot-major;
 * *slots may be 0), or NULL when no tensor's optimizer keeps any. */
const float *ps_shard_opt_state(const ps_shard_t *s, int *slots);

/* The range's tensor pieces, in key order (*n of them), and the updates
 * applied to each (as many values). Valid until the shard is destroyed. */
const ps_shard_segment_t *ps_shard_segments(const ps_shard_t *s, size_t *n);
const uint64_t *ps_shard_opt_steps(const ps_shard_t *s);

/* Replaces the whole range's state: weights (end - begin values), the
 * optimizer state (slots x (end - begin) values; ignored when the shard
 * keeps none; NULL zeroes it), the update counts (tensor_steps: one per
 * tensor of the model, by tensor index; NULL: zero) and the clock; a BSP step
 * in progress is dropped. For restoring a checkpoint. Returns PS_OK or
 * PS_ERR_NOMEM with the shard unchanged. */
int ps_shard_load(ps_shard_t *s, const float *weights, const float *state,
                  const uint64_t *tensor_steps, uint64_t clock);

/* One worker's share of the current BSP step, as a snapshot carries it
 * (proto/ps.proto ReplicaSnapshot, frame "contrib"): raw little-endian. */
typedef struct {
  uint64_t worker;
  uint64_t received; /* values of the range pushed this step */
} ps_shard_contrib_t;

/* A worker of the live set and the first BSP step it contributes to (a
 * worker that joined a running job is not waited for before it). */
typedef struct {
  uint64_t worker;
  uint64_t from_step;
} ps_shard_live_t;

/* SSP: the sum of a step after the current one and who pushed to it. */
typedef struct {
  uint64_t acc_lo, acc_hi;
  const float *acc; /* range offsets [acc_lo, acc_hi) */
  const ps_shard_contrib_t *contrib;
  size_t ncontrib;
} ps_shard_pending_t;

/* The whole state of a shard, everything a backup needs to go on exactly
 * where the shard is (replication, issue #4). Arrays are the shard's own
 * (export) or the caller's (import). */
typedef struct {
  uint64_t clock;
  const float *weights;  /* end - begin values */
  /* Optimizer state: state_slots x (end - begin) values, slot-major; NULL
   * when state_slots is 0. */
  const float *state;
  int state_slots;
  const uint64_t *opt_steps; /* per tensor piece (ps_shard_segments) */
  size_t nopt_steps;
  /* The current BSP step's sum of range offsets [acc_lo, acc_hi) (ASP:
   * always empty). */
  uint64_t acc_lo, acc_hi;
  const float *acc; /* acc_hi - acc_lo values */
  const ps_shard_live_t *live;
  size_t nlive;
  const ps_shard_contrib_t *contrib;
  size_t ncontrib;
  /* SSP: the sums of steps clock + 1 .. clock + npending (pending[i] is
   * step clock + 1 + i; npending <= staleness; an export stops at the
   * last one anyone pushed to). */
  const ps_shard_pending_t *pending;
  size_t npending;
} ps_shard_state_t;

/* Describes the shard's state in *out; the arrays are valid until the next
 * call that changes the shard. Returns PS_OK or PS_ERR_NOMEM (the weights
 * are gathered into one copy, ps_shard_weights). */
int ps_shard_export(ps_shard_t *s, ps_shard_state_t *out);

/* The same without the weights (out->weights NULL): for a caller that
 * sends them straight from the block versions (ps_shard_runs). Cannot
 * fail. */
void ps_shard_export_state(const ps_shard_t *s, ps_shard_state_t *out);

/* Replaces the shard's whole state with *st (copied; st may be this
 * shard's own export): weights, optimizer state and update counts, clock,
 * BSP step in progress, live set. A step that the imported
 * live set no longer waits for is not applied here: an export never holds
 * one. Pull replies in flight keep the versions they pinned. Returns PS_OK,
 * PS_ERR_INVAL (no weights, optimizer state of another width or missing,
 * update counts for another number of tensor pieces, sum interval outside the
 * range or without values, a step in progress for an ASP shard,
 * contributions without a sum or a sum without contributions, a
 * contribution bigger than the range, a worker twice or above UINT32_MAX;
 * errbuf says which; shard unchanged) or PS_ERR_NOMEM (shard unchanged). */
int ps_shard_import(ps_shard_t *s, const ps_shard_state_t *st, char *errbuf,
                    size_t errlen);

/* Counters; see ps_shard_stats_t. */
void ps_shard_stats(const ps_shard_t *s, ps_shard_stats_t *out);

/* Replaces the live set with the n worker node ids in live (copied): a view
 * changed because a worker died, finished or joined. In BSP, a step that
 * every worker of the new set has pushed is applied at once, so a worker
 * that died does not hang the others; the mean is over every worker that
 * contributed to the step, including those that have left since. *applied
 * (if non-NULL) is 1 when a step was applied. Returns PS_OK, or PS_ERR_NOMEM
 * with the old set kept. */
int ps_shard_set_live_workers(ps_shard_t *s, const uint32_t *live, size_t n,
                              int *applied);

/* The same with the first step each worker contributes to: a worker is
 * waited for, and its pushes accepted, only for steps >= its from_step
 * (a worker that rejoined a running job); a push for an earlier step is
 * refused (PS_ERR_REFUSED), in ASP too. ps_shard_set_live_workers is this
 * with every from_step 0. Both also return PS_ERR_INVAL, with the old set
 * kept, for a worker listed twice (or, here, an id above UINT32_MAX). */
int ps_shard_set_live(ps_shard_t *s, const ps_shard_live_t *live, size_t n,
                      int *applied);
/* BSP: values of the range worker pushed for the current step (0 in
 * ASP). */
uint64_t ps_shard_contributed(const ps_shard_t *s, uint32_t worker);

/* See ps_shard_follow_step. */
int ps_shard_set_live_only(ps_shard_t *s, const ps_shard_live_t *live,
                           size_t n);

/* The live set, sorted by worker (valid until the next change). */
const ps_shard_live_t *ps_shard_live(const ps_shard_t *s, size_t *n);

#endif
