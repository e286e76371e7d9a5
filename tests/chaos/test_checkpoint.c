/* chaos.checkpoint: a checkpoint taken on demand survives the loss of the
 * whole cluster (ARCHITECTURE "Failure semantics" 5).
 *
 * A BSP job (2 servers, replication 2, 2 workers) trains; `psctl
 * checkpoint` writes one at the next step boundary; then every process of
 * the job is SIGKILLed at once. The checkpoint is restored onto 2 and then
 * onto 3 servers with no step more: the weights the workers pull are
 * bitwise those in the checkpoint files (read back through the strict
 * reader). A copy with one flipped byte in a shard file, and one with a
 * shard file cut short, are refused by ps-scheduler at start (exit 1,
 * naming the file), with nothing started and nothing loaded. Prints the
 * write rate (psctl) and the servers' restore rates (checkpoint_loaded). */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define EPOCHS "2"

static void new_endpoint(h_cluster_t *c) {
  snprintf(c->sched_ep, sizeof(c->sched_ep), "tcp://127.0.0.1:%d",
           h_free_port());
}

/* A BSP job of nservers servers and 2 workers; extra: NULL-terminated
 * scheduler arguments (up to 4); max_steps NULL for the whole run; dump:
 * where worker 0 writes the final weights (or NULL). */
static void start_job(h_cluster_t *c, const char *tag, int nservers,
                      const char **extra, const char *max_steps,
                      const char *dump) {
  new_endpoint(c);
  char name[64], nserv[8];
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

static void expect_all_exit0(h_cluster_t *c, int from, int timeout_ms) {
  int all = h_wait_all(c, timeout_ms);
  if (!all) h_dump_logs(c);
  ck_assert_msg(all, "the job did not finish within %d ms", timeout_ms);
  for (int i = from; i < c->nprocs; i++) {
    h_proc_t *p = &c->procs[i];
    if (!(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0)) {
      h_dump_logs(c);
      ck_abort_msg("%s did not exit 0 (status %d)", p->name, p->status);
    }
  }
}

static float *checkpoint_weights(const char *dir, size_t *n) {
  ps_checkpoint_manifest_t m;
  char err[1024];
  int rc = ps_checkpoint_manifest_read(dir, &m, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  *n = (size_t)m.model.total;
  float *w = malloc(*n * sizeof(float));
  float *mom = m.model.momentum != 0.0f ? malloc(*n * sizeof(float)) : NULL;
  rc = ps_checkpoint_load_range(dir, &m, 0, m.model.total, w, mom, NULL, err,
                                sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  free(mom);
  ps_checkpoint_manifest_clear(&m);
  return w;
}

static void expect_weights(const char *dump, const float *w, size_t n,
                           const char *what) {
  size_t nd;
  char *d = h_read_file(dump, &nd);
  ck_assert_msg(d != NULL, "%s: no weights dumped", what);
  ck_assert_msg(nd == n * sizeof(float), "%s: %zu bytes dumped, want %zu", what,
                nd, n * sizeof(float));
  size_t first = n;
  for (size_t i = 0; i < n && first == n; i++)
    if (memcmp(d + i * sizeof(float), &w[i], sizeof(float)) != 0) first = i;
  ck_assert_msg(first == n, "%s: key %zu differs from the checkpoint", what,
                first);
  free(d);
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

static void copy_dir(const char *from, const char *to) {
  char cmd[2000];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
  ck_assert_int_eq(system(cmd), 0);
}

/* The first shard file (*.psck) of dir. */
static void first_shard(const char *dir, char *out, size_t len) {
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  struct dirent *e;
  out[0] = '\0';
  while ((e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    if (n > 5 && strcmp(e->d_name + n - 5, ".psck") == 0 &&
        (out[0] == '\0' || strcmp(e->d_name, out) < 0))
      snprintf(out, len, "%s", e->d_name);
  }
  closedir(d);
  ck_assert_msg(out[0] != '\0', "no shard file in %s", dir);
}

static void expect_refused(h_cluster_t *c, const char *tag, const char *dir,
                           const char *file, const char *reason) {
  new_endpoint(c);
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
  ck_assert_msg(strstr(log, file) != NULL, "%s: no \"%s\" in: %s", tag, file,
                log);
  ck_assert_msg(strstr(log, reason) != NULL, "%s: no \"%s\" in: %s", tag,
                reason, log);
  ck_assert_msg(strstr(log, "event=listening") == NULL,
                "%s: the scheduler started anyway", tag);
  const char *line = strstr(log, "event=start_failed");
  printf("checkpoint: %s: refused: %.*s\n", tag,
         line ? (int)strcspn(line, "\n") : 0, line ? line : "");
  fflush(stdout);
  free(log);
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
  size_t n;
  float *w = checkpoint_weights(dir, &n);
  char steps[32];
  snprintf(steps, sizeof(steps), "%.0f", step);

  const char *restore[] = {"--restore", dir, NULL};
  int from = c.nprocs;
  start_job(&c, "r2", 2, restore, steps, h_path(&c, "r2.bin"));
  expect_all_exit0(&c, from, 90000);
  expect_weights(h_path(&c, "r2.bin"), w, n, "restored onto 2 servers");
  print_restore_rate(&c, from, "2 servers");

  from = c.nprocs;
  start_job(&c, "r3", 3, restore, steps, h_path(&c, "r3.bin"));
  expect_all_exit0(&c, from, 90000);
  expect_weights(h_path(&c, "r3.bin"), w, n, "restored onto 3 servers");
  print_restore_rate(&c, from, "3 servers");
  free(w);

  /* Damaged copies: refused before anything starts. */
  char bad[800], shard[PS_CHECKPOINT_NAME_MAX + 8], path[1100];
  snprintf(bad, sizeof(bad), "%s", h_path(&c, "bad"));
  first_shard(dir, shard, sizeof(shard));
  snprintf(path, sizeof(path), "%s/%s", bad, shard);
  copy_dir(dir, bad);
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  unsigned char b;
  ck_assert_int_eq(pread(fd, &b, 1, 5000), 1);
  b ^= 0x40;
  ck_assert_int_eq(pwrite(fd, &b, 1, 5000), 1);
  close(fd);
  expect_refused(&c, "flipped", bad, shard, "CRC32C");
  copy_dir(dir, bad);
  struct stat sb;
  ck_assert_int_eq(stat(path, &sb), 0);
  ck_assert_int_eq(truncate(path, sb.st_size / 2), 0);
  expect_refused(&c, "truncated", bad, shard, "truncated");
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
