/* Gradient and weight codecs (issue #15): how a dense payload frame is
 * encoded on the wire, in one place for the client (which encodes pushes
 * and decodes pulls) and the server (which decodes pushes, encodes pulls).
 * The layouts are proto/ps.proto's Codec. Decoding is deterministic: the
 * same bytes give bitwise the same floats on every node, which keeps a
 * primary and its backups equal when the backup decodes the frame the
 * primary forwarded.
 *
 * Pure functions on caller memory; any thread.
 */
#ifndef PS_COMMON_CODEC_H
#define PS_COMMON_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* PS_CODEC_*: ps/model.h, the values of ps.proto's Codec (checked at
 * compile time in codec.c). */
#include "ps/model.h"

/* Keys per scale of CODEC_INT8, from the message's first key. */
#define PS_CODEC_INT8_BLOCK 256

/* "none", "fp16", "int8", "topk", or "unknown". */
const char *ps_codec_name(int codec);

/* The codec called name (as ps_codec_name gives it), or -1. */
int ps_codec_parse(const char *name);

/* How many values CODEC_TOPK sends of n at fraction f in (0, 1]:
 * ceil(f x n), at least 1 and at most n. */
uint64_t ps_codec_topk_count(uint64_t n, float fraction);

/* The size of the encoding of n values: exact for none, fp16 and int8;
 * for topk, of k pairs. */
size_t ps_codec_encoded_bytes(int codec, uint64_t n, uint64_t k);

/* Checks that a frame of bytes can be the encoding of n values in codec
 * (its size only; ps_codec_decode checks the rest). PS_OK, or PS_ERR_PROTO
 * with the reason in err. */
int ps_codec_check_size(int codec, uint64_t n, size_t bytes, char *err,
                        size_t errlen);

/* Encodes x[0..n) into dst (ps_codec_encoded_bytes(codec, n, k) bytes, no
 * alignment needed) and returns the bytes written. topk keeps the k
 * values of largest magnitude (NaN counts as largest; ties go to the
 * lower index), in index order; scratch must hold n floats for topk and
 * may be NULL otherwise. Never fails. */
size_t ps_codec_encode(int codec, const float *x, uint64_t n, uint64_t k,
                       void *dst, float *scratch);

/* Decodes a frame of bytes holding n values in codec into out[0..n) (no
 * alignment needed for src). PS_OK, or PS_ERR_PROTO with the reason in err
 * (wrong size, topk indices out of range or not ascending); out may be
 * partly written then. */
int ps_codec_decode(int codec, const void *src, size_t bytes, uint64_t n,
                    float *out, char *err, size_t errlen);

/* Top-k with error feedback, one step: residual[i] += g[i] for the n
 * keys, the k largest of the sums go into dst (as ps_codec_encode) and
 * into dq decoded (n floats, 0 where not sent), and the sent keys'
 * residuals drop to exactly 0, so what was pushed plus what is kept is
 * what was computed. Returns the bytes written. */
size_t ps_codec_topk_feedback(const float *g, float *residual, uint64_t n,
                              uint64_t k, void *dst, float *dq, float *scratch);

/* Zeroes the values of an encoded frame and keeps its structure (topk's
 * indices), so that it decodes to n zeros. */
void ps_codec_zero(int codec, void *buf, size_t bytes);

/* IEEE half <-> float, round to nearest even; NaN stays NaN, overflow
 * gives infinity. */
uint16_t ps_fp16_from_float(float f);
float ps_fp16_to_float(uint16_t h);

/* Tests: 0 forces the portable C code where SIMD would be used; 1 goes
 * back to using SIMD where the CPU has it. */
void ps__codec_use_simd(int on);

#endif
