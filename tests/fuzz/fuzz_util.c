#define _GNU_SOURCE /* nftw's FTW_DEPTH, FTW_PHYS */
#include "fuzz_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

void fuzz_quiet_logs(const char *component) {
  const char *want = getenv("FUZZ_LOG");
  ps_log_init(component, PS_LOG_DEBUG);
  if (want == NULL || strcmp(want, "1") != 0) ps__log_level = PS_LOG_ERROR + 1;
}

static int remove_cb(const char *path, const struct stat *st, int type,
                     struct FTW *ftw) {
  (void)st;
  (void)type;
  if (ftw->level > 0) remove(path);
  return 0;
}

void fuzz_empty_dir(const char *dir) {
  nftw(dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
}

#define SCRATCH_MAX 16
static char *scratch[SCRATCH_MAX];
static int nscratch;

static void scratch_cleanup(void) {
  for (int i = 0; i < nscratch; i++) {
    fuzz_empty_dir(scratch[i]);
    rmdir(scratch[i]);
  }
}

const char *fuzz_scratch_dir(const char *name) {
  const char *base = getenv("FUZZ_TMPDIR");
  struct stat st;
  if (base == NULL || base[0] == '\0')
    base = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0
               ? "/dev/shm"
               : "/tmp";
  char path[512];
  snprintf(path, sizeof(path), "%s/ps-fuzz-%s-XXXXXX", base, name);
  if (nscratch == SCRATCH_MAX || mkdtemp(path) == NULL) {
    perror("fuzz_scratch_dir");
    abort();
  }
  if (nscratch == 0) atexit(scratch_cleanup);
  scratch[nscratch] = strdup(path);
  if (scratch[nscratch] == NULL) abort();
  return scratch[nscratch++];
}

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (d == NULL) return 0;
  while (readdir(d) != NULL) n++;
  closedir(d);
  return n;
}

#define PACE_EVERY 16
#define PACE_SLACK 128
#define PACE_WAIT_MS 5000

void fuzz_pace_reaper(void) {
  static unsigned calls;
  static int settled = -1;
  if (++calls % PACE_EVERY != 0) return;
  int n = open_fds();
  if (settled < 0 || n < settled) settled = n;
  for (int ms = 0; n > settled + PACE_SLACK && ms < PACE_WAIT_MS; ms += 2) {
    usleep(2000);
    n = open_fds();
  }
}

void fuzz_write_file(const char *path, const void *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror(path);
    abort();
  }
  const uint8_t *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n <= 0) {
      perror(path);
      abort();
    }
    p += n;
    len -= (size_t)n;
  }
  close(fd);
}
