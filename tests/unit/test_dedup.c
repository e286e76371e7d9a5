/* Duplicate detection: new and duplicate pushes, out-of-order numbers in the
 * window, the window sliding past old numbers, unnumbered pushes, reserve,
 * and snapshots (export/import) that classify exactly like the original. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ps-server/dedup.h"
#include "tests/check_run.h"

#define WIN PS_DEDUP_WINDOW

static ps_dedup_t *new_dedup(void) {
  ps_dedup_t *d = ps_dedup_new();
  ck_assert_ptr_nonnull(d);
  return d;
}

START_TEST(new_then_dup) {
  ps_dedup_t *d = new_dedup();
  ck_assert_int_eq(ps_dedup_check(d, 7, 1), PS_DEDUP_NEW);
  ck_assert_uint_eq(ps_dedup_count(d), 0); /* check changes nothing */
  ck_assert_int_eq(ps_dedup_mark(d, 7, 1), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 7, 1), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 7, 2), PS_DEDUP_NEW);
  /* Workers are independent. */
  ck_assert_int_eq(ps_dedup_check(d, 8, 1), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 6, 1), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_mark(d, 8, 1), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 8, 1), PS_DEDUP_DUP);
  ck_assert_uint_eq(ps_dedup_count(d), 2);
  /* Marking twice is harmless. */
  ck_assert_int_eq(ps_dedup_mark(d, 7, 1), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 7, 1), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 7, 2), PS_DEDUP_NEW);
  ps_dedup_destroy(&d);
  ck_assert_ptr_null(d);
  ps_dedup_destroy(&d); /* NULL-safe */
}
END_TEST

START_TEST(out_of_order_in_window) {
  ps_dedup_t *d = new_dedup();
  /* 100 applied first; 50, 99 and the window's very bottom come later. */
  ck_assert_int_eq(ps_dedup_mark(d, 3, 100), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 3, 50), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 3, 99), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_mark(d, 3, 50), PS_OK);
  ck_assert_int_eq(ps_dedup_mark(d, 3, 99), PS_OK);
  for (uint64_t s = 1; s <= 110; s++) {
    int want = s == 50 || s == 99 || s == 100 ? PS_DEDUP_DUP : PS_DEDUP_NEW;
    ck_assert_msg(ps_dedup_check(d, 3, s) == want, "seq %llu",
                  (unsigned long long)s);
  }
  /* Numbers on word boundaries of the bitmap, and the last of the window. */
  uint64_t high = 10 * WIN;
  ck_assert_int_eq(ps_dedup_mark(d, 4, high), PS_OK);
  const uint64_t back[] = {1, 63, 64, 65, 127, 128, WIN - 64, WIN - 1};
  for (size_t i = 0; i < sizeof(back) / sizeof(back[0]); i++) {
    ck_assert_int_eq(ps_dedup_check(d, 4, high - back[i]), PS_DEDUP_NEW);
    ck_assert_int_eq(ps_dedup_mark(d, 4, high - back[i]), PS_OK);
    ck_assert_int_eq(ps_dedup_check(d, 4, high - back[i]), PS_DEDUP_DUP);
  }
  ck_assert_int_eq(ps_dedup_check(d, 4, high - 2), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 4, high - 62), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 4, high - WIN), PS_DEDUP_OLD);
  ck_assert_int_eq(ps_dedup_check(d, 4, 1), PS_DEDUP_OLD);
  ps_dedup_destroy(&d);
}
END_TEST

START_TEST(jump_slides_window) {
  ps_dedup_t *d = new_dedup();
  for (uint64_t s = 1; s <= 200; s += 2)
    ck_assert_int_eq(ps_dedup_mark(d, 5, s), PS_OK);
  /* A jump by less than the window keeps what is still inside, shifted by
   * an amount that is not a multiple of 64. */
  uint64_t high = 199 + WIN - 100;
  ck_assert_int_eq(ps_dedup_mark(d, 5, high), PS_OK);
  for (uint64_t s = 1; s <= 200; s++) {
    int want;
    if (high - s >= WIN)
      want = PS_DEDUP_OLD;
    else
      want = s % 2 ? PS_DEDUP_DUP : PS_DEDUP_NEW;
    ck_assert_msg(ps_dedup_check(d, 5, s) == want, "seq %llu: %d, want %d",
                  (unsigned long long)s, ps_dedup_check(d, 5, s), want);
  }
  ck_assert_int_eq(ps_dedup_check(d, 5, high), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 5, high - 1), PS_DEDUP_NEW);
  /* Far ahead: every earlier number is either old or not applied. */
  uint64_t far = high + 3 * WIN + 17;
  ck_assert_int_eq(ps_dedup_mark(d, 5, far), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 5, far), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 5, high), PS_DEDUP_OLD);
  ck_assert_int_eq(ps_dedup_check(d, 5, far - WIN), PS_DEDUP_OLD);
  for (uint64_t s = far - WIN + 1; s < far; s++)
    ck_assert_int_eq(ps_dedup_check(d, 5, s), PS_DEDUP_NEW);
  /* Marking an old number records nothing and does not move the window. */
  ck_assert_int_eq(ps_dedup_mark(d, 5, 3), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 5, 3), PS_DEDUP_OLD);
  ck_assert_int_eq(ps_dedup_check(d, 5, far), PS_DEDUP_DUP);
  ps_dedup_destroy(&d);
}
END_TEST

