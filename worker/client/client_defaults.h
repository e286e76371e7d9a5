/* The defaults of ps_client_opts_t (worker/client/include/ps/client.h), written
 * once: for ps_client_opts_init, and for the option tables of the programs that
 * set those fields from flags (ps-worker, ps-bench), whose --help shows them
 * through PS_OPT_DEF (common/config.h). So each is a plain literal.
 *
 * Not installed: a program outside this tree gets the same values from
 * ps_client_opts_init.
 */
#ifndef PS_WORKER_CLIENT_DEFAULTS_H
#define PS_WORKER_CLIENT_DEFAULTS_H

/* Deadline of one push or pull. */
#define PS_CLIENT_DEFAULT_TIMEOUT_MS 30000
/* Deadline to register and get the first view. */
#define PS_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS 60000
#define PS_CLIENT_DEFAULT_HEARTBEAT_MS 100
/* A request unanswered this long is resent on a fresh connection. */
#define PS_CLIENT_DEFAULT_RESEND_MS 1000
/* Eight 1 MiB requests in flight per server keep loopback and a 10 Gb/s
 * link busy while the server applies the ones before. */
#define PS_CLIENT_DEFAULT_WINDOW 8
#define PS_CLIENT_DEFAULT_CHUNK_BYTES 1048576

#endif
