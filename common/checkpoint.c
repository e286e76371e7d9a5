#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <isa-l/crc.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "le.h"
#include "optimizer.h"
#include "proto/ps.pb-c.h"

/* Weights are written and read as the host's floats. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "checkpoint data sections are little-endian floats");

static const char SHARD_MAGIC[8] = {'P', 'S', 'C', 'K', 'S', 'H', 'R', 'D'};
static const char MANIFEST_MAGIC[8] = {'P', 'S', 'C', 'K', 'M', 'N', 'F', 'T'};
#define FRAME_HEAD 24
#define MAX_SECTIONS 8
/* crc32_iscsi takes an int length. */
#define CRC_CHUNK (1u << 30)
/* Reads and writes go in pieces of at most this much, so a multi-GiB
 * section never asks the kernel for one giant transfer. */
#define IO_CHUNK (64u << 20)

uint32_t ps_crc32c(uint32_t crc, const void *buf, size_t len) {
  /* ISA-L keeps the register un-inverted between calls; the inversion at both
   * ends makes the standard CRC32C (0xe3069283 for "123456789"). */
  unsigned int state = ~crc;
  unsigned char *p = (unsigned char *)buf; /* ISA-L only reads it */
  while (len > 0) {
    size_t n = len < CRC_CHUNK ? len : CRC_CHUNK;
    state = crc32_iscsi(p, (int)n, state);
    p += n;
    len -= n;
  }
  return ~state;
}

/* ---- fingerprint --------------------------------------------------------- */

/* FNV-1a over a canonical encoding: not a defence against forgery, only
 * against restoring weights into a model they were not trained for. */
static void fnv(uint64_t *h, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) {
    *h ^= p[i];
    *h *= 0x100000001b3ull;
  }
}
static void fnv_u64(uint64_t *h, uint64_t v) {
  uint8_t b[8];
  ps_le_put_u64(b, v);
  fnv(h, b, 8);
}
static void fnv_f32(uint64_t *h, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  fnv_u64(h, u);
}

uint64_t ps_checkpoint_fingerprint(const ps_model_t *m) {
  uint64_t h = 0xcbf29ce484222325ull;
  fnv_u64(&h, m->ntensors);
  for (size_t i = 0; i < m->ntensors; i++) {
    const ps_tensor_spec_t *t = &m->tensors[i];
    fnv(&h, t->name, strlen(t->name) + 1);
    fnv_u64(&h, t->offset);
    fnv_u64(&h, t->length);
    fnv_u64(&h, (uint64_t)(uint32_t)t->init);
    fnv_f32(&h, t->init_scale);
  }
  fnv_u64(&h, (uint64_t)(uint32_t)m->optimizer);
  fnv_f32(&h, m->learning_rate);
  fnv_f32(&h, m->momentum);
  fnv_u64(&h, m->seed);
  /* Issue #14: the other optimizer settings, hashed only when set, so a
   * model with none of them keeps the fingerprint it had. The schedule is
   * left out: it says how training goes on, not what the weights mean. */
  const float extra[] = {m->beta1, m->beta2, m->epsilon,
                         m->l1,    m->l2,    m->ftrl_beta};
  for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
    if (extra[i] != 0.0f) {
      fnv_u64(&h, i);
      fnv_f32(&h, extra[i]);
    }
  for (size_t i = 0; i < m->ntensors; i++) {
    const ps_tensor_spec_t *t = &m->tensors[i];
    if (!t->has_optimizer) continue;
    const ps_optimizer_spec_t *o = &t->optimizer;
    fnv_u64(&h, i);
    fnv_u64(&h, (uint64_t)(uint32_t)o->kind);
    const float f[] = {o->learning_rate, o->momentum, o->beta1, o->beta2,
                       o->epsilon,       o->l1,       o->l2,    o->ftrl_beta};
    for (size_t j = 0; j < sizeof(f) / sizeof(f[0]); j++) fnv_f32(&h, f[j]);
  }
  /* Only models with sparse tables hash them, so a dense model's
   * checkpoints keep the fingerprint they were written with. A table's own
   * optimizer says how wide its rows are: hashed when it has one. */
  if (m->nsparse > 0) {
    fnv_u64(&h, m->nsparse);
    for (size_t i = 0; i < m->nsparse; i++) {
      const ps_sparse_spec_t *t = &m->sparse[i];
      fnv(&h, t->name, strlen(t->name) + 1);
      fnv_u64(&h, t->dim);
      fnv_u64(&h, (uint64_t)(uint32_t)t->init);
      fnv_f32(&h, t->init_scale);
      if (!t->has_optimizer) continue;
      const ps_optimizer_spec_t *o = &t->optimizer;
      fnv_u64(&h, (uint64_t)(uint32_t)o->kind);
      const float f[] = {o->learning_rate, o->momentum, o->beta1, o->beta2,
                         o->epsilon,       o->l1,       o->l2,    o->ftrl_beta};
      for (size_t j = 0; j < sizeof(f) / sizeof(f[0]); j++) fnv_f32(&h, f[j]);
    }
  }
  return h;
}

/* ---- plain file I/O ------------------------------------------------------ */

