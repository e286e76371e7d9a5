/* CURVE keys with roles (issue #13, ARCHITECTURE "Security").
 *
 * A cluster's keys live in one directory. Each key pair has a name and a
 * role (scheduler, server, worker, admin) and two files, both INI
 * (read with inih, like config files):
 *   NAME.key  [key] role, public, secret: the pair, mode 0600; refused at
 *             load when group or others may read it
 *   NAME.pub  [key] role, public: what peers need to admit it
 * Keys are Z85 (40 characters), as zmq_curve_keypair writes them.
 *
 * A process loads a ps_keys_t: its own pair (NAME.key) and every *.pub of
 * the directory, the table of keys allowed to connect with their roles.
 * Clients take the scheduler's public key from the table (the one
 * role = scheduler .pub); a server's key travels in the view.
 *
 * On the wire: a socket that binds is a CURVE server, and the daemon's ZAP
 * handler (common/zap.h) admits only keys of the table and names the
 * connection's role and key in the ZAP User-Id, "ROLE PUBLIC", which
 * every frame received on the connection carries (ps_keys_peer).
 *
 * A ps_keys_t is read-only after load: any thread may use it.
 */
#ifndef PS_COMMON_KEYS_H
#define PS_COMMON_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define PS_KEY_Z85_LEN 40
/* Hex of the first 8 bytes of a public key, for logs. */
#define PS_KEY_FINGERPRINT_LEN 16

typedef enum {
  PS_KEY_ROLE_NONE = 0, /* plaintext: no key at all */
  PS_KEY_ROLE_SCHEDULER,
  PS_KEY_ROLE_SERVER,
  PS_KEY_ROLE_WORKER,
  PS_KEY_ROLE_ADMIN,
} ps_key_role_t;

typedef struct ps_keys_s ps_keys_t;

/* "scheduler", "server", "worker", "admin"; "none" for PS_KEY_ROLE_NONE. */
const char *ps_key_role_name(ps_key_role_t role);
/* PS_OK with *role set, or PS_ERR_INVAL for another name. */
int ps_key_role_parse(const char *name, ps_key_role_t *role);

/* Writes a fresh pair (zmq_curve_keypair) as DIR/NAME.key (mode 0600,
 * never over an existing file) and DIR/NAME.pub, making DIR (mode 0700) if
 * it does not exist. Returns PS_OK, or PS_ERR_IO / PS_ERR_INVAL /
 * PS_ERR_UNSUPPORTED (libzmq without CURVE) with the reason in err. */
int ps_keys_generate(const char *dir, const char *name, ps_key_role_t role,
                     char *err, size_t errlen);

/* Loads the process's own pair from key_file (NULL: DIR/<own_role>.key),
 * which must hold a key of own_role, and every DIR/ *.pub as the table of
 * allowed keys. Refuses a key file readable by group or others, a file
 * that is not a key, a public key that appears twice, and a directory
 * with no scheduler key (clients need it) or more than one. Returns NULL
 * with *err and errbuf filled on failure. The caller owns the result. */
ps_keys_t *ps_keys_load(const char *dir, const char *key_file,
                        ps_key_role_t own_role, int *err, char *errbuf,
                        size_t errlen);

void ps_keys_destroy(ps_keys_t **keys_p);

/* The own pair's public key (Z85) and role. */
const char *ps_keys_public(const ps_keys_t *keys);
ps_key_role_t ps_keys_role(const ps_keys_t *keys);
/* The scheduler's public key (Z85), from the table. */
const char *ps_keys_scheduler_key(const ps_keys_t *keys);
/* The directory the keys came from. */
const char *ps_keys_dir(const ps_keys_t *keys);
/* The number of keys in the table. */
size_t ps_keys_count(const ps_keys_t *keys);

/* The role of a public key (32 bytes) in the table, and its name (NULL if
 * not wanted); PS_KEY_ROLE_NONE when it is not there. */
ps_key_role_t ps_keys_lookup(const ps_keys_t *keys, const uint8_t key[32],
                             const char **name);

/* Makes sock a CURVE server (server_key NULL: a socket that binds) or a
 * CURVE client of the peer with public key server_key (Z85), with the own
 * pair. Before bind or connect. Returns PS_OK, or PS_ERR_ZMQ /
 * PS_ERR_INVAL (a bad server_key) with the reason in err. */
int ps_keys_apply(void *sock, const ps_keys_t *keys, const char *server_key,
                  char *err, size_t errlen);

/* The ZAP domain of the daemons' CURVE server sockets. */
#define PS_KEYS_ZAP_DOMAIN "ps"

/* The role and public key (Z85, into key if non-NULL, 41 bytes) of a
 * connection, from its ZAP User-Id (ps_msg_t.user_id); PS_KEY_ROLE_NONE on
 * a plaintext connection. */
ps_key_role_t ps_keys_peer(const char *user_id, char *key);

/* Hex of the first 8 bytes of a public key, given in Z85 or (z85 NULL) as
 * 32 bytes; out holds PS_KEY_FINGERPRINT_LEN + 1 bytes. */
void ps_keys_fingerprint(const char *z85, const uint8_t *raw, char *out);

/* The options every program has (scheduler, server, worker, psctl,
 * ps-bench), for its option table: --keys-dir, --key, --insecure. */
#define PS_KEYS_DIR_HELP                                                    \
  "Directory of the cluster's CURVE keys (psctl keygen): this program's "   \
  "key pair and the public keys (*.pub) of every node allowed, with their " \
  "roles. Every link is then encrypted and authenticated."
#define PS_MAX_CONNECTIONS_HELP                                              \
  "With CURVE keys: the most connections the daemon holds at once; a " \
  "handshake past it is refused like an unknown key (counted, logged " \
  "every 5 s as connections_refused) and its peer retries until one " \
  "closes. 0: no cap. Without keys there is no handshake to refuse."
#define PS_KEY_FILE_HELP \
  "This program's key pair. Default: KEYS_DIR/<role>.key."
#define PS_INSECURE_HELP                                                    \
  "Run without --keys-dir: every link in plaintext, anyone who reaches "    \
  "the socket admitted. Refused to start without one of the two. Ignored " \
  "when --keys-dir is given."

/* A program's keys from those options (call after ps_log_init): with
 * keys_dir, its pair (key_file, or keys_dir/<role>.key) and the table,
 * into *keys (the caller owns it); without, *keys = NULL, and plaintext
 * must have been asked for with insecure, or PS_ERR_CONFIG names both
 * options. A daemon that binds bind_ep (NULL: none) off loopback in
 * plaintext logs a loud warning. Returns PS_OK or the failure, with the
 * reason in err. */
int ps_keys_for_program(const char *keys_dir, const char *key_file,
                        int insecure, ps_key_role_t role, const char *bind_ep,
                        ps_keys_t **keys, char *err, size_t errlen);

/* Whether a tcp:// bind endpoint is on the loopback interface (127.x,
 * ::1, localhost) or not tcp at all (ipc, inproc): where plaintext is
 * tolerated without a loud warning. */
int ps_keys_endpoint_is_local(const char *ep);

#endif
