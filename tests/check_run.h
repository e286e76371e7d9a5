/* The end of every Check suite's main(): run the suite (forking each test,
 * unless CK_FORK=no), print the summary, and exit non-zero on any failure. */
#ifndef PS_TESTS_CHECK_RUN_H
#define PS_TESTS_CHECK_RUN_H

#include <check.h>
#include <stdlib.h>

static inline int ps_check_run(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
