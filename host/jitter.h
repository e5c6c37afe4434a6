/*
 * jitter: +-25% on a delay, so that workers, partitions and hosts that
 * failed together do not retry in lockstep.
 *
 * The generator is seeded once per process from getrandom(2): two hosts
 * started together draw different jitter (an unseeded rand() would give
 * every host the same sequence).
 */
#ifndef KHOST_JITTER_H
#define KHOST_JITTER_H

#include <stdint.h>

/* delay * [0.75, 1.25], uniformly. */
int64_t kh_jitter(int64_t delay);

#endif
