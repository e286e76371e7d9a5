/* chaos.restart_here: a server SIGKILLed and started again on the same
 * address, as systemd's Restart= does (deploy/systemd), while a BSP job
 * trains.
 *
 * 2 servers (replication 2), 2 workers training the MLP with fused
 * push-pull. The primary of range 0 is SIGKILLed and, once declared dead,
 * started again on its address: a new node to the scheduler, which fills
 * it and hands it a range back (rebalance). Then each worker holds exactly
 * one connection to that address, and the job ends with both workers
 * exiting 0.
 *
 * The bug this catches: the workers kept their socket to the dead node
 * open (a dead server stays in the view), ZeroMQ reconnected it to the new
 * process, and the worker's two connections there carried one routing id:
 * the server's ROUTER gave it to whichever connected last, replies went
 * down the other and were dropped, and a push-pull that had its Ack
 * waited for its weights until its 30 s deadline (deploy.systemd failed
 * that way now and then). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

/* The restarted server's node id once it leads a range and every range
 * has both copies in step; 0 if that did not happen within timeout_ms. */
static unsigned wait_leads(h_cluster_t *c, const char *address,
                           int timeout_ms) {
  uint64_t end = h_deadline_ms(timeout_ms);
  while (h_now_ms() < end) {
    char why[256];
    char *js = NULL;
    if (h_wait_replicated(c, 2, 200, why, sizeof(why)) &&
        (js = h_status_json(c, 3000)) != NULL) {
      h_node_t nodes[16];
      h_range_t r[8];
      int nn = h_status_nodes(js, nodes, 16);
      int nr = h_status_ranges(js, r, 8);
      for (int i = 0; i < nr; i++) {
        const h_node_t *n = h_find_node(nodes, nn, r[i].server_id);
        if (n && strcmp(n->address, address) == 0 &&
            strcmp(n->state, "alive") == 0) {
          free(js);
          return r[i].server_id;
        }
      }
    }
    free(js);
    h_sleep_ms(50);
  }
  return 0;
}

START_TEST(restarted_on_its_address) {
  h_cluster_t c;
  h_init(&c, "chaos_restart_here");
  h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep, "--servers",
          "2", "--workers", "2", "--mode", "bsp", "--replication", "2", NULL);
  chaos_server_t srv[2];
  memset(srv, 0, sizeof(srv));
  for (int i = 0; i < 2; i++)
    chaos_server_start(&c, &srv[i], i, "server", "127.0.0.1", NULL);
  h_proc_t *w[2];
  for (int i = 0; i < 2; i++) {
    char name[16], rank[8];
    snprintf(name, sizeof(name), "worker%d", i);
    snprintf(rank, sizeof(rank), "%d", i);
    w[i] = h_spawn(&c, name, "ps-worker", "--scheduler", c.sched_ep, "--rank",
                   rank, "--epochs", "2", "--max-steps", "1500",
                   "--progress-ms", "200", "--eval-every-epoch=false", NULL);
  }
  uint64_t end = h_deadline_ms(60000);
  while (h_now_ms() < end && !w[0]->exited &&
         h_progress_step(w[0]->log, NULL) < 20)
    h_sleep_ms(20);
  ck_assert_msg(!w[0]->exited && h_progress_step(w[0]->log, NULL) >= 20,
                "training did not start");

  unsigned primary;
  char why[512];
  int slot = chaos_kill_primary_slot(&c, srv, 2, &primary, why, sizeof(why));
  ck_assert_msg(slot >= 0, "%s", why);
  chaos_server_restart_here(&c, &srv[slot], slot, "server");
  unsigned id = wait_leads(&c, srv[slot].address, 30000);
  ck_assert_msg(id != 0 && id != primary,
                "the server restarted on %s did not lead a range in 30 s",
                srv[slot].address);
  ck_assert_msg(!w[0]->exited && !w[1]->exited,
                "the job ended before the restarted server led a range: "
                "raise --max-steps");

  /* One connection per worker to the address: the one to the new node.
   * The dead node's socket is closed, not reconnected to the new process;
   * with it open the count stays 2. */
  int port = atoi(strrchr(srv[slot].address, ':') + 1);
  for (int i = 0; i < 2; i++) {
    int n = -1;
    uint64_t until = h_deadline_ms(3000);
    while (h_now_ms() < until && !w[i]->exited &&
           (n = h_tcp_established(w[i]->pid, port)) != 1)
      h_sleep_ms(20);
    ck_assert_msg(w[i]->exited || n == 1,
                  "worker %d holds %d connections to %s (node %u there)", i, n,
                  srv[slot].address, id);
  }

  /* The job ends: both workers exit 0 (a push-pull that lost its reply
   * fails its step after 30 s). */
  for (int i = 0; i < 2; i++)
    ck_assert_msg(h_wait_exit0(&c, w[i], 180000, why, sizeof(why)),
                  "worker %d: %s", i, why);
  h_kill_all(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("chaos_restart_here");
  TCase *tc = tcase_create("restart_here");
  tcase_set_timeout(tc, 280);
  tcase_add_test(tc, restarted_on_its_address);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
