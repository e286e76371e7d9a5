/* Small things every harness needs: quiet logs, a private scratch directory
 * on a RAM-backed file system, and emptying it between inputs. Single
 * thread. */
#ifndef PS_FUZZ_UTIL_H
#define PS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The daemons' log lines would cost more than the code under test and
 * bury libFuzzer's output: off unless FUZZ_LOG=1 (for reproducing one
 * input). */
void fuzz_quiet_logs(const char *component);

/* A fresh directory for this process (under $FUZZ_TMPDIR, else /dev/shm,
 * else /tmp), removed at exit. The returned string lives as long as the
 * process. Aborts on failure. */
const char *fuzz_scratch_dir(const char *name);

/* Removes everything inside dir (not dir itself). */
void fuzz_empty_dir(const char *dir);

/* ZeroMQ frees a closed socket on its reaper thread, later. A harness that
 * makes and closes sockets for every input can outrun that thread on a
 * loaded machine until the context runs out of sockets (EMFILE): called
 * after every input, this waits (a few ms at a time, 5 s at most) while
 * far more descriptors are open than after the first inputs. */
void fuzz_pace_reaper(void);

/* Writes len bytes to path (created or truncated); aborts on failure. */
void fuzz_write_file(const char *path, const void *data, size_t len);

/* Little-endian integers, for file formats. */
static inline uint32_t fuzz_get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}
static inline uint64_t fuzz_get_u64(const uint8_t *p) {
  return (uint64_t)fuzz_get_u32(p) | (uint64_t)fuzz_get_u32(p + 4) << 32;
}
static inline void fuzz_put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#endif
