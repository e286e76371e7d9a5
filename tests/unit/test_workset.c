/* common/workset: the worker set of each step (issue #16). Each case is
 * checked against a brute force over the steps. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/workset.h"
#include "tests/check_run.h"

#define M(r, j, l) ((ps_workset_member_t){(r), (j), (l)})

/* count(step) by brute force: distinct ranks with an interval holding it. */
static uint32_t brute_count(const ps_workset_member_t *m, size_t n,
                            uint64_t step, uint32_t rank, uint32_t *index) {
  uint32_t count = 0, below = 0;
  int in = 0;
  for (uint32_t r = 0; r < 64; r++) {
    int held = 0;
    for (size_t i = 0; i < n; i++)
      held |= m[i].rank == r && m[i].join_clock <= step &&
              (m[i].leave_clock == 0 || step < m[i].leave_clock);
    if (!held) continue;
    if (r == rank) in = 1;
    if (r < rank) below++;
    count++;
  }
  *index = in ? below : UINT32_MAX;
  return count;
}

static void check_against_brute(const ps_workset_member_t *orig, size_t n,
                                uint64_t steps) {
  ps_workset_member_t m[16];
  ck_assert_uint_le(n, 16);
  uint64_t before = 0;
  for (uint64_t t = 0; t < steps; t++) {
    for (uint32_t rank = 0; rank < 6; rank++) {
      memcpy(m, orig, n * sizeof(*m));
      uint32_t idx, bidx;
      uint32_t c = ps_workset_at(m, n, t, rank, &idx);
      uint32_t bc = brute_count(orig, n, t, rank, &bidx);
      ck_assert_msg(c == bc && idx == bidx,
                    "step %llu rank %u: count %u index %u, want %u %u",
                    (unsigned long long)t, rank, c, idx, bc, bidx);
    }
    memcpy(m, orig, n * sizeof(*m));
    ck_assert_msg(ps_workset_before(m, n, t) == before,
                  "before step %llu: %llu, want %llu", (unsigned long long)t,
                  (unsigned long long)ps_workset_before(m, n, t),
                  (unsigned long long)before);
    uint32_t unused;
    before += brute_count(orig, n, t, 0, &unused);
  }
}

/* Without joins the layout is the old one: W workers, index = rank,
 * before(t) = t W. */
START_TEST(test_fixed_set_is_the_old_layout) {
  ps_workset_member_t m[3] = {M(2, 0, 0), M(0, 0, 0), M(1, 0, 0)};
  for (uint32_t r = 0; r < 3; r++) {
    uint32_t idx;
    ck_assert_uint_eq(ps_workset_at(m, 3, 12345, r, &idx), 3);
    ck_assert_uint_eq(idx, r);
  }
  ck_assert_uint_eq(ps_workset_before(m, 3, 1000), 3000);
  ck_assert_uint_eq(ps_workset_before(m, 3, 0), 0);
}
END_TEST

/* A worker joins with a new rank at 10, rank 1 leaves at 20: the set is
 * {0,1} before 10, {0,1,2} in [10,20), {0,2} from 20, where rank 2 reads
 * the second batch. */
START_TEST(test_join_and_leave) {
  ps_workset_member_t orig[3] = {M(0, 0, 0), M(1, 0, 20), M(2, 10, 0)};
  ps_workset_member_t m[3];
  uint32_t idx;
  memcpy(m, orig, sizeof(m));
  ck_assert_uint_eq(ps_workset_at(m, 3, 9, 2, &idx), 2);
  ck_assert_uint_eq(idx, UINT32_MAX);
  ck_assert_uint_eq(ps_workset_at(m, 3, 10, 2, &idx), 3);
  ck_assert_uint_eq(idx, 2);
  ck_assert_uint_eq(ps_workset_at(m, 3, 19, 1, &idx), 3);
  ck_assert_uint_eq(idx, 1);
  ck_assert_uint_eq(ps_workset_at(m, 3, 20, 1, &idx), 2);
  ck_assert_uint_eq(idx, UINT32_MAX);
  ck_assert_uint_eq(ps_workset_at(m, 3, 20, 2, &idx), 2);
  ck_assert_uint_eq(idx, 1);
  /* 10 steps of 2, 10 of 3, then 2 a step. */
  ck_assert_uint_eq(ps_workset_before(m, 3, 10), 20);
  ck_assert_uint_eq(ps_workset_before(m, 3, 20), 50);
  ck_assert_uint_eq(ps_workset_before(m, 3, 25), 60);
  check_against_brute(orig, 3, 40);
}
END_TEST

