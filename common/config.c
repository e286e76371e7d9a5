#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"

#define PS_VERSION_STRING "0.1.0"
#define USAGE_WIDTH 80
#define OPT_NAME_MAX 128

static const ps_opt_t *find_opt(const ps_config_t *cfg, const char *name,
                                size_t len) {
  for (size_t i = 0; i < cfg->nopts; i++) {
    const char *n = cfg->opts[i].name;
    if (strlen(n) == len && strncmp(n, name, len) == 0) return &cfg->opts[i];
  }
  return NULL;
}

static void env_name(const ps_opt_t *o, char *var, size_t n) {
  size_t j = 0;
  for (const char *p = "PS_"; *p != '\0' && j + 1 < n; p++) var[j++] = *p;
  for (const char *p = o->name; *p != '\0' && j + 1 < n; p++)
    var[j++] = (char)(*p == '-' ? '_' : toupper((unsigned char)*p));
  var[j] = '\0';
}

/* Looks value up in "a|b|c" by exact match; the index, or -1. */
static int enum_index(const char *choices, const char *value) {
  size_t vlen = strlen(value);
  int index = 0;
  for (const char *p = choices;; index++) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == vlen && strncmp(p, value, len) == 0) return index;
    if (bar == NULL) return -1;
    p = bar + 1;
  }
}

/* Bounds are doubles in the table; an INT bound reads best as an integer,
 * but casting a double beyond int64 is undefined, so those print as %g. */
static void format_bound(const ps_opt_t *o, double b, char *buf, size_t n) {
  if (o->type == PS_OPT_INT && fabs(b) < 9e18)
    snprintf(buf, n, "%lld", (long long)b);
  else
    snprintf(buf, n, "%.17g", b);
}

static int check_bounds(const ps_opt_t *o, const char *value, double v,
                        char *why, size_t whylen) {
  char bound[64];
  if (v < o->min) {
    format_bound(o, o->min, bound, sizeof(bound));
    return ps_errf(why, whylen, PS_ERR_CONFIG,
                   "value %s is below the minimum %s", value, bound);
  }
  if (v > o->max) {
    format_bound(o, o->max, bound, sizeof(bound));
    return ps_errf(why, whylen, PS_ERR_CONFIG,
                   "value %s is above the maximum %s", value, bound);
  }
  return 0;
}

/* The one parser every source goes through. On failure the target is left
 * as it was and why holds the reason, without the option or the source. */
static int parse_value(const ps_opt_t *o, const char *value, char *why,
                       size_t whylen) {
  char *end;
  switch (o->type) {
    case PS_OPT_BOOL: {
      int b;
      if (strcmp(value, "1") == 0 || strcasecmp(value, "true") == 0 ||
          strcasecmp(value, "yes") == 0)
        b = 1;
      else if (strcmp(value, "0") == 0 || strcasecmp(value, "false") == 0 ||
               strcasecmp(value, "no") == 0)
        b = 0;
      else {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not a boolean (0/1/true/false/yes/no)",
                       value);
      }
      *(int *)o->target = b;
      return 0;
    }
    case PS_OPT_INT: {
      /* strtoll skips leading blanks; a value with them was not what the
       * user meant to write, so only a sign or a digit may start it. */
      if (!(isdigit((unsigned char)value[0]) || value[0] == '-' ||
            value[0] == '+')) {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not an integer", value);
      }
      errno = 0;
      long long v = strtoll(value, &end, 10);
      if (end == value || *end != '\0') {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not an integer", value);
      }
      if (errno == ERANGE) {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value %s does not fit in 64 bits", value);
      }
      if (check_bounds(o, value, (double)v, why, whylen) != 0)
        return PS_ERR_CONFIG;
      *(int64_t *)o->target = (int64_t)v;
      return 0;
    }
    case PS_OPT_DOUBLE: {
      if (value[0] == '\0' || isspace((unsigned char)value[0])) {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not a number", value);
      }
      errno = 0;
      double v = strtod(value, &end);
      if (end == value || *end != '\0') {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not a number", value);
      }
      /* NaN passes every bounds comparison, so it is refused by name. */
      if (errno == ERANGE || !isfinite(v)) {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value %s is not a finite number", value);
      }
      if (check_bounds(o, value, v, why, whylen) != 0) return PS_ERR_CONFIG;
      *(double *)o->target = v;
      return 0;
    }
    case PS_OPT_STRING: {
      char *copy = strdup(value);
      if (copy == NULL) {
        return ps_errf(why, whylen, PS_ERR_NOMEM, "out of memory");
      }
      char **target = o->target;
      free(*target);
      *target = copy;
      return 0;
    }
    case PS_OPT_ENUM: {
      int index = enum_index(o->choices ? o->choices : "", value);
      if (index < 0) {
        return ps_errf(why, whylen, PS_ERR_CONFIG,
                       "value \"%s\" is not one of %s", value,
                       o->choices ? o->choices : "(none)");
      }
      *(int *)o->target = index;
      return 0;
    }
  }
  return ps_errf(why, whylen, PS_ERR_CONFIG, "option has unknown type %d",
                 (int)o->type);
}

