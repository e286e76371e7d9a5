/* systemd's notify protocol, as a service manager sees it: each daemon is
 * started with NOTIFY_SOCKET naming a datagram socket this test owns, and
 * WATCHDOG_USEC / WATCHDOG_PID as systemd sets them for WatchdogSec=.
 *
 * - READY=1 comes once the daemon serves: at that moment its port answers
 *   (scheduler: bound; server: bound, registered, holding a view, so its
 *   status names its ranges and the epoch; worker: registered).
 * - WATCHDOG=1 keeps coming, every gap shorter than the interval.
 * - A daemon whose loop is stopped (SIGSTOP) sends none for longer than the
 *   interval, and sends again once continued.
 * - SIGTERM gives STOPPING=1.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "tests/check_run.h"

#define WATCHDOG_MS 1000

typedef struct {
  const char *name;
  int fd;
  char addr[64]; /* NOTIFY_SOCKET's value: "@..." (abstract) */
  h_proc_t *proc;
  int ready;
  char status[256];
  int stopping;
  int watchdogs;
  uint64_t last_watchdog_ms;
  uint64_t max_gap_ms;
} listener_t;

static void listener_open(listener_t *l, const char *name) {
  memset(l, 0, sizeof(*l));
  l->name = name;
  snprintf(l->addr, sizeof(l->addr), "@ps-notify-test-%d-%s", (int)getpid(),
           name);
  l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(l->fd, 0);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  size_t n = strlen(l->addr);
  memcpy(sa.sun_path, l->addr, n);
  sa.sun_path[0] = '\0'; /* abstract namespace, as sd_notify reads "@" */
  ck_assert_int_eq(
      bind(l->fd, (struct sockaddr *)&sa,
           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)),
      0);
}

/* Records what one datagram says. */
static void take(listener_t *l, char *msg) {
  uint64_t now = h_now_ms();
  for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n")) {
    if (strcmp(line, "READY=1") == 0) l->ready = 1;
    if (strcmp(line, "STOPPING=1") == 0) l->stopping = 1;
    if (strncmp(line, "STATUS=", 7) == 0)
      snprintf(l->status, sizeof(l->status), "%s", line + 7);
    if (strcmp(line, "WATCHDOG=1") == 0) {
      if (l->watchdogs > 0 && now - l->last_watchdog_ms > l->max_gap_ms)
        l->max_gap_ms = now - l->last_watchdog_ms;
      l->watchdogs++;
      l->last_watchdog_ms = now;
    }
  }
}

/* Reads every datagram that arrives on any listener for ms milliseconds,
 * or until done(l) holds for the listener `until` (if not NULL). */
static int pump(listener_t *ls, int n, int ms, listener_t *until,
                int (*done)(const listener_t *)) {
  uint64_t deadline = h_deadline_ms(ms);
  for (;;) {
    if (until && done(until)) return 1;
    uint64_t now = h_now_ms();
    if (now >= deadline) return 0;
    struct pollfd pfd[8];
    for (int i = 0; i < n; i++) pfd[i] = (struct pollfd){ls[i].fd, POLLIN, 0};
    int rc = poll(pfd, (nfds_t)n, (int)(deadline - now));
    if (rc <= 0) continue;
    for (int i = 0; i < n; i++) {
      if (!(pfd[i].revents & POLLIN)) continue;
      char msg[1024];
      ssize_t r = recv(ls[i].fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
      if (r <= 0) continue;
      msg[r] = '\0';
      take(&ls[i], msg);
    }
  }
}

static int is_ready(const listener_t *l) {
  return l->ready;
}
static int is_stopping(const listener_t *l) {
  return l->stopping;
}

/* Starts bin with its NOTIFY_SOCKET and a watchdog for its own pid:
 * through sh, whose exec keeps the pid that WATCHDOG_PID names. */
static h_proc_t *spawn_notified(h_cluster_t *c, listener_t *l,
                                const char *const *args) {
  const char *argv[32];
  int n = 0;
  argv[n++] = "/bin/sh";
  argv[n++] = "-c";
  argv[n++] = "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"";
  argv[n++] = "sh";
  argv[n++] = h_bin(args[0]);
  for (int i = 1; args[i] != NULL && n < 31; i++) argv[n++] = args[i];
  argv[n] = NULL;
  char usec[32];
  snprintf(usec, sizeof(usec), "%d", WATCHDOG_MS * 1000);
  setenv("NOTIFY_SOCKET", l->addr, 1);
  setenv("WATCHDOG_USEC", usec, 1);
  h_proc_t *p = h_spawnv(c, l->name, argv);
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  l->proc = p;
  return p;
}

/* 1 if a TCP connection to the port of endpoint (tcp://host:port) opens. */
static int port_answers(const char *endpoint) {
  const char *colon = strrchr(endpoint, ':');
  if (colon == NULL) return 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)atoi(colon + 1));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

static void give_up(h_cluster_t *c, const char *fmt, const char *what) {
  h_dump_logs(c);
  h_kill_all(c);
  ck_abort_msg(fmt, what);
}

