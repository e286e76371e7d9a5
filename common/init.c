#include "init.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "invariant.h"
#include "proto/ps.pb-c.h"

/* splitmix64's increment: 2^64 / golden ratio, odd, so k * GOLDEN visits
 * every 64-bit value once and nearby keys land far apart. */
#define GOLDEN 0x9e3779b97f4a7c15ULL

uint64_t ps_mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Key k's value is splitmix64's k-th output from a state derived from the
 * seed. The seed is mixed first so that seeds one GOLDEN apart do not give
 * the same stream shifted by one key. */
static inline float key_uniform(uint64_t seed_state, uint64_t key) {
  uint64_t z = ps_mix64(seed_state + (key + 1) * GOLDEN);
  /* Top 24 bits m give u = (m + 0.5) / 2^24 in (0, 1), so 2u - 1 =
   * (2m + 1 - 2^24) / 2^24: an odd integer below 2^24 in magnitude, exact
   * in a float, never -1 or 1 (values stay inside (-scale, scale)) and
   * symmetric about 0 (no bias in the mean). */
  int32_t m = (int32_t)(z >> 40);
  return (float)(2 * m + 1 - (1 << 24)) * 0x1p-24f;
}

void ps_init_fill(float *dst, uint64_t key_begin, uint64_t count, int init,
                  float scale, uint64_t seed) {
  switch (init) {
    case PS__INIT__INIT_ZERO:
      memset(dst, 0, count * sizeof(*dst));
      return;
    case PS__INIT__INIT_UNIFORM: {
      uint64_t state = ps_mix64(seed);
      for (uint64_t i = 0; i < count; i++)
        dst[i] = scale * key_uniform(state, key_begin + i);
      return;
    }
  }
  /* ps_model_from_pb refuses unknown inits, so one here is a bug. */
  PS_NEVER("unknown init %d", init);
}