static int apply(const ps_opt_t *o, const char *value, const char *source,
                 char *err, size_t errlen) {
  char why[512];
  if (parse_value(o, value, why, sizeof(why)) == 0) return PS_OK;
  return ps_errf(err, errlen, PS_ERR_CONFIG, "option --%s (%s): %s", o->name,
                 source, why);
}

static int apply_defaults(const ps_config_t *cfg, char *err, size_t errlen) {
  for (size_t i = 0; i < cfg->nopts; i++) {
    const ps_opt_t *o = &cfg->opts[i];
    /* Targets may hold garbage before the first load, so STRING targets are
     * set, not freed, here; from now on they are ours. */
    switch (o->type) {
      case PS_OPT_BOOL:
      case PS_OPT_ENUM:
        *(int *)o->target = 0;
        break;
      case PS_OPT_INT:
        *(int64_t *)o->target = 0;
        break;
      case PS_OPT_DOUBLE:
        *(double *)o->target = 0;
        break;
      case PS_OPT_STRING:
        *(char **)o->target = NULL;
        break;
    }
    if (o->def != NULL && apply(o, o->def, "default", err, errlen) != PS_OK)
      return PS_ERR_CONFIG;
  }
  return PS_OK;
}

/* Reading the file through our own fgets lets the handler know the line it
 * is on; inih counts one line per reader call, exactly as we do. */
typedef struct {
  const ps_config_t *cfg;
  const char *path;
  FILE *fp;
  int line;
  int error_line; /* 0 until the handler refuses something */
  int long_line;  /* 0 unless a line did not fit inih's buffer */
  char why[640];
} ini_ctx_t;

static char *ini_read_line(char *str, int num, void *stream) {
  ini_ctx_t *ctx = stream;
  if (fgets(str, num, ctx->fp) == NULL) return NULL;
  ctx->line++;
  /* inih would parse the rest of a long line as a line of its own, and take
   * the value cut short for the whole one; stop instead. */
  if (strchr(str, '\n') == NULL && !feof(ctx->fp)) {
    ctx->long_line = ctx->line;
    return NULL;
  }
  return str;
}

