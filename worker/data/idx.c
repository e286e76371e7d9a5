#include "worker/data/idx.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/err.h"

/* gzread takes an unsigned count; stay well inside it. */
#define IDX_CHUNK (1u << 20)
/* No real IDX data set comes close; a header that claims more is corrupt
 * and must not make us allocate it. */
#define IDX_MAX_BYTES ((uint64_t)1 << 34)

static void idx_err(char *err, size_t errlen, const char *path, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static void idx_err(char *err, size_t errlen, const char *path, const char *fmt,
                    ...) {
  if (err == NULL || errlen == 0) return;
  int n = snprintf(err, errlen, "%s: ", path);
  if (n < 0 || (size_t)n >= errlen) return;
  va_list ap;
  va_start(ap, fmt);
  ps_verrf(err + n, errlen - (size_t)n, PS_OK, fmt, ap);
  va_end(ap);
}

typedef struct {
  gzFile gz;
  const char *path;
  uint64_t offset; /* bytes of (uncompressed) content consumed so far */
} idx_file_t;

static int idx_open(idx_file_t *f, const char *path, char *err, size_t errlen) {
  f->path = path;
  f->offset = 0;
  errno = 0;
  f->gz = gzopen(path, "rb");
  if (f->gz == NULL) {
    idx_err(err, errlen, path, "cannot open: %s",
            errno ? strerror(errno) : "out of memory");
    return errno ? PS_ERR_IO : PS_ERR_NOMEM;
  }
  gzbuffer(f->gz, 128 * 1024);
  return PS_OK;
}

/* Reads up to len bytes; returns how many were read (short only at the end
 * of the content) or -1 on an I/O or compression error, with err filled. */
static int64_t idx_read(idx_file_t *f, void *buf, size_t len, char *err,
                        size_t errlen) {
  size_t done = 0;
  while (done < len) {
    size_t want = len - done;
    if (want > IDX_CHUNK) want = IDX_CHUNK;
    int got = gzread(f->gz, (unsigned char *)buf + done, (unsigned)want);
    if (got < 0) {
      int zerr = 0;
      const char *msg = gzerror(f->gz, &zerr);
      idx_err(err, errlen, f->path, "read error at byte %llu: %s",
              (unsigned long long)(f->offset + done),
              zerr == Z_ERRNO ? strerror(errno) : msg);
      return -1;
    }
    if (got == 0) break;
    done += (size_t)got;
  }
  f->offset += done;
  return (int64_t)done;
}

/* A gzip stream cut short reads as a clean end in gzread; gzerror tells. */
static int idx_check_stream(idx_file_t *f, char *err, size_t errlen) {
  int zerr = Z_OK;
  const char *msg = gzerror(f->gz, &zerr);
  if (zerr != Z_OK && zerr != Z_STREAM_END) {
    idx_err(err, errlen, f->path, "corrupt or truncated gzip stream: %s", msg);
    return PS_ERR_FORMAT;
  }
  return PS_OK;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         (uint32_t)p[3];
}

/* Reads the magic and ndims dimensions, checking the magic. */
static int idx_header(idx_file_t *f, uint32_t magic, const char *what,
                      uint32_t *dims, int ndims, char *err, size_t errlen) {
  unsigned char hdr[4 * 4];
  size_t len = 4 * (size_t)(1 + ndims);
  int64_t got = idx_read(f, hdr, len, err, errlen);
  if (got < 0) return PS_ERR_IO;
  if (got < 4) {
    int rc = idx_check_stream(f, err, errlen);
    if (rc != PS_OK) return rc;
    idx_err(err, errlen, f->path,
            "not an IDX file: %lld bytes, too short for the magic number",
            (long long)got);
    return PS_ERR_FORMAT;
  }
  uint32_t m = be32(hdr);
  if (m != magic) {
    idx_err(err, errlen, f->path,
            "bad magic 0x%08x, expected 0x%08x (IDX unsigned bytes, %s)", m,
            magic, what);
    return PS_ERR_FORMAT;
  }
  if ((size_t)got < len) {
    int rc = idx_check_stream(f, err, errlen);
    if (rc != PS_OK) return rc;
    idx_err(err, errlen, f->path, "truncated header: %lld of %zu bytes",
            (long long)got, len);
    return PS_ERR_FORMAT;
  }
  for (int i = 0; i < ndims; i++) dims[i] = be32(hdr + 4 * (i + 1));
  return PS_OK;
}

/* After the declared content: the file must end here, cleanly. */
static int idx_expect_end(idx_file_t *f, uint64_t declared, char *err,
                          size_t errlen) {
  unsigned char extra[4096];
  uint64_t more = 0;
  for (;;) {
    int64_t got = idx_read(f, extra, sizeof(extra), err, errlen);
    if (got < 0) return PS_ERR_IO;
    if (got == 0) break;
    more += (uint64_t)got;
  }
  int rc = idx_check_stream(f, err, errlen);
  if (rc != PS_OK) return rc;
  if (more > 0) {
    idx_err(err, errlen, f->path,
            "%llu trailing bytes after the %llu bytes the header declares",
            (unsigned long long)more, (unsigned long long)declared);
    return PS_ERR_FORMAT;
  }
  return PS_OK;
}

static int idx_truncated(idx_file_t *f, uint64_t declared, const char *what,
                         char *err, size_t errlen) {
  int rc = idx_check_stream(f, err, errlen);
  if (rc != PS_OK) return rc;
  idx_err(err, errlen, f->path,
          "truncated: the header declares %s (%llu bytes in all) but the "
          "file holds %llu",
          what, (unsigned long long)declared, (unsigned long long)f->offset);
  return PS_ERR_FORMAT;
}

int ps_idx_load_images(const char *path, ps_dataset_t *ds, char *err,
                       size_t errlen) {
  if (path == NULL || ds == NULL || ds->x != NULL) {
    idx_err(err, errlen, path ? path : "(null)",
            "invalid arguments (images already loaded?)");
    return PS_ERR_INVAL;
  }
  idx_file_t f;
  int rc = idx_open(&f, path, err, errlen);
  if (rc != PS_OK) return rc;
  float *x = NULL;
  unsigned char *chunk = NULL;
  uint32_t dims[3];
  rc = idx_header(&f, PS_IDX_MAGIC_IMAGES, "3 dimensions: images", dims, 3, err,
                  errlen);
  if (rc != PS_OK) goto out;
  uint32_t n = dims[0], rows = dims[1], cols = dims[2];
  if (n == 0 || rows == 0 || cols == 0) {
    idx_err(err, errlen, path, "empty dimension: %u images of %ux%u", n, rows,
            cols);
    rc = PS_ERR_FORMAT;
    goto out;
  }
  uint64_t dim = (uint64_t)rows * cols;
  uint64_t pixels = (uint64_t)n * dim;
  if (pixels > IDX_MAX_BYTES) {
    idx_err(err, errlen, path,
            "implausible size: %u images of %ux%u is %llu bytes (limit %llu)",
            n, rows, cols, (unsigned long long)pixels,
            (unsigned long long)IDX_MAX_BYTES);
    rc = PS_ERR_FORMAT;
    goto out;
  }
  if (ds->y != NULL && ds->n != n) {
    idx_err(err, errlen, path,
            "holds %u images but the labels file holds %zu labels", n, ds->n);
    rc = PS_ERR_FORMAT;
    goto out;
  }
  uint64_t declared = 16 + pixels;
  x = malloc((size_t)pixels * sizeof(float));
  chunk = malloc(IDX_CHUNK);
  if (x == NULL || chunk == NULL) {
    idx_err(err, errlen, path, "out of memory for %llu pixels",
            (unsigned long long)pixels);
    rc = PS_ERR_NOMEM;
    goto out;
  }
  /* Multiplying by the reciprocal would not give the correctly rounded
   * p / 255 that other tools produce. */
  for (uint64_t done = 0; done < pixels;) {
    size_t want =
        pixels - done < IDX_CHUNK ? (size_t)(pixels - done) : (size_t)IDX_CHUNK;
    int64_t got = idx_read(&f, chunk, want, err, errlen);
    if (got < 0) {
      rc = PS_ERR_IO;
      goto out;
    }
    for (int64_t i = 0; i < got; i++) x[done + (uint64_t)i] = chunk[i] / 255.0f;
    done += (uint64_t)got;
    if ((size_t)got < want) {
      char what[96];
      snprintf(what, sizeof(what), "%u images of %ux%u", n, rows, cols);
      rc = idx_truncated(&f, declared, what, err, errlen);
      goto out;
    }
  }
  rc = idx_expect_end(&f, declared, err, errlen);
  if (rc != PS_OK) goto out;
  ds->x = x;
  x = NULL;
  ds->n = n;
  ds->dim = (size_t)dim;
  ds->rows = rows;
  ds->cols = cols;
out:
  free(chunk);
  free(x);
  gzclose(f.gz);
  return rc;
}

int ps_idx_load_labels(const char *path, ps_dataset_t *ds, char *err,
                       size_t errlen) {
  if (path == NULL || ds == NULL || ds->y != NULL) {
    idx_err(err, errlen, path ? path : "(null)",
            "invalid arguments (labels already loaded?)");
    return PS_ERR_INVAL;
  }
  idx_file_t f;
  int rc = idx_open(&f, path, err, errlen);
  if (rc != PS_OK) return rc;
  uint8_t *y = NULL;
  uint32_t n;
  rc = idx_header(&f, PS_IDX_MAGIC_LABELS, "1 dimension: labels", &n, 1, err,
                  errlen);
  if (rc != PS_OK) goto out;
  if (n == 0) {
    idx_err(err, errlen, path, "holds no labels");
    rc = PS_ERR_FORMAT;
    goto out;
  }
  if (ds->x != NULL && ds->n != n) {
    idx_err(err, errlen, path,
            "holds %u labels but the images file holds %zu images", n, ds->n);
    rc = PS_ERR_FORMAT;
    goto out;
  }
  uint64_t declared = 8 + (uint64_t)n;
  y = malloc(n);
  if (y == NULL) {
    idx_err(err, errlen, path, "out of memory for %u labels", n);
    rc = PS_ERR_NOMEM;
    goto out;
  }
  int64_t got = idx_read(&f, y, n, err, errlen);
  if (got < 0) {
    rc = PS_ERR_IO;
    goto out;
  }
  if ((uint64_t)got < n) {
    char what[64];
    snprintf(what, sizeof(what), "%u labels", n);
    rc = idx_truncated(&f, declared, what, err, errlen);
    goto out;
  }
  rc = idx_expect_end(&f, declared, err, errlen);
  if (rc != PS_OK) goto out;
  for (uint32_t i = 0; i < n; i++) {
    if (y[i] >= PS_IDX_NUM_CLASSES) {
      idx_err(err, errlen, path, "label %u of example %u is not below %d", y[i],
              i, PS_IDX_NUM_CLASSES);
      rc = PS_ERR_FORMAT;
      goto out;
    }
  }
  ds->y = y;
  y = NULL;
  ds->n = n;
out:
  free(y);
  gzclose(f.gz);
  return rc;
}

int ps_idx_load_dataset(const char *images_path, const char *labels_path,
                        ps_dataset_t *ds, char *err, size_t errlen) {
  int rc = ps_idx_load_images(images_path, ds, err, errlen);
  if (rc == PS_OK) rc = ps_idx_load_labels(labels_path, ds, err, errlen);
  if (rc != PS_OK) ps_dataset_clear(ds);
  return rc;
}

void ps_dataset_stats(const ps_dataset_t *ds, double *mean, double *std) {
  size_t count = ds->n * ds->dim;
  double sum = 0.0, sumsq = 0.0;
  for (size_t i = 0; i < count; i++) {
    double v = ds->x[i];
    sum += v;
    sumsq += v * v;
  }
  double m = count ? sum / (double)count : 0.0;
  double var = count ? sumsq / (double)count - m * m : 0.0;
  *mean = m;
  *std = var > 0.0 ? sqrt(var) : 0.0;
}

void ps_dataset_standardize(ps_dataset_t *ds, double mean, double std) {
  size_t count = ds->n * ds->dim;
  float m = (float)mean, inv = (float)(1.0 / std);
  for (size_t i = 0; i < count; i++) ds->x[i] = (ds->x[i] - m) * inv;
}

void ps_dataset_clear(ps_dataset_t *ds) {
  if (ds == NULL) return;
  free(ds->x);
  free(ds->y);
  memset(ds, 0, sizeof(*ds));
}