static int write_full(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    size_t n = len < IO_CHUNK ? len : IO_CHUNK;
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Reads exactly len bytes; returns the count read (less at end of file) or
 * -1 with errno. */
static ssize_t read_full(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  size_t got = 0;
  while (got < len) {
    size_t n = len - got < IO_CHUNK ? len - got : IO_CHUNK;
    ssize_t r = read(fd, p + got, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

/* The parent directory of path into out ("." if none). */
static void parent_dir(const char *path, char *out, size_t len) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    snprintf(out, len, ".");
  } else if (slash == path) {
    snprintf(out, len, "/");
  } else {
    snprintf(out, len, "%.*s", (int)(slash - path), path);
  }
}

/* The rename is only durable once the directory entry is. */
static int fsync_dir(const char *dir, char *err, size_t errlen) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return ps_errf(err, errlen, PS_ERR_IO, "%s: cannot open the directory: %s",
                   dir, strerror(errno));
  int rc = fsync(fd);
  int saved = errno;
  close(fd);
  if (rc != 0)
    return ps_errf(err, errlen, PS_ERR_IO, "%s: fsync of the directory: %s",
                   dir, strerror(saved));
  return PS_OK;
}

/* A file being written: its temporary path and the running size and CRC. */
typedef struct {
  int fd;
  char tmp[PS_CHECKPOINT_PATH_MAX + 64];
  char path[PS_CHECKPOINT_PATH_MAX + 8];
  uint64_t bytes;
  uint32_t crc;
} out_file_t;

static int out_open_mode(out_file_t *o, const char *path, mode_t mode,
                         char *err, size_t errlen);

static int out_open(out_file_t *o, const char *path, char *err, size_t errlen) {
  return out_open_mode(o, path, 0644, err, errlen);
}

static int out_open_mode(out_file_t *o, const char *path, mode_t mode,
                         char *err, size_t errlen) {
  memset(o, 0, sizeof(*o));
  o->fd = -1;
  if (strlen(path) >= PS_CHECKPOINT_PATH_MAX)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s: path longer than %d bytes",
                   path, PS_CHECKPOINT_PATH_MAX - 1);
  snprintf(o->path, sizeof(o->path), "%s", path);
  /* Same directory as the target: rename is atomic only within a file
   * system. The pid keeps two writers of one name apart. */
  static unsigned long seq;
  unsigned long n = __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
  char dir[PS_CHECKPOINT_PATH_MAX];
  parent_dir(path, dir, sizeof(dir));
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  snprintf(o->tmp, sizeof(o->tmp), "%s/.%s.tmp.%ld.%lu", dir, base,
           (long)getpid(), n);
  o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (o->fd < 0)
    return ps_errf(err, errlen, PS_ERR_IO, "%s: cannot create %s: %s", path,
                   o->tmp, strerror(errno));
  return PS_OK;
}

static int out_write(out_file_t *o, const void *p, size_t len, char *err,
                     size_t errlen) {
  if (write_full(o->fd, p, len) != 0)
    return ps_errf(err, errlen, PS_ERR_IO, "%s: write: %s", o->path,
                   strerror(errno));
  o->crc = ps_crc32c(o->crc, p, len);
  o->bytes += len;
  return PS_OK;
}

static void out_abort(out_file_t *o) {
  if (o->fd >= 0) close(o->fd);
  o->fd = -1;
  if (o->tmp[0]) unlink(o->tmp);
}

/* fsync, close, rename over the target, fsync the directory. */
static int out_commit(out_file_t *o, char *err, size_t errlen) {
  if (fsync(o->fd) != 0) {
    int saved = errno;
    out_abort(o);
    return ps_errf(err, errlen, PS_ERR_IO, "%s: fsync: %s", o->path,
                   strerror(saved));
  }
  int rc = close(o->fd);
  o->fd = -1;
  if (rc != 0) {
    int saved = errno;
    out_abort(o);
    return ps_errf(err, errlen, PS_ERR_IO, "%s: close: %s", o->path,
                   strerror(saved));
  }
  if (rename(o->tmp, o->path) != 0) {
    int saved = errno;
    out_abort(o);
    return ps_errf(err, errlen, PS_ERR_IO, "%s: rename from %s: %s", o->path,
                   o->tmp, strerror(saved));
  }
  char dir[PS_CHECKPOINT_PATH_MAX];
  parent_dir(o->path, dir, sizeof(dir));
  return fsync_dir(dir, err, errlen);
}

static int join(char *out, size_t len, const char *dir, const char *name,
                char *err, size_t errlen) {
  int n = snprintf(out, len, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= len)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "%s/%s: path longer than %zu bytes", dir, name, len - 1);
  return PS_OK;
}

int ps_checkpoint_mkdirs(const char *path, char *err, size_t errlen) {
  char buf[PS_CHECKPOINT_PATH_MAX];
  if (path == NULL || path[0] == '\0')
    return ps_errf(err, errlen, PS_ERR_INVAL, "empty directory path");
  if (strlen(path) >= sizeof(buf))
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s: path longer than %zu bytes",
                   path, sizeof(buf) - 1);
  snprintf(buf, sizeof(buf), "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return ps_errf(err, errlen, PS_ERR_IO, "%s: mkdir %s: %s", path, buf,
                     strerror(errno));
    *p = c;
    if (c == '\0') break;
  }
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
    return ps_errf(err, errlen, PS_ERR_IO, "%s: not a directory", path);
  return PS_OK;
}

int ps_checkpoint_check_output(const char *path, char *err, size_t errlen) {
  if (path == NULL || path[0] == '\0')
    return ps_errf(err, errlen, PS_ERR_CONFIG, "empty path");
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "\"%s\" is a directory, not a file", path);
  char probe[PS_CHECKPOINT_PATH_MAX];
  int n = snprintf(probe, sizeof(probe), "%s.probe.%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof(probe))
    return ps_errf(err, errlen, PS_ERR_CONFIG, "\"%s\": path too long", path);
  int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "cannot write \"%s\": cannot create a file in its "
                   "directory: %s",
                   path, strerror(errno));
  close(fd);
  unlink(probe);
  return PS_OK;
}

/* ---- shard files ----------------------------------------------------------
 */

static const char *section_name(uint32_t kind) {
  switch (kind) {
    case PS_CHECKPOINT_SECTION_WEIGHTS:
      return "weights";
    case PS_CHECKPOINT_SECTION_STATE:
      return "optimizer state";
    case PS_CHECKPOINT_SECTION_OPT_STEPS:
      return "update counts";
    case PS_CHECKPOINT_SECTION_SPARSE:
      return "sparse";
    case PS_CHECKPOINT_SECTION_SKETCH:
      return "admission sketch";
    default:
      return "unknown";
  }
}

static void encode_section_header(uint8_t *h, uint32_t kind, uint64_t bytes,
                                  uint32_t data_crc) {
  memset(h, 0, PS_CHECKPOINT_SECTION_HEADER_BYTES);
  ps_le_put_u32(h, kind);
  ps_le_put_u64(h + 8, bytes);
  ps_le_put_u32(h + 16, data_crc);
  ps_le_put_u32(h + 20, ps_crc32c(0, h, 20));
}

int ps_checkpoint_shard_write(const char *dir, const char *name,
                              const ps_checkpoint_shard_meta_t *meta,
                              const float *weights, const float *state,
                              const uint64_t *opt_steps, size_t nopt_steps,
                              ps_checkpoint_file_stat_t *st, char *err,
                              size_t errlen) {
  return ps_checkpoint_shard_write_sparse(dir, name, meta, weights, state,
                                          opt_steps, nopt_steps, NULL, 0, NULL,
                                          0, st, err, errlen);
}

