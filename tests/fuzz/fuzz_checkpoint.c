/* The checkpoint reader (common/checkpoint.c): shard files, the MANIFEST,
 * LATEST, verifying a checkpoint and loading ranges of it, as a restore
 * does (scheduler --restore, a server's restore onto another split).
 *
 * Input: u8 flags, u16 LE range selector, then items until the end:
 *   u8 kind, u8 index, u16 LE length, that many bytes
 * kind % 4: 0 the MANIFEST's body (the harness frames it), 1 the shard file
 * "shard-<index>.psck", 2 LATEST, 3 the MANIFEST file as it is. Files go
 * into a scratch base directory: LATEST there, the rest in base/ckpt-1.
 *
 * flags bit 0 fixes what a fuzzer cannot easily get right on its own: the
 * CRC32Cs inside shard files, and in a MANIFEST body the size and CRC32C
 * of every listed shard file that the input holds, and the model's
 * fingerprint. So most inputs reach the checks behind the checksums.
 *
 * Then: every shard file is read on its own; the base is resolved (LATEST)
 * and the manifest read; a manifest that reads is verified against its
 * files; and when it verifies, every range of it must load: the whole key
 * space and one range the selector picks (as a server of another split
 * would load it), both compared with what the files hold.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "common/optimizer.h"
#include "common/view.h"
#include "fuzz_setup.h"
#include "fuzz_util.h"

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "fuzz_checkpoint: %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                     \
      abort();                                                            \
    }                                                                     \
  } while (0)

#define MAX_ITEMS 16
#define MAX_SECTIONS 4
static const uint8_t MANIFEST_MAGIC[8] = {'P', 'S', 'C', 'K',
                                          'M', 'N', 'F', 'T'};

typedef struct {
  unsigned kind, index;
  uint8_t *data; /* a copy: the fixes write into it */
  size_t len;
} item_t;

static const char *base;
static char dir[600];

/* The CRC32Cs of a shard file (layout: common/checkpoint.h) made right. */
static void fix_shard(uint8_t *f, size_t len) {
  if (len < PS_CHECKPOINT_HEADER_BYTES) return;
  uint32_t nsections = fuzz_get_u32(f + 64);
  size_t off = PS_CHECKPOINT_HEADER_BYTES;
  for (uint32_t i = 0; i < nsections && i < MAX_SECTIONS; i++) {
    if (len - off < PS_CHECKPOINT_SECTION_HEADER_BYTES) break;
    uint8_t *sh = f + off;
    off += PS_CHECKPOINT_SECTION_HEADER_BYTES;
    uint64_t bytes = fuzz_get_u64(sh + 8);
    if (bytes > len - off) bytes = len - off;
    fuzz_put_u32(sh + 16, ps_crc32c(0, f + off, (size_t)bytes));
    fuzz_put_u32(sh + 20, ps_crc32c(0, sh, 20));
    off += (size_t)bytes;
  }
  fuzz_put_u32(f + 76, ps_crc32c(0, f, 76));
}

static const item_t *find_shard(const item_t *items, int n, const char *name) {
  for (int i = 0; i < n; i++) {
    char want[32];
    snprintf(want, sizeof(want), "shard-%u.psck", items[i].index);
    if (items[i].kind == 1 && name != NULL && strcmp(name, want) == 0)
      return &items[i];
  }
  return NULL;
}

/* A manifest body with the listed files' sizes and CRCs, and the model's
 * fingerprint, made right; a new buffer in *out, or 0 if it does not
 * unpack. */
