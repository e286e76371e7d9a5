/* The checkpoint file format: shard files and manifests round-trip bit for
 * bit, and every kind of damage (a flipped byte, a cut, trailing bytes, a
 * wrong magic or version, a manifest that points at a missing or foreign
 * file) is refused with an error naming the file, with nothing handed out. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checkpoint.h"
#include "common/err.h"
#include "tests/check_run.h"

static char tmpdir[256];

static void setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/ps-test-ckpt-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static ps_tensor_spec_t tensors[2];

/* A 2-tensor model of 1000 keys with momentum. */
static ps_model_t test_model(float momentum) {
  memset(tensors, 0, sizeof(tensors));
  snprintf(tensors[0].name, sizeof(tensors[0].name), "fc1.weight");
  tensors[0].offset = 0;
  tensors[0].length = 900;
  tensors[0].init = 1;
  tensors[0].init_scale = 0.05f;
  snprintf(tensors[1].name, sizeof(tensors[1].name), "fc1.bias");
  tensors[1].offset = 900;
  tensors[1].length = 100;
  ps_model_t m = {
      .ntensors = 2,
      .tensors = tensors,
      .total = 1000,
      .optimizer = 0,
      .learning_rate = 0.02f,
      .momentum = momentum,
      .seed = 7,
  };
  return m;
}

static float value_at(uint64_t key, int which) {
  return (float)key * 0.001f + (which ? 1000.0f : -3.25f);
}

static void fill(float *w, float *mom, uint64_t begin, uint64_t end) {
  for (uint64_t k = begin; k < end; k++) {
    w[k - begin] = value_at(k, 0);
    if (mom) mom[k - begin] = value_at(k, 1);
  }
}

static char *path_of(const char *name) {
  static char bufs[4][512];
  static int slot;
  char *b = bufs[slot++ % 4];
  snprintf(b, 512, "%s/%s", tmpdir, name);
  return b;
}

/* Writes a shard file of [begin, end) at clock named name. */
static ps_checkpoint_file_t write_shard(const ps_model_t *m, const char *name,
                                        uint64_t begin, uint64_t end,
                                        uint64_t clock) {
  size_t n = (size_t)(end - begin);
  float *w = malloc(n * sizeof(float));
  float *mom = m->momentum != 0.0f ? malloc(n * sizeof(float)) : NULL;
  fill(w, mom, begin, end);
  ps_checkpoint_shard_meta_t meta = {
      .fingerprint = ps_checkpoint_fingerprint(m),
      .begin = begin,
      .end = end,
      .clock = clock,
      .view_epoch = 3,
      .checkpoint_id = 9,
      .mode = 0,
      .state_slots = mom ? 1 : 0,
  };
  /* Tensor t's piece counts clock + t updates: a mix-up shows. */
  uint64_t steps[2 * 2];
  size_t nsteps = 0;
  for (size_t t = 0; t < m->ntensors; t++) {
    const ps_tensor_spec_t *ts = &m->tensors[t];
    if (ts->offset >= end || ts->offset + ts->length <= begin) continue;
    steps[2 * nsteps] = t;
    steps[2 * nsteps + 1] = clock + t;
    nsteps++;
  }
  ps_checkpoint_file_stat_t st;
  char err[512];
  int rc = ps_checkpoint_shard_write(tmpdir, name, &meta, w, mom, steps, nsteps,
                                     &st, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "write failed: %s", err);
  free(w);
  free(mom);
  ps_checkpoint_file_t f;
  memset(&f, 0, sizeof(f));
  snprintf(f.file, sizeof(f.file), "%s", name);
  f.begin = begin;
  f.end = end;
  f.bytes = st.bytes;
  f.crc32c = st.crc32c;
  f.clock = clock;
  f.server_id = 1;
  return f;
}

