/* ps-netlag (tests/bench/netlag.c, the relay of tests/bench/netlag.sh):
 * what goes through it arrives whole and in order, and never sooner than
 * the delay each way.
 *
 * A scheduler is reached only through a relay that delays 40 ms each way:
 * psctl status through it answers with the cluster (so the ZeroMQ
 * handshake and the reply crossed it intact), each call no sooner than a
 * round trip of 80 ms; then a server and a worker register through it and
 * train 30 steps to the end (heartbeats and views cross it for seconds),
 * every process exiting 0. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"
#include "tests/check_run.h"

#define DELAY_US "40000"
#define ROUND_TRIP_MS 80

START_TEST(relay_carries_a_cluster_with_its_delay) {
  h_cluster_t c;
  h_init(&c, "netlag");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "1", "--workers", "1", NULL);
  const char *port = strrchr(c.sched_ep, ':');
  ck_assert_ptr_nonnull(port);
  char to[64], listen_at[64], relay_ep[80];
  snprintf(to, sizeof(to), "127.0.0.1%s", port);
  int rport = h_free_port();
  snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%d", rport);
  snprintf(relay_ep, sizeof(relay_ep), "tcp://%s", listen_at);
  h_proc_t *relay = h_spawn(&c, "relay", "ps-netlag", "--listen", listen_at,
                            "--to", to, "--delay-us", DELAY_US, NULL);

  /* The first call may find the relay not listening yet. */
  uint64_t end = h_deadline_ms(20000);
  int answered = 0;
  while (!answered && h_now_ms() < end) {
    int st = -1;
    char *out = h_run(&c, 5000, &st, "psctl", "--scheduler", relay_ep,
                      "--timeout-ms", "2000", "health", NULL);
    answered = st == 0;
    free(out);
    if (!answered) h_sleep_ms(50);
  }
  ck_assert_msg(answered, "psctl health never answered through the relay");
  for (int i = 0; i < 3; i++) {
    int st = -1;
    uint64_t t0 = h_now_ms();
    char *out = h_run(&c, 10000, &st, "psctl", "--scheduler", relay_ep,
                      "--timeout-ms", "5000", "--json", "status", NULL);
    uint64_t took = h_now_ms() - t0;
    ck_assert_msg(st == 0 && out && strstr(out, "\"nodes\":["),
                  "psctl status through the relay: status %d, %s", st,
                  out ? out : "(no output)");
    ck_assert_msg(took >= ROUND_TRIP_MS,
                  "an answer came back in %llu ms, sooner than the relay's "
                  "round trip of %d ms",
                  (unsigned long long)took, ROUND_TRIP_MS);
    free(out);
  }

  h_spawn(&c, "server0", "ps-server", "--scheduler", relay_ep, NULL);
  h_proc_t *w =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", relay_ep, "--rank",
              "0", "--max-steps", "30", "--eval-every-epoch=false", NULL);
  char why[256];
  int ok = h_wait_exit0(&c, w, 120000, why, sizeof(why));
  ck_assert_msg(ok, "the worker behind the relay: %s", why);
  /* The job ends: the scheduler and the server exit 0; then the relay. */
  for (int i = 0; i < c.nprocs; i++) {
    h_proc_t *p = &c.procs[i];
    if (p == relay || p == w) continue;
    ck_assert_msg(h_wait_exit0(&c, p, 30000, why, sizeof(why)), "%s: %s",
                  p->name, why);
  }
  kill(relay->pid, SIGTERM);
  ck_assert_msg(h_wait_exit0(&c, relay, 10000, why, sizeof(why)),
                "the relay on SIGTERM: %s", why);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("netlag");
  TCase *tc = tcase_create("relay");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, relay_carries_a_cluster_with_its_delay);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
