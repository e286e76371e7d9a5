/* Status codes: the list is public (ps/err.h, installed with libps-client);
 * the daemons and the library include it from here. */
#ifndef PS_COMMON_ERR_H
#define PS_COMMON_ERR_H

#include "ps/err.h"

#endif
