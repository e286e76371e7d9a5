/* Child processes of the programs that start others: the integration
 * harness and ps-bench start daemons with their output in a log file, tied
 * to the life of the process that started them, and learn whether and how
 * each ended. No daemon starts processes; this is here because both users
 * need the same answers, ECHILD's above all. Call from the thread that
 * started the children.
 */
#ifndef PS_PROC_H
#define PS_PROC_H

#include <sys/types.h>

/* The wait status of a child whose status is lost: waitpid said ECHILD
 * (something else reaped it, or SIGCHLD is ignored). Neither WIFEXITED nor
 * WIFSIGNALED holds for it, so it never reads as "exited 0". */
#define PS_PROC_STATUS_LOST (-1)

/* In a child just forked from parent: dies with SIGKILL when parent does
 * (and at once, _exit(127), if parent is already gone), and takes back the
 * default dispositions of SIGINT, SIGTERM and SIGPIPE, which exec would
 * otherwise keep ignored. */
void ps_proc_child_setup(pid_t parent);

/* Forks and execs path with the NULL-terminated argv (argv[0] included),
 * stdout and stderr to log (created or truncated), after
 * ps_proc_child_setup. Returns the child's pid, or -1 with errno set. */
pid_t ps_proc_spawn(const char *path, char *const argv[], const char *log);

/* Whether child pid has ended: 1 with *status set (its wait status, or
 * PS_PROC_STATUS_LOST), 0 while it runs. flags is 0 (wait for it) or
 * WNOHANG. A wait interrupted by a signal is retried. */
int ps_proc_reap(pid_t pid, int flags, int *status);

/* ps_proc_reap, trying every few milliseconds up to timeout_ms. */
int ps_proc_wait(pid_t pid, int timeout_ms, int *status);

#endif
