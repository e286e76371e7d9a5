#include "common/workset.h"

#include <stdlib.h>

#include "common/err.h"
#include "proto/ps.pb-c.h"

static int member_cmp(const void *a, const void *b) {
  const ps_workset_member_t *x = a, *y = b;
  if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
  if (x->join_clock != y->join_clock)
    return x->join_clock < y->join_clock ? -1 : 1;
  return 0;
}

static uint64_t end_of(const ps_workset_member_t *m) {
  return m->leave_clock == 0 ? UINT64_MAX : m->leave_clock;
}

uint32_t ps_workset_at(ps_workset_member_t *m, size_t n, uint64_t step,
                       uint32_t rank, uint32_t *index) {
  if (n > 1) qsort(m, n, sizeof(*m), member_cmp);
  uint32_t count = 0, at = UINT32_MAX;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    int in = 0;
    for (; j < n && m[j].rank == m[i].rank; j++)
      in |= m[j].join_clock <= step && step < end_of(&m[j]);
    if (in) {
      if (m[i].rank == rank) at = count;
      count++;
    }
    i = j;
  }
  if (index) *index = at;
  return count;
}

uint64_t ps_workset_before(ps_workset_member_t *m, size_t n, uint64_t step) {
  if (n > 1) qsort(m, n, sizeof(*m), member_cmp);
  uint64_t sum = 0;
  for (size_t i = 0; i < n;) {
    /* The union of one rank's intervals, cut at step: sorted by start,
     * each merges into the run before it when they touch. */
    uint64_t lo = 0, hi = 0; /* the current run [lo, hi); empty at first */
    size_t j = i;
    for (; j < n && m[j].rank == m[i].rank; j++) {
      uint64_t b = m[j].join_clock, e = end_of(&m[j]);
      if (e > step) e = step;
      if (b >= e) continue;
      if (b > hi) {
        sum += hi - lo;
        lo = b;
        hi = e;
      } else if (e > hi) {
        hi = e;
      }
    }
    sum += hi - lo;
    i = j;
  }
  return sum;
}

int ps_workset_from_view(const ps_view_t *v, ps_workset_member_t **m,
                         size_t *n) {
  *m = NULL;
  *n = 0;
  size_t count = 0;
  for (size_t i = 0; i < v->nnodes; i++)
    if (v->nodes[i].role == PS__ROLE__ROLE_WORKER) count++;
  if (count == 0) return PS_OK;
  *m = calloc(count, sizeof(**m));
  if (*m == NULL) return PS_ERR_NOMEM;
  for (size_t i = 0; i < v->nnodes; i++) {
    const ps_node_t *d = &v->nodes[i];
    if (d->role != PS__ROLE__ROLE_WORKER) continue;
    (*m)[(*n)++] =
        (ps_workset_member_t){d->rank, d->join_clock, d->leave_clock};
  }
  return PS_OK;
}
