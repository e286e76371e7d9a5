/* PS_EXTERN marks what a shared library built from this tree exports.
 *
 * The project compiles with hidden visibility (CMAKE_C_VISIBILITY_PRESET),
 * so libps-client.so exports only the functions its public headers declare
 * with PS_EXTERN, in the manner of libuv's UV_EXTERN; everything else,
 * ps-common linked in included, stays inside the library. In a static
 * library or a program the attribute changes nothing.
 */
#ifndef PS_EXPORT_H
#define PS_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define PS_EXTERN __attribute__((visibility("default")))
#else
#define PS_EXTERN
#endif

#endif
