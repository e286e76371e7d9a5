#include "worker/progress.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define PROGRESS_BAR_MIN 10
#define PROGRESS_BAR_MAX 30

void ps_progress_duration(double seconds, char *buf, size_t len) {
  if (isnan(seconds) || seconds < 0 || seconds > 1e9) {
    snprintf(buf, len, "?");
    return;
  }
  uint64_t s = (uint64_t)(seconds + 0.5);
  if (s < 60)
    snprintf(buf, len, "%" PRIu64 "s", s);
  else if (s < 3600)
    snprintf(buf, len, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
  else
    snprintf(buf, len, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s / 60 % 60);
}

size_t ps_progress_format(const ps_progress_t *p, size_t width, char *buf,
                          size_t len) {
  if (len == 0) return 0;
  /* What follows the bar, then the bar in what is left. */
  char tail[256], eta[32], part[64];
  size_t t = 0;
  double frac = p->steps ? (double)p->step / (double)p->steps : 0;
  if (frac > 1) frac = 1;
  t += (size_t)snprintf(tail + t, sizeof(tail) - t,
                        " step %" PRIu64 "/%" PRIu64 " %d%%", p->step,
                        p->steps, (int)(frac * 100));
  if (!isnan(p->loss)) {
    snprintf(part, sizeof(part), " loss %.4f", p->loss);
    t += (size_t)snprintf(tail + t, sizeof(tail) - t, "%s", part);
  }
  if (!isnan(p->test_accuracy)) {
    snprintf(part, sizeof(part), " acc %.4f", p->test_accuracy);
    t += (size_t)snprintf(tail + t, sizeof(tail) - t, "%s", part);
  }
  if (!isnan(p->samples_per_sec) && p->samples_per_sec > 0) {
    snprintf(part, sizeof(part), " %.0f samples/s", p->samples_per_sec);
    t += (size_t)snprintf(tail + t, sizeof(tail) - t, "%s", part);
  }
  ps_progress_duration(p->eta_s, eta, sizeof(eta));
  snprintf(tail + t, sizeof(tail) - t, " ETA %s", eta);

  char head[64];
  int h = snprintf(head, sizeof(head), "epoch %" PRIu64 "/%" PRIu64 " [",
                   p->epoch, p->epochs);
  size_t used = (size_t)h + 1 + strlen(tail);
  size_t bar = width > used ? width - used : 0;
  if (bar < PROGRESS_BAR_MIN) bar = PROGRESS_BAR_MIN;
  if (bar > PROGRESS_BAR_MAX) bar = PROGRESS_BAR_MAX;
  char bars[PROGRESS_BAR_MAX + 1];
  size_t filled = (size_t)(frac * (double)bar);
  for (size_t i = 0; i < bar; i++)
    bars[i] = i < filled ? '=' : i == filled ? '>' : ' ';
  bars[bar] = '\0';
  int n = snprintf(buf, len, "%s%s]%s", head, bars, tail);
  if (n < 0) {
    buf[0] = '\0';
    return 0;
  }
  return (size_t)n < len ? (size_t)n : len - 1;
}