static int ini_handle(void *user, const char *section, const char *name,
                      const char *value) {
  /* Option names are unique in the table, so a section adds nothing. */
  (void)section;
  ini_ctx_t *ctx = user;
  /* inih goes on after an error; the first one is the one to report. */
  if (ctx->error_line != 0) return 0;
  char key[OPT_NAME_MAX];
  size_t len = strlen(name);
  const ps_opt_t *o = NULL;
  if (len < sizeof(key)) {
    for (size_t i = 0; i <= len; i++)
      key[i] = (char)(name[i] == '_' ? '-' : name[i]);
    o = find_opt(ctx->cfg, key, len);
  }
  if (o == NULL) {
    snprintf(ctx->why, sizeof(ctx->why), "unknown option \"%s\" (file %s:%d)",
             name, ctx->path, ctx->line);
    ctx->error_line = ctx->line;
    return 0;
  }
  char source[512];
  snprintf(source, sizeof(source), "file %s:%d", ctx->path, ctx->line);
  if (apply(o, value, source, ctx->why, sizeof(ctx->why)) != PS_OK) {
    ctx->error_line = ctx->line;
    return 0;
  }
  return 1;
}

static int load_file(const ps_config_t *cfg, const char *path,
                     const char *given_by, char *err, size_t errlen) {
  ini_ctx_t ctx = {.cfg = cfg, .path = path};
  ctx.fp = fopen(path, "r");
  if (ctx.fp == NULL) {
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "config file %s (%s): cannot open: %s", path, given_by,
                   strerror(errno));
  }
  int rc = ini_parse_stream(ini_read_line, &ctx, ini_handle, &ctx);
  fclose(ctx.fp);
  if (rc > 0 && rc == ctx.error_line)
    ps_errf(err, errlen, PS_ERR_CONFIG, "%s", ctx.why);
  else if (rc > 0)
    ps_errf(err, errlen, PS_ERR_CONFIG,
            "config file %s:%d: syntax error (expected name = value)", path,
            rc);
  else if (ctx.long_line != 0)
    ps_errf(err, errlen, PS_ERR_CONFIG,
            "config file %s:%d: line longer than %d bytes", path, ctx.long_line,
            INI_MAX_LINE - 2);
  else if (rc < 0)
    ps_errf(err, errlen, PS_ERR_CONFIG,
            "config file %s: cannot parse (error %d)", path, rc);
  else
    return PS_OK;
  return PS_ERR_CONFIG;
}

static int load_env(const ps_config_t *cfg, char *err, size_t errlen) {
  for (size_t i = 0; i < cfg->nopts; i++) {
    const ps_opt_t *o = &cfg->opts[i];
    char var[OPT_NAME_MAX + 4];
    env_name(o, var, sizeof(var));
    const char *value = getenv(var);
    if (value == NULL) continue;
    char source[sizeof(var) + 8];
    snprintf(source, sizeof(source), "env %s", var);
    if (apply(o, value, source, err, errlen) != PS_OK) return PS_ERR_CONFIG;
  }
  return PS_OK;
}

/* The first pass only finds what must act before anything else: --help and
 * --version end the load, and --config names the file to read before the
 * environment and the flags. */
static int scan_builtins(const ps_config_t *cfg, int argc, char **argv,
                         const char **config_path, char *err, size_t errlen) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) break;
    if (strcmp(a, "--help") == 0) {
      ps_config_usage(cfg, stdout);
      return 1;
    }
    if (strcmp(a, "--version") == 0) {
      printf("%s %s\n", cfg->program, PS_VERSION_STRING);
      return 1;
    }
    if (strncmp(a, "--config=", 9) == 0) {
      *config_path = a + 9;
    } else if (strcmp(a, "--config") == 0) {
      if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
        return ps_errf(err, errlen, PS_ERR_CONFIG,
                       "option --config (flag): missing value");
      }
      *config_path = argv[++i];
    }
  }
  return PS_OK;
}