static int fix_manifest(const item_t *m, const item_t *items, int n,
                        uint8_t **out, size_t *outlen) {
  Ps__CheckpointManifest *pb =
      ps__checkpoint_manifest__unpack(NULL, m->len, m->data);
  if (pb == NULL) return 0;
  for (size_t i = 0; i < pb->n_shards; i++) {
    const item_t *f = find_shard(items, n, pb->shards[i]->file);
    if (f == NULL) continue;
    pb->shards[i]->bytes = f->len;
    pb->shards[i]->crc32c = ps_crc32c(0, f->data, f->len);
  }
  ps_model_t model;
  char why[256];
  if (pb->model &&
      ps_model_from_pb(pb->model, &model, why, sizeof(why)) == PS_OK) {
    pb->model_fingerprint = ps_checkpoint_fingerprint(&model);
    ps_model_clear(&model);
  }
  *outlen = ps__checkpoint_manifest__get_packed_size(pb);
  *out = malloc(*outlen + 1);
  CHECK(*out != NULL);
  ps__checkpoint_manifest__pack(pb, *out);
  ps__checkpoint_manifest__free_unpacked(pb, NULL);
  return 1;
}

static void write_in(const char *where, const char *name, const void *data,
                     size_t len) {
  char path[800];
  snprintf(path, sizeof(path), "%s/%s", where, name);
  fuzz_write_file(path, data, len);
}

static void write_manifest_body(const uint8_t *body, size_t len) {
  uint8_t *f = malloc(24 + len + 4);
  CHECK(f != NULL);
  memcpy(f, MANIFEST_MAGIC, 8);
  fuzz_put_u32(f + 8, PS_CHECKPOINT_VERSION);
  fuzz_put_u32(f + 12, 0);
  fuzz_put_u32(f + 16, (uint32_t)len);
  fuzz_put_u32(f + 20, (uint32_t)((uint64_t)len >> 32));
  if (len) memcpy(f + 24, body, len);
  fuzz_put_u32(f + 24 + len, ps_crc32c(0, f, 24 + len));
  write_in(dir, PS_CHECKPOINT_MANIFEST, f, 24 + len + 4);
  free(f);
}

/* The weights (and momentum) of [begin, end) as the files hold them. */
static void expect_range(const char *ckdir, const ps_checkpoint_manifest_t *m,
                         uint64_t begin, uint64_t end, const float *w,
                         const float *mom) {
  for (size_t i = 0; i < m->nshards; i++) {
    const ps_checkpoint_file_t *f = &m->shards[i];
    uint64_t lo = f->begin > begin ? f->begin : begin;
    uint64_t hi = f->end < end ? f->end : end;
    if (lo >= hi) continue;
    char path[1200], err[1400];
    snprintf(path, sizeof(path), "%s/%s", ckdir, f->file);
    ps_checkpoint_shard_t s;
    CHECK(ps_checkpoint_shard_read(path, &s, err, sizeof(err)) == PS_OK);
    size_t n = (size_t)(hi - lo) * sizeof(float);
    CHECK(memcmp(w + (lo - begin), s.weights + (lo - f->begin), n) == 0);
    int slots = ps_model_state_slots(&m->model);
    for (int j = 0; mom && j < slots; j++)
      CHECK(
          memcmp(mom + (uint64_t)j * (end - begin) + (lo - begin),
                 s.state + (uint64_t)j * (f->end - f->begin) + (lo - f->begin),
                 n) == 0);
    ps_checkpoint_shard_clear(&s);
  }
}

static void load(const char *ckdir, const ps_checkpoint_manifest_t *m,
                 uint64_t begin, uint64_t end) {
  size_t n = (size_t)(end - begin);
  float *w = malloc(n * sizeof(float));
  size_t slots = (size_t)ps_model_state_slots(&m->model);
  float *mom = slots ? malloc(n * slots * sizeof(float)) : NULL;
  CHECK(w != NULL && (slots == 0 || mom != NULL));
  char err[1400];
  uint64_t bytes = 0;
  int rc = ps_checkpoint_load_range(ckdir, m, begin, end, w, mom, NULL, &bytes,
                                    err, sizeof(err));
  if (rc != PS_OK) fprintf(stderr, "fuzz_checkpoint: load: %s\n", err);
  /* It verified: every range of it loads. */
  CHECK(rc == PS_OK);
  CHECK(bytes > 0);
  expect_range(ckdir, m, begin, end, w, mom);
  free(w);
  free(mom);
}

