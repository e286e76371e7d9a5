#include <check.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tests/check_run.h"

static const struct {
  int code;
  const char *name;
} codes[] = {
#define ERR_ENTRY(name, val, msg) {PS_##name, #name},
    PS_ERRNO_MAP(ERR_ENTRY)
#undef ERR_ENTRY
};
#define NCODES (sizeof(codes) / sizeof(codes[0]))

START_TEST(test_ok_is_zero_and_failures_negative) {
  ck_assert_int_eq(PS_OK, 0);
  for (size_t i = 0; i < NCODES; i++)
    if (codes[i].code != PS_OK) ck_assert_int_lt(codes[i].code, 0);
}
END_TEST

START_TEST(test_names_match_the_list) {
  for (size_t i = 0; i < NCODES; i++)
    ck_assert_str_eq(ps_err_name(codes[i].code), codes[i].name);
  ck_assert_str_eq(ps_err_name(PS_ERR_TIMEOUT), "ERR_TIMEOUT");
  ck_assert_str_eq(ps_strerror(PS_OK), "success");
}
END_TEST

START_TEST(test_codes_names_strings_distinct) {
  for (size_t i = 0; i < NCODES; i++) {
    const char *s = ps_strerror(codes[i].code);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_gt(strlen(s), 0);
    ck_assert_str_ne(s, "unknown error");
    ck_assert_str_ne(ps_err_name(codes[i].code), "ERR_UNKNOWN");
    for (size_t j = 0; j < i; j++) {
      ck_assert_int_ne(codes[i].code, codes[j].code);
      ck_assert_str_ne(ps_err_name(codes[i].code), ps_err_name(codes[j].code));
      ck_assert_str_ne(s, ps_strerror(codes[j].code));
    }
  }
}
END_TEST

/* Codes travel on the wire; a newer peer may send one this build lacks. */
START_TEST(test_unknown_code) {
  const int unknown[] = {1, 42, -1000, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
    ck_assert_str_eq(ps_strerror(unknown[i]), "unknown error");
    ck_assert_str_eq(ps_err_name(unknown[i]), "ERR_UNKNOWN");
  }
}
END_TEST

START_TEST(test_errf_formats_and_returns_the_code) {
  char buf[32];
  ck_assert_int_eq(
      ps_errf(buf, sizeof(buf), PS_ERR_INVAL, "tensor %s: %d", "fc1", 7),
      PS_ERR_INVAL);
  ck_assert_str_eq(buf, "tensor fc1: 7");
  /* Cut short, still terminated. */
  ck_assert_int_eq(ps_errf(buf, 8, PS_ERR_IO, "%s", "0123456789"), PS_ERR_IO);
  ck_assert_str_eq(buf, "0123456");
  /* No buffer: only the code. */
  ck_assert_int_eq(ps_errf(NULL, 0, PS_ERR_NOMEM, "lost"), PS_ERR_NOMEM);
  memcpy(buf, "kept", 5);
  ck_assert_int_eq(ps_errf(buf, 0, PS_ERR_CONFIG, "x"), PS_ERR_CONFIG);
  ck_assert_str_eq(buf, "kept");
}
END_TEST

int main(void) {
  Suite *s = suite_create("err");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, test_ok_is_zero_and_failures_negative);
  tcase_add_test(tc, test_names_match_the_list);
  tcase_add_test(tc, test_codes_names_strings_distinct);
  tcase_add_test(tc, test_unknown_code);
  tcase_add_test(tc, test_errf_formats_and_returns_the_code);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