START_TEST(seq_zero_never_dup) {
  ps_dedup_t *d = new_dedup();
  ck_assert_int_eq(ps_dedup_mark(d, 2, 0), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 2, 0), PS_DEDUP_NEW);
  ck_assert_uint_eq(ps_dedup_count(d), 0); /* not even an entry */
  ck_assert_int_eq(ps_dedup_mark(d, 2, 5 * WIN), PS_OK);
  ck_assert_int_eq(ps_dedup_mark(d, 2, 0), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 2, 0), PS_DEDUP_NEW); /* not OLD */
  ck_assert_int_eq(ps_dedup_check(d, 2, 5 * WIN), PS_DEDUP_DUP);
  ps_dedup_destroy(&d);
}
END_TEST

START_TEST(reserve_then_mark) {
  ps_dedup_t *d = new_dedup();
  ck_assert_int_eq(ps_dedup_reserve(d, 11), PS_OK);
  ck_assert_int_eq(ps_dedup_reserve(d, 11), PS_OK);
  ck_assert_uint_eq(ps_dedup_count(d), 1);
  /* An entry with nothing applied classifies every number as new. */
  ck_assert_int_eq(ps_dedup_check(d, 11, 1), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 11, 0), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_mark(d, 11, 9), PS_OK);
  ck_assert_uint_eq(ps_dedup_count(d), 1);
  ck_assert_int_eq(ps_dedup_check(d, 11, 9), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 11, 8), PS_DEDUP_NEW);
  ps_dedup_record_t r;
  ps_dedup_export(d, &r);
  ck_assert_uint_eq(r.worker, 11);
  ck_assert_uint_eq(r.high, 9);
  ck_assert_uint_eq(r.bits[0], 1); /* bit 0 is high itself */
  ps_dedup_destroy(&d);
}
END_TEST

/* Marks a pseudo-random pattern for several workers, inserted out of id
 * order: each worker's numbers mostly move forward with jitter, sometimes
 * jump ahead for good. Returns the highest number marked. */
static uint64_t fill(ps_dedup_t *d) {
  const uint32_t ids[] = {40, 3, UINT32_MAX, 17, 0};
  uint64_t base[5] = {0, 0, 0, 0, 0};
  uint64_t x = 88172645463325252ull, top = 0;
  for (int i = 0; i < 20000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    size_t k = (size_t)(x % 5);
    base[k] += 1 + (x % 4001 == 0 ? 2 * WIN : 0);
    uint64_t seq = base[k] + (x >> 40) % 300;
    if (ps_dedup_check(d, ids[k], seq) == PS_DEDUP_NEW)
      ck_assert_int_eq(ps_dedup_mark(d, ids[k], seq), PS_OK);
    if (seq > top) top = seq;
  }
  return top;
}

