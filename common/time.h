/* Monotonic time for deadlines, timeouts and rates. Any thread. */
#ifndef PS_TIME_H
#define PS_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ps_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t ps_now_ms(void) { return ps_now_ns() / 1000000ull; }

static inline double ps_now_s(void) { return (double)ps_now_ns() * 1e-9; }

#endif
