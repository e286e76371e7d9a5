#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "time.h"

void ps_proc_child_setup(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* The parent may have died between fork and prctl. */
  if (getppid() != parent) _exit(127);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
}

pid_t ps_proc_spawn(const char *path, char *const argv[], const char *log) {
  pid_t parent = getpid();
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid != 0) return pid;
  ps_proc_child_setup(parent);
  int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "%s: cannot open log %s: %s\n", path, log, strerror(errno));
    _exit(127);
  }
  if (dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(127);
  execv(path, argv);
  fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
  _exit(127);
}

int ps_proc_reap(pid_t pid, int flags, int *status) {
  for (;;) {
    int st;
    pid_t r = waitpid(pid, &st, flags);
    if (r == pid) {
      *status = st;
      return 1;
    }
    if (r == 0) return 0; /* WNOHANG: still running */
    if (errno == EINTR) continue;
    /* ECHILD: no child of ours by that pid (any more), so it will never be
     * reaped here: it has ended, how is not known. Waiting on would hang,
     * and "exited 0" would hide a crash. */
    *status = PS_PROC_STATUS_LOST;
    return 1;
  }
}

int ps_proc_wait(pid_t pid, int timeout_ms, int *status) {
  uint64_t end = ps_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    if (ps_proc_reap(pid, WNOHANG, status)) return 1;
    if (ps_now_ms() >= end) return 0;
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
}