int ps_checkpoint_shard_write_sparse(
    const char *dir, const char *name, const ps_checkpoint_shard_meta_t *meta,
    const float *weights, const float *state, const uint64_t *opt_steps,
    size_t nopt_steps, const void *sparse, size_t sparse_bytes,
    const void *sketch, size_t sketch_bytes, ps_checkpoint_file_stat_t *st,
    char *err, size_t errlen) {
  if (meta->begin >= meta->end)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s/%s: empty range [%llu,%llu)",
                   dir, name, (unsigned long long)meta->begin,
                   (unsigned long long)meta->end);
  if (weights == NULL)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s/%s: no weights", dir, name);
  if (meta->state_slots < 0 || meta->state_slots > PS_OPTIMIZER_SLOTS_MAX ||
      (meta->state_slots > 0) != (state != NULL))
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "%s/%s: %d optimizer slots per key %s state values", dir,
                   name, meta->state_slots, state ? "with" : "without");
  if (nopt_steps > PS_CHECKPOINT_OPT_STEPS_MAX)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "%s/%s: %zu update counts, at most %d", dir, name,
                   nopt_steps, PS_CHECKPOINT_OPT_STEPS_MAX);
  char path[PS_CHECKPOINT_PATH_MAX];
  int rc = join(path, sizeof(path), dir, name, err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t n = meta->end - meta->begin;
  if (n > UINT64_MAX / sizeof(float))
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s: range too large", path);
  uint64_t data_bytes = n * sizeof(float);
  if (meta->state_slots > 0 &&
      data_bytes > UINT64_MAX / (uint64_t)meta->state_slots)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s: range too large", path);
  /* Weights, the optimizer state when there is one, the update counts,
   * the sparse rows and the admission sketches when there are any. */
  const void *data[5];
  uint64_t sizes[5];
  uint32_t kinds[5];
  uint32_t nsections = 0;
  data[nsections] = weights;
  sizes[nsections] = data_bytes;
  kinds[nsections++] = PS_CHECKPOINT_SECTION_WEIGHTS;
  if (state) {
    data[nsections] = state;
    sizes[nsections] = data_bytes * (uint64_t)meta->state_slots;
    kinds[nsections++] = PS_CHECKPOINT_SECTION_STATE;
  }
  data[nsections] = opt_steps;
  sizes[nsections] = nopt_steps * 2 * sizeof(uint64_t);
  kinds[nsections++] = PS_CHECKPOINT_SECTION_OPT_STEPS;
  if (sparse && sparse_bytes) {
    data[nsections] = sparse;
    sizes[nsections] = sparse_bytes;
    kinds[nsections++] = PS_CHECKPOINT_SECTION_SPARSE;
  }
  if (sketch && sketch_bytes) {
    data[nsections] = sketch;
    sizes[nsections] = sketch_bytes;
    kinds[nsections++] = PS_CHECKPOINT_SECTION_SKETCH;
  }

  uint8_t h[PS_CHECKPOINT_HEADER_BYTES];
  memset(h, 0, sizeof(h));
  memcpy(h, SHARD_MAGIC, 8);
  ps_le_put_u32(h + 8, PS_CHECKPOINT_VERSION);
  ps_le_put_u32(h + 12, PS_CHECKPOINT_HEADER_BYTES);
  ps_le_put_u64(h + 16, meta->fingerprint);
  ps_le_put_u64(h + 24, meta->begin);
  ps_le_put_u64(h + 32, meta->end);
  ps_le_put_u64(h + 40, meta->clock);
  ps_le_put_u64(h + 48, meta->view_epoch);
  ps_le_put_u64(h + 56, meta->checkpoint_id);
  ps_le_put_u32(h + 64, nsections);
  ps_le_put_u32(h + 68, (uint32_t)meta->mode);
  ps_le_put_u32(h + 72, (uint32_t)meta->state_slots);
  ps_le_put_u32(h + 76, ps_crc32c(0, h, 76));

  out_file_t o;
  rc = out_open(&o, path, err, errlen);
  if (rc != PS_OK) return rc;
  rc = out_write(&o, h, sizeof(h), err, errlen);
  for (uint32_t i = 0; i < nsections && rc == PS_OK; i++) {
    uint8_t sh[PS_CHECKPOINT_SECTION_HEADER_BYTES];
    /* The section CRC costs one pass over memory that is hot anyway; it is
     * computed before the data goes out so the header can lead. The update
     * counts are little-endian u64 pairs, as this build stores them. */
    encode_section_header(
        sh, kinds[i], sizes[i],
        sizes[i] ? ps_crc32c(0, data[i], (size_t)sizes[i]) : 0);
    rc = out_write(&o, sh, sizeof(sh), err, errlen);
    if (rc == PS_OK && sizes[i])
      rc = out_write(&o, data[i], (size_t)sizes[i], err, errlen);
  }
  if (rc != PS_OK) {
    out_abort(&o);
    return rc;
  }
  uint64_t bytes = o.bytes;
  uint32_t crc = o.crc;
  rc = out_commit(&o, err, errlen);
  if (rc == PS_OK && st) {
    st->bytes = bytes;
    st->crc32c = crc;
  }
  return rc;
}

void ps_checkpoint_shard_clear(ps_checkpoint_shard_t *s) {
  if (s == NULL) return;
  free(s->weights);
  free(s->state);
  free(s->opt_steps);
  free(s->sparse);
  free(s->sketch);
  memset(s, 0, sizeof(*s));
}

