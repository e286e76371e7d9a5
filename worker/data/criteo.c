#include "worker/data/criteo.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/err.h"
#include "common/init.h"

#define READ_BUFFER (1u << 18)

struct ps_criteo_s {
  ps_criteo_opts_t o;
  gzFile f;
  char *path;
  uint64_t line;  /* lines read */
  uint64_t row;   /* rows seen, every worker's */
  char buf[PS_CRITEO_LINE_MAX + 2];
  char errmsg[PS_CRITEO_LINE_MAX / 8 + 1200];
};

void ps_criteo_opts_init(ps_criteo_opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->workers = 1;
  o->block = 1;
}

uint64_t ps_criteo_hash(uint32_t field, const char *hex, size_t len,
                        uint64_t id_space) {
  uint64_t v = 0;
  for (size_t i = 0; i < len; i++) {
    char c = hex[i];
    unsigned d = c <= '9' ? (unsigned)(c - '0')
                 : c <= 'F' ? (unsigned)(c - 'A' + 10)
                            : (unsigned)(c - 'a' + 10);
    v = (v << 4) | d;
  }
  /* A missing id gets its own salt, so it is no hex value's id. */
  uint64_t salt = ps_mix64(0xc217e0ull + 2u * (uint64_t)field + (len == 0));
  uint64_t h = ps_mix64(salt ^ v);
  return id_space ? h % id_space : h;
}

static const char *const dense_names[PS_CRITEO_DENSE] = {
    "I1", "I2", "I3", "I4", "I5", "I6", "I7",
    "I8", "I9", "I10", "I11", "I12", "I13"};

static int parse_fail(char *err, size_t errlen, int field, const char *what,
                      const char *s, size_t len) {
  /* Field 1 is the label, 2-14 I1-I13, 15-40 C1-C26 (1-based, as a
   * person counts columns). */
  char name[8];
  if (field == 0)
    snprintf(name, sizeof(name), "label");
  else if (field <= PS_CRITEO_DENSE)
    snprintf(name, sizeof(name), "%s", dense_names[field - 1]);
  else
    snprintf(name, sizeof(name), "C%d", field - PS_CRITEO_DENSE);
  if (len > 40) len = 40;
  snprintf(err, errlen, "field %d (%s): \"%.*s\" %s", field + 1, name,
           (int)len, s, what);
  return PS_ERR_FORMAT;
}

int ps_criteo_parse(const char *line, size_t len, uint64_t id_space,
                    ps_criteo_row_t *row, char *err, size_t errlen) {
  const char *p = line, *end = line + len;
  int field = 0;
  const int nfields = 1 + PS_CRITEO_DENSE + PS_CRITEO_CATEG;
  for (;; field++) {
    const char *q = memchr(p, '\t', (size_t)(end - p));
    if (q == NULL) q = end;
    size_t n = (size_t)(q - p);
    if (field >= nfields) {
      snprintf(err, errlen, "more than %d tab-separated fields", nfields);
      return PS_ERR_FORMAT;
    }
    if (field == 0) {
      if (n != 1 || (p[0] != '0' && p[0] != '1'))
        return parse_fail(err, errlen, field, "is not a label 0 or 1", p, n);
      row->label = (uint8_t)(p[0] - '0');
    } else if (field <= PS_CRITEO_DENSE) {
      double x = 0.0;
      if (n > 0) {
        size_t i = p[0] == '-' ? 1 : 0;
        if (i == n || n - i > 18)
          return parse_fail(err, errlen, field, "is not an integer", p, n);
        int64_t v = 0;
        for (; i < n; i++) {
          if (p[i] < '0' || p[i] > '9')
            return parse_fail(err, errlen, field, "is not an integer", p, n);
          v = v * 10 + (p[i] - '0');
        }
        /* Negative counts (Criteo's I2 has some) count as 0. */
        x = p[0] == '-' ? 0.0 : log1p((double)v);
      }
      row->dense[field - 1] = (float)x;
    } else {
      if (n > 16)
        return parse_fail(err, errlen, field, "is longer than 16 hex digits",
                          p, n);
      for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
              (c >= 'A' && c <= 'F')))
          return parse_fail(err, errlen, field, "is not a hex id", p, n);
      }
      uint32_t f = (uint32_t)(field - 1 - PS_CRITEO_DENSE);
      row->ids[f] = ps_criteo_hash(f, p, n, id_space);
    }
    if (q == end) break;
    p = q + 1;
  }
  if (field + 1 != nfields) {
    snprintf(err, errlen, "%d tab-separated fields, not %d", field + 1,
             nfields);
    return PS_ERR_FORMAT;
  }
  return PS_OK;
}

static int open_file(ps_criteo_t *r) {
  errno = 0;
  r->f = gzopen(r->path, "rb");
  if (r->f == NULL) {
    snprintf(r->errmsg, sizeof(r->errmsg), "%s: %s", r->path,
             errno ? strerror(errno) : "out of memory");
    return PS_ERR_IO;
  }
  gzbuffer(r->f, READ_BUFFER);
  r->line = 0;
  r->row = 0;
  return PS_OK;
}

