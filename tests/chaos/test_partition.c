/* chaos.partition: a server cut off from the network is fenced and
 * replaced, and the ledger holds (ARCHITECTURE "Failure semantics" 1-2).
 *
 * Needs root and `ip netns` (veth pairs); elsewhere it says why and exits
 * with ctest's skip code. One server runs in its own network namespace,
 * joined to the host by a veth pair (10.231.N.1 on the host, 10.231.N.2
 * inside); the scheduler, the other two servers and the 3 ledger workers
 * (tests/chaos/chaos.h) listen on the host side's address. While the
 * workers push, the namespace's end of the link goes down: the scheduler
 * must declare that server dead and re-replicate its ranges on the other
 * two. The link then comes back: the server, which never stopped, must not
 * serve again (it is fenced and exits non-zero). At the end every counter
 * equals its worker's acked pushes exactly. */
#include <arpa/inet.h>
#include <check.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/chaos/chaos.h"
#include "tests/check_run.h"

#define SERVERS 3
#define WORKERS 3
#define KEYS (SERVERS * 64)

static struct {
  char ns[32], veth_host[16], veth_ns[16];
  char host_ip[32], ns_ip[32];
  int made;
} net;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...) {
  char cmd[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  char quiet[600];
  snprintf(quiet, sizeof(quiet), "%s >/dev/null 2>&1", cmd);
  int rc = system(quiet);
  return rc == 0 ? 0 : -1;
}

static void net_teardown(void) {
  if (!net.made) return;
  sh("ip netns del %s", net.ns);
  sh("ip link del %s", net.veth_host);
  net.made = 0;
}

/* Makes the namespace and the link; "" on success, else why not. */
static const char *net_setup(void) {
  if (geteuid() != 0) return "not root (network namespaces need CAP_SYS_ADMIN)";
  if (sh("ip -V") != 0) return "no ip(8) command";
  int id = (int)(getpid() % 200) + 20;
  snprintf(net.ns, sizeof(net.ns), "pschaos%d", (int)getpid());
  snprintf(net.veth_host, sizeof(net.veth_host), "psch%d", id);
  snprintf(net.veth_ns, sizeof(net.veth_ns), "pscn%d", id);
  snprintf(net.host_ip, sizeof(net.host_ip), "10.231.%d.1", id);
  snprintf(net.ns_ip, sizeof(net.ns_ip), "10.231.%d.2", id);
  if (sh("ip netns add %s", net.ns) != 0) return "ip netns add failed";
  net.made = 1;
  if (sh("ip link add %s type veth peer name %s", net.veth_host, net.veth_ns) !=
      0)
    return "cannot create a veth pair";
  if (sh("ip link set %s netns %s", net.veth_ns, net.ns) != 0 ||
      sh("ip addr add %s/24 dev %s", net.host_ip, net.veth_host) != 0 ||
      sh("ip link set %s up", net.veth_host) != 0 ||
      sh("ip netns exec %s ip addr add %s/24 dev %s", net.ns, net.ns_ip,
         net.veth_ns) != 0 ||
      sh("ip netns exec %s ip link set %s up", net.ns, net.veth_ns) != 0 ||
      sh("ip netns exec %s ip link set lo up", net.ns) != 0)
    return "cannot configure the veth pair";
  /* A TCP connection from inside to the host side goes through before
   * anything relies on the link. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  inet_pton(AF_INET, net.host_ip, &a.sin_addr);
  socklen_t alen = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      listen(fd, 4) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
    if (fd >= 0) close(fd);
    return "cannot listen on the host side of the link";
  }
  int through = 0;
  for (int i = 0; i < 20 && !through; i++) {
    through = sh("ip netns exec %s timeout 2 bash -c 'exec 3<>/dev/tcp/%s/%d'",
                 net.ns, net.host_ip, ntohs(a.sin_port)) == 0;
    if (!through) h_sleep_ms(100);
  }
  close(fd);
  return through ? "" : "no TCP connection across the veth link";
}

START_TEST(cut_server_is_fenced_and_replaced) {
  h_cluster_t c;
  h_init(&c, "chaos_partition");
  snprintf(c.sched_ep, sizeof(c.sched_ep), "tcp://%s:%d", net.host_ip,
           h_free_port());
  chaos_ledger_setup(c.dir, WORKERS, KEYS, 120);
  h_proc_t *sched =
      h_spawn(&c, "scheduler", "ps-scheduler", "--bind", c.sched_ep,
              "--servers", "3", "--workers", "3", "--mode", "asp", NULL);
  chaos_server_t srv[SERVERS];
  memset(srv, 0, sizeof(srv));
  chaos_server_start(&c, &srv[0], 0, "server", net.host_ip, NULL);
  chaos_server_start(&c, &srv[1], 1, "server", net.host_ip, NULL);
  h_proc_t *cut =
      chaos_server_start(&c, &srv[2], 2, "netns_server", net.ns_ip, net.ns);
  h_workers_start(&c, WORKERS, chaos_ledger_worker);
  int ok = h_workers_sync_timeout(60000);
  char why[512] = "";
  if (!ok) snprintf(why, sizeof(why), "the workers did not connect in 60 s");
  if (ok && !h_wait_replicated(&c, 2, 20000, why, sizeof(why))) ok = 0;
  if (ok) h_sleep_ms(800);

  uint64_t t_cut = h_now_ms(), detect = 0, replaced = 0;
  if (ok) {
    printf("partition: link of %s (%s) cut\n", cut->name, srv[2].address);
    fflush(stdout);
    ok = sh("ip netns exec %s ip link set %s down", net.ns, net.veth_ns) == 0;
    if (!ok) snprintf(why, sizeof(why), "cannot take the link down");
  }
  if (ok && !h_wait_node_state(&c, srv[2].address, "dead", 20000)) {
    snprintf(why, sizeof(why), "the cut server was not declared dead in 20 s");
    ok = 0;
  }
  detect = h_now_ms() - t_cut;
  /* Its ranges are re-replicated on the two servers left. */
  char rwhy[256] = "";
  if (ok && !h_wait_replicated(&c, 2, 30000, rwhy, sizeof(rwhy))) {
    snprintf(why, sizeof(why), "not re-replicated without it: %s", rwhy);
    ok = 0;
  }
  replaced = h_now_ms() - t_cut;
  if (ok) {
    printf("partition: declared dead after %" PRIu64
           " ms, ranges "
           "re-replicated after %" PRIu64 " ms\n",
           detect, replaced);
    h_sleep_ms(800); /* the ledger goes on without it */
    ok = sh("ip netns exec %s ip link set %s up", net.ns, net.veth_ns) == 0;
    if (!ok) snprintf(why, sizeof(why), "cannot bring the link back up");
  }
  if (ok) {
    int exited = h_wait_exit(cut, 15000);
    int fenced =
        exited && WIFEXITED(cut->status) && WEXITSTATUS(cut->status) != 0;
    printf("partition: link back up: %s %s\n", cut->name,
           !exited  ? "kept running"
           : fenced ? "exited non-zero (fenced)"
                    : "exited 0 or by a signal");
    if (!fenced) {
      snprintf(why, sizeof(why), "%s was not fenced after the link came back",
               cut->name);
      ok = 0;
    }
    h_sleep_ms(500);
  }
  chaos_ledger_result_t res;
  char lwhy[512] = "";
  if (!chaos_ledger_finish(-1, &res, lwhy, sizeof(lwhy)) && ok) {
    snprintf(why, sizeof(why), "%s", lwhy);
    ok = 0;
  }
  printf("partition: pushes acked %" PRIu64 " (w0 %" PRIu64 ", w1 %" PRIu64
         ", w2 %" PRIu64 "): %s%s%s\n",
         res.total_acked, res.acked[0], res.acked[1], res.acked[2],
         ok ? "HOLDS" : "FAILED", ok ? "" : ": ", ok ? "" : why);
  fflush(stdout);
  if (!ok) h_dump_logs(&c);
  h_wait_all(&c, 10000);
  h_kill_all(&c);
  (void)sched;
  ck_assert_msg(ok, "%s", why);
}
END_TEST

int main(void) {
  const char *no = net_setup();
  if (no[0] != '\0') {
    net_teardown();
    printf("SKIP: chaos.partition needs root and network namespaces: %s\n", no);
    return CHAOS_SKIP;
  }
  Suite *s = suite_create("chaos_partition");
  TCase *tc = tcase_create("partition");
  tcase_set_timeout(tc, 200);
  tcase_add_test(tc, cut_server_is_fenced_and_replaced);
  suite_add_tcase(s, tc);
  int rc = ps_check_run(s);
  net_teardown();
  return rc;
}
