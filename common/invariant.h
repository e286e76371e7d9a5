/* Invariants: conditions that hold unless this program has a bug (a broken
 * precondition between two of its own modules, a state that cannot be
 * reached). One that does not hold is reported with what broke and where,
 * then the process aborts, so the core and the log point at the bug instead
 * of at some later damage. Checks stay on in every build type.
 *
 * Never for input: a bad message, option, file or request from outside is
 * refused with an error code and a message (common/err.h), never aborted on.
 *
 *   PS_ASSERT(n > 0 && n <= m->max_batch);  a condition that must hold
 *   PS_NEVER("unknown init %d", init);      a branch that cannot be taken
 *
 * Any thread may use them.
 */
#ifndef PS_INVARIANT_H
#define PS_INVARIANT_H

#define PS_ASSERT(cond)                                             \
  ((cond) ? (void)0                                                 \
          : ps_invariant_broken(__FILE__, __LINE__, __func__, "%s", \
                                "PS_ASSERT(" #cond ")"))

/* The arguments are a printf format and its values. */
#define PS_NEVER(...) \
  ps_invariant_broken(__FILE__, __LINE__, __func__, "PS_NEVER: " __VA_ARGS__)

/* Writes one log line (event=invariant_broken check="<what>"
 * at=<file>:<line> func=<func>) to stderr whatever the log level, and
 * aborts. Called by the macros above. */
_Noreturn void ps_invariant_broken(const char *file, int line, const char *func,
                                   const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
