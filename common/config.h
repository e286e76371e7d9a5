/* One table describes every option of a program: name, type, bounds, default,
 * environment variable and help text. The same table serves command-line
 * flags, PS_* environment variables, an INI config file and --help.
 *
 * Sources, later ones win: defaults, the file given by --config (or
 * PS_CONFIG), the environment, the flags. Every value from every source goes
 * through one parser, so a bad value is refused the same way wherever it came
 * from, naming the option, the source and the reason; nothing is clamped.
 *
 * Option "heartbeat-ms" is flag --heartbeat-ms (or --heartbeat-ms=V), env
 * PS_HEARTBEAT_MS and file key heartbeat-ms (or heartbeat_ms) in any section.
 * Called from the main thread at start only.
 */
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

/* The default of an option (ps_opt_t.def) from the macro that holds it for
 * the code as well, so the two never drift: with #define X_MS 100,
 * PS_OPT_DEF(X_MS) is "100". The macro must be a plain literal. */
#define PS_OPT_DEF(macro) PS__OPT_STR(macro)
#define PS__OPT_STR(x) #x

/* The scheduler endpoint every program and library defaults to. */
#define PS_DEFAULT_SCHEDULER "tcp://127.0.0.1:7000"

typedef enum {
  PS_OPT_BOOL,   /* int*: flag without a value sets 1; values 0/1/true/false/yes/no */
  PS_OPT_INT,    /* int64_t*, bounded by [min, max] */
  PS_OPT_DOUBLE, /* double*, bounded by [min, max] */
  PS_OPT_STRING, /* char**: heap copy owned by the caller (free with ps_config_free) */
  PS_OPT_ENUM,   /* int*: index of the value in choices, "bsp|asp" */
} ps_opt_type_t;

typedef struct {
  const char *name;  /* lower-case with dashes: "heartbeat-ms" */
  ps_opt_type_t type;
  void *target;
  const char *def;   /* default, written as a user would; NULL: none (strings) */
  double min, max;   /* INT and DOUBLE only */
  const char *choices; /* ENUM only: "bsp|asp" */
  const char *help;
} ps_opt_t;

typedef struct {
  const char *program;  /* "ps-server" */
  const char *summary;  /* one line for --help */
  const char *usage;    /* "[options]" or "COMMAND [options]" */
  const ps_opt_t *opts;
  size_t nopts;
} ps_config_t;

/* Exit statuses, the same for every program: bad usage (an unknown flag, a
 * bad option value, a config file that cannot be read or parsed, options
 * that contradict each other) is PS_EXIT_USAGE with a message naming the
 * option and the reason; a failure at run time is PS_EXIT_FAILURE; a clean
 * stop, --help and --version are PS_EXIT_OK. */
#define PS_EXIT_OK 0
#define PS_EXIT_FAILURE 1
#define PS_EXIT_USAGE 2

/* Fills every target from the sources above. argv[0] is skipped; arguments
 * that do not start with "--" are refused unless positional is non-NULL, in
 * which case they are collected there in order (at most max_positional).
 * Returns PS_OK; 1 when --help or --version was printed to stdout (the
 * caller exits 0); or PS_ERR_CONFIG with a one-line reason in err, such as
 *   option --heartbeat-ms (flag): value "abc" is not an integer
 */
int ps_config_load(const ps_config_t *cfg, int argc, char **argv,
                   const char **positional, int max_positional,
                   int *npositional, char *err, size_t errlen);

/* Refuses the command line: prints "<program>: <message>" and a pointer to
 * --help on stderr, frees the STRING targets (ps_config_free; the message
 * is formatted first, so it may quote them) and returns PS_EXIT_USAGE, for
 * main to return. */
int ps_config_refuse(const ps_config_t *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The exit status of a program whose start failed with err: PS_EXIT_USAGE
 * when the options were refused (PS_ERR_CONFIG), else PS_EXIT_FAILURE. */
int ps_config_exit_status(int err);

/* PS_OK if value is a ZeroMQ endpoint (transport://address); a wildcard
 * ('*': any port or interface) only where allow_wildcard (an endpoint to
 * bind). Else PS_ERR_CONFIG and, in err, "option --<option>: value ...". */
int ps_config_check_endpoint(const char *option, const char *value,
                             int allow_wildcard, char *err, size_t errlen);

/* Prints the generated help: usage, summary, and one entry per option with
 * its type, default, bounds and environment variable. */
void ps_config_usage(const ps_config_t *cfg, FILE *stream);

/* Frees the strings that ps_config_load stored in STRING targets and sets
 * those targets to NULL. */
void ps_config_free(const ps_config_t *cfg);

#endif