int ps_checkpoint_shard_read(const char *path, ps_checkpoint_shard_t *out,
                             char *err, size_t errlen) {
  memset(out, 0, sizeof(*out));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return ps_errf(err, errlen, PS_ERR_IO, "%s: cannot open: %s", path,
                   strerror(errno));
  ps_checkpoint_shard_t s;
  memset(&s, 0, sizeof(s));
  int rc = PS_OK;
  struct stat fst;
  if (fstat(fd, &fst) != 0) {
    rc =
        ps_errf(err, errlen, PS_ERR_IO, "%s: fstat: %s", path, strerror(errno));
    goto out;
  }
  uint64_t size = (uint64_t)fst.st_size;
  uint8_t h[PS_CHECKPOINT_HEADER_BYTES];
  ssize_t got = read_full(fd, h, sizeof(h));
  if (got < 0) {
    rc = ps_errf(err, errlen, PS_ERR_IO, "%s: read: %s", path, strerror(errno));
    goto out;
  }
  if (got < 12) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: truncated: %zd bytes, not even a header", path, got);
    goto out;
  }
  if (memcmp(h, SHARD_MAGIC, 8) != 0) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: not a checkpoint shard file (bad magic)", path);
    goto out;
  }
  uint32_t version = ps_le_get_u32(h + 8);
  if (version != PS_CHECKPOINT_VERSION) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: format version %u, this build reads version %d", path,
                 version, PS_CHECKPOINT_VERSION);
    goto out;
  }
  if ((size_t)got < sizeof(h)) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: truncated: %zd bytes, the header alone is %d", path, got,
                 PS_CHECKPOINT_HEADER_BYTES);
    goto out;
  }
  uint32_t want = ps_le_get_u32(h + 76), have = ps_crc32c(0, h, 76);
  if (want != have) {
    rc =
        ps_errf(err, errlen, PS_ERR_FORMAT,
                "%s: header CRC32C is 0x%08x, the header says 0x%08x: the file "
                "is corrupt",
                path, have, want);
    goto out;
  }
  if (ps_le_get_u32(h + 12) != PS_CHECKPOINT_HEADER_BYTES ||
      ps_le_get_u32(h + 72) > PS_OPTIMIZER_SLOTS_MAX) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: header size %u or optimizer slots %u is not what "
                 "version %d writes",
                 path, ps_le_get_u32(h + 12), ps_le_get_u32(h + 72),
                 PS_CHECKPOINT_VERSION);
    goto out;
  }
  s.meta.state_slots = (int)ps_le_get_u32(h + 72);
  s.meta.fingerprint = ps_le_get_u64(h + 16);
  s.meta.begin = ps_le_get_u64(h + 24);
  s.meta.end = ps_le_get_u64(h + 32);
  s.meta.clock = ps_le_get_u64(h + 40);
  s.meta.view_epoch = ps_le_get_u64(h + 48);
  s.meta.checkpoint_id = ps_le_get_u64(h + 56);
  uint32_t nsections = ps_le_get_u32(h + 64);
  uint32_t mode = ps_le_get_u32(h + 68);
  s.meta.mode = (int)mode;
  if (s.meta.begin >= s.meta.end ||
      s.meta.end - s.meta.begin > (UINT64_MAX / sizeof(float))) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: bad key range [%llu,%llu)",
                 path, (unsigned long long)s.meta.begin,
                 (unsigned long long)s.meta.end);
    goto out;
  }
  if (mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      mode != PS__CONSISTENCY_MODE__MODE_ASP &&
      mode != PS__CONSISTENCY_MODE__MODE_SSP) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: unknown consistency mode %u",
                 path, mode);
    goto out;
  }
  if (nsections < 1 || nsections > MAX_SECTIONS) {
    rc =
        ps_errf(err, errlen, PS_ERR_FORMAT, "%s: %u sections, expected 1 to %d",
                path, nsections, MAX_SECTIONS);
    goto out;
  }
  uint64_t data_bytes = (s.meta.end - s.meta.begin) * sizeof(float);
  uint64_t off = PS_CHECKPOINT_HEADER_BYTES;
  uint32_t file_crc = ps_crc32c(0, h, sizeof(h));
  for (uint32_t i = 0; i < nsections; i++) {
    uint8_t sh[PS_CHECKPOINT_SECTION_HEADER_BYTES];
    if (size < off + sizeof(sh)) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: truncated: %llu bytes, section %u of %u would start at "
                   "%llu",
                   path, (unsigned long long)size, i + 1, nsections,
                   (unsigned long long)off);
      goto out;
    }
    got = read_full(fd, sh, sizeof(sh));
    if (got != (ssize_t)sizeof(sh)) {
      rc = ps_errf(err, errlen, got < 0 ? PS_ERR_IO : PS_ERR_FORMAT,
                   "%s: cannot read section %u header: %s", path, i + 1,
                   got < 0 ? strerror(errno) : "short read");
      goto out;
    }
    file_crc = ps_crc32c(file_crc, sh, sizeof(sh));
    if (ps_le_get_u32(sh + 20) != ps_crc32c(0, sh, 20)) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: section %u header CRC32C mismatch at offset %llu: the "
                   "file is corrupt",
                   path, i + 1, (unsigned long long)off);
      goto out;
    }
    uint32_t kind = ps_le_get_u32(sh);
    uint64_t bytes = ps_le_get_u64(sh + 8);
    void **dst = kind == PS_CHECKPOINT_SECTION_WEIGHTS ? (void **)&s.weights
                 : kind == PS_CHECKPOINT_SECTION_STATE ? (void **)&s.state
                 : kind == PS_CHECKPOINT_SECTION_OPT_STEPS
                     ? (void **)&s.opt_steps
                 : kind == PS_CHECKPOINT_SECTION_SPARSE ? &s.sparse
                 : kind == PS_CHECKPOINT_SECTION_SKETCH ? &s.sketch
                                                        : NULL;
    if (dst == NULL || ps_le_get_u32(sh + 4) != 0) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: section %u has unknown kind %u", path, i + 1, kind);
      goto out;
    }
    if (*dst != NULL) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: section %u repeats %s",
                   path, i + 1, section_name(kind));
      goto out;
    }
    uint64_t want_bytes = data_bytes;
    if (kind == PS_CHECKPOINT_SECTION_STATE) {
      want_bytes = data_bytes * (uint64_t)s.meta.state_slots;
    } else if (kind == PS_CHECKPOINT_SECTION_OPT_STEPS) {
      /* Its length is its own: pairs, at most a bounded number. */
      want_bytes = bytes;
      if (bytes % 16 != 0 || bytes / 16 > PS_CHECKPOINT_OPT_STEPS_MAX) {
        rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                     "%s: update counts section of %llu bytes is not 0 to %d "
                     "pairs of u64",
                     path, (unsigned long long)bytes,
                     PS_CHECKPOINT_OPT_STEPS_MAX);
        goto out;
      }
      s.nopt_steps = (size_t)(bytes / 16);
    } else if (kind == PS_CHECKPOINT_SECTION_SPARSE) {
      /* Any size the file holds; its records are checked by the reader of
       * the rows. */
      want_bytes = bytes;
      s.sparse_bytes = bytes;
    } else if (kind == PS_CHECKPOINT_SECTION_SKETCH) {
      want_bytes = bytes;
      s.sketch_bytes = bytes;
    }
    if (kind == PS_CHECKPOINT_SECTION_STATE && s.meta.state_slots == 0) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: optimizer state section, but the header says 0 slots "
                   "per key",
                   path);
      goto out;
    }
    if (bytes != want_bytes) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: %s section of %llu bytes, the range [%llu,%llu) needs "
                   "%llu",
                   path, section_name(kind), (unsigned long long)bytes,
                   (unsigned long long)s.meta.begin,
                   (unsigned long long)s.meta.end,
                   (unsigned long long)want_bytes);
      goto out;
    }
    off += sizeof(sh);
    if (size - off < bytes) {
      rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: truncated: %llu bytes, the %s section ends at %llu",
                   path, (unsigned long long)size, section_name(kind),
                   (unsigned long long)(off + bytes));
      goto out;
    }
    *dst = malloc(bytes ? (size_t)bytes : 1);
    if (*dst == NULL) {
      rc = ps_errf(err, errlen, PS_ERR_NOMEM, "%s: no memory for %llu bytes",
                   path, (unsigned long long)bytes);
      goto out;
    }
    got = read_full(fd, *dst, (size_t)bytes);
    if (got != (ssize_t)bytes) {
      rc = ps_errf(err, errlen, got < 0 ? PS_ERR_IO : PS_ERR_FORMAT,
                   "%s: cannot read the %s section: %s", path,
                   section_name(kind),
                   got < 0 ? strerror(errno) : "short read (file shrank?)");
      goto out;
    }
    uint32_t dcrc = ps_crc32c(0, *dst, (size_t)bytes);
    if (dcrc != ps_le_get_u32(sh + 16)) {
      rc = ps_errf(
          err, errlen, PS_ERR_FORMAT,
          "%s: %s section CRC32C is 0x%08x, its header says 0x%08x: the "
          "file is corrupt",
          path, section_name(kind), dcrc, ps_le_get_u32(sh + 16));
      goto out;
    }
    file_crc = ps_crc32c(file_crc, *dst, (size_t)bytes);
    off += bytes;
  }
  if (off != size) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: %llu bytes after the last section (file of %llu bytes, "
                 "sections end at %llu)",
                 path, (unsigned long long)(size - off),
                 (unsigned long long)size, (unsigned long long)off);
    goto out;
  }
  if (s.weights == NULL || (s.state == NULL) != (s.meta.state_slots == 0) ||
      s.opt_steps == NULL) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: no %s section", path,
                 s.weights == NULL                       ? "weights"
                 : s.state == NULL && s.meta.state_slots ? "optimizer state"
                                                         : "update counts");
    goto out;
  }
  s.stat.bytes = size;
  s.stat.crc32c = file_crc;
