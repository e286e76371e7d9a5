/* Deterministic weight initialisation.
 *
 * The value of key k depends only on (seed, k), through a counter-based
 * generator, never on how the key space is split: a model initialised on two
 * servers, on three, or in one --standalone process holds the same bits.
 * Any thread.
 */
#ifndef PS_INIT_H
#define PS_INIT_H

#include <stdint.h>

/* Fills dst[i] for keys key_begin + i, i < count. init is PS__INIT__*:
 * INIT_ZERO gives 0, INIT_UNIFORM gives uniform(-scale, scale). */
void ps_init_fill(float *dst, uint64_t key_begin, uint64_t count, int init,
                  float scale, uint64_t seed);

/* 64-bit mix of x (splitmix64's finaliser); also used for seeded shuffles. */
uint64_t ps_mix64(uint64_t x);

#endif