/* A dead worker and the one that took its rank count once; a rank that
 * left and was taken again later is absent in between. */
START_TEST(test_rank_held_twice_counts_once) {
  ps_workset_member_t orig[5] = {M(0, 0, 0), M(1, 0, 0), M(1, 7, 0), M(2, 0, 5),
                                 M(2, 9, 0)};
  ps_workset_member_t m[5];
  memcpy(m, orig, sizeof(m));
  ck_assert_uint_eq(ps_workset_at(m, 5, 8, 0, NULL), 2);
  ck_assert_uint_eq(ps_workset_at(m, 5, 9, 0, NULL), 3);
  ck_assert_uint_eq(ps_workset_before(m, 5, 12), 12 * 2 + 5 + 3);
  check_against_brute(orig, 5, 30);
}
END_TEST

/* Overlapping and touching intervals of one rank, empty intervals, none. */
START_TEST(test_intervals_merge) {
  ps_workset_member_t orig[6] = {M(3, 4, 8),  M(3, 6, 12), M(3, 12, 14),
                                 M(3, 20, 0), M(4, 5, 5),  M(0, 2, 3)};
  check_against_brute(orig, 6, 40);
  ps_workset_member_t m[6];
  memcpy(m, orig, sizeof(m));
  ck_assert_uint_eq(ps_workset_before(m, 6, 40), (14 - 4) + 20 + 1);
  ck_assert_uint_eq(ps_workset_at(NULL, 0, 3, 0, NULL), 0);
  ck_assert_uint_eq(ps_workset_before(NULL, 0, 3), 0);
}
END_TEST

/* Random sets against the brute force. */
START_TEST(test_random_sets) {
  unsigned seed = 16;
  for (int iter = 0; iter < 300; iter++) {
    ps_workset_member_t m[10];
    size_t n = (size_t)(rand_r(&seed) % 10) + 1;
    for (size_t i = 0; i < n; i++) {
      uint64_t j = (uint64_t)(rand_r(&seed) % 30);
      uint64_t l =
          rand_r(&seed) % 3 == 0 ? 0 : j + (uint64_t)(rand_r(&seed) % 20);
      m[i] = M((uint32_t)(rand_r(&seed) % 6), j, l);
    }
    check_against_brute(m, n, 60);
  }
}
END_TEST

/* The view's workers, with their ranks and intervals; servers left out. */
START_TEST(test_from_view) {
  ps_node_t nodes[3];
  memset(nodes, 0, sizeof(nodes));
  nodes[0] = (ps_node_t){.id = 1, .role = PS__ROLE__ROLE_SERVER};
  nodes[1] = (ps_node_t){.id = 2,
                         .role = PS__ROLE__ROLE_WORKER,
                         .rank = 4,
                         .join_clock = 3,
                         .leave_clock = 9};
  nodes[2] = (ps_node_t){.id = 3, .role = PS__ROLE__ROLE_WORKER};
  ps_view_t v;
  memset(&v, 0, sizeof(v));
  v.nodes = nodes;
  v.nnodes = 3;
  ps_workset_member_t *m;
  size_t n;
  ck_assert_int_eq(ps_workset_from_view(&v, &m, &n), PS_OK);
  ck_assert_uint_eq(n, 2);
  ck_assert_uint_eq(m[0].rank, 4);
  ck_assert_uint_eq(m[0].join_clock, 3);
  ck_assert_uint_eq(m[0].leave_clock, 9);
  ck_assert_uint_eq(m[1].rank, 0);
  free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("workset");
  TCase *tc = tcase_create("workset");
  tcase_add_test(tc, test_fixed_set_is_the_old_layout);
  tcase_add_test(tc, test_join_and_leave);
  tcase_add_test(tc, test_rank_held_twice_counts_once);
  tcase_add_test(tc, test_intervals_merge);
  tcase_add_test(tc, test_random_sets);
  tcase_add_test(tc, test_from_view);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
