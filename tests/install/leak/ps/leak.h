/* The public header of a library made to fail check_symbols.sh
 * (install.symbols_catch): it declares one function the library exports and
 * one it lacks, while the library exports one more that is declared here
 * only in a comment: ps_leak_undeclared(void). */
#ifndef PS_LEAK_H
#define PS_LEAK_H

#include "ps/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int (*cb)(int); /* a member that looks like a declaration */
} ps_leak_t;

PS_EXTERN int ps_leak_declared(void);
PS_EXTERN int ps_leak_missing(ps_leak_t *l);

#ifdef __cplusplus
}
#endif

#endif
