/* Checkpoints with the real daemons (ARCHITECTURE "Failure semantics" 5).
 *
 * A BSP job writes a checkpoint every 40 steps; the cluster is gone; the
 * job is restored onto 2 and onto 3 servers. The weights pulled from the
 * restored cluster are bitwise those in the checkpoint files and those the
 * original job had at that step, and a job resumed from step 80 reaches
 * step 120 with bitwise the weights of the uninterrupted job (momentum,
 * data order and learning-rate schedule all carry over).
 *
 * A damaged checkpoint (a flipped byte, a cut, a missing file, a broken
 * manifest) is refused by ps-scheduler at start with an error naming the
 * file and the reason, exit status 1, nothing started; one damaged after
 * the scheduler checked it is refused by the server that loads it, which
 * exits non-zero without serving a single weight. */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "tests/check_run.h"

#define EVERY "40"

/* A BSP cluster of nservers servers and 2 workers training to max_steps;
 * worker 0 dumps the final weights to dump. sched_extra: NULL-terminated
 * extra scheduler arguments (up to 6). Returns the scheduler. */
static h_proc_t *run_cluster(h_cluster_t *c, const char *tag, int nservers,
                             const char *max_steps, const char *dump,
                             const char **sched_extra) {
  h_new_sched_ep(c);
  char name[64], nserv[8];
  snprintf(nserv, sizeof(nserv), "%d", nservers);
  const char *x[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
  for (int i = 0; sched_extra && sched_extra[i] && i < 6; i++)
    x[i] = sched_extra[i];
  snprintf(name, sizeof(name), "%s_scheduler", tag);
  h_proc_t *sched = h_spawn(c, name, "ps-scheduler", "--bind", c->sched_ep,
                            "--servers", nserv, "--workers", "2", "--mode",
                            "bsp", x[0], x[1], x[2], x[3], x[4], x[5], NULL);
  for (int i = 0; i < nservers; i++) {
    snprintf(name, sizeof(name), "%s_server%d", tag, i);
    h_spawn(c, name, "ps-server", "--scheduler", c->sched_ep, NULL);
  }
  snprintf(name, sizeof(name), "%s_worker0", tag);
  h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--rank", "0",
          "--max-steps", max_steps, "--eval-every-epoch=false",
          "--dump-weights", dump, NULL);
  snprintf(name, sizeof(name), "%s_worker1", tag);
  h_spawn(c, name, "ps-worker", "--scheduler", c->sched_ep, "--rank", "1",
          "--max-steps", max_steps, "--eval-every-epoch=false", NULL);
  return sched;
}