out:
  close(fd);
  if (rc != PS_OK) {
    ps_checkpoint_shard_clear(&s);
    return rc;
  }
  *out = s;
  return PS_OK;
}

/* ---- framed files -------------------------------------------------------- */

int ps_checkpoint_write_framed(const char *path, const char magic[8],
                               uint32_t version, const void *body, size_t len,
                               char *err, size_t errlen) {
  return ps_checkpoint_write_framed_mode(path, magic, version, body, len, 0644,
                                         err, errlen);
}

int ps_checkpoint_write_framed_mode(const char *path, const char magic[8],
                                    uint32_t version, const void *body,
                                    size_t len, mode_t mode, char *err,
                                    size_t errlen) {
  uint8_t h[FRAME_HEAD];
  memset(h, 0, sizeof(h));
  memcpy(h, magic, 8);
  ps_le_put_u32(h + 8, version);
  ps_le_put_u64(h + 16, (uint64_t)len);
  out_file_t o;
  int rc = out_open_mode(&o, path, mode, err, errlen);
  if (rc != PS_OK) return rc;
  rc = out_write(&o, h, sizeof(h), err, errlen);
  if (rc == PS_OK && len > 0) rc = out_write(&o, body, len, err, errlen);
  if (rc == PS_OK) {
    uint8_t t[4];
    ps_le_put_u32(t, o.crc);
    rc = out_write(&o, t, sizeof(t), err, errlen);
  }
  if (rc != PS_OK) {
    out_abort(&o);
    return rc;
  }
  return out_commit(&o, err, errlen);
}

int ps_checkpoint_read_framed(const char *path, const char magic[8],
                              uint32_t version, uint8_t **body, size_t *len,
                              char *err, size_t errlen) {
  *body = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int saved = errno;
    ps_errf(err, errlen, PS_ERR_IO, "%s: cannot open: %s", path,
            strerror(saved));
    errno = saved;
    return PS_ERR_IO;
  }
  int rc = PS_OK;
  uint8_t *buf = NULL;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc =
        ps_errf(err, errlen, PS_ERR_IO, "%s: fstat: %s", path, strerror(errno));
    goto out;
  }
  uint64_t size = (uint64_t)st.st_size;
  /* Manifests and state files are small; a huge one is not one of ours. */
  if (size > (256u << 20)) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: %llu bytes is too large",
                 path, (unsigned long long)size);
    goto out;
  }
  buf = malloc(size ? (size_t)size : 1);
  if (buf == NULL) {
    rc = ps_errf(err, errlen, PS_ERR_NOMEM, "%s: out of memory", path);
    goto out;
  }
  ssize_t got = read_full(fd, buf, (size_t)size);
  if (got != (ssize_t)size) {
    rc = ps_errf(err, errlen, PS_ERR_IO, "%s: read: %s", path,
                 got < 0 ? strerror(errno) : "short read");
    goto out;
  }
  if (size < 8 || memcmp(buf, magic, 8) != 0) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: bad magic: not a %.8s file",
                 path, magic);
    goto out;
  }
  if (size < FRAME_HEAD + 4) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: truncated: %llu bytes, a %.8s file has at least %d", path,
                 (unsigned long long)size, magic, FRAME_HEAD + 4);
    goto out;
  }
  if (ps_le_get_u32(buf + 8) != version) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: format version %u, this build reads version %u", path,
                 ps_le_get_u32(buf + 8), version);
    goto out;
  }
  uint64_t blen = ps_le_get_u64(buf + 16);
  if (blen != size - FRAME_HEAD - 4) {
    rc = ps_errf(
        err, errlen, PS_ERR_FORMAT,
        "%s: %s: the header says a %llu-byte body, the file has room "
        "for %llu",
        path, blen > size - FRAME_HEAD - 4 ? "truncated" : "trailing bytes",
        (unsigned long long)blen, (unsigned long long)(size - FRAME_HEAD - 4));
    goto out;
  }
  uint32_t want = ps_le_get_u32(buf + size - 4);
  uint32_t have = ps_crc32c(0, buf, (size_t)size - 4);
  if (want != have) {
    rc = ps_errf(
        err, errlen, PS_ERR_FORMAT,
        "%s: CRC32C is 0x%08x, the file says 0x%08x: the file is corrupt", path,
        have, want);
    goto out;
  }
  memmove(buf, buf + FRAME_HEAD, (size_t)blen);
  *body = buf;
  *len = (size_t)blen;
  buf = NULL;
