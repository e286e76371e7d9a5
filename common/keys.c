#include "common/keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

typedef struct {
  ps_key_role_t role;
  char pub[PS_KEY_Z85_LEN + 1];
  uint8_t raw[32];
  char name[64];
} key_entry_t;

struct ps_keys_s {
  char *dir;
  char pub[PS_KEY_Z85_LEN + 1];
  char sec[PS_KEY_Z85_LEN + 1];
  ps_key_role_t role;
  key_entry_t *table;
  size_t n;
  const char *scheduler_key; /* into table, or own pub for the scheduler */
};

static const char *const role_names[] = {"none", "scheduler", "server",
                                         "worker", "admin"};

const char *ps_key_role_name(ps_key_role_t role) {
  if ((int)role < 0 || (size_t)role >= sizeof(role_names) / sizeof(*role_names))
    return "?";
  return role_names[role];
}

int ps_key_role_parse(const char *name, ps_key_role_t *role) {
  for (int r = PS_KEY_ROLE_SCHEDULER; r <= PS_KEY_ROLE_ADMIN; r++)
    if (name && strcmp(name, role_names[r]) == 0) {
      *role = (ps_key_role_t)r;
      return PS_OK;
    }
  return PS_ERR_INVAL;
}

void ps_keys_fingerprint(const char *z85, const uint8_t *raw, char *out) {
  uint8_t buf[32];
  if (z85) {
    if (strlen(z85) != PS_KEY_Z85_LEN || zmq_z85_decode(buf, z85) == NULL) {
      snprintf(out, PS_KEY_FINGERPRINT_LEN + 1, "?");
      return;
    }
    raw = buf;
  }
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < PS_KEY_FINGERPRINT_LEN / 2; i++) {
    out[2 * i] = digits[raw[i] >> 4];
    out[2 * i + 1] = digits[raw[i] & 15];
  }
  out[PS_KEY_FINGERPRINT_LEN] = '\0';
}

/* ---- files ---- */

typedef struct {
  char role[16];
  char pub[PS_KEY_Z85_LEN + 2];
  char sec[PS_KEY_Z85_LEN + 2];
  char bad[128]; /* the first unknown name, if any */
} key_file_t;

static int key_ini_cb(void *user, const char *section, const char *name,
                      const char *value) {
  key_file_t *f = user;
  (void)section;
  if (strcmp(name, "role") == 0)
    snprintf(f->role, sizeof(f->role), "%s", value);
  else if (strcmp(name, "public") == 0)
    snprintf(f->pub, sizeof(f->pub), "%s", value);
  else if (strcmp(name, "secret") == 0)
    snprintf(f->sec, sizeof(f->sec), "%s", value);
  else if (f->bad[0] == '\0')
    snprintf(f->bad, sizeof(f->bad), "%s", name);
  return 1;
}

static int z85_ok(const char *z, uint8_t *raw) {
  uint8_t buf[32];
  return strlen(z) == PS_KEY_Z85_LEN &&
         zmq_z85_decode(raw ? raw : buf, z) != NULL;
}

/* Reads path into f; want_secret: a .key, which must be private to its
 * owner. */