START_TEST(export_import_round_trip) {
  ps_dedup_t *a = new_dedup();
  uint64_t top = fill(a);
  size_t n = ps_dedup_count(a);
  ck_assert_uint_eq(n, 5);
  ps_dedup_record_t *rec = malloc(n * sizeof(*rec));
  ck_assert_ptr_nonnull(rec);
  ps_dedup_export(a, rec);
  for (size_t i = 1; i < n; i++) ck_assert(rec[i - 1].worker < rec[i].worker);
  /* Reversed, to show any order is accepted; into a table that had other
   * entries, which go. */
  for (size_t i = 0; i < n / 2; i++) {
    ps_dedup_record_t t = rec[i];
    rec[i] = rec[n - 1 - i];
    rec[n - 1 - i] = t;
  }
  ps_dedup_t *b = new_dedup();
  ck_assert_int_eq(ps_dedup_mark(b, 99, 5), PS_OK);
  ck_assert_int_eq(ps_dedup_import(b, rec, n), PS_OK);
  ck_assert_uint_eq(ps_dedup_count(b), n);
  ck_assert_int_eq(ps_dedup_check(b, 99, 5), PS_DEDUP_NEW);
  const uint32_t ids[] = {40, 3, UINT32_MAX, 17, 0, 1};
  int seen[3] = {0, 0, 0};
  for (size_t w = 0; w < 6; w++)
    for (uint64_t s = 0; s <= top + 2; s++) {
      int ca = ps_dedup_check(a, ids[w], s), cb = ps_dedup_check(b, ids[w], s);
      ck_assert_msg(ca == cb, "worker %u seq %llu: %d vs %d", ids[w],
                    (unsigned long long)s, ca, cb);
      seen[ca]++;
    }
  /* The pattern exercised every class. */
  ck_assert_int_gt(seen[PS_DEDUP_DUP], 1000);
  ck_assert_int_gt(seen[PS_DEDUP_NEW], 1000);
  ck_assert_int_gt(seen[PS_DEDUP_OLD], 1000);
  /* And the copy goes on like the original. */
  ck_assert_int_eq(ps_dedup_mark(a, 3, top + 1), PS_OK);
  ck_assert_int_eq(ps_dedup_mark(b, 3, top + 1), PS_OK);
  ck_assert_int_eq(ps_dedup_check(b, 3, top + 1), PS_DEDUP_DUP);
  ps_dedup_record_t *ra = malloc(n * sizeof(*ra)),
                    *rb = malloc(n * sizeof(*rb));
  ps_dedup_export(a, ra);
  ps_dedup_export(b, rb);
  ck_assert(memcmp(ra, rb, n * sizeof(*ra)) == 0);
  /* An empty snapshot empties the table. */
  ck_assert_int_eq(ps_dedup_import(b, NULL, 0), PS_OK);
  ck_assert_uint_eq(ps_dedup_count(b), 0);
  ck_assert_int_eq(ps_dedup_check(b, 3, top + 1), PS_DEDUP_NEW);
  free(ra);
  free(rb);
  free(rec);
  ps_dedup_destroy(&a);
  ps_dedup_destroy(&b);
}
END_TEST

START_TEST(import_refuses_bad_records) {
  ps_dedup_t *d = new_dedup();
  ck_assert_int_eq(ps_dedup_mark(d, 1, 42), PS_OK);
  ps_dedup_record_t rec[3];
  memset(rec, 0, sizeof(rec));
  rec[0].worker = 5;
  rec[0].high = 10;
  rec[0].bits[0] = 1;
  rec[1].worker = 6;
  rec[2].worker = 5; /* twice */
  ck_assert_int_eq(ps_dedup_import(d, rec, 3), PS_ERR_INVAL);
  rec[2].worker = (uint64_t)UINT32_MAX + 1;
  ck_assert_int_eq(ps_dedup_import(d, rec, 3), PS_ERR_INVAL);
  /* Unchanged. */
  ck_assert_uint_eq(ps_dedup_count(d), 1);
  ck_assert_int_eq(ps_dedup_check(d, 1, 42), PS_DEDUP_DUP);
  ck_assert_int_eq(ps_dedup_check(d, 5, 10), PS_DEDUP_NEW);
  rec[2].worker = UINT32_MAX;
  ck_assert_int_eq(ps_dedup_import(d, rec, 3), PS_OK);
  ck_assert_int_eq(ps_dedup_check(d, 1, 42), PS_DEDUP_NEW);
  ck_assert_int_eq(ps_dedup_check(d, 5, 10), PS_DEDUP_DUP);
  ps_dedup_destroy(&d);
}
END_TEST

int main(void) {
  Suite *suite = suite_create("dedup");
  TCase *tc = tcase_create("dedup");
  tcase_add_test(tc, new_then_dup);
  tcase_add_test(tc, out_of_order_in_window);
  tcase_add_test(tc, jump_slides_window);
  tcase_add_test(tc, seq_zero_never_dup);
  tcase_add_test(tc, reserve_then_mark);
  tcase_add_test(tc, export_import_round_trip);
  tcase_add_test(tc, import_refuses_bad_records);
  suite_add_tcase(suite, tc);
  return ps_check_run(suite);
}