/* A checkpoint of test_model in 3 shards at step 42, with its manifest. */
static ps_checkpoint_manifest_t write_checkpoint(ps_model_t *m) {
  static ps_checkpoint_file_t files[3];
  files[0] = write_shard(m, "shard-0-336.psck", 0, 336, 42);
  files[1] = write_shard(m, "shard-336-672.psck", 336, 672, 42);
  files[2] = write_shard(m, "shard-672-1000.psck", 672, 1000, 42);
  ps_checkpoint_manifest_t man = {
      .id = 9,
      .step = 42,
      .view_epoch = 3,
      .mode = 0,
      .num_servers = 3,
      .model = *m,
      .fingerprint = ps_checkpoint_fingerprint(m),
      .created_unix_ms = 1234,
      .nshards = 3,
      .shards = files,
  };
  char err[512];
  int rc = ps_checkpoint_manifest_write(tmpdir, &man, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "manifest write failed: %s", err);
  return man;
}

static void flip_byte(const char *path, long off) {
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  unsigned char c;
  ck_assert_int_eq(pread(fd, &c, 1, off), 1);
  c ^= 0x10;
  ck_assert_int_eq(pwrite(fd, &c, 1, off), 1);
  close(fd);
}

static long file_size(const char *path) {
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  return (long)st.st_size;
}

static void expect_refused(const char *path, int code, const char *needle) {
  ps_checkpoint_shard_t s;
  char err[512] = "";
  int rc = ps_checkpoint_shard_read(path, &s, err, sizeof(err));
  ck_assert_msg(rc == code, "read of %s gave %s, expected %s (%s)", path,
                ps_err_name(rc), ps_err_name(code), err);
  ck_assert_msg(strstr(err, path) != NULL, "error does not name the file: %s",
                err);
  ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err,
                needle);
  ck_assert_ptr_null(s.weights);
  ck_assert_ptr_null(s.state);
  ck_assert_ptr_null(s.opt_steps);
}

START_TEST(crc32c_known_values) {
  ck_assert_uint_eq(ps_crc32c(0, "123456789", 9), 0xe3069283u);
  ck_assert_uint_eq(ps_crc32c(ps_crc32c(0, "1234", 4), "56789", 5),
                    0xe3069283u);
  ck_assert_uint_eq(ps_crc32c(0, "", 0), 0u);
}
END_TEST

START_TEST(fingerprint_covers_the_spec) {
  ps_model_t a = test_model(0.9f);
  uint64_t fa = ps_checkpoint_fingerprint(&a);
  ck_assert_uint_eq(fa, ps_checkpoint_fingerprint(&a));
  a.learning_rate = 0.01f;
  ck_assert_uint_ne(fa, ps_checkpoint_fingerprint(&a));
  a = test_model(0.9f);
  tensors[1].name[0] = 'g';
  ck_assert_uint_ne(fa, ps_checkpoint_fingerprint(&a));
}
END_TEST

START_TEST(shard_roundtrip) {
  for (int with_mom = 0; with_mom < 2; with_mom++) {
    ps_model_t m = test_model(with_mom ? 0.9f : 0.0f);
    ps_checkpoint_file_t f = write_shard(&m, "s.psck", 100, 400, 17);
    ps_checkpoint_shard_t s;
    char err[512];
    int rc = ps_checkpoint_shard_read(path_of("s.psck"), &s, err, sizeof(err));
    ck_assert_msg(rc == PS_OK, "%s", err);
    ck_assert_uint_eq(s.meta.begin, 100);
    ck_assert_uint_eq(s.meta.end, 400);
    ck_assert_uint_eq(s.meta.clock, 17);
    ck_assert_uint_eq(s.meta.view_epoch, 3);
    ck_assert_uint_eq(s.meta.checkpoint_id, 9);
    ck_assert_uint_eq(s.meta.fingerprint, ps_checkpoint_fingerprint(&m));
    ck_assert_uint_eq(s.stat.bytes, f.bytes);
    ck_assert_uint_eq(s.stat.crc32c, f.crc32c);
    ck_assert_int_eq(file_size(path_of("s.psck")), (long)f.bytes);
    float w[300], mom[300];
    fill(w, mom, 100, 400);
    ck_assert_int_eq(memcmp(s.weights, w, sizeof(w)), 0);
    /* [100, 400) holds a piece of tensor 0 only: one {tensor, count}. */
    ck_assert_uint_eq(s.nopt_steps, 1);
    ck_assert_uint_eq(s.opt_steps[0], 0);
    ck_assert_uint_eq(s.opt_steps[1], 17);
    ck_assert_int_eq(s.meta.state_slots, with_mom);
    if (with_mom) {
      ck_assert_ptr_nonnull(s.state);
      ck_assert_int_eq(memcmp(s.state, mom, sizeof(mom)), 0);
      ck_assert_uint_eq(f.bytes, 80 + 2 * (24 + 1200) + 24 + 16);
    } else {
      ck_assert_ptr_null(s.state);
      ck_assert_uint_eq(f.bytes, 80 + 24 + 1200 + 24 + 16);
    }
    ps_checkpoint_shard_clear(&s);
  }
  /* No temporary file is left behind. */
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "ls -A '%s' | grep -q tmp", tmpdir);
  ck_assert_int_ne(system(cmd), 0);
}
END_TEST

