/*
 * worker_proc: starting one worker process, the way production does it.
 *
 * The supervisor and `khost plugin-test` both start workers through this:
 * the same socketpair channel (fd 3), the same status page and message ring
 * memfd (fd 4), the same plugin output pipe (fd 5, plugin_output.h), the same
 * hardening options (hardening.h), exec of `khost worker` by
 * posix_spawn with a clean signal mask, and the same INIT frame. It owns
 * nothing after it returns: the caller owns the pid (and reaps it), the
 * channel fd, the output fd and the mapped page.
 */
#ifndef KHOST_WORKER_PROC_H
#define KHOST_WORKER_PROC_H

#include "config.h"
#include "transport.h"

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define KH_STATUS_PAGE 4096
/* The whole status memfd: the page, then the message ring. */
#define KH_STATUS_MAP (KH_RING_OFFSET + KH_RING_BYTES)
_Static_assert(KH_STATUS_PAGE == KH_RING_OFFSET, "the ring follows the page");
_Static_assert(sizeof(kh_worker_status) <= KH_STATUS_PAGE, "status page");

typedef struct kh_worker_proc {
    pid_t pid;
    int fd;     /* host end of the channel (CLOEXEC) */
    int out_fd; /* read end of the plugin's stdout and stderr (CLOEXEC,
                   nonblocking): for plugin_output_read */
    kh_worker_status *status; /* the shared page and ring, KH_STATUS_MAP
                                 bytes */
    uint8_t *ring;            /* KH_RING_BYTES after the page */
} kh_worker_proc;

/* Start worker `index` of pipeline cfg on plugin_path. Returns 0 with p
 * filled, or -1 with err[] set (and nothing left open); *permanent is
 * true when no retry can help (the hardening identity check: the ids do
 * not change). */
int worker_proc_spawn(const kh_pipeline *cfg, int index,
                      const char *plugin_path, kh_worker_proc *p,
                      bool *permanent, char *err, size_t len);
/* Append the INIT frame for that worker to b. */
void worker_proc_put_init(kh_buf *b, const kh_pipeline *cfg, int index,
                          const char *plugin_path);
/* Unmap a status page and its ring (NULL is fine). */
void worker_proc_unmap(kh_worker_status *s);
/* "exited with status 3", "killed by SIGSEGV (core dumped)". */
void worker_proc_describe_exit(const siginfo_t *si, char *buf, size_t len);

#endif