out:
  close(fd);
  free(buf);
  return rc;
}

/* ---- manifest ------------------------------------------------------------ */

/* A shard file name must stay inside the checkpoint directory. */
static int name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= PS_CHECKPOINT_NAME_MAX) return 0;
  if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (name[i] == '/' || (unsigned char)name[i] < 0x20) return 0;
  return 1;
}

/* What the reader requires of a manifest, shared with the writer so a
 * manifest that would be refused is never written. */
static int manifest_check(const char *what, const ps_checkpoint_manifest_t *m,
                          char *err, size_t errlen) {
  if (m->mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      m->mode != PS__CONSISTENCY_MODE__MODE_ASP &&
      m->mode != PS__CONSISTENCY_MODE__MODE_SSP)
    return ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: unknown consistency mode %d", what, m->mode);
  if (m->model.ntensors == 0 || m->model.total == 0)
    return ps_errf(err, errlen, PS_ERR_FORMAT, "%s: the model has no keys",
                   what);
  uint64_t fp = ps_checkpoint_fingerprint(&m->model);
  if (fp != m->fingerprint)
    return ps_errf(
        err, errlen, PS_ERR_FORMAT,
        "%s: model fingerprint %016llx does not match its model spec "
        "(%016llx)",
        what, (unsigned long long)m->fingerprint, (unsigned long long)fp);
  if (m->nshards == 0)
    return ps_errf(err, errlen, PS_ERR_FORMAT, "%s: lists no shard files",
                   what);
  uint64_t expect = 0;
  for (size_t i = 0; i < m->nshards; i++) {
    const ps_checkpoint_file_t *f = &m->shards[i];
    if (!name_ok(f->file))
      return ps_errf(err, errlen, PS_ERR_FORMAT,
                     "%s: shard %zu has a bad file name \"%s\"", what, i,
                     f->file);
    if (f->begin != expect || f->end <= f->begin)
      return ps_errf(
          err, errlen, PS_ERR_FORMAT,
          "%s: shard %s holds [%llu,%llu), expected a non-empty range "
          "from key %llu: the shards must tile the key space",
          what, f->file, (unsigned long long)f->begin,
          (unsigned long long)f->end, (unsigned long long)expect);
    if (m->mode != PS__CONSISTENCY_MODE__MODE_ASP && f->clock != m->step)
      return ps_errf(err, errlen, PS_ERR_FORMAT,
                     "%s: shard %s is at clock %llu, the checkpoint's step is "
                     "%llu",
                     what, f->file, (unsigned long long)f->clock,
                     (unsigned long long)m->step);
    if (f->clock < m->step)
      return ps_errf(err, errlen, PS_ERR_FORMAT,
                     "%s: shard %s is at clock %llu, before the step %llu",
                     what, f->file, (unsigned long long)f->clock,
                     (unsigned long long)m->step);
    expect = f->end;
  }
  if (expect != m->model.total)
    return ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: shards end at key %llu, the model has %llu keys", what,
                   (unsigned long long)expect,
                   (unsigned long long)m->model.total);
  return PS_OK;
}

int ps_checkpoint_manifest_write(const char *dir,
                                 const ps_checkpoint_manifest_t *m, char *err,
                                 size_t errlen) {
  char path[PS_CHECKPOINT_PATH_MAX];
  int rc = join(path, sizeof(path), dir, PS_CHECKPOINT_MANIFEST, err, errlen);
  if (rc != PS_OK) return rc;
  rc = manifest_check(path, m, err, errlen);
  if (rc != PS_OK) return PS_ERR_INVAL;

  size_t nt = m->model.ntensors;
  Ps__TensorSpec *tensors = calloc(nt + 1, sizeof(*tensors));
  Ps__TensorSpec **tptrs = calloc(nt + 1, sizeof(*tptrs));
  Ps__OptimizerSpec *topts = calloc(nt + 1, sizeof(*topts));
  Ps__CheckpointShard *shards = calloc(m->nshards + 1, sizeof(*shards));
  Ps__CheckpointShard **sptrs = calloc(m->nshards + 1, sizeof(*sptrs));
  size_t nsp = m->model.nsparse;
  Ps__SparseTableSpec *sparse = calloc(nsp + 1, sizeof(*sparse));
  Ps__SparseTableSpec **spptrs = calloc(nsp + 1, sizeof(*spptrs));
  Ps__OptimizerSpec *sopts = calloc(nsp + 1, sizeof(*sopts));
  uint8_t *body = NULL;
  if (!tensors || !tptrs || !topts || !shards || !sptrs || !sparse || !spptrs ||
      !sopts) {
    rc = ps_errf(err, errlen, PS_ERR_NOMEM, "%s: out of memory", path);
    goto out;
  }
  Ps__ModelSpec model;
  ps_model_to_pb(&m->model, &model, tensors, tptrs, topts);
  ps_model_sparse_to_pb(&m->model, &model, sparse, spptrs, sopts);
  Ps__CheckpointManifest pb = PS__CHECKPOINT_MANIFEST__INIT;
  pb.format_version = PS_CHECKPOINT_VERSION;
  pb.id = m->id;
  pb.step = m->step;
  pb.view_epoch = m->view_epoch;
  pb.mode = (Ps__ConsistencyMode)m->mode;
  pb.num_servers = m->num_servers;
  pb.model = &model;
  pb.model_fingerprint = m->fingerprint;
  pb.created_unix_ms = m->created_unix_ms;
  for (size_t i = 0; i < m->nshards; i++) {
    const ps_checkpoint_file_t *f = &m->shards[i];
    ps__checkpoint_shard__init(&shards[i]);
    shards[i].file = (char *)f->file;
    shards[i].begin = f->begin;
    shards[i].end = f->end;
    shards[i].bytes = f->bytes;
    shards[i].crc32c = f->crc32c;
    shards[i].clock = f->clock;
    shards[i].server_id = f->server_id;
    sptrs[i] = &shards[i];
  }
  pb.n_shards = m->nshards;
  pb.shards = sptrs;
  size_t len = ps__checkpoint_manifest__get_packed_size(&pb);
  body = malloc(len ? len : 1);
  if (body == NULL) {
    rc = ps_errf(err, errlen, PS_ERR_NOMEM, "%s: out of memory", path);
    goto out;
  }
  ps__checkpoint_manifest__pack(&pb, body);
  rc = ps_checkpoint_write_framed(path, MANIFEST_MAGIC, PS_CHECKPOINT_VERSION,
                                  body, len, err, errlen);
out:
  free(tensors);
  free(tptrs);
  free(topts);
  free(shards);
  free(sptrs);
  free(sparse);
  free(spptrs);
  free(sopts);
  free(body);
  return rc;
}

