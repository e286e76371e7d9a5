/* chaos.checkpoint: a checkpoint taken on demand survives the loss of the
 * whole cluster (ARCHITECTURE "Failure semantics" 5).
 *
 * A BSP job (2 servers, replication 2, 2 workers) trains; `psctl
 * checkpoint` writes one at the next step boundary; then every process of
 * the job is SIGKILLed at once. The checkpoint is restored onto 2 and then
 * onto 3 servers with no step more: the weights the workers pull are
 * bitwise those in the checkpoint files (read back through the strict
 * reader). Prints the write rate (psctl) and the servers' restore rates
 * (checkpoint_loaded). Damaged copies, and checkpoints written every n
 * steps, are integration.checkpoint's. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define EPOCHS "2"

/* A BSP job of nservers servers and 2 workers; extra: NULL-terminated
 * scheduler arguments (up to 4); max_steps NULL for the whole run; dump:
 * where worker 0 writes the final weights (or NULL). */
static void start_job(h_cluster_t *c, const char *tag, int nservers,
                      const char **extra, const char *max_steps,
                      const char *dump) {
  h_new_sched_ep(c);
  char name[64], nserv[16];
  snprintf(nserv, sizeof(nserv), "%d", nservers);
  const char *x[5] = {NULL, NULL, NULL, NULL, NULL};
  for (int i = 0; extra && extra[i] && i < 4; i++) x[i] = extra[i];
  snprintf(name, sizeof(name), "%s_scheduler", tag);
  h_spawn(c, name, "ps-scheduler", "--bind", c->sched_ep, "--servers", nserv,
          "--workers", "2", "--mode", "bsp", x[0], x[1], x[2], x[3], NULL);
  chaos_server_t srv[4];
  memset(srv, 0, sizeof(srv));
  snprintf(name, sizeof(name), "%s_server", tag);
  for (int i = 0; i < nservers; i++)
    chaos_server_start(c, &srv[i], i, name, "127.0.0.1", NULL);
  const char *ms = max_steps ? max_steps : "0";
  snprintf(name, sizeof(name), "%s_worker0", tag);
  if (dump)
    h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--rank", "0",
            "--epochs", EPOCHS, "--max-steps", ms, "--eval-every-epoch=false",
            "--progress-ms", "300", "--dump-weights", dump, NULL);
  else
    h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--rank", "0",
            "--epochs", EPOCHS, "--max-steps", ms, "--eval-every-epoch=false",
            "--progress-ms", "300", NULL);
  snprintf(name, sizeof(name), "%s_worker1", tag);
  h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--rank", "1",
          "--epochs", EPOCHS, "--max-steps", ms, "--eval-every-epoch=false",
          NULL);
}

/* Sum of the servers' restore rates, from their checkpoint_loaded lines. */
static void print_restore_rate(h_cluster_t *c, int from, const char *what) {
  double mb = 0, ms = 0;
  for (int i = from; i < c->nprocs; i++) {
    char *s = h_read_file(c->procs[i].log, NULL);
    const char *p = s ? strstr(s, "event=checkpoint_loaded") : NULL;
    if (p) {
      const char *b = strstr(p, "bytes_read=");
      const char *m = strstr(p, " ms=");
      double bytes = b ? strtod(b + 11, NULL) : 0;
      double t = m ? strtod(m + 4, NULL) : 0;
      mb += bytes / 1e6;
      if (t > ms) ms = t;
    }
    free(s);
  }
  printf(
      "checkpoint: restore onto %s: %.2f MB read in %.1f ms (slowest "
      "server): %.1f MB/s\n",
      what, mb, ms, ms > 0 ? mb / (ms / 1e3) : 0.0);
  fflush(stdout);
}

START_TEST(checkpoint_survives_kill_of_whole_cluster) {
  h_cluster_t c;
  h_init(&c, "chaos_checkpoint");
  char ck[700];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  const char *with_dir[] = {"--checkpoint-dir", ck, NULL};
  start_job(&c, "orig", 2, with_dir, NULL, NULL);
  /* Well into training, so the weights are not the initial ones. */
  ck_assert_msg(
      h_wait_log(h_path(&c, "orig_worker0.log"), "event=progress", 60000),
      "training did not start within 60 s");
  int st;
  char *out = h_run(&c, 90000, &st, "psctl", "--scheduler", c.sched_ep,
                    "--wait-ms", "60000", "--json", "checkpoint", NULL);
  if (!(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0)) h_dump_logs(&c);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                "psctl checkpoint failed: %s", out ? out : "");
  double step = h_json_number(out, "step");
  double bytes = h_json_number(out, "bytes");
  double write_ms = h_json_number(out, "write_ms");
  double mbps = h_json_number(out, "mbps");
  ck_assert_msg(step > 0, "checkpoint at step %.0f: %s", step, out);
  printf("checkpoint: written at step %.0f: %.2f MB in %.0f ms: %.1f MB/s\n",
         step, bytes / 1e6, write_ms, mbps);
  fflush(stdout);
  free(out);

  /* The whole cluster dies at once, mid-training. */
  h_kill_all(&c);
  char dir[800];
  snprintf(dir, sizeof(dir), "%s/ckpt-%012.0f", ck, step);
  char steps[32];
  snprintf(steps, sizeof(steps), "%.0f", step);

  const char *restore[] = {"--restore", dir, NULL};
  for (int nservers = 2; nservers <= 3; nservers++) {
    char tag[16], dump[32], onto[32], why[1100];
    snprintf(tag, sizeof(tag), "r%d", nservers);
    snprintf(dump, sizeof(dump), "r%d.bin", nservers);
    snprintf(onto, sizeof(onto), "%d servers", nservers);
    int from = c.nprocs;
    start_job(&c, tag, nservers, restore, steps, h_path(&c, dump));
    ck_assert_msg(h_wait_all_exit0(&c, from, 90000, why, sizeof(why)), "%s",
                  why);
    ck_assert_msg(
        h_dump_matches_checkpoint(h_path(&c, dump), dir, why, sizeof(why)),
        "restored onto %s: %s", onto, why);
    print_restore_rate(&c, from, onto);
  }
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_checkpoint");
  TCase *tc = tcase_create("checkpoint");
  tcase_set_timeout(tc, 280);
  tcase_add_test(tc, checkpoint_survives_kill_of_whole_cluster);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