static int load_flags(const ps_config_t *cfg, int argc, char **argv,
                      const char **positional, int max_positional,
                      int *npositional, char *err, size_t errlen) {
  int npos = 0, only_positional = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!only_positional && strcmp(a, "--") == 0) {
      only_positional = 1;
      continue;
    }
    if (only_positional || strncmp(a, "--", 2) != 0) {
      if (positional == NULL) {
        return ps_errf(err, errlen, PS_ERR_CONFIG, "unexpected argument \"%s\"",
                       a);
      }
      if (npos >= max_positional) {
        return ps_errf(err, errlen, PS_ERR_CONFIG,
                       "too many arguments: \"%s\" (at most %d)", a,
                       max_positional);
      }
      positional[npos++] = a;
      if (npositional != NULL) *npositional = npos;
      continue;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    if (len == 6 && strncmp(name, "config", 6) == 0) {
      if (eq == NULL) i++; /* scan_builtins checked that the value exists */
      continue;
    }
    const ps_opt_t *o = find_opt(cfg, name, len);
    if (o == NULL) {
      return ps_errf(err, errlen, PS_ERR_CONFIG, "unknown option --%.*s (flag)",
                     (int)len, name);
    }
    const char *value;
    if (eq != NULL) {
      value = eq + 1;
    } else if (o->type == PS_OPT_BOOL) {
      value = "1";
    } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
      value = argv[++i];
    } else {
      return ps_errf(err, errlen, PS_ERR_CONFIG,
                     "option --%s (flag): missing value", o->name);
    }
    if (apply(o, value, "flag", err, errlen) != PS_OK) return PS_ERR_CONFIG;
  }
  return PS_OK;
}

/* STRING targets are overwritten, not freed, since before the first load
 * they may hold anything: a second load over the same table needs a
 * ps_config_free first. On any result but PS_OK the STRING targets are freed
 * and NULL, so a caller that exits at once leaks nothing and one that calls
 * ps_config_free anyway does no harm. */
int ps_config_load(const ps_config_t *cfg, int argc, char **argv,
                   const char **positional, int max_positional,
                   int *npositional, char *err, size_t errlen) {
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (npositional != NULL) *npositional = 0;
  int rc = apply_defaults(cfg, err, errlen);
  const char *path = NULL;
  const char *given_by = "flag --config";
  if (rc == PS_OK) rc = scan_builtins(cfg, argc, argv, &path, err, errlen);
  if (rc == PS_OK && path == NULL) {
    path = getenv("PS_CONFIG");
    given_by = "env PS_CONFIG";
    if (path != NULL && path[0] == '\0') path = NULL;
  }
  if (rc == PS_OK && path != NULL)
    rc = load_file(cfg, path, given_by, err, errlen);
  if (rc == PS_OK) rc = load_env(cfg, err, errlen);
  if (rc == PS_OK)
    rc = load_flags(cfg, argc, argv, positional, max_positional, npositional,
                    err, errlen);
  if (rc != PS_OK) ps_config_free(cfg);
  return rc;
}

/* Prints text from column indent, breaking between words so no line passes
 * USAGE_WIDTH; a word longer than the width gets a line of its own. */
static void print_wrapped(FILE *stream, int indent, const char *text) {
  int col = 0;
  const char *p = text;
  while (*p != '\0') {
    while (*p == ' ') p++;
    if (*p == '\0') break;
    size_t len = strcspn(p, " ");
    if (col > indent && col + 1 + (int)len > USAGE_WIDTH) {
      fputc('\n', stream);
      col = 0;
    }
    if (col == 0) {
      fprintf(stream, "%*s", indent, "");
      col = indent;
    } else {
      fputc(' ', stream);
      col++;
    }
    fwrite(p, 1, len, stream);
    col += (int)len;
    p += len;
  }
  if (col > 0) fputc('\n', stream);
}