void ps_checkpoint_manifest_clear(ps_checkpoint_manifest_t *m) {
  if (m == NULL) return;
  ps_model_clear(&m->model);
  free(m->shards);
  memset(m, 0, sizeof(*m));
}

int ps_checkpoint_manifest_read(const char *dir, ps_checkpoint_manifest_t *m,
                                char *err, size_t errlen) {
  memset(m, 0, sizeof(*m));
  char path[PS_CHECKPOINT_PATH_MAX];
  int rc = join(path, sizeof(path), dir, PS_CHECKPOINT_MANIFEST, err, errlen);
  if (rc != PS_OK) return rc;
  uint8_t *body;
  size_t len;
  rc = ps_checkpoint_read_framed(path, MANIFEST_MAGIC, PS_CHECKPOINT_VERSION,
                                 &body, &len, err, errlen);
  if (rc != PS_OK) return rc;
  Ps__CheckpointManifest *pb = ps__checkpoint_manifest__unpack(NULL, len, body);
  free(body);
  if (pb == NULL)
    return ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: the body is not a CheckpointManifest", path);
  ps_checkpoint_manifest_t r;
  memset(&r, 0, sizeof(r));
  char why[256];
  if (pb->format_version != PS_CHECKPOINT_VERSION) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT,
                 "%s: manifest format version %u, this build reads %d", path,
                 pb->format_version, PS_CHECKPOINT_VERSION);
    goto out;
  }
  if (pb->model == NULL ||
      ps_model_from_pb(pb->model, &r.model, why, sizeof(why)) != PS_OK) {
    rc = ps_errf(err, errlen, PS_ERR_FORMAT, "%s: bad model spec: %s", path,
                 pb->model ? why : "none");
    goto out;
  }
  r.id = pb->id;
  r.step = pb->step;
  r.view_epoch = pb->view_epoch;
  r.mode = (int)pb->mode;
  r.num_servers = pb->num_servers;
  r.fingerprint = pb->model_fingerprint;
  r.created_unix_ms = pb->created_unix_ms;
  r.nshards = pb->n_shards;
  r.shards = calloc(pb->n_shards + 1, sizeof(*r.shards));
  if (r.shards == NULL) {
    rc = ps_errf(err, errlen, PS_ERR_NOMEM, "%s: out of memory", path);
    goto out;
  }
  for (size_t i = 0; i < pb->n_shards; i++) {
    const Ps__CheckpointShard *s = pb->shards[i];
    ps_checkpoint_file_t *f = &r.shards[i];
    const char *name = s->file ? s->file : "";
    if (!name_ok(name)) {
      rc =
          ps_errf(err, errlen, PS_ERR_FORMAT,
                  "%s: shard %zu has a bad file name \"%.64s\"", path, i, name);
      goto out;
    }
    snprintf(f->file, sizeof(f->file), "%s", name);
    f->begin = s->begin;
    f->end = s->end;
    f->bytes = s->bytes;
    f->crc32c = s->crc32c;
    f->clock = s->clock;
    f->server_id = s->server_id;
  }
  rc = manifest_check(path, &r, err, errlen);
out:
  ps__checkpoint_manifest__free_unpacked(pb, NULL);
  if (rc != PS_OK) {
    ps_checkpoint_manifest_clear(&r);
    return rc;
  }
  *m = r;
  return PS_OK;
}

/* Reads shard file f of m and checks it against what m says about it. */
static int read_listed(const char *dir, const ps_checkpoint_manifest_t *m,
                       const ps_checkpoint_file_t *f, ps_checkpoint_shard_t *s,
                       char *err, size_t errlen) {
  char path[PS_CHECKPOINT_PATH_MAX];
  int rc = join(path, sizeof(path), dir, f->file, err, errlen);
  if (rc != PS_OK) return rc;
  rc = ps_checkpoint_shard_read(path, s, err, errlen);
  if (rc != PS_OK) return rc;
  const ps_checkpoint_shard_meta_t *h = &s->meta;
  const char *why = NULL;
  char buf[256];
  if (s->stat.bytes != f->bytes) {
    snprintf(buf, sizeof(buf), "%llu bytes, the manifest says %llu",
             (unsigned long long)s->stat.bytes, (unsigned long long)f->bytes);
    why = buf;
  } else if (s->stat.crc32c != f->crc32c) {
    snprintf(buf, sizeof(buf),
             "CRC32C 0x%08x, the manifest says 0x%08x (a file from another "
             "checkpoint?)",
             s->stat.crc32c, f->crc32c);
    why = buf;
  } else if (h->fingerprint != m->fingerprint) {
    why = "written for another model (fingerprint mismatch)";
  } else if (h->begin != f->begin || h->end != f->end) {
    snprintf(buf, sizeof(buf),
             "holds [%llu,%llu), the manifest says [%llu,%llu)",
             (unsigned long long)h->begin, (unsigned long long)h->end,
             (unsigned long long)f->begin, (unsigned long long)f->end);
    why = buf;
  } else if (h->clock != f->clock) {
    snprintf(buf, sizeof(buf), "at clock %llu, the manifest says %llu",
             (unsigned long long)h->clock, (unsigned long long)f->clock);
    why = buf;
  } else if (h->state_slots != ps_model_state_slots(&m->model)) {
    snprintf(buf, sizeof(buf),
             "has %d optimizer slots per key, the model's optimizers keep %d",
             h->state_slots, ps_model_state_slots(&m->model));
    why = buf;
  } else {
    for (size_t i = 0; i < s->nopt_steps; i++)
      if (s->opt_steps[2 * i] >= m->model.ntensors) {
        snprintf(buf, sizeof(buf),
                 "counts updates of tensor %llu, the model has %zu",
                 (unsigned long long)s->opt_steps[2 * i], m->model.ntensors);
        why = buf;
        break;
      }
  }
  if (why != NULL) {
    ps_checkpoint_shard_clear(s);
    return ps_errf(err, errlen, PS_ERR_FORMAT, "%s: %s", path, why);
  }
  return PS_OK;
}

