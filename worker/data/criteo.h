/* A streaming reader of the Criteo display-advertising text format: one
 * example per line, label (0 or 1), 13 integer features, 26 categorical
 * features as hex ids (8 digits in Criteo's files), tab separated, an empty
 * field for a missing value. Plain or gzip (zlib reads both), read through
 * one fixed buffer: constant memory whatever the file's size.
 *
 * What a row becomes:
 *  - integer feature x: log(1 + max(x, 0)); missing is 0;
 *  - categorical field f with id v: ps_criteo_hash(f, v, id_space), a
 *    64-bit hash of (field, id), reduced mod id_space when that is not 0;
 *    a missing id is the id "" of its field (its own feature).
 *
 * Partition: rows are numbered from 0 in file order and cut into blocks of
 * `block` rows; worker `rank` of `workers` reads blocks rank, rank +
 * workers, ... (ps_criteo_next skips the others' rows without parsing
 * them). With block = the batch size, step s of worker r is block
 * s * workers + r: what trainer.h describes for one epoch's order, without
 * the shuffle (a stream is read in its order).
 *
 * Malformed lines are errors, never skipped: a bad field, a wrong field
 * count, a label other than 0/1, a line longer than PS_CRITEO_LINE_MAX. The
 * message names the file, the line and the reason ("train.txt:17: field 3
 * (I2): \"1x\" is not an integer"). A data set that is silently cut short
 * or misread trains a wrong model without a sign. A reader belongs to one
 * thread.
 */
#ifndef PS_CRITEO_H
#define PS_CRITEO_H

#include <stddef.h>
#include <stdint.h>

#define PS_CRITEO_DENSE 13
#define PS_CRITEO_CATEG 26
#define PS_CRITEO_LINE_MAX 4096

typedef struct ps_criteo_s ps_criteo_t;

typedef struct {
  uint8_t label;
  float dense[PS_CRITEO_DENSE];
  uint64_t ids[PS_CRITEO_CATEG];
} ps_criteo_row_t;

typedef struct {
  uint64_t id_space; /* 0: full 64-bit ids */
  uint32_t rank, workers;
  uint32_t block; /* rows per block of the partition; >= 1 */
} ps_criteo_opts_t;

/* id_space 0, rank 0 of 1 worker, block 1. */
void ps_criteo_opts_init(ps_criteo_opts_t *o);

/* The id of field f (0-based) whose text is hex[0, len) (len 0: missing). */
uint64_t ps_criteo_hash(uint32_t field, const char *hex, size_t len,
                        uint64_t id_space);

/* Opens path. NULL with "PATH: reason" in err on failure. Caller owns the
 * result. */
ps_criteo_t *ps_criteo_open(const char *path, const ps_criteo_opts_t *o,
                            char *err, size_t errlen);
void ps_criteo_destroy(ps_criteo_t **r_p);

/* The next row of this worker's part into row. Returns 1 with a row, 0 at
 * the end of the file, or PS_ERR_FORMAT / PS_ERR_IO with the message in
 * ps_criteo_errmsg. */
int ps_criteo_next(ps_criteo_t *r, ps_criteo_row_t *row);

/* Back to the first row (the next epoch). PS_OK or PS_ERR_IO. */
int ps_criteo_rewind(ps_criteo_t *r);

/* Lines read so far (all workers' rows), for messages. */
uint64_t ps_criteo_lines(const ps_criteo_t *r);
const char *ps_criteo_errmsg(const ps_criteo_t *r);

/* Counts the rows of path (its non-empty lines) without parsing them.
 * PS_OK, or PS_ERR_IO with the reason in err. */
int ps_criteo_count(const char *path, uint64_t *rows, char *err,
                    size_t errlen);

/* Parses one line (without its newline) into row. PS_OK, or PS_ERR_FORMAT
 * with the reason (field and value) in err. */
int ps_criteo_parse(const char *line, size_t len, uint64_t id_space,
                    ps_criteo_row_t *row, char *err, size_t errlen);

#endif