static int read_key_file(const char *path, int want_secret, key_file_t *f,
                         ps_key_role_t *role, char *err, size_t errlen) {
  memset(f, 0, sizeof(*f));
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return ps_errf(err, errlen, PS_ERR_IO, "key file %s: %s", path,
                   strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return ps_errf(err, errlen, PS_ERR_IO, "key file %s: not a regular file",
                   path);
  }
  if (want_secret && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    close(fd);
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s holds a secret key and has mode %04o: group "
                   "or others may read it; chmod 600 %s",
                   path, (unsigned)(st.st_mode & 07777), path);
  }
  FILE *fp = fdopen(fd, "r");
  if (fp == NULL) {
    close(fd);
    return ps_errf(err, errlen, PS_ERR_IO, "key file %s: %s", path,
                   strerror(errno));
  }
  int line = ini_parse_file(fp, key_ini_cb, f);
  fclose(fp);
  if (line != 0)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: cannot parse line %d", path, line);
  if (f->bad[0])
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: unknown key \"%s\" (role, public, secret)",
                   path, f->bad);
  if (ps_key_role_parse(f->role, role) != PS_OK)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: role \"%s\" is not scheduler, server, worker "
                   "or admin",
                   path, f->role);
  if (!z85_ok(f->pub, NULL))
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: public is not a Z85 key of %d characters",
                   path, PS_KEY_Z85_LEN);
  if (!want_secret) return PS_OK;
  char derived[PS_KEY_Z85_LEN + 1];
  if (!z85_ok(f->sec, NULL) || zmq_curve_public(derived, f->sec) != 0)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: secret is not a Z85 key of %d characters",
                   path, PS_KEY_Z85_LEN);
  if (strcmp(derived, f->pub) != 0)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "key file %s: public is not the public key of secret",
                   path);
  return PS_OK;
}

static int name_ok(const char *name) {
  if (name == NULL || name[0] == '\0' || name[0] == '.' || strlen(name) > 60)
    return 0;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
      return 0;
  return 1;
}

static int write_new_file(const char *path, mode_t mode, const char *text,
                          char *err, size_t errlen) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0)
    return ps_errf(err, errlen, PS_ERR_IO, "cannot create %s: %s", path,
                   strerror(errno));
  size_t len = strlen(text), off = 0;
  int rc = PS_OK;
  /* The umask may have taken bits away, never added: set exactly. */
  if (fchmod(fd, mode) != 0)
    rc = ps_errf(err, errlen, PS_ERR_IO, "chmod %s: %s", path,
                 strerror(errno));
  while (rc == PS_OK && off < len) {
    ssize_t w = write(fd, text + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0)
      rc = ps_errf(err, errlen, PS_ERR_IO, "write %s: %s", path,
                   strerror(errno));
    else
      off += (size_t)w;
  }
  if (rc == PS_OK && fsync(fd) != 0)
    rc = ps_errf(err, errlen, PS_ERR_IO, "fsync %s: %s", path,
                 strerror(errno));
  if (close(fd) != 0 && rc == PS_OK)
    rc = ps_errf(err, errlen, PS_ERR_IO, "close %s: %s", path,
                 strerror(errno));
  if (rc != PS_OK) unlink(path);
  return rc;
}

int ps_keys_generate(const char *dir, const char *name, ps_key_role_t role,
                     char *err, size_t errlen) {
  if (!zmq_has("curve"))
    return ps_errf(err, errlen, PS_ERR_UNSUPPORTED,
                   "this libzmq was built without CURVE");
  if (!name_ok(name))
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "key name \"%s\": letters, digits, '-', '_' and '.' only, "
                   "not starting with '.', at most 60",
                   name ? name : "");
  if (role == PS_KEY_ROLE_NONE || role > PS_KEY_ROLE_ADMIN)
    return ps_errf(err, errlen, PS_ERR_INVAL, "no role");
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return ps_errf(err, errlen, PS_ERR_IO, "cannot create directory %s: %s",
                   dir, strerror(errno));
  char keyp[4096], pubp[4096];
  snprintf(keyp, sizeof(keyp), "%s/%s.key", dir, name);
  snprintf(pubp, sizeof(pubp), "%s/%s.pub", dir, name);
  if (access(keyp, F_OK) == 0 || access(pubp, F_OK) == 0)
    return ps_errf(err, errlen, PS_ERR_IO,
                   "%s/%s.key or .pub exists already: a key is never "
                   "overwritten (remove it first, or choose another --name)",
                   dir, name);
  char pub[PS_KEY_Z85_LEN + 1], sec[PS_KEY_Z85_LEN + 1];
  if (zmq_curve_keypair(pub, sec) != 0)
    return ps_errf(err, errlen, PS_ERR_ZMQ, "zmq_curve_keypair: %s",
                   zmq_strerror(zmq_errno()));
  char text[512];
  snprintf(text, sizeof(text),
           "# ps CURVE key pair \"%s\": keep it secret (mode 0600).\n"
           "[key]\nrole = %s\npublic = %s\nsecret = %s\n",
           name, ps_key_role_name(role), pub, sec);
  int rc = write_new_file(keyp, 0600, text, err, errlen);
  if (rc != PS_OK) return rc;
  snprintf(text, sizeof(text),
           "# ps CURVE public key \"%s\": copy it into the keys directory "
           "of every node it talks to.\n[key]\nrole = %s\npublic = %s\n",
           name, ps_key_role_name(role), pub);
  rc = write_new_file(pubp, 0644, text, err, errlen);
  if (rc != PS_OK) unlink(keyp);
  return rc;
}

