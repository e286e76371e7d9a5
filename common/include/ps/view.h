/* The cluster view, as a library user sees it: which server owns which
 * range of the dense key space, in which epoch.
 *
 * The scheduler publishes a new view, with epoch + 1, on every change of
 * membership or ownership (a server declared dead, its backup promoted).
 * ps_view_t is opaque here; ps_client_view returns the client's current
 * one. Reading it is safe from the thread that owns the client.
 */
#ifndef PS_VIEW_PUBLIC_H
#define PS_VIEW_PUBLIC_H

#include <stddef.h>
#include <stdint.h>

#include "ps/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ps_view_s ps_view_t;

/* The view's epoch: every view the scheduler publishes has a higher one. */
PS_EXTERN uint64_t ps_view_epoch(const ps_view_t *v);

/* The job's consistency mode (README, Consistency): the same numbers as
 * proto/ps.proto's ConsistencyMode. */
#define PS_MODE_BSP 0
#define PS_MODE_ASP 1
#define PS_MODE_SSP 2
PS_EXTERN int ps_view_mode(const ps_view_t *v);

/* PS_MODE_SSP: the staleness bound S, the steps a worker may run ahead of
 * the slowest (a pull at clock c gets weights of clock >= c - S). 0 in the
 * other modes. */
PS_EXTERN uint32_t ps_view_staleness(const ps_view_t *v);

/* Workers in state alive in this view (not dead, done or left). */
PS_EXTERN uint32_t ps_view_live_workers(const ps_view_t *v);

/* The number of ranges the dense key space is cut into (one per server
 * that holds dense keys). */
PS_EXTERN size_t ps_view_num_ranges(const ps_view_t *v);

/* Range i (0 <= i < ps_view_num_ranges) holds keys [*begin, *end) and its
 * primary is the server with node id *server; ranges are in key order and
 * cover the key space. Returns PS_OK, or PS_ERR_INVAL for an i out of range
 * (nothing is written then). Any out-parameter may be NULL. */
PS_EXTERN int ps_view_range(const ps_view_t *v, size_t i, uint64_t *begin,
                            uint64_t *end, uint32_t *server);

#ifdef __cplusplus
}
#endif

#endif