ps_criteo_t *ps_criteo_open(const char *path, const ps_criteo_opts_t *o,
                            char *err, size_t errlen) {
  if (o->workers == 0 || o->rank >= o->workers || o->block == 0) {
    snprintf(err, errlen, "%s: rank %u of %u workers, blocks of %u rows", path,
             o->rank, o->workers, o->block);
    return NULL;
  }
  ps_criteo_t *r = calloc(1, sizeof(*r));
  if (r == NULL || (r->path = strdup(path)) == NULL) {
    free(r);
    snprintf(err, errlen, "%s: out of memory", path);
    return NULL;
  }
  r->o = *o;
  if (open_file(r) != PS_OK) {
    snprintf(err, errlen, "%s", r->errmsg);
    ps_criteo_destroy(&r);
    return NULL;
  }
  return r;
}

void ps_criteo_destroy(ps_criteo_t **r_p) {
  if (r_p == NULL || *r_p == NULL) return;
  ps_criteo_t *r = *r_p;
  if (r->f) gzclose(r->f);
  free(r->path);
  free(r);
  *r_p = NULL;
}

uint64_t ps_criteo_lines(const ps_criteo_t *r) {
  return r->line;
}

const char *ps_criteo_errmsg(const ps_criteo_t *r) {
  return r->errmsg;
}

int ps_criteo_rewind(ps_criteo_t *r) {
  if (r->f) gzclose(r->f);
  r->f = NULL;
  return open_file(r);
}

/* The next line into r->buf, without its newline: its length, -1 at the
 * end, or -2 (error, message set). */
static long read_line(ps_criteo_t *r) {
  if (gzgets(r->f, r->buf, (int)sizeof(r->buf)) == NULL) {
    int e;
    const char *why = gzerror(r->f, &e);
    if (e == Z_OK) return -1; /* the end; a truncated gzip is Z_BUF_ERROR */
    snprintf(r->errmsg, sizeof(r->errmsg), "%s:%llu: %s", r->path,
             (unsigned long long)r->line + 1,
             e == Z_ERRNO ? strerror(errno) : why);
    return -2;
  }
  r->line++;
  size_t n = strlen(r->buf);
  if (n > 0 && r->buf[n - 1] == '\n') {
    n--;
  } else if (!gzeof(r->f)) {
    snprintf(r->errmsg, sizeof(r->errmsg),
             "%s:%llu: line longer than %d bytes", r->path,
             (unsigned long long)r->line, PS_CRITEO_LINE_MAX);
    return -2;
  }
  if (n > 0 && r->buf[n - 1] == '\r') n--;
  if (n > PS_CRITEO_LINE_MAX) {
    snprintf(r->errmsg, sizeof(r->errmsg),
             "%s:%llu: line longer than %d bytes", r->path,
             (unsigned long long)r->line, PS_CRITEO_LINE_MAX);
    return -2;
  }
  return (long)n;
}

int ps_criteo_next(ps_criteo_t *r, ps_criteo_row_t *row) {
  for (;;) {
    long n = read_line(r);
    if (n == -1) return 0;
    if (n == -2) return PS_ERR_IO;
    uint64_t i = r->row++;
    if ((i / r->o.block) % r->o.workers != r->o.rank) continue;
    char why[512];
    if (ps_criteo_parse(r->buf, (size_t)n, r->o.id_space, row, why,
                        sizeof(why)) != PS_OK) {
      snprintf(r->errmsg, sizeof(r->errmsg), "%s:%llu: %s", r->path,
               (unsigned long long)r->line, why);
      return PS_ERR_FORMAT;
    }
    return 1;
  }
}

int ps_criteo_count(const char *path, uint64_t *rows, char *err,
                    size_t errlen) {
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (f == NULL) {
    snprintf(err, errlen, "%s: %s", path,
             errno ? strerror(errno) : "out of memory");
    return PS_ERR_IO;
  }
  gzbuffer(f, READ_BUFFER);
  char *buf = malloc(READ_BUFFER);
  if (buf == NULL) {
    gzclose(f);
    snprintf(err, errlen, "%s: out of memory", path);
    return PS_ERR_NOMEM;
  }
  uint64_t n = 0;
  char last = '\n';
  int got;
  while ((got = gzread(f, buf, READ_BUFFER)) > 0) {
    for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + got - p)));
         p++)
      n++;
    last = buf[got - 1];
  }
  int rc = PS_OK, e;
  const char *why = gzerror(f, &e);
  if (got < 0 || e != Z_OK) {
    snprintf(err, errlen, "%s: %s", path, e == Z_ERRNO ? strerror(errno) : why);
    rc = PS_ERR_IO;
  }
  free(buf);
  gzclose(f);
  if (last != '\n') n++; /* a last line without its newline */
  *rows = n;
  return rc;
}