/* ---- the table ---- */

void ps_keys_destroy(ps_keys_t **keys_p) {
  ps_keys_t *k = *keys_p;
  if (k == NULL) return;
  *keys_p = NULL;
  free(k->dir);
  free(k->table);
  /* The secret does not linger in freed memory. */
  explicit_bzero(k, sizeof(*k));
  free(k);
}

static int has_suffix(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n > m && strcmp(s + n - m, suffix) == 0;
}

static int load_table(ps_keys_t *k, char *err, size_t errlen) {
  DIR *d = opendir(k->dir);
  if (d == NULL)
    return ps_errf(err, errlen, PS_ERR_IO, "keys directory %s: %s", k->dir,
                   strerror(errno));
  size_t cap = 0;
  int rc = PS_OK;
  struct dirent *e;
  while (rc == PS_OK && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || !has_suffix(e->d_name, ".pub")) continue;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", k->dir, e->d_name);
    key_file_t f;
    ps_key_role_t role;
    rc = read_key_file(path, 0, &f, &role, err, errlen);
    if (rc != PS_OK) break;
    if (k->n == cap) {
      cap = cap ? cap * 2 : 8;
      key_entry_t *t = realloc(k->table, cap * sizeof(*t));
      if (t == NULL) {
        rc = ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
        break;
      }
      k->table = t;
    }
    key_entry_t *ke = &k->table[k->n];
    ke->role = role;
    memcpy(ke->pub, f.pub, sizeof(ke->pub)); /* checked: 40 + NUL */
    zmq_z85_decode(ke->raw, ke->pub);
    size_t nl = strlen(e->d_name) - 4;
    if (nl >= sizeof(ke->name)) nl = sizeof(ke->name) - 1;
    memcpy(ke->name, e->d_name, nl);
    ke->name[nl] = '\0';
    for (size_t i = 0; i < k->n; i++)
      if (memcmp(k->table[i].raw, ke->raw, 32) == 0) {
        rc = ps_errf(err, errlen, PS_ERR_CONFIG,
                     "keys directory %s: %s.pub and %s.pub hold the same "
                     "public key",
                     k->dir, k->table[i].name, ke->name);
        break;
      }
    k->n++;
  }
  closedir(d);
  return rc;
}

