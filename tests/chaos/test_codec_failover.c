/* chaos.codec_failover: with coded pushes (issue #15), a primary and its
 * backup hold bitwise the same weights, and a push resent after a failover
 * carries the same bits.
 *
 * The MLP on Fashion-MNIST, 2 servers (replication 2), 2 workers, BSP, one
 * epoch with --codec topk (error feedback: a resend that re-encoded would
 * send different values and leave different residuals) and float32 pulls
 * (so the dump is the servers' weights themselves): once undisturbed, once
 * with the primary of range 0 SIGKILLed halfway through, its backup taking
 * over. BSP with 2 workers sums a step in any arrival order to the same
 * bits, so both runs must dump bitwise the same final weights: every step
 * the killed primary applied is on the backup exactly as the primary
 * decoded it, and every resent push is the original. The undisturbed run
 * pushes and pulls separately, the other with fused push-pulls (the
 * default): a coded push-pull resent after the failover carries the same
 * bits, and fused equals separate with the codec. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define RUN_MS 240000

static void run(const char *tag, int kill_primary, const char *push_pull,
                const char *dump) {
  h_cluster_t c;
  h_init(&c, tag);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--mode", "bsp", NULL);
  chaos_server_t srv[2];
  memset(srv, 0, sizeof(srv));
  for (int i = 0; i < 2; i++)
    chaos_server_start(&c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_proc_t *w0 =
      h_spawn(&c, "worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
              "0", "--epochs", "1", "--codec", "topk", "--pull-codec", "none",
              "--push-pull", push_pull, "--progress-ms", "300",
              "--eval-every-epoch=false", "--dump-weights", dump, NULL);
  h_spawn(&c, "worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank", "1",
          "--epochs", "1", "--codec", "topk", "--pull-codec", "none",
          "--push-pull", push_pull, "--eval-every-epoch=false", NULL);
  h_proc_t *killed = NULL;
  if (kill_primary) {
    uint64_t end = h_now_ms() + RUN_MS;
    unsigned long step = 0, total = 0;
    while (h_now_ms() < end && !w0->exited &&
           ((step = h_progress_step(w0->log, &total)) == 0 || step < total / 2))
      h_sleep_ms(50);
    ck_assert_msg(total > 0 && step >= total / 2,
                  "%s: training did not get halfway (step %lu of %lu)", tag,
                  step, total);
    unsigned primary;
    char kwhy[256];
    killed = chaos_kill_primary(&c, srv, 2, &primary, kwhy, sizeof(kwhy));
    ck_assert_msg(killed != NULL, "%s", kwhy);
    printf("codec_failover: killed %s (node %u) at step %lu of %lu\n",
           killed->name, primary, step, total);
    fflush(stdout);
  }
  int all = h_wait_all(&c, RUN_MS);
  if (!all) h_dump_logs(&c);
  h_kill_all(&c);
  ck_assert_msg(all, "%s did not finish within %d s", tag, RUN_MS / 1000);
  char ewhy[256];
  ck_assert_msg(chaos_all_exit0_but(&c, killed, ewhy, sizeof(ewhy)), "%s: %s",
                tag, ewhy);
  if (kill_primary)
    ck_assert_msg(h_wait_log(sched->log, "event=failover", 1),
                  "%s: the scheduler logged no failover", tag);
}

START_TEST(coded_pushes_survive_a_dead_primary_bitwise) {
  static char base[600], fail[600];
  h_cluster_t tmp;
  h_init(&tmp, "chaos_codec_dumps");
  snprintf(base, sizeof(base), "%s", h_path(&tmp, "base.f32"));
  snprintf(fail, sizeof(fail), "%s", h_path(&tmp, "failover.f32"));
  run("chaos_codec_base", 0, "separate", base);
  run("chaos_codec_failover", 1, "fused", fail);
  size_t na = 0, nb = 0;
  char *a = h_read_file(base, &na), *b = h_read_file(fail, &nb);
  ck_assert_msg(a && b, "a weights dump is missing");
  ck_assert_uint_eq(na, 235146 * sizeof(float));
  ck_assert_uint_eq(na, nb);
  size_t differ = 0;
  for (size_t i = 0; i < na / 4; i++)
    if (memcmp(a + 4 * i, b + 4 * i, 4) != 0) differ++;
  printf("codec_failover: %zu of %zu weights differ between the runs\n", differ,
         na / 4);
  ck_assert_msg(differ == 0,
                "%zu weights differ after the failover: the backup's copy "
                "or a resent push was not the original bits",
                differ);
  free(a);
  free(b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_codec_failover");
  TCase *tc = tcase_create("codec_failover");
  tcase_set_timeout(tc, 560);
  tcase_add_test(tc, coded_pushes_survive_a_dead_primary_bitwise);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