START_TEST(notify_lifecycle) {
  h_cluster_t c;
  h_init(&c, "notify");
  listener_t ls[3];
  listener_t *sched = &ls[0], *server = &ls[1], *worker = &ls[2];
  listener_open(sched, "scheduler");
  listener_open(server, "server");
  listener_open(worker, "worker");

  /* A long heartbeat timeout: the pauses below must not make anyone
   * dead. */
  const char *sched_args[] = {"ps-scheduler",
                              "--bind",
                              c.sched_ep,
                              "--servers",
                              "1",
                              "--workers",
                              "1",
                              "--heartbeat-timeout-ms",
                              "20000",
                              NULL};
  spawn_notified(&c, sched, sched_args);
  if (!pump(ls, 3, 20000, sched, is_ready))
    give_up(&c, "%s sent no READY=1 within 20 s", "scheduler");
  /* READY=1 means bound: the port must answer now, not a moment later. */
  if (!port_answers(c.sched_ep))
    give_up(&c, "%s was READY but its port did not answer", "scheduler");
  fprintf(stderr, "scheduler READY, status \"%s\"\n", sched->status);

  const char *server_args[] = {"ps-server", "--scheduler", c.sched_ep, NULL};
  spawn_notified(&c, server, server_args);
  const char *worker_args[] = {"ps-worker", "--scheduler", c.sched_ep,
                               "--epochs",  "50",          NULL};
  spawn_notified(&c, worker, worker_args);

  if (!pump(ls, 3, 60000, server, is_ready))
    give_up(&c, "%s sent no READY=1 within 60 s", "server");
  /* Holding its view: the status names the ranges and the epoch, and the
   * endpoint it serves on, which answers. */
  fprintf(stderr, "server READY, status \"%s\"\n", server->status);
  ck_assert_msg(strstr(server->status, "serving 1 ranges, epoch 1") != NULL,
                "server status \"%s\"", server->status);
  const char *on = strstr(server->status, " on ");
  if (on == NULL || !port_answers(on + 4))
    give_up(&c, "server was READY but its port did not answer (%s)",
            server->status);
  if (!pump(ls, 3, 60000, worker, is_ready))
    give_up(&c, "%s sent no READY=1 within 60 s", "worker");
  fprintf(stderr, "worker READY, status \"%s\"\n", worker->status);

  /* The watchdog, from all three at once: every gap under the interval. */
  for (int i = 0; i < 3; i++) ls[i].watchdogs = 0, ls[i].max_gap_ms = 0;
  pump(ls, 3, 4 * WATCHDOG_MS, NULL, NULL);
  for (int i = 0; i < 3; i++) {
    fprintf(stderr, "%s: %d WATCHDOG=1 in %d ms, longest gap %llu ms\n",
            ls[i].name, ls[i].watchdogs, 4 * WATCHDOG_MS,
            (unsigned long long)ls[i].max_gap_ms);
    if (ls[i].watchdogs < 5 || ls[i].max_gap_ms >= WATCHDOG_MS)
      give_up(&c, "%s did not keep sending WATCHDOG=1 within the interval",
              ls[i].name);
  }

  /* A stopped loop sends nothing; continued, it sends again. */
  for (int i = 0; i < 3; i++) {
    listener_t *l = &ls[i];
    kill(l->proc->pid, SIGSTOP);
    h_sleep_ms(50);
    pump(ls, 3, 50, NULL, NULL); /* what was sent before the stop */
    int before = l->watchdogs;
    pump(ls, 3, 2 * WATCHDOG_MS, NULL, NULL);
    int during = l->watchdogs - before;
    kill(l->proc->pid, SIGCONT);
    pump(ls, 3, WATCHDOG_MS, NULL, NULL);
    int after = l->watchdogs - before - during;
    fprintf(stderr, "%s: SIGSTOP 2 s: %d WATCHDOG=1; after SIGCONT: %d\n",
            l->name, during, after);
    if (during != 0) give_up(&c, "%s sent WATCHDOG=1 while stopped", l->name);
    if (after == 0)
      give_up(&c, "%s sent no WATCHDOG=1 within the interval after SIGCONT",
              l->name);
  }

  /* SIGTERM: the worker says it stops because of it; the others say they
   * stop (their own SIGTERM or the cluster's shutdown, whichever comes
   * first), and everyone exits. */
  kill(worker->proc->pid, SIGTERM);
  kill(server->proc->pid, SIGTERM);
  kill(sched->proc->pid, SIGTERM);
  for (int i = 0; i < 3; i++)
    if (!pump(ls, 3, 10000, &ls[i], is_stopping))
      give_up(&c, "%s sent no STOPPING=1 within 10 s of SIGTERM", ls[i].name);
  fprintf(stderr, "STOPPING: scheduler \"%s\", server \"%s\", worker \"%s\"\n",
          sched->status, server->status, worker->status);
  ck_assert_msg(strstr(worker->status, "SIGTERM") != NULL,
                "worker status \"%s\"", worker->status);
  int all = h_wait_all(&c, 10000);
  if (!all) give_up(&c, "%s", "not every daemon exited within 10 s of SIGTERM");
  h_kill_all(&c);
  for (int i = 0; i < 3; i++) close(ls[i].fd);
}
END_TEST

/* Without NOTIFY_SOCKET nothing changes: the daemons run as before (the
 * other integration suites), and a job still ends with exit 0. */

int main(void) {
  Suite *s = suite_create("notify");
  TCase *tc = tcase_create("notify");
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, notify_lifecycle);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
