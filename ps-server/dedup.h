/* Duplicate detection for pushes: which (worker, sequence number) pairs a
 * range has applied.
 *
 * Every push carries the worker's node id and a sequence number that the
 * client keeps across resends (worker/client/client_data.c), so after a failover a
 * client may resend whatever was not acked and the range applies each push
 * exactly once. A plain "highest applied" mark is not enough: a client has
 * many requests in flight, and one refused for a stale epoch is resent
 * after later ones were applied. So each worker gets a window of the
 * PS_DEDUP_WINDOW sequence numbers below its highest: a bitmap of which
 * were applied (the anti-replay window of IPsec, RFC 4303 3.4.3). A number
 * below the window cannot be told apart and is refused (PS_DEDUP_OLD):
 * with a window of 4096 that needs a request held back for thousands of a
 * worker's later requests to the same range, which no client does.
 *
 * Sequence number 0 means "not numbered" (raw tools, ps-bench's baseline):
 * never a duplicate, never recorded.
 *
 * The state is part of the range's state: a backup replays the same pushes
 * and so holds the same table, and a snapshot carries it as flat records
 * (ps_dedup_export / ps_dedup_import), little-endian, fixed size.
 * Not thread-safe: the server's loop owns it.
 */
#ifndef PS_SERVER_DEDUP_H
#define PS_SERVER_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#define PS_DEDUP_WINDOW 4096

typedef struct ps_dedup_s ps_dedup_t;

/* One worker's entry, as a snapshot carries it. bits[i / 64] bit (i % 64)
 * is sequence number high - i (bit 0 of bits[0] is high itself). */
typedef struct {
  uint64_t worker;
  uint64_t high; /* the highest applied sequence number */
  uint64_t bits[PS_DEDUP_WINDOW / 64];
} ps_dedup_record_t;

_Static_assert(sizeof(ps_dedup_record_t) == 16 + PS_DEDUP_WINDOW / 8,
               "records travel as raw bytes");

enum {
  PS_DEDUP_NEW = 0, /* not applied: apply it, then ps_dedup_mark */
  PS_DEDUP_DUP = 1, /* applied before: ack without applying */
  PS_DEDUP_OLD = 2, /* below the window: cannot tell, refuse */
};

/* NULL when out of memory. */
ps_dedup_t *ps_dedup_new(void);
void ps_dedup_destroy(ps_dedup_t **d_p);

/* Classifies (worker, seq). Changes nothing. */
int ps_dedup_check(const ps_dedup_t *d, uint32_t worker, uint64_t seq);

/* Records (worker, seq) as applied; seq 0 is ignored. Returns PS_OK or
 * PS_ERR_NOMEM (nothing recorded). A caller that must not fail after
 * applying calls ps_dedup_reserve(worker) first. */
int ps_dedup_mark(ps_dedup_t *d, uint32_t worker, uint64_t seq);

/* Makes sure worker has an entry, so the next ps_dedup_mark for it cannot
 * fail. PS_OK or PS_ERR_NOMEM. */
int ps_dedup_reserve(ps_dedup_t *d, uint32_t worker);

/* Number of workers with an entry; ps_dedup_export writes that many
 * records into out, sorted by worker. */
size_t ps_dedup_count(const ps_dedup_t *d);
void ps_dedup_export(const ps_dedup_t *d, ps_dedup_record_t *out);

/* Replaces the whole table with n records (any order, workers distinct).
 * PS_OK, PS_ERR_INVAL (a worker twice, or a worker id above UINT32_MAX;
 * table unchanged) or PS_ERR_NOMEM (table unchanged). */
int ps_dedup_import(ps_dedup_t *d, const ps_dedup_record_t *in, size_t n);

#endif
