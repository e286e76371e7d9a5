/* Checkpoint files: the on-disk format of a coordinated checkpoint, its
 * strict reader, and the crash-safe file writes the scheduler's state file
 * shares with it.
 *
 * A checkpoint is one directory: a shard file per server range, written by
 * the servers, and a MANIFEST written last by the scheduler once every shard
 * file is durable. A checkpoint without a MANIFEST does not exist. The base
 * directory of a job's checkpoints may hold LATEST, the name of the newest
 * complete one.
 *
 * Shard file (integers little-endian, floats IEEE-754 binary32 LE):
 *   header, 80 bytes:
 *      0  magic "PSCKSHRD"
 *      8  u32 format version (PS_CHECKPOINT_VERSION)
 *     12  u32 header size (80)
 *     16  u64 model fingerprint (ps_checkpoint_fingerprint)
 *     24  u64 range begin        32  u64 range end
 *     40  u64 clock (steps applied)
 *     48  u64 view epoch         56  u64 checkpoint id
 *     64  u32 section count      68  u32 consistency mode
 *     72  u32 optimizer state slots per key (k, 0..2; version 2)
 *     76  u32 CRC32C of bytes 0..75
 *   then each section:
 *      0  u32 kind (PS_CHECKPOINT_SECTION_*)
 *      4  u32 reserved, 0
 *      8  u64 data bytes
 *     16  u32 CRC32C of the data
 *     20  u32 CRC32C of bytes 0..19 of this section header
 *     24  the data
 *   and nothing after the last section. Sections, each once: weights
 *   (end - begin floats), optimizer state when k > 0 (k x (end - begin)
 *   floats, slot-major: slot j of key begin + i at j * (end - begin) + i),
 *   update counts (u64 pairs {tensor index, updates applied to its piece
 *   in the range}, one per tensor piece; Adam's step count), and, when
 *   the range holds sparse rows, a sparse section (whole rows with their
 *   optimizer state, PS_CHECKPOINT_SECTION_SPARSE), and when its tables
 *   count admissions, their sketches (PS_CHECKPOINT_SECTION_SKETCH).
 *   Version 1 (one momentum section, no sparse rows) is refused: the format
 *   changed with the optimizers and sparse rows of issue #14.
 *
 * Framed file (MANIFEST, the scheduler's state file):
 *      0  magic, 8 bytes          8  u32 format version
 *     12  u32 reserved, 0        16  u64 body bytes
 *     24  body (a packed protobuf: CheckpointManifest, SchedulerState)
 *   24+n  u32 CRC32C of bytes 0 .. 24+n-1
 *
 * Every file is written to a temporary name in the same directory, fsynced,
 * renamed over the final name, and the directory fsynced, so a crash leaves
 * the old file or the new one, never a mix. Readers are strict: a file that
 * is short, long, has a flipped bit (CRC32C), a wrong magic or version, or
 * does not match what the manifest says about it is refused with an error
 * naming the file and the reason, and nothing of it is handed out.
 *
 * CRC32C comes from ISA-L (crc32_iscsi), which uses the SSE4.2 crc32
 * instruction where the CPU has it.
 *
 * Functions here do blocking file I/O: call them off a network loop (a uv
 * work request) unless the files are tiny. Any thread; no shared state.
 */
#ifndef PS_CHECKPOINT_H
#define PS_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "view.h"

#define PS_CHECKPOINT_VERSION 2
#define PS_CHECKPOINT_HEADER_BYTES 80
#define PS_CHECKPOINT_SECTION_HEADER_BYTES 24
#define PS_CHECKPOINT_NAME_MAX 128
#define PS_CHECKPOINT_PATH_MAX 1024
#define PS_CHECKPOINT_MANIFEST "MANIFEST"
#define PS_CHECKPOINT_LATEST "LATEST"

/* The most update-count pairs one shard file may hold. */
#define PS_CHECKPOINT_OPT_STEPS_MAX (1 << 20)

typedef enum {
  PS_CHECKPOINT_SECTION_WEIGHTS = 1, /* float32 per key */
  /* 2 was version 1's momentum section */
  PS_CHECKPOINT_SECTION_STATE = 3,     /* float32 x slots per key */
  PS_CHECKPOINT_SECTION_OPT_STEPS = 4, /* u64 {tensor, updates} pairs */
  /* The range's sparse rows, optional: one record per table that has
   * rows, each
   *    0  u32 table index (model order)   4  u32 row_floats
   *    8  u64 nrows                      16  nrows u64 ids
   *       then nrows * row_floats float32: whole rows (weights, then the
   *       table's optimizer state, ps_optimizer_row_floats), in the order
   *       of the ids.
   * Rows are filed under the range whose partition held them; a restore
   * onto another number of servers reads every file's rows and files each
   * under its partition of the new view. */
  PS_CHECKPOINT_SECTION_SPARSE = 5,
  /* The admission sketches of the range's sparse tables, optional (a
   * server with --sparse-admit-after > 1): one record per table,
   *    0  u32 table index (model order)   4  u32 cells (n)
   *    8  n u32 counters (ps-server/sparse.c's count-min sketch, row-major)
   * A restore onto the same cut gives each range its own; onto another,
   * every range the sum of the table's sketches, which counts every id at
   * least as often as it was pushed (admits early, never late). */
  PS_CHECKPOINT_SECTION_SKETCH = 6,
} ps_checkpoint_section_t;

