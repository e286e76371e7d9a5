/* IDX files (the MNIST / Fashion-MNIST format) read into a dataset.
 *
 * Files may be gzip-compressed or plain: zlib reads both. Reading is strict,
 * because a silently short or misread data set trains a wrong model without
 * a sign: the magic number, the dimensions, and that the file holds exactly
 * the bytes its header declares (a truncated file or trailing bytes are
 * refused), that image and label counts agree, and that labels are < 10.
 * Every refusal names the file and the reason. Any thread; a dataset is not
 * shared while it is being loaded.
 */
#ifndef PS_IDX_H
#define PS_IDX_H

#include <stddef.h>
#include <stdint.h>

#define PS_IDX_MAGIC_IMAGES 0x00000803u /* unsigned byte, 3 dimensions */
#define PS_IDX_MAGIC_LABELS 0x00000801u /* unsigned byte, 1 dimension */
#define PS_IDX_NUM_CLASSES 10

/* n examples of dim = rows * cols float32 features in [0, 1] (pixel / 255),
 * row-major, example i at x + i * dim; y[i] < PS_IDX_NUM_CLASSES. Zero it
 * (or use PS_DATASET_INIT) before the first load. The dataset owns x and y:
 * free them with ps_dataset_clear. */
typedef struct {
  size_t n;
  size_t dim;
  uint32_t rows, cols;
  float *x;
  uint8_t *y;
} ps_dataset_t;

#define PS_DATASET_INIT \
  { 0, 0, 0, 0, NULL, NULL }

/* Loads an images file into ds->x (replacing none: ds->x must be NULL) and
 * sets dim, rows, cols. If ds->y is already loaded, the image count must
 * equal ds->n; otherwise ds->n is set. Returns PS_OK, or PS_ERR_IO /
 * PS_ERR_FORMAT / PS_ERR_NOMEM with "PATH: reason" in err, leaving ds as it
 * was. */
int ps_idx_load_images(const char *path, ps_dataset_t *ds, char *err,
                       size_t errlen);

/* The same for a labels file into ds->y; the count must equal ds->n if
 * images are already loaded. */
int ps_idx_load_labels(const char *path, ps_dataset_t *ds, char *err,
                       size_t errlen);

/* Loads both files into an empty ds. On failure ds is left empty. */
int ps_idx_load_dataset(const char *images_path, const char *labels_path,
                        ps_dataset_t *ds, char *err, size_t errlen);

/* Mean and standard deviation of all features of ds (summed in double, in
 * index order, so the same data gives the same bits everywhere). */
void ps_dataset_stats(const ps_dataset_t *ds, double *mean, double *std);

/* x = (x - mean) / std for every feature; std must be > 0. */
void ps_dataset_standardize(ps_dataset_t *ds, double mean, double std);

/* Frees x and y and zeroes ds. Safe on an empty dataset. */
void ps_dataset_clear(ps_dataset_t *ds);

#endif