int ps_checkpoint_verify(const char *dir, const ps_checkpoint_manifest_t *m,
                         uint64_t *bytes, char *err, size_t errlen) {
  uint64_t total = 0;
  for (size_t i = 0; i < m->nshards; i++) {
    ps_checkpoint_shard_t s;
    int rc = read_listed(dir, m, &m->shards[i], &s, err, errlen);
    if (rc != PS_OK) return rc;
    total += s.stat.bytes;
    ps_checkpoint_shard_clear(&s);
  }
  if (bytes) *bytes = total;
  return PS_OK;
}

int ps_checkpoint_load_range(const char *dir, const ps_checkpoint_manifest_t *m,
                             uint64_t begin, uint64_t end, float *weights,
                             float *state, uint64_t *tensor_steps,
                             uint64_t *bytes, char *err, size_t errlen) {
  if (begin >= end || end > m->model.total)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "%s: range [%llu,%llu) is empty or beyond the checkpoint's "
                   "%llu keys",
                   dir, (unsigned long long)begin, (unsigned long long)end,
                   (unsigned long long)m->model.total);
  int slots = ps_model_state_slots(&m->model);
  if ((state != NULL) != (slots > 0))
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "%s: optimizer state %sasked for, but the model's "
                   "optimizers keep %d floats per key",
                   dir, state ? "" : "not ", slots);
  if (tensor_steps)
    memset(tensor_steps, 0, m->model.ntensors * sizeof(*tensor_steps));
  uint64_t total = 0, covered = 0;
  for (size_t i = 0; i < m->nshards; i++) {
    const ps_checkpoint_file_t *f = &m->shards[i];
    uint64_t lo = f->begin > begin ? f->begin : begin;
    uint64_t hi = f->end < end ? f->end : end;
    if (lo >= hi) continue;
    ps_checkpoint_shard_t s;
    int rc = read_listed(dir, m, f, &s, err, errlen);
    if (rc != PS_OK) return rc;
    /* read_listed checked both; this keeps the copies below obviously
     * safe. */
    if (s.weights == NULL || (state && s.state == NULL)) {
      ps_checkpoint_shard_clear(&s);
      return ps_errf(err, errlen, PS_ERR_FORMAT, "%s/%s: a section is missing",
                     dir, f->file);
    }
    size_t n = (size_t)(hi - lo) * sizeof(float);
    memcpy(weights + (lo - begin), s.weights + (lo - f->begin), n);
    /* Slot-major in the file and in the caller's array, each over its own
     * range. */
    uint64_t flen = f->end - f->begin, len = end - begin;
    for (int j = 0; state && j < slots; j++)
      memcpy(state + (uint64_t)j * len + (lo - begin),
             s.state + (uint64_t)j * flen + (lo - f->begin), n);
    /* A tensor cut over several files counts in each piece: BSP applies
     * them together (equal counts); ASP pushes may not, and the most is the
     * count that keeps Adam's bias correction from being re-applied. */
    for (size_t k = 0; tensor_steps && k < s.nopt_steps; k++) {
      uint64_t t = s.opt_steps[2 * k], c = s.opt_steps[2 * k + 1];
      const ps_tensor_spec_t *ts = &m->model.tensors[t];
      if (ts->offset >= end || ts->offset + ts->length <= begin) continue;
      if (c > tensor_steps[t]) tensor_steps[t] = c;
    }
    total += s.stat.bytes;
    covered += hi - lo;
    ps_checkpoint_shard_clear(&s);
  }
  /* manifest_check guarantees the tiling; this guards a manifest built by
   * hand. */
  if (covered != end - begin)
    return ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: the shard files cover %llu of the %llu keys of "
                   "[%llu,%llu)",
                   dir, (unsigned long long)covered,
                   (unsigned long long)(end - begin), (unsigned long long)begin,
                   (unsigned long long)end);
  if (bytes) *bytes = total;
  return PS_OK;
}

/* ---- directories --------------------------------------------------------- */

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int ps_checkpoint_resolve(const char *path, char *dir, size_t dirlen, char *err,
                          size_t errlen) {
  char p[PS_CHECKPOINT_PATH_MAX];
  int rc = join(p, sizeof(p), path, PS_CHECKPOINT_MANIFEST, err, errlen);
  if (rc != PS_OK) return rc;
  if (file_exists(p)) {
    if (strlen(path) >= dirlen)
      return ps_errf(err, errlen, PS_ERR_INVAL, "%s: path too long", path);
    snprintf(dir, dirlen, "%s", path);
    return PS_OK;
  }
  rc = join(p, sizeof(p), path, PS_CHECKPOINT_LATEST, err, errlen);
  if (rc != PS_OK) return rc;
  FILE *f = fopen(p, "r");
  if (f == NULL)
    return ps_errf(err, errlen, PS_ERR_IO,
                   "%s: no %s and no %s here: not a checkpoint directory", path,
                   PS_CHECKPOINT_MANIFEST, PS_CHECKPOINT_LATEST);
  char name[PS_CHECKPOINT_NAME_MAX + 2] = "";
  char *got = fgets(name, sizeof(name), f);
  fclose(f);
  if (got) name[strcspn(name, "\r\n")] = '\0';
  if (got == NULL || !name_ok(name))
    return ps_errf(err, errlen, PS_ERR_FORMAT,
                   "%s: does not name a checkpoint directory", p);
  int n = snprintf(dir, dirlen, "%s/%s", path, name);
  if (n < 0 || (size_t)n >= dirlen)
    return ps_errf(err, errlen, PS_ERR_INVAL, "%s/%s: path too long", path,
                   name);
  return PS_OK;
}

int ps_checkpoint_set_latest(const char *base, const char *name, char *err,
                             size_t errlen) {
  if (!name_ok(name))
    return ps_errf(err, errlen, PS_ERR_INVAL, "bad checkpoint name \"%s\"",
                   name);
  char path[PS_CHECKPOINT_PATH_MAX];
  int rc = join(path, sizeof(path), base, PS_CHECKPOINT_LATEST, err, errlen);
  if (rc != PS_OK) return rc;
  char line[PS_CHECKPOINT_NAME_MAX + 2];
  int n = snprintf(line, sizeof(line), "%s\n", name);
  out_file_t o;
  rc = out_open(&o, path, err, errlen);
  if (rc != PS_OK) return rc;
  rc = out_write(&o, line, (size_t)n, err, errlen);
  if (rc != PS_OK) {
    out_abort(&o);
    return rc;
  }
  return out_commit(&o, err, errlen);
}