static void check_manifest(const ps_checkpoint_manifest_t *m) {
  CHECK(m->nshards > 0 && m->model.total > 0);
  uint64_t at = 0;
  for (size_t i = 0; i < m->nshards; i++) {
    CHECK(m->shards[i].begin == at && m->shards[i].end > at);
    CHECK(strchr(m->shards[i].file, '/') == NULL);
    at = m->shards[i].end;
  }
  CHECK(at == m->model.total);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (base == NULL) {
    base = fuzz_scratch_dir("checkpoint");
    snprintf(dir, sizeof(dir), "%s/ckpt-1", base);
  }
  if (size < 3) return 0;
  unsigned flags = data[0];
  unsigned selector = (unsigned)data[1] | (unsigned)data[2] << 8;
  size_t at = 3;
  item_t items[MAX_ITEMS];
  int n = 0;
  while (n < MAX_ITEMS && size - at >= 4) {
    item_t *it = &items[n++];
    it->kind = data[at] % 4;
    it->index = data[at + 1];
    size_t len = (size_t)data[at + 2] | (size_t)data[at + 3] << 8;
    at += 4;
    if (len > size - at) len = size - at;
    it->data = malloc(len + 1);
    CHECK(it->data != NULL);
    memcpy(it->data, data + at, len);
    it->len = len;
    at += len;
  }
  CHECK(mkdir(dir, 0700) == 0);
  for (int i = 0; i < n; i++) {
    if (items[i].kind != 1) continue;
    if (flags & 1) fix_shard(items[i].data, items[i].len);
    char name[32];
    snprintf(name, sizeof(name), "shard-%u.psck", items[i].index);
    write_in(dir, name, items[i].data, items[i].len);
  }
  for (int i = 0; i < n; i++) {
    if (items[i].kind == 0) {
      uint8_t *fixed;
      size_t len;
      if ((flags & 1) && fix_manifest(&items[i], items, n, &fixed, &len)) {
        write_manifest_body(fixed, len);
        free(fixed);
      } else {
        write_manifest_body(items[i].data, items[i].len);
      }
    } else if (items[i].kind == 2) {
      write_in(base, PS_CHECKPOINT_LATEST, items[i].data, items[i].len);
    } else if (items[i].kind == 3) {
      write_in(dir, PS_CHECKPOINT_MANIFEST, items[i].data, items[i].len);
    }
  }

  char err[1400];
  for (int i = 0; i < n; i++) {
    if (items[i].kind != 1) continue;
    char path[800];
    snprintf(path, sizeof(path), "%s/shard-%u.psck", dir, items[i].index);
    ps_checkpoint_shard_t s;
    if (ps_checkpoint_shard_read(path, &s, err, sizeof(err)) == PS_OK) {
      CHECK(s.weights != NULL && s.meta.begin < s.meta.end);
      ps_checkpoint_shard_clear(&s);
    }
  }
  char ckdir[PS_CHECKPOINT_PATH_MAX];
  if (ps_checkpoint_resolve(base, ckdir, sizeof(ckdir), err, sizeof(err)) !=
      PS_OK)
    snprintf(ckdir, sizeof(ckdir), "%s", dir);
  ps_checkpoint_manifest_t m;
  if (ps_checkpoint_manifest_read(ckdir, &m, err, sizeof(err)) == PS_OK) {
    check_manifest(&m);
    uint64_t bytes = 0;
    if (ps_checkpoint_verify(ckdir, &m, &bytes, err, sizeof(err)) == PS_OK &&
        m.model.total <= FUZZ_MAX_KEYS) {
      load(ckdir, &m, 0, m.model.total);
      uint64_t lo = selector % m.model.total;
      uint64_t hi = lo + 1 + (selector >> 4) % (m.model.total - lo);
      load(ckdir, &m, lo, hi);
    }
    ps_checkpoint_manifest_clear(&m);
  }
  for (int i = 0; i < n; i++) free(items[i].data);
  fuzz_empty_dir(base);
  return 0;
}