/* Version 2 holds both halves of issue #14: the optimizer state and
 * update counts beside the weights, and a range's sparse rows (whole, with
 * their optimizer state) in a section of their own, read back bit for bit
 * and held to the same CRC checks. */
START_TEST(sparse_section_beside_optimizer_state) {
  ps_checkpoint_shard_meta_t meta = {
      .fingerprint = 7, .begin = 0, .end = 4, .clock = 2, .state_slots = 2};
  float w[4] = {1, 2, 3, 4}, state[8] = {5, 6, 7, 8, 9, 10, 11, 12};
  uint64_t steps[2] = {0, 2};
  /* One record: table 0, rows of 5 floats, 1 row (id 77). */
  uint8_t sparse[16 + 8 + 5 * 4];
  uint32_t table = 0, rf = 5;
  uint64_t nrows = 1, id = 77;
  float row[5] = {0.5f, -1, 2, 3, 4};
  memcpy(sparse, &table, 4);
  memcpy(sparse + 4, &rf, 4);
  memcpy(sparse + 8, &nrows, 8);
  memcpy(sparse + 16, &id, 8);
  memcpy(sparse + 24, row, sizeof(row));
  /* One sketch record: table 0, 3 cells. */
  uint32_t sketch[2 + 3] = {0, 3, 7, 0, 4000000000u};
  ps_checkpoint_file_stat_t st;
  char err[512];
  int rc = ps_checkpoint_shard_write_sparse(
      tmpdir, "sp.psck", &meta, w, state, steps, 1, sparse, sizeof(sparse),
      sketch, sizeof(sketch), &st, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "write failed: %s", err);
  ck_assert_uint_eq(st.bytes, 80 + (24 + 16) + (24 + 32) + (24 + 16) +
                                  (24 + sizeof(sparse)) +
                                  (24 + sizeof(sketch)));
  ps_checkpoint_shard_t s;
  rc = ps_checkpoint_shard_read(path_of("sp.psck"), &s, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  ck_assert_int_eq(s.meta.state_slots, 2);
  ck_assert_int_eq(memcmp(s.weights, w, sizeof(w)), 0);
  ck_assert_int_eq(memcmp(s.state, state, sizeof(state)), 0);
  ck_assert_uint_eq(s.nopt_steps, 1);
  ck_assert_uint_eq(s.opt_steps[1], 2);
  ck_assert_uint_eq(s.sparse_bytes, sizeof(sparse));
  ck_assert_int_eq(memcmp(s.sparse, sparse, sizeof(sparse)), 0);
  ck_assert_uint_eq(s.sketch_bytes, sizeof(sketch));
  ck_assert_int_eq(memcmp(s.sketch, sketch, sizeof(sketch)), 0);
  ps_checkpoint_shard_clear(&s);
  /* A flipped bit in a counter is caught by the sketch section's CRC, one
   * in a row by the sparse section's. */
  flip_byte(path_of("sp.psck"), (long)st.bytes - 3);
  expect_refused(path_of("sp.psck"), PS_ERR_FORMAT,
                 "admission sketch section CRC32C");
  rc = ps_checkpoint_shard_write_sparse(
      tmpdir, "sp.psck", &meta, w, state, steps, 1, sparse, sizeof(sparse),
      sketch, sizeof(sketch), &st, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "write failed: %s", err);
  flip_byte(path_of("sp.psck"), (long)st.bytes - 24 - (long)sizeof(sketch) - 3);
  expect_refused(path_of("sp.psck"), PS_ERR_FORMAT, "sparse section CRC32C");
}
END_TEST

START_TEST(flipped_byte_refused) {
  ps_model_t m = test_model(0.9f);
  ps_checkpoint_file_t f = write_shard(&m, "s.psck", 0, 1000, 5);
  /* Header field, section header, weights, optimizer state, update
   * counts (the last 32 bytes: two tensors). */
  long offsets[] = {30, 80 + 9, 80 + 24 + 123, (long)f.bytes - 700,
                    (long)f.bytes - 1};
  const char *needles[] = {
      "header CRC32C", "section 1 header CRC32C", "weights section CRC32C",
      "optimizer state section CRC32C", "update counts section CRC32C"};
  for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
    write_shard(&m, "s.psck", 0, 1000, 5);
    flip_byte(path_of("s.psck"), offsets[i]);
    expect_refused(path_of("s.psck"), PS_ERR_FORMAT, needles[i]);
  }
}
END_TEST

