/*
 * config_check: checks that need the whole file (required keys and
 * sections, identities, topics shared by pipelines), run once every
 * section has been seen.
 */
#define _GNU_SOURCE
#include "config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <librdkafka/rdkafka.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Whole-file checks, once every section has been seen */

/* user = without user_group = runs as the user's primary group. Switching
 * identity needs root; without it the pipeline will not start, which
 * check-config (maybe run by someone else than the service) only warns
 * about. */
static void check_identity(parser *p, kh_pipeline *pl, pipeline_state *ps) {
    if (pl->user && !pl->user_group)
        pl->run_as_gid = ps->user_gid;
    uid_t euid = geteuid();
    if (euid == 0)
        return;
    if (pl->user && (uid_t)pl->run_as_uid != euid)
        report_warning(
            p, pl->user_line,
            "user '%s' of [pipeline.%s] needs khost to run as root (this "
            "process runs as uid %u); such a pipeline does not start",
            pl->user, pl->name, (unsigned)euid);
    else if (pl->run_as_gid >= 0 && (gid_t)pl->run_as_gid != getegid())
        report_warning(
            p, pl->user_group ? pl->user_group_line : pl->user_line,
            "user_group of [pipeline.%s] (gid %ld) needs khost to run as "
            "root (this process runs as gid %u); such a pipeline does not "
            "start",
            pl->name, pl->run_as_gid, (unsigned)getegid());
}

void check_complete(parser *p) {
    kh_config *cfg = p->cfg;
    if (!p->brokers_line)
        report(p, p->host_line ? p->host_line : 1,
               "missing required key 'brokers' in [host]");
    /* Anyone who can reach a non-loopback address could read the
     * metrics and, later, call the admin endpoints: that needs a token. */
    if (cfg->http_listen && !cfg->http_loopback && !cfg->http_token)
        report(p, cfg->http_listen_line,
               "[http] listen = %s is not loopback: set [http] token = "
               "${VAR}",
               cfg->http_listen);

    size_t real = 0;
    for (size_t i = 0; i < cfg->n_pipelines; i++) {
        kh_pipeline *pl = &cfg->pipelines[i];
        pipeline_state *ps = &p->ps[i];
        if (!pl->line) {
            if (ps->config_line)
                report(p, ps->config_line,
                       "[pipeline.%s.config] has no matching [pipeline.%s] "
                       "section",
                       pl->name, pl->name);
            if (ps->kafka_line)
                report(p, ps->kafka_line,
                       "[pipeline.%s.kafka] has no matching [pipeline.%s] "
                       "section",
                       pl->name, pl->name);
            continue;
        }
        real++;
        for (int k = 0; k < PK_COUNT; k++)
            if (pipeline_keys[k].required && !ps->key_line[k])
                report(p, pl->line,
                       "[pipeline.%s] is missing required key '%s'", pl->name,
                       pipeline_keys[k].name);
        check_identity(p, pl, ps);
        if (pl->retry_backoff_max_ms < pl->retry_backoff_ms)
            report(p,
                   ps->key_line[PK_RETRY_BACKOFF_MAX_MS]
                       ? ps->key_line[PK_RETRY_BACKOFF_MAX_MS]
                       : ps->key_line[PK_RETRY_BACKOFF_MS],
                   "retry_backoff_max_ms (%d) of [pipeline.%s] is below "
                   "retry_backoff_ms (%d)",
                   pl->retry_backoff_max_ms, pl->name, pl->retry_backoff_ms);
        /* A dead-letter topic that is also consumed would feed failed
         * messages straight back into a handler. */
        for (size_t j = 0; j < cfg->n_pipelines; j++) {
            kh_pipeline *other = &cfg->pipelines[j];
            for (size_t t = 0; other->line && t < other->n_topics; t++) {
                const char *consumed = other->topics[t];
                if (pl->dlq_topic && !strcmp(pl->dlq_topic, consumed))
                    report(p, pl->dlq_topic_line,
                           "dlq_topic '%s' of [pipeline.%s] is consumed by "
                           "[pipeline.%s]; failed messages would loop back",
                           pl->dlq_topic, pl->name, other->name);
                for (size_t u = 0;
                     !pl->dlq_topic && pl->on_failure == KH_ON_FAILURE_DLQ &&
                     u < pl->n_topics;
                     u++) {
                    size_t n = strlen(pl->topics[u]);
                    if (!strncmp(consumed, pl->topics[u], n) &&
                        !strcmp(consumed + n, ".dlq"))
                        report(p, ps->key_line[PK_TOPICS],
                               "the default dead-letter topic '%s' of "
                               "[pipeline.%s] is consumed by [pipeline.%s]; "
                               "set dlq_topic",
                               consumed, pl->name, other->name);
                }
            }
        }
        /* Two pipelines in one group would rebalance each other's
         * partitions away; each pipeline is meant to be its own group. */
        for (size_t j = 0; j < i && pl->group; j++) {
            kh_pipeline *other = &cfg->pipelines[j];
            if (other->line && other->group &&
                strcmp(other->group, pl->group) == 0) {
                report(p, ps->key_line[PK_GROUP],
                       "group '%s' of [pipeline.%s] is already used by "
                       "[pipeline.%s] (line %d); each pipeline needs its "
                       "own consumer group",
                       pl->group, pl->name, other->name,
                       p->ps[j].key_line[PK_GROUP]);
                break;
            }
        }
    }
    if (!real)
        report(p, 1, "no [pipeline.NAME] section");
}
