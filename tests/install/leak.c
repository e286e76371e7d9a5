/* See leak/ps/leak.h. */
#include "ps/leak.h"

int ps_leak_declared(void) {
  return 1;
}

/* Exported, declared in no header: the leak install.symbols_catch expects
 * check_symbols.sh to report. */
PS_EXTERN int ps_leak_undeclared(void);
int ps_leak_undeclared(void) {
  return 2;
}

/* Hidden (the project's visibility preset): must not be reported. */
int ps_leak_hidden(void);
int ps_leak_hidden(void) {
  return 3;
}
