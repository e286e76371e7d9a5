/* The worker set of each step (issue #16, README "Workers join and
 * leave"): which ranks share the data of BSP step t when workers join and
 * leave a running job.
 *
 * Every worker node the view lists contributes to the steps
 * [join_clock, leave_clock) (leave_clock 0: to the end of the job). The set
 * of step t is the ranks of the nodes whose interval holds t; a rank held
 * by several nodes (a dead worker and the one that took its rank) counts
 * once, so a dead worker keeps its share, skipped, until its rank is taken
 * again, as before issue #16. The job's data is one stream of epochs
 * (each a permutation of the training set, cut to whole nominal global
 * batches): step t reads the next count(t) x batch examples of it, where
 * count(t) is the size of step t's set, and the worker whose rank is the
 * i-th of the set reads the i-th batch of those. With a fixed set of W
 * workers that is the layout of a job without joins: step t, rank r reads
 * examples t W b + r b onwards.
 *
 * Pure functions, no state: any thread. */
#ifndef PS_COMMON_WORKSET_H
#define PS_COMMON_WORKSET_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

typedef struct {
  uint32_t rank;
  uint64_t join_clock;  /* the first step it contributes to */
  uint64_t leave_clock; /* the first step it no longer does; 0: none */
} ps_workset_member_t;

/* The size of step's set and, in *index (may be NULL), rank's position in
 * it in rank order (UINT32_MAX when rank is not in the set). Sorts m in
 * place by rank and join_clock. */
uint32_t ps_workset_at(ps_workset_member_t *m, size_t n, uint64_t step,
                       uint32_t rank, uint32_t *index);

/* The sum of the set sizes of the steps before step: how many worker
 * batches the job read before it. Sorts m in place as above. */
uint64_t ps_workset_before(ps_workset_member_t *m, size_t n, uint64_t step);

/* The view's worker nodes as members, into *m (caller frees; NULL when
 * there are none). Returns PS_OK or PS_ERR_NOMEM. */
int ps_workset_from_view(const ps_view_t *v, ps_workset_member_t **m,
                         size_t *n);

#endif
