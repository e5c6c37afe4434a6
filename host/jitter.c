/*
 * jitter: splitmix64 seeded from getrandom(2), for backoff jitter only
 * (nothing secret depends on it). The host is single-threaded where it
 * draws: the event loop.
 */
#define _GNU_SOURCE
#include "jitter.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static uint64_t state;

static uint64_t next(void) {
    if (!state) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != sizeof seed) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed =
                ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^
                ((uint64_t)getpid() << 32);
        }
        state = seed | 1;
    }
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int64_t kh_jitter(int64_t delay) {
    return delay * (int64_t)(75 + next() % 51) / 100;
}