void ps_config_usage(const ps_config_t *cfg, FILE *stream) {
  /* Indexed by ps_opt_type_t. */
  static const char *const metavar[] = {"", "=INT", "=NUM", "=STR", "=CHOICE"};
  static const char *const kind[] = {"bool, a bare flag sets it", "integer",
                                     "number", "string", "one of"};
  char line[1024];
  snprintf(line, sizeof(line), "Usage: %s %s", cfg->program,
           cfg->usage ? cfg->usage : "[options]");
  print_wrapped(stream, 0, line);
  if (cfg->summary != NULL) print_wrapped(stream, 0, cfg->summary);
  fputs(
      "\nOptions (later sources win: default, config file, environment, "
      "flag):\n",
      stream);
  for (size_t i = 0; i < cfg->nopts; i++) {
    const ps_opt_t *o = &cfg->opts[i];
    if ((unsigned)o->type > PS_OPT_ENUM) continue;
    char env[OPT_NAME_MAX + 4], extra[256] = "";
    env_name(o, env, sizeof(env));
    const char *choices = o->choices ? o->choices : "";
    if (o->type == PS_OPT_INT || o->type == PS_OPT_DOUBLE) {
      char lo[64], hi[64];
      format_bound(o, o->min, lo, sizeof(lo));
      format_bound(o, o->max, hi, sizeof(hi));
      snprintf(extra, sizeof(extra), " in [%s, %s]", lo, hi);
    } else if (o->type == PS_OPT_ENUM) {
      snprintf(extra, sizeof(extra), " %s", choices);
    }
    /* Without a default a target is zeroed: NULL, 0, or the first choice. */
    char def[256];
    if (o->def != NULL)
      snprintf(def, sizeof(def), "%s", o->def);
    else if (o->type == PS_OPT_ENUM)
      snprintf(def, sizeof(def), "%.*s", (int)strcspn(choices, "|"), choices);
    else
      snprintf(def, sizeof(def), "%s", o->type == PS_OPT_STRING ? "none" : "0");
    snprintf(line, sizeof(line), "[%s%s; default %s; env %s]", kind[o->type],
             extra, def, env);
    fprintf(stream, "  --%s%s\n", o->name, metavar[o->type]);
    if (o->help != NULL) print_wrapped(stream, 6, o->help);
    print_wrapped(stream, 6, line);
  }
  fputs("  --config=FILE\n", stream);
  print_wrapped(stream, 6,
                "Read options from this INI file: keys as above, with dashes "
                "or underscores; sections are ignored. [env PS_CONFIG]");
  fputs("  --help\n", stream);
  print_wrapped(stream, 6, "Print this help and exit.");
  fputs("  --version\n", stream);
  print_wrapped(stream, 6, "Print the version and exit.");
}

void ps_config_free(const ps_config_t *cfg) {
  for (size_t i = 0; i < cfg->nopts; i++) {
    const ps_opt_t *o = &cfg->opts[i];
    if (o->type != PS_OPT_STRING) continue;
    char **target = o->target;
    free(*target);
    *target = NULL;
  }
}

int ps_config_refuse(const ps_config_t *cfg, const char *fmt, ...) {
  char why[1024];
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(why, sizeof(why), PS_ERR_CONFIG, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s: %s\nTry '%s --help'.\n", cfg->program, why,
          cfg->program);
  ps_config_free(cfg);
  return PS_EXIT_USAGE;
}

int ps_config_exit_status(int err) {
  if (err == PS_OK) return PS_EXIT_OK;
  return err == PS_ERR_CONFIG ? PS_EXIT_USAGE : PS_EXIT_FAILURE;
}

/* A ZeroMQ endpoint is transport://address; anything else would only fail
 * later, inside zmq_bind or zmq_connect, with a vaguer message. */
int ps_config_check_endpoint(const char *option, const char *value,
                             int allow_wildcard, char *err, size_t errlen) {
  const char *sep = value ? strstr(value, "://") : NULL;
  if (sep == NULL || sep == value || sep[3] == '\0')
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "option --%s: value \"%s\" is not a ZeroMQ endpoint "
                   "(transport://address, e.g. tcp://10.0.0.5:7001)",
                   option, value ? value : "");
  if (!allow_wildcard && strchr(value, '*') != NULL)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "option --%s: value \"%s\" has a wildcard; peers need a "
                   "concrete address",
                   option, value);
  return PS_OK;
}