/* CRC32C (Castagnoli, as in iSCSI and ext4). Start with crc 0; chains:
 * ps_crc32c(ps_crc32c(0, a, n), b, m) is the CRC of a followed by b. */
uint32_t ps_crc32c(uint32_t crc, const void *buf, size_t len);

/* A 64-bit hash of everything that gives the weights their meaning: tensor
 * names, offsets, lengths and initializers, optimizer, learning rate,
 * momentum and seed, and the other optimizer settings (issue #14) when
 * set. Shard files and manifests carry it. */
uint64_t ps_checkpoint_fingerprint(const ps_model_t *model);

/* What a shard file's header says. */
typedef struct {
  uint64_t fingerprint;
  uint64_t begin, end; /* key range [begin, end) */
  uint64_t clock;
  uint64_t view_epoch;
  uint64_t checkpoint_id;
  int mode;        /* PS__CONSISTENCY_MODE__* */
  int state_slots; /* optimizer state floats per key (0..2) */
} ps_checkpoint_shard_meta_t;

/* Size and CRC32C of a whole file as written or read. */
typedef struct {
  uint64_t bytes;
  uint32_t crc32c;
} ps_checkpoint_file_stat_t;

/* Writes dir/name: the header from meta, a weights section of end - begin
 * floats, an optimizer state section of meta->state_slots times as many
 * (state must be NULL exactly when that is 0), and an update-count section
 * of nopt_steps {tensor, count} pairs (2 * nopt_steps values). Crash safe
 * (see above). Returns PS_OK with *st filled (may be NULL), or
 * PS_ERR_IO / PS_ERR_INVAL with err naming the file and the reason. */
int ps_checkpoint_shard_write(const char *dir, const char *name,
                              const ps_checkpoint_shard_meta_t *meta,
                              const float *weights, const float *state,
                              const uint64_t *opt_steps, size_t nopt_steps,
                              ps_checkpoint_file_stat_t *st, char *err,
                              size_t errlen);

/* The same with a sparse section of sparse_bytes bytes and a sketch section
 * of sketch_bytes (each none when 0; the caller encodes the records, see
 * PS_CHECKPOINT_SECTION_SPARSE and _SKETCH). */
int ps_checkpoint_shard_write_sparse(
    const char *dir, const char *name, const ps_checkpoint_shard_meta_t *meta,
    const float *weights, const float *state, const uint64_t *opt_steps,
    size_t nopt_steps, const void *sparse, size_t sparse_bytes,
    const void *sketch, size_t sketch_bytes, ps_checkpoint_file_stat_t *st,
    char *err, size_t errlen);

/* A shard file read and verified. */
typedef struct {
  ps_checkpoint_shard_meta_t meta;
  float *weights;      /* end - begin values; owned */
  float *state;        /* meta.state_slots x (end - begin) values, or NULL */
  uint64_t *opt_steps; /* nopt_steps {tensor, count} pairs; owned */
  size_t nopt_steps;
  void *sparse; /* the sparse section's bytes, or NULL; owned */
  uint64_t sparse_bytes;
  void *sketch; /* the sketch section's bytes, or NULL; owned */
  uint64_t sketch_bytes;
  ps_checkpoint_file_stat_t stat;
} ps_checkpoint_shard_t;

/* Reads and verifies the shard file at path. On PS_OK, out owns its arrays
 * (ps_checkpoint_shard_clear). Otherwise out is left empty and err names the
 * file and the reason: PS_ERR_IO (missing, unreadable) or PS_ERR_FORMAT
 * (truncated, trailing bytes, CRC mismatch, bad magic, version or field). */
int ps_checkpoint_shard_read(const char *path, ps_checkpoint_shard_t *out,
                             char *err, size_t errlen);

void ps_checkpoint_shard_clear(ps_checkpoint_shard_t *s);

/* One shard file as the manifest lists it. */
typedef struct {
  char file[PS_CHECKPOINT_NAME_MAX]; /* a plain name inside the directory */
  uint64_t begin, end;
  uint64_t bytes;
  uint32_t crc32c;
  uint64_t clock;
  uint32_t server_id;
} ps_checkpoint_file_t;