static void expect_same_file(const char *a, const char *b) {
  size_t na, nb;
  char *x = h_read_file(a, &na), *y = h_read_file(b, &nb);
  ck_assert_msg(x != NULL, "cannot read %s", a);
  ck_assert_msg(y != NULL, "cannot read %s", b);
  ck_assert_uint_eq(na, nb);
  ck_assert_uint_gt(na, 0);
  size_t first = na;
  for (size_t i = 0; i < na && first == na; i++)
    if (x[i] != y[i]) first = i;
  ck_assert_msg(first == na, "%s and %s differ first at byte %zu (key %zu)", a,
                b, first, first / 4);
  free(x);
  free(y);
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

START_TEST(bsp_checkpoint_restored_onto_2_and_3_servers) {
  h_cluster_t c;
  h_init(&c, "checkpoint_restore");
  char why[1100];
  char ck[700], orig[700], ck80[800], ck120[800];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  snprintf(orig, sizeof(orig), "%s", h_path(&c, "orig120.bin"));
  snprintf(ck80, sizeof(ck80), "%s/ckpt-000000000080", ck);
  snprintf(ck120, sizeof(ck120), "%s/ckpt-000000000120", ck);

  /* The original job: checkpoints at 40, 80 and 120 (its last step). */
  const char *every[] = {"--checkpoint-dir", ck, "--checkpoint-every-steps",
                         EVERY, NULL};
  run_cluster(&c, "orig", 2, "120", orig, every);
  ck_assert_msg(h_wait_all_exit0(&c, 0, 60000, why, sizeof(why)), "%s", why);
  char manifest[900];
  for (int step = 40; step <= 120; step += 40) {
    snprintf(manifest, sizeof(manifest), "%s/ckpt-%012d/MANIFEST", ck, step);
    if (!file_exists(manifest)) h_dump_logs(&c);
    ck_assert_msg(file_exists(manifest), "no checkpoint at step %d", step);
  }
  char *latest = h_read_file(h_path(&c, "ck/LATEST"), NULL);
  ck_assert_ptr_nonnull(latest);
  ck_assert_str_eq(latest, "ckpt-000000000120\n");
  free(latest);
  ck_assert_msg(h_wait_log(c.procs[0].log, "event=checkpoint_written", 1),
                "no checkpoint_written line");

  /* What the files hold is what the job had at step 120. */
  ck_assert_msg(h_dump_matches_checkpoint(orig, ck120, why, sizeof(why)), "%s",
                why);

  /* Restore LATEST onto 2 servers, no step more: the pulled weights. */
  int from = c.nprocs;
  const char *r2[] = {"--restore", ck, NULL};
  h_proc_t *s2 = run_cluster(&c, "r2", 2, "120", h_path(&c, "r2.bin"), r2);
  ck_assert_msg(h_wait_all_exit0(&c, from, 60000, why, sizeof(why)), "%s", why);
  ck_assert(h_wait_log(s2->log, "event=restore_verified", 1));
  expect_same_file(orig, h_path(&c, "r2.bin"));

  /* Restore step 80 onto 3 servers and train on to 120: the job goes on
   * as if it had never stopped. */
  from = c.nprocs;
  const char *r3[] = {"--restore", ck80, NULL};
  run_cluster(&c, "r3", 3, "120", h_path(&c, "r3.bin"), r3);
  ck_assert_msg(h_wait_all_exit0(&c, from, 60000, why, sizeof(why)), "%s", why);
  ck_assert(h_wait_log(h_path(&c, "r3_worker0.log"),
                       "event=train_resume step=80", 1));
  ck_assert(h_wait_log(h_path(&c, "r3_server2.log"), "event=restored", 1));
  expect_same_file(orig, h_path(&c, "r3.bin"));
  h_kill_all(&c);
}
END_TEST

static void copy_dir(const char *from, const char *to) {
  char cmd[2000];
  int n = snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -r '%s' '%s'", to,
                   from, to);
  ck_assert_msg(n > 0 && (size_t)n < sizeof(cmd), "paths too long: %s", to);
  ck_assert_int_eq(system(cmd), 0);
}