ps_keys_t *ps_keys_load(const char *dir, const char *key_file,
                        ps_key_role_t own_role, int *err, char *errbuf,
                        size_t errlen) {
  int dummy;
  if (err == NULL) err = &dummy;
  if (!zmq_has("curve")) {
    *err = ps_errf(errbuf, errlen, PS_ERR_UNSUPPORTED,
                   "this libzmq was built without CURVE");
    return NULL;
  }
  ps_keys_t *k = calloc(1, sizeof(*k));
  if (k == NULL || (k->dir = strdup(dir)) == NULL) {
    free(k);
    *err = ps_errf(errbuf, errlen, PS_ERR_NOMEM, "out of memory");
    return NULL;
  }
  char path[4096];
  if (key_file && key_file[0])
    snprintf(path, sizeof(path), "%s", key_file);
  else
    snprintf(path, sizeof(path), "%s/%s.key", dir, ps_key_role_name(own_role));
  key_file_t f;
  ps_key_role_t role;
  *err = read_key_file(path, 1, &f, &role, errbuf, errlen);
  if (*err == PS_OK && role != own_role)
    *err = ps_errf(errbuf, errlen, PS_ERR_CONFIG,
                   "key file %s holds a %s key; this program needs a %s key",
                   path, ps_key_role_name(role), ps_key_role_name(own_role));
  if (*err == PS_OK) {
    /* Both checked to be PS_KEY_Z85_LEN long. */
    memcpy(k->pub, f.pub, sizeof(k->pub));
    memcpy(k->sec, f.sec, sizeof(k->sec));
    k->role = role;
    *err = load_table(k, errbuf, errlen);
  }
  explicit_bzero(&f, sizeof(f));
  size_t nsched = 0;
  for (size_t i = 0; *err == PS_OK && i < k->n; i++)
    if (k->table[i].role == PS_KEY_ROLE_SCHEDULER) {
      nsched++;
      k->scheduler_key = k->table[i].pub;
    }
  if (*err == PS_OK && own_role == PS_KEY_ROLE_SCHEDULER) {
    k->scheduler_key = k->pub;
  } else if (*err == PS_OK && nsched != 1) {
    *err = ps_errf(errbuf, errlen, PS_ERR_CONFIG,
                   "keys directory %s holds %zu scheduler keys (.pub with "
                   "role = scheduler); clients need exactly one",
                   dir, nsched);
  }
  if (*err != PS_OK) {
    ps_keys_destroy(&k);
    return NULL;
  }
  return k;
}

const char *ps_keys_public(const ps_keys_t *keys) {
  return keys->pub;
}

ps_key_role_t ps_keys_role(const ps_keys_t *keys) {
  return keys->role;
}

const char *ps_keys_scheduler_key(const ps_keys_t *keys) {
  return keys->scheduler_key;
}

const char *ps_keys_dir(const ps_keys_t *keys) {
  return keys->dir;
}

size_t ps_keys_count(const ps_keys_t *keys) {
  return keys->n;
}

ps_key_role_t ps_keys_lookup(const ps_keys_t *keys, const uint8_t key[32],
                             const char **name) {
  for (size_t i = 0; i < keys->n; i++)
    if (memcmp(keys->table[i].raw, key, 32) == 0) {
      if (name) *name = keys->table[i].name;
      return keys->table[i].role;
    }
  return PS_KEY_ROLE_NONE;
}

static int set_opt(void *sock, int option, const char *what, const void *v,
                   size_t len, char *err, size_t errlen) {
  if (zmq_setsockopt(sock, option, v, len) == 0) return PS_OK;
  return ps_errf(err, errlen, PS_ERR_ZMQ, "zmq_setsockopt(%s): %s", what,
                 zmq_strerror(zmq_errno()));
}

int ps_keys_apply(void *sock, const ps_keys_t *keys, const char *server_key,
                  char *err, size_t errlen) {
  int rc;
  if (server_key == NULL) {
    int one = 1;
    if ((rc = set_opt(sock, ZMQ_CURVE_SERVER, "ZMQ_CURVE_SERVER", &one,
                      sizeof(one), err, errlen)) != PS_OK ||
        (rc = set_opt(sock, ZMQ_ZAP_DOMAIN, "ZMQ_ZAP_DOMAIN",
                      PS_KEYS_ZAP_DOMAIN, strlen(PS_KEYS_ZAP_DOMAIN), err,
                      errlen)) != PS_OK)
      return rc;
    return set_opt(sock, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", keys->sec,
                   PS_KEY_Z85_LEN, err, errlen);
  }
  if (!z85_ok(server_key, NULL))
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "the peer's public key \"%.48s\" is not a Z85 key of %d "
                   "characters",
                   server_key, PS_KEY_Z85_LEN);
  /* A peer that refuses our key ends the handshake with an ERROR, and
   * libzmq 4.3 then drops the connection's pipe: a blocking send on the
   * DEALER, which has no other, would wait forever (a worker with a
   * stranger's key hung at exit). With a send timeout of 0 the send fails
   * with EAGAIN instead; with a pipe it never blocks (no high-water mark,
   * ps_zsock_configure). */
  int zero = 0;
  if ((rc = set_opt(sock, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", &zero, sizeof(zero),
                    err, errlen)) != PS_OK ||
      (rc = set_opt(sock, ZMQ_CURVE_SERVERKEY, "ZMQ_CURVE_SERVERKEY",
                    server_key, PS_KEY_Z85_LEN, err, errlen)) != PS_OK ||
      (rc = set_opt(sock, ZMQ_CURVE_PUBLICKEY, "ZMQ_CURVE_PUBLICKEY", keys->pub,
                    PS_KEY_Z85_LEN, err, errlen)) != PS_OK)
    return rc;
  return set_opt(sock, ZMQ_CURVE_SECRETKEY, "ZMQ_CURVE_SECRETKEY", keys->sec,
                 PS_KEY_Z85_LEN, err, errlen);
}