typedef struct {
  uint64_t id;
  uint64_t step; /* the clock every shard is at (BSP); the least (ASP) */
  uint64_t view_epoch;
  int mode;
  uint32_t num_servers;
  ps_model_t model;
  uint64_t fingerprint; /* of model */
  uint64_t created_unix_ms;
  size_t nshards;
  ps_checkpoint_file_t *shards; /* sorted by begin, tiling [0, model.total) */
} ps_checkpoint_manifest_t;

/* Writes dir/MANIFEST (crash safe). The manifest is checked first as the
 * reader would (shards tile the key space, fingerprint, names); a manifest
 * that would be refused on read is refused here with PS_ERR_INVAL. */
int ps_checkpoint_manifest_write(const char *dir,
                                 const ps_checkpoint_manifest_t *m, char *err,
                                 size_t errlen);

/* Reads and checks dir/MANIFEST: framing and CRC32C, version, a valid model
 * whose fingerprint matches, shard names that stay inside dir, shards that
 * tile [0, model.total), BSP shard clocks equal to the step. Does not open
 * the shard files (ps_checkpoint_verify does). On PS_OK, m owns its arrays
 * (ps_checkpoint_manifest_clear); otherwise m is left empty. */
int ps_checkpoint_manifest_read(const char *dir, ps_checkpoint_manifest_t *m,
                                char *err, size_t errlen);

void ps_checkpoint_manifest_clear(ps_checkpoint_manifest_t *m);

/* Reads every shard file m lists and checks it against m: present, of the
 * recorded size and whole-file CRC32C, a valid shard file of the recorded
 * range, clock and model, with as many optimizer slots as the model's
 * optimizers keep and update counts only of the model's tensors. Reads every
 * byte. *bytes (may be NULL) gets the bytes read. */
int ps_checkpoint_verify(const char *dir, const ps_checkpoint_manifest_t *m,
                         uint64_t *bytes, char *err, size_t errlen);

/* Fills weights, state (ps_model_state_slots(&m->model) x (end - begin)
 * floats, slot-major; NULL exactly when that is 0) and tensor_steps (NULL,
 * or m->model.ntensors counts: the most updates any file counts for a
 * piece of the tensor inside the range, 0 for the tensors outside) for
 * keys [begin, end) from the shard files of m that overlap the range, each
 * checked as in ps_checkpoint_verify before anything is copied out of it. The
 * range may cut across shard files: this is how a checkpoint written by N
 * servers is restored onto M. On failure the arrays hold garbage and must not
 * be used. *bytes (may be NULL) gets the bytes read. */
int ps_checkpoint_load_range(const char *dir, const ps_checkpoint_manifest_t *m,
                             uint64_t begin, uint64_t end, float *weights,
                             float *state, uint64_t *tensor_steps,
                             uint64_t *bytes, char *err, size_t errlen);

/* The checkpoint directory path names: path itself if it holds a MANIFEST,
 * else path/<the name in path/LATEST>. Fills dir (dirlen bytes). */
int ps_checkpoint_resolve(const char *path, char *dir, size_t dirlen, char *err,
                          size_t errlen);

/* Writes base/LATEST = name (crash safe). */
int ps_checkpoint_set_latest(const char *base, const char *name, char *err,
                             size_t errlen);

/* mkdir -p. */
int ps_checkpoint_mkdirs(const char *path, char *err, size_t errlen);

/* Whether a file can later be written at path the way the daemons write
 * their files (a temporary file next to it, renamed over it): path is not
 * a directory and a file can be created in its directory (tried, then
 * removed). Called at start, so a bad --state-file or --report is refused
 * before any work. PS_OK, or PS_ERR_CONFIG with the path and the reason. */
int ps_checkpoint_check_output(const char *path, char *err, size_t errlen);

/* Writes a framed file (see above) at path, crash safe; mode 0644, or the
 * given one (the scheduler's state file holds the nodes' tokens: 0600). */
int ps_checkpoint_write_framed(const char *path, const char magic[8],
                               uint32_t version, const void *body, size_t len,
                               char *err, size_t errlen);
int ps_checkpoint_write_framed_mode(const char *path, const char magic[8],
                                    uint32_t version, const void *body,
                                    size_t len, mode_t mode, char *err,
                                    size_t errlen);

/* Reads and checks a framed file: size, magic, version, CRC32C. On PS_OK
 * *body (caller frees) holds *len bytes. PS_ERR_IO if it cannot be read
 * (errno ENOENT is kept in errno for callers that treat "absent" apart),
 * PS_ERR_FORMAT if it is not a valid file of this kind. */
int ps_checkpoint_read_framed(const char *path, const char magic[8],
                              uint32_t version, uint8_t **body, size_t *len,
                              char *err, size_t errlen);

#endif