static void flip_byte(const char *path, long off) {
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  unsigned char b;
  ck_assert_int_eq(pread(fd, &b, 1, off), 1);
  b ^= 0x01;
  ck_assert_int_eq(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

/* ps-scheduler --restore dir must exit 1 at once, naming needle1 and
 * needle2 in its log, having started nothing. */
static void expect_scheduler_refuses(h_cluster_t *c, const char *tag,
                                     const char *dir, const char *needle1,
                                     const char *needle2) {
  h_new_sched_ep(c);
  h_proc_t *p =
      h_spawn(c, tag, "ps-scheduler", "--bind", c->sched_ep, "--servers", "2",
              "--workers", "2", "--restore", dir, NULL);
  int exited = h_wait_exit(p, 15000);
  if (!exited) h_dump_logs(c);
  ck_assert_msg(exited, "%s: the scheduler did not refuse", tag);
  ck_assert_msg(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 1,
                "%s: exit status %d, expected 1", tag, p->status);
  char *log = h_read_file(p->log, NULL);
  ck_assert_ptr_nonnull(log);
  ck_assert_msg(strstr(log, "event=start_failed") != NULL, "%s: %s", tag, log);
  ck_assert_msg(strstr(log, needle1) != NULL, "%s: no \"%s\" in: %s", tag,
                needle1, log);
  ck_assert_msg(strstr(log, needle2) != NULL, "%s: no \"%s\" in: %s", tag,
                needle2, log);
  ck_assert_msg(strstr(log, "event=listening") == NULL,
                "%s: the scheduler started anyway", tag);
  free(log);
}

START_TEST(damaged_checkpoint_refused) {
  h_cluster_t c;
  h_init(&c, "checkpoint_damage");
  char why[256];
  char ck[700], good[800], bad[800], shard[900];
  snprintf(ck, sizeof(ck), "%s", h_path(&c, "ck"));
  const char *every[] = {"--checkpoint-dir", ck, "--checkpoint-every-steps",
                         "10", NULL};
  run_cluster(&c, "orig", 2, "10", h_path(&c, "orig.bin"), every);
  ck_assert_msg(h_wait_all_exit0(&c, 0, 60000, why, sizeof(why)), "%s", why);
  snprintf(good, sizeof(good), "%s/ckpt-000000000010", ck);
  snprintf(bad, sizeof(bad), "%s", h_path(&c, "bad"));
  snprintf(shard, sizeof(shard), "%s/shard-0-117568.psck", bad);
  ck_assert_msg(file_exists(good), "no checkpoint at step 10");

  /* A flipped bit in the weights. */
  copy_dir(good, bad);
  flip_byte(shard, 5000);
  expect_scheduler_refuses(&c, "flipped", bad, "shard-0-117568.psck", "CRC32C");
  /* A cut file. */
  copy_dir(good, bad);
  ck_assert_int_eq(truncate(shard, 300000), 0);
  expect_scheduler_refuses(&c, "truncated", bad, "shard-0-117568.psck",
                           "truncated");
  /* A file the manifest lists is missing. */
  copy_dir(good, bad);
  ck_assert_int_eq(unlink(shard), 0);
  expect_scheduler_refuses(&c, "missing", bad, "shard-0-117568.psck",
                           "cannot open");
  /* A broken manifest. */
  copy_dir(good, bad);
  char manifest[900];
  snprintf(manifest, sizeof(manifest), "%s/MANIFEST", bad);
  flip_byte(manifest, 40);
  expect_scheduler_refuses(&c, "manifest", bad, "MANIFEST", "CRC32C");
  /* Not a checkpoint at all. */
  expect_scheduler_refuses(&c, "nothing", h_path(&c, "nowhere"), "nowhere",
                           "not a checkpoint directory");

  /* Damaged after the scheduler checked it: the server that loads the
   * file refuses, exits non-zero, and the cluster ends. */
  copy_dir(good, bad);
  int from = c.nprocs;
  h_new_sched_ep(&c);
  h_proc_t *sched =
      h_spawn(&c, "late_scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "2", "--workers", "2", "--restore", bad, NULL);
  ck_assert(h_wait_log(sched->log, "event=restore_verified", 15000));
  flip_byte(shard, 100000);
  h_proc_t *s0 =
      h_spawn(&c, "late_server0", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_proc_t *s1 =
      h_spawn(&c, "late_server1", "ps-server", "--scheduler", c.sched_ep, NULL);
  h_spawn(&c, "late_worker0", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "0", "--max-steps", "20", NULL);
  h_spawn(&c, "late_worker1", "ps-worker", "--scheduler", c.sched_ep, "--rank",
          "1", "--max-steps", "20", NULL);
  int all = h_wait_all(&c, 60000);
  if (!all) h_dump_logs(&c);
  ck_assert_msg(all, "the cluster did not end after the refused restore");
  /* The server of [0, 117568) is whichever registered first. */
  h_proc_t *refused = NULL;
  for (int i = from; i < c.nprocs; i++)
    if (h_wait_log(c.procs[i].log, "event=restore_failed", 1))
      refused = &c.procs[i];
  if (refused == NULL) h_dump_logs(&c);
  ck_assert_msg(refused != NULL, "no server refused the damaged shard");
  ck_assert_msg(refused == s0 || refused == s1, "%s refused", refused->name);
  ck_assert_msg(WIFEXITED(refused->status) && WEXITSTATUS(refused->status) != 0,
                "the refusing server exited with status %d", refused->status);
  ck_assert(h_wait_log(refused->log, "shard-0-117568.psck", 1));
  ck_assert(h_wait_log(refused->log, "CRC32C", 1));
  ck_assert_msg(!h_wait_log(refused->log, "event=restored", 1),
                "the refusing server restored anyway");
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("checkpoint");
  TCase *tc = tcase_create("checkpoint");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, bsp_checkpoint_restored_onto_2_and_3_servers);
  tcase_add_test(tc, damaged_checkpoint_refused);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