ps_key_role_t ps_keys_peer(const char *uid, char *key) {
  if (key) key[0] = '\0';
  if (uid == NULL || uid[0] == '\0') return PS_KEY_ROLE_NONE;
  const char *sp = strchr(uid, ' ');
  if (sp == NULL || strlen(sp + 1) != PS_KEY_Z85_LEN) return PS_KEY_ROLE_NONE;
  char role_name[16];
  size_t n = (size_t)(sp - uid);
  if (n >= sizeof(role_name)) return PS_KEY_ROLE_NONE;
  memcpy(role_name, uid, n);
  role_name[n] = '\0';
  ps_key_role_t role;
  if (ps_key_role_parse(role_name, &role) != PS_OK) return PS_KEY_ROLE_NONE;
  if (key) snprintf(key, PS_KEY_Z85_LEN + 1, "%s", sp + 1);
  return role;
}

int ps_keys_for_program(const char *keys_dir, const char *key_file,
                        int insecure, ps_key_role_t role, const char *bind_ep,
                        ps_keys_t **keys, char *err, size_t errlen) {
  *keys = NULL;
  if (keys_dir && keys_dir[0]) {
    int rc = PS_OK;
    *keys = ps_keys_load(keys_dir, key_file, role, &rc, err, errlen);
    if (*keys == NULL) return rc;
    char fp[PS_KEY_FINGERPRINT_LEN + 1];
    ps_keys_fingerprint(ps_keys_public(*keys), NULL, fp);
    /* psctl's output is its answer: its line only at debug. */
    PS_LOG(role == PS_KEY_ROLE_ADMIN ? PS_LOG_DEBUG : PS_LOG_INFO, "curve_on",
           "keys_dir=%s role=%s fingerprint=%s keys_allowed=%zu", keys_dir,
           ps_key_role_name(role), fp, ps_keys_count(*keys));
    return PS_OK;
  }
  if (key_file && key_file[0])
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "option --key needs --keys-dir (the public keys of the "
                   "peers)");
  if (!insecure)
    return ps_errf(err, errlen, PS_ERR_CONFIG,
                   "no --keys-dir (PS_KEYS_DIR): give the cluster's CURVE "
                   "keys (psctl keygen), or --insecure (PS_INSECURE=true) to "
                   "run in plaintext");
  if (bind_ep && !ps_keys_endpoint_is_local(bind_ep))
    PS_WARN("insecure",
            "bind=%s reason=\"INSECURE: listening off loopback without "
            "CURVE keys: traffic is plaintext and anyone who reaches this "
            "address may join, push, or stop the job; give --keys-dir\"",
            bind_ep);
  else
    PS_DEBUG("insecure", "reason=\"plaintext (--insecure)\"");
  return PS_OK;
}

int ps_keys_endpoint_is_local(const char *ep) {
  if (ep == NULL || strncmp(ep, "tcp://", 6) != 0) return 1;
  const char *h = ep + 6;
  return strncmp(h, "127.", 4) == 0 || strncmp(h, "[::1]", 5) == 0 ||
         strncmp(h, "localhost:", 10) == 0;
}
