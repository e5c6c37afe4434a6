/*
 * admin: the host's control socket and its client.
 *
 * A running host listens on a unix socket (mode 0600, so only its user
 * can steer it). Host and client find the path from the same list, best
 * first (admin_socket_paths): `--socket PATH`, `[host] control_socket`,
 * $RUNTIME_DIRECTORY/khost.sock (its first entry), /run/khost/khost.sock,
 * then /tmp/khost-UID-HASH.sock, HASH being of the config file's real
 * path. The host binds the first; the client uses the first that answers.
 * One request per connection: a command line in, one reply line out.
 */
#ifndef KHOST_ADMIN_H
#define KHOST_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kh_host kh_host;

/* ---- in the host ---- */
/* Bind the control socket (mode 0600) at the first path of the list and
 * log it with the reason. Refuses a path where a live host answers (the
 * path stays chosen: admin_check_socket tries it again). */
int admin_start(kh_host *host, char *err, size_t errlen);
/* On SIGHUP: when the path no longer names the socket we bound (deleted,
 * replaced), or we have none yet, bind it again and log it. */
void admin_check_socket(kh_host *host);
/* Ends every client still waiting for a reload's outcome on the socket.
 * Waiting clients are answered from admin_tick. */
void admin_stop(kh_host *host);
/* From the host's tick: answer the clients waiting for a reload's outcome
 * (once it settled, or their timeout passed). */
void admin_tick(kh_host *host, int64_t now_ms);

/* ---- the client ---- */

typedef struct kh_admin_paths {
    size_t n;
    char *path[5];      /* malloc'd, best first, no duplicates */
    const char *why[5]; /* "--socket", "control_socket", ... */
    int per_user_errno; /* config_path given but not resolvable */
} kh_admin_paths;

/* The list: explicit_path (why: explicit_why) when not NULL, then
 * $RUNTIME_DIRECTORY/khost.sock, /run/khost/khost.sock (for_host: only
 * when that folder exists and is writable; it is never created), for a
 * client given config_path /etc/khost/NAME.ini also
 * /run/khost/NAME/khost.sock (the template unit's), then the per-user path
 * of config_path when config_path is not NULL. */
void admin_socket_paths(kh_admin_paths *out, const char *explicit_path,
                        const char *explicit_why, const char *config_path,
                        bool for_host);
void admin_paths_free(kh_admin_paths *paths);

/* Send `command` (a line: "status", "reload SECONDS", "restart NAME
 * SECONDS", optionally " config=REALPATH") to the first path that answers
 * as the host of that config file, waiting up to wait_ms for the reply.
 * Returns 0 and the reply in `reply`, or -1 and "no khost answers (tried
 * PATH: REASON, ...)" in `reply`. */
int admin_request(const kh_admin_paths *paths, const char *command, char *reply,
                  size_t len, int wait_ms);

#endif
