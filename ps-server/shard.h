/* A dense shard: the state a server keeps for one contiguous range
 * [begin, end) of the key space, and the consistency rules that change it.
 *
 * It holds the weights (initialised per tensor with ps_init_fill, so any split
 * of the key space gives the same bits), the momentum buffer, the BSP
 * gradient accumulator and the server clock: the number of BSP steps applied.
 *
 * BSP: a push carries the worker's step and is accepted only for step ==
 * clock, from a worker of the live set; its values are summed into the
 * accumulator. The step is applied with the mean gradient, and the clock
 * advances, once every live worker has pushed the whole range. Contributions
 * are counted per worker, not in total: a worker that pushed step t and then
 * left (Done, death) stays in step t's mean, and the workers still live must
 * still push, so a worker finishing first cannot cut the others' step short.
 * ASP: a push is applied on arrival, scaled by 1/live workers so the step
 * per sample matches BSP's; the clock is the highest step seen + 1, so a
 * pull reply still says which steps it may contain.
 *
 * Pure state, no sockets and no logging: the server module drives it. Not
 * thread-safe; one thread (the server's loop) owns a shard.
 */
#ifndef PS_SERVER_SHARD_H
#define PS_SERVER_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

typedef struct ps_shard_s ps_shard_t;

/* Creates the shard for [begin, end) of model, in consistency mode
 * (PS__CONSISTENCY_MODE__*), with the nlive worker node ids in live
 * contributing to each BSP step (copied). Nothing of model is kept: the
 * weights are initialised from its tensors and its optimizer settings are
 * copied. Returns NULL and fills
 * *err and errbuf on a bad range (empty, beyond the model) or out of memory.
 * Caller owns the result (ps_shard_destroy). */
ps_shard_t *ps_shard_new(uint64_t begin, uint64_t end, const ps_model_t *model,
                         int mode, const uint32_t *live, size_t nlive, int *err,
                         char *errbuf, size_t errlen);

/* Frees the shard and sets *s_p to NULL. NULL-safe. */
void ps_shard_destroy(ps_shard_t **s_p);

uint64_t ps_shard_begin(const ps_shard_t *s);
uint64_t ps_shard_end(const ps_shard_t *s);
/* BSP: steps applied. ASP: the highest step pushed + 1 (0 before any). */
uint64_t ps_shard_clock(const ps_shard_t *s);
int ps_shard_mode(const ps_shard_t *s);
size_t ps_shard_live_workers(const ps_shard_t *s);
/* Values received for the current BSP step, from all workers (0 in ASP). */
uint64_t ps_shard_received(const ps_shard_t *s);

/* 1 if [key_begin, key_begin + count) is non-empty and inside the shard. */
int ps_shard_contains(const ps_shard_t *s, uint64_t key_begin, uint64_t count);

/* Pushes worker's gradient g of count values for keys [key_begin, key_begin
 * + count) as the worker's step. worker is the sender's node id. g is only
 * read, during the call, and may be the received frame itself. On PS_OK,
 * *applied (if non-NULL) is 1 when the push completed a BSP step or was
 * applied at once (ASP), else 0.
 * Refused, with nothing changed and the reason in errbuf:
 *   PS_ERR_UNKNOWN_KEY  the slice is empty or not inside the shard;
 *   PS_ERR_REFUSED      BSP only: step != clock (a smaller step is a
 *                       duplicate or stale push, a larger one comes from a
 *                       worker that did not pull first), worker is not in
 *                       the live set, or the worker would push more values
 *                       than the range holds for this step (a duplicate);
 *   PS_ERR_NOMEM        no memory to track one more contributor. */
int ps_shard_push(ps_shard_t *s, uint32_t worker, uint64_t key_begin,
                  uint64_t count, const float *g, uint64_t step, int *applied,
                  char *errbuf, size_t errlen);

/* Copies the current weights of [key_begin, key_begin + count) into out.
 * Returns PS_OK or PS_ERR_UNKNOWN_KEY (with errbuf) if the slice is empty or
 * not inside the shard. */
int ps_shard_read(const ps_shard_t *s, uint64_t key_begin, uint64_t count,
                  float *out, char *errbuf, size_t errlen);

/* The weights of the whole range, ps_shard_end - ps_shard_begin values; owned
 * by the shard and changed by every apply. */
const float *ps_shard_weights(const ps_shard_t *s);

/* Replaces the live set with the n worker node ids in live (copied): a view
 * changed because a worker died, finished or joined. In BSP, a step that
 * every worker of the new set has pushed is applied at once, so a worker
 * that died does not hang the others; the mean is over every worker that
 * contributed to the step, including those that have left since. *applied
 * (if non-NULL) is 1 when a step was applied. Returns PS_OK, or PS_ERR_NOMEM
 * with the old set kept. */
int ps_shard_set_live_workers(ps_shard_t *s, const uint32_t *live, size_t n,
                              int *applied);

#endif