START_TEST(truncated_refused) {
  ps_model_t m = test_model(0.9f);
  ps_checkpoint_file_t f = write_shard(&m, "s.psck", 0, 1000, 5);
  long cuts[] = {0, 5, 79, 80, 90, 80 + 24 + 10, (long)f.bytes - 1};
  for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
    write_shard(&m, "s.psck", 0, 1000, 5);
    ck_assert_int_eq(truncate(path_of("s.psck"), cuts[i]), 0);
    expect_refused(path_of("s.psck"), PS_ERR_FORMAT, "truncated");
  }
  /* Bytes after the last section are as wrong as missing ones. */
  write_shard(&m, "s.psck", 0, 1000, 5);
  FILE *fp = fopen(path_of("s.psck"), "ab");
  fputc(0, fp);
  fclose(fp);
  expect_refused(path_of("s.psck"), PS_ERR_FORMAT, "after the last section");
}
END_TEST

START_TEST(wrong_magic_or_version_refused) {
  ps_model_t m = test_model(0.0f);
  write_shard(&m, "s.psck", 0, 1000, 5);
  flip_byte(path_of("s.psck"), 0);
  expect_refused(path_of("s.psck"), PS_ERR_FORMAT, "bad magic");
  write_shard(&m, "s.psck", 0, 1000, 5);
  flip_byte(path_of("s.psck"), 9); /* version 2 -> 0x1002 */
  expect_refused(path_of("s.psck"), PS_ERR_FORMAT, "format version");
  /* Any other version is refused with the one this build reads. */
  write_shard(&m, "s.psck", 0, 1000, 5);
  flip_byte(path_of("s.psck"), 8); /* version 2 -> 18 */
  expect_refused(path_of("s.psck"), PS_ERR_FORMAT,
                 "this build reads version 2");
  expect_refused(path_of("nothing.psck"), PS_ERR_IO, "cannot open");
  /* A manifest is not a shard file. */
  write_checkpoint(&m);
  expect_refused(path_of("MANIFEST"), PS_ERR_FORMAT, "bad magic");
}
END_TEST

