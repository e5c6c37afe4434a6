/*
 * admin: the host's control socket and its client.
 *
 * A running host listens on a unix socket (mode 0600, so only its user
 * can steer it). The path follows from the config file, so the client
 * needs only `-c FILE`: $RUNTIME_DIRECTORY/khost.sock under systemd, else
 * /tmp/khost-UID-HASH.sock, HASH being of the config file's real path.
 * One request per connection: a command line in, one reply line out.
 */
#ifndef KHOST_ADMIN_H
#define KHOST_ADMIN_H

#include <stddef.h>

typedef struct kh_host kh_host;

/* ---- in the host ---- */
/* The control socket (mode 0600) that `khost reload -c FILE` talks to. */
int admin_start(kh_host *host, char *err, size_t errlen);
void admin_stop(kh_host *host);
/* [host] watch = true: (re)arm inotify on the folders of the config file
 * and the plugins; a change schedules a reload after a quiet period. */
void admin_watch(kh_host *host);

/* ---- the client ---- */

/* malloc'd socket path for a config file, NULL if it does not exist. */
char *admin_socket_path(const char *config_path);

/* Send `command` ("reload", "status") to the host running config_path.
 * Returns 0 and the reply in `reply`, or -1 with a reason in `reply`. */
int admin_request(const char *config_path, const char *command, char *reply,
                  size_t len);

#endif
