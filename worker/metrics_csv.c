#include "worker/metrics_csv.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define METRICS_CSV_HEADER                                           \
  "time_s,kind,epoch,step,steps,loss,lr,samples_per_sec,test_loss," \
  "test_accuracy\n"

struct ps_metrics_csv_s {
  FILE *f;
  char path[1024];
};

ps_metrics_csv_t *ps_metrics_csv_open(const char *path, char *err,
                                      size_t errlen) {
  ps_metrics_csv_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (strlen(path) >= sizeof(c->path)) {
    snprintf(err, errlen, "metrics CSV path of %zu bytes: at most %zu",
             strlen(path), sizeof(c->path) - 1);
    free(c);
    return NULL;
  }
  snprintf(c->path, sizeof(c->path), "%s", path);
  c->f = fopen(path, "w");
  if (c->f == NULL || fputs(METRICS_CSV_HEADER, c->f) < 0 ||
      fflush(c->f) != 0) {
    snprintf(err, errlen, "cannot write the metrics CSV %s: %s", path,
             strerror(errno));
    if (c->f) fclose(c->f);
    free(c);
    return NULL;
  }
  return c;
}

/* ",value" or "," for a number that is not known. */
static int field(FILE *f, double v, int decimals) {
  if (isnan(v) || isinf(v)) return fputc(',', f) == EOF ? -1 : 0;
  return fprintf(f, ",%.*f", decimals, v) < 0 ? -1 : 0;
}

void ps_metrics_csv_row(ps_metrics_csv_t *c, const ps_metrics_csv_row_t *r) {
  if (c == NULL || c->f == NULL) return;
  int bad = fprintf(c->f, "%.3f,%s,%" PRIu64 ",%" PRIu64 ",%" PRIu64,
                    r->time_s, r->kind, r->epoch, r->step, r->steps) < 0;
  bad |= field(c->f, r->loss, 6);
  bad |= field(c->f, r->lr, 6);
  bad |= field(c->f, r->samples_per_sec, 1);
  bad |= field(c->f, r->test_loss, 6);
  bad |= field(c->f, r->test_accuracy, 6);
  bad |= fputc('\n', c->f) == EOF;
  bad |= fflush(c->f) != 0;
  if (bad) {
    PS_WARN("metrics_csv_failed",
            "path=%s reason=\"%s\" hint=\"no more rows are written; "
            "training goes on\"",
            c->path, strerror(errno));
    fclose(c->f);
    c->f = NULL;
  }
}

void ps_metrics_csv_close(ps_metrics_csv_t **c_p) {
  ps_metrics_csv_t *c = c_p ? *c_p : NULL;
  if (c == NULL) return;
  *c_p = NULL;
  if (c->f && fclose(c->f) != 0)
    PS_WARN("metrics_csv_failed", "path=%s reason=\"%s\"", c->path,
            strerror(errno));
  free(c);
}