START_TEST(manifest_roundtrip_and_load_across_shards) {
  ps_model_t m = test_model(0.9f);
  ps_checkpoint_manifest_t w = write_checkpoint(&m);
  ps_checkpoint_manifest_t r;
  char err[512];
  int rc = ps_checkpoint_manifest_read(tmpdir, &r, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  ck_assert_uint_eq(r.id, 9);
  ck_assert_uint_eq(r.step, 42);
  ck_assert_uint_eq(r.num_servers, 3);
  ck_assert_uint_eq(r.nshards, 3);
  ck_assert_uint_eq(r.created_unix_ms, 1234);
  ck_assert(ps_model_equal(&r.model, &m));
  for (size_t i = 0; i < 3; i++) {
    ck_assert_str_eq(r.shards[i].file, w.shards[i].file);
    ck_assert_uint_eq(r.shards[i].crc32c, w.shards[i].crc32c);
    ck_assert_uint_eq(r.shards[i].bytes, w.shards[i].bytes);
  }
  uint64_t bytes = 0;
  rc = ps_checkpoint_verify(tmpdir, &r, &bytes, err, sizeof(err));
  ck_assert_msg(rc == PS_OK, "%s", err);
  ck_assert_uint_eq(bytes,
                    w.shards[0].bytes + w.shards[1].bytes + w.shards[2].bytes);
  /* Restore onto 2 servers: each range cuts across the 3 files. */
  uint64_t cuts[3] = {0, 512, 1000};
  for (int i = 0; i < 2; i++) {
    size_t n = (size_t)(cuts[i + 1] - cuts[i]);
    float *wt = malloc(n * sizeof(float)), *mo = malloc(n * sizeof(float));
    float *ew = malloc(n * sizeof(float)), *em = malloc(n * sizeof(float));
    uint64_t tsteps[2] = {99, 99};
    rc = ps_checkpoint_load_range(tmpdir, &r, cuts[i], cuts[i + 1], wt, mo,
                                  tsteps, NULL, err, sizeof(err));
    ck_assert_msg(rc == PS_OK, "%s", err);
    /* Range [0, 512) holds no piece of fc1.bias ([900, 1000)). */
    ck_assert_uint_eq(tsteps[0], 42);
    ck_assert_uint_eq(tsteps[1], i == 0 ? 0 : 43);
    fill(ew, em, cuts[i], cuts[i + 1]);
    ck_assert_int_eq(memcmp(wt, ew, n * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(mo, em, n * sizeof(float)), 0);
    free(wt);
    free(mo);
    free(ew);
    free(em);
  }
  ps_checkpoint_manifest_clear(&r);
}
END_TEST

START_TEST(manifest_damage_refused) {
  ps_model_t m = test_model(0.9f);
  write_checkpoint(&m);
  long size = file_size(path_of("MANIFEST"));
  ps_checkpoint_manifest_t r;
  char err[512];
  flip_byte(path_of("MANIFEST"), size / 2);
  ck_assert_int_eq(ps_checkpoint_manifest_read(tmpdir, &r, err, sizeof(err)),
                   PS_ERR_FORMAT);
  ck_assert_msg(strstr(err, "MANIFEST") && strstr(err, "CRC32C"), "%s", err);
  ck_assert_ptr_null(r.shards);
  write_checkpoint(&m);
  ck_assert_int_eq(truncate(path_of("MANIFEST"), size - 3), 0);
  ck_assert_int_eq(ps_checkpoint_manifest_read(tmpdir, &r, err, sizeof(err)),
                   PS_ERR_FORMAT);
  ck_assert_msg(strstr(err, "truncated"), "%s", err);
  ck_assert_int_eq(unlink(path_of("MANIFEST")), 0);
  ck_assert_int_eq(ps_checkpoint_manifest_read(tmpdir, &r, err, sizeof(err)),
                   PS_ERR_IO);
  ck_assert_msg(strstr(err, "MANIFEST"), "%s", err);
}
END_TEST

START_TEST(manifest_pointing_at_missing_or_foreign_shard_refused) {
  ps_model_t m = test_model(0.9f);
  ps_checkpoint_manifest_t w = write_checkpoint(&m);
  ps_checkpoint_manifest_t r;
  char err[512];
  ck_assert_int_eq(ps_checkpoint_manifest_read(tmpdir, &r, err, sizeof(err)),
                   PS_OK);
  float buf[1000];
  /* Missing. */
  ck_assert_int_eq(unlink(path_of(w.shards[1].file)), 0);
  ck_assert_int_eq(ps_checkpoint_verify(tmpdir, &r, NULL, err, sizeof(err)),
                   PS_ERR_IO);
  ck_assert_msg(strstr(err, w.shards[1].file), "%s", err);
  ck_assert_int_ne(ps_checkpoint_load_range(tmpdir, &r, 0, 1000, buf, buf, NULL,
                                            NULL, err, sizeof(err)),
                   PS_OK);
  /* A valid shard file of another checkpoint (other clock, same range). */
  write_shard(&m, w.shards[1].file, w.shards[1].begin, w.shards[1].end, 41);
  ck_assert_int_eq(ps_checkpoint_verify(tmpdir, &r, NULL, err, sizeof(err)),
                   PS_ERR_FORMAT);
  ck_assert_msg(strstr(err, w.shards[1].file) && strstr(err, "manifest"), "%s",
                err);
  /* Of another model. */
  ps_model_t other = test_model(0.9f);
  other.seed = 8;
  write_shard(&other, w.shards[1].file, w.shards[1].begin, w.shards[1].end, 42);
  ck_assert_int_eq(ps_checkpoint_verify(tmpdir, &r, NULL, err, sizeof(err)),
                   PS_ERR_FORMAT);
  ck_assert_msg(strstr(err, w.shards[1].file), "%s", err);
  ps_checkpoint_manifest_clear(&r);
}
END_TEST

START_TEST(manifest_that_does_not_tile_is_not_written) {
  ps_model_t m = test_model(0.0f);
  ps_checkpoint_file_t files[2] = {write_shard(&m, "a", 0, 500, 1),
                                   write_shard(&m, "b", 600, 1000, 1)};
  ps_checkpoint_manifest_t man = {
      .step = 1,
      .model = m,
      .fingerprint = ps_checkpoint_fingerprint(&m),
      .nshards = 2,
      .shards = files,
  };
  char err[512];
  ck_assert_int_eq(ps_checkpoint_manifest_write(tmpdir, &man, err, sizeof(err)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "tile"), "%s", err);
  files[1].begin = 500;
  snprintf(files[1].file, sizeof(files[1].file), "../b");
  ck_assert_int_eq(ps_checkpoint_manifest_write(tmpdir, &man, err, sizeof(err)),
                   PS_ERR_INVAL);
  ck_assert_msg(strstr(err, "bad file name"), "%s", err);
  ck_assert_int_ne(access(path_of("MANIFEST"), F_OK), 0);
}
END_TEST

START_TEST(resolve_follows_latest) {
  char err[512], dir[1024];
  ck_assert_int_eq(
      ps_checkpoint_resolve(tmpdir, dir, sizeof(dir), err, sizeof(err)),
      PS_ERR_IO);
  char sub[600];
  snprintf(sub, sizeof(sub), "%s/ckpt-7", tmpdir);
  ck_assert_int_eq(ps_checkpoint_mkdirs(sub, err, sizeof(err)), PS_OK);
  ck_assert_int_eq(ps_checkpoint_set_latest(tmpdir, "ckpt-7", err, sizeof(err)),
                   PS_OK);
  ck_assert_int_eq(
      ps_checkpoint_resolve(tmpdir, dir, sizeof(dir), err, sizeof(err)), PS_OK);
  ck_assert_str_eq(dir, sub);
  ps_model_t m = test_model(0.0f);
  write_checkpoint(&m);
  ck_assert_int_eq(
      ps_checkpoint_resolve(tmpdir, dir, sizeof(dir), err, sizeof(err)), PS_OK);
  ck_assert_str_eq(dir, tmpdir);
}
END_TEST

int main(void) {
  Suite *s = suite_create("checkpoint");
  TCase *tc = tcase_create("format");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, crc32c_known_values);
  tcase_add_test(tc, fingerprint_covers_the_spec);
  tcase_add_test(tc, shard_roundtrip);
  tcase_add_test(tc, sparse_section_beside_optimizer_state);
  tcase_add_test(tc, flipped_byte_refused);
  tcase_add_test(tc, truncated_refused);
  tcase_add_test(tc, wrong_magic_or_version_refused);
  tcase_add_test(tc, manifest_roundtrip_and_load_across_shards);
  tcase_add_test(tc, manifest_damage_refused);
  tcase_add_test(tc, manifest_pointing_at_missing_or_foreign_shard_refused);
  tcase_add_test(tc, manifest_that_does_not_tile_is_not_written);
  tcase_add_test(tc, resolve_follows_latest);
  suite_add_tcase(s, tc);
  return ps_check_run(s);
}
