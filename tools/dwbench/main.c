/* dwbench: WebSocket load generator for DynamoWave (and anything that speaks
 * the AWS chat sample's plain protocol). Prints one JSON result line. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "dw/config.h"
#include "dw/log.h"
#include "dw/util.h"

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(bench_config, field), def, min, max, help                             \
    }

static const dw_cfg_field fields[] = {
    F("URL", DW_CFG_STR, url, "ws://127.0.0.1:8080/", 0, 0,
      "server to load; repeat the flag (or separate with commas) to spread connections "
      "round-robin over several edges; loopback only"),
    F("CONNECTIONS", DW_CFG_INT, connections, "1000", 1, 1000000, "connections to open"),
    F("SENDERS", DW_CFG_INT, senders, "10", 0, 1000000,
      "connections that also send (every connection receives)"),
    F("RATE", DW_CFG_INT, rate, "0", 0, 100000000,
      "aggregate messages/s over all senders; 0 = as fast as the server keeps up, "
      "bounded by --window"),
    F("WINDOW", DW_CFG_INT, window, "32", 1, 1000000,
      "with --rate 0: messages a sender may have sent and not yet received back"),
    F("DURATION", DW_CFG_INT, duration, "5", 0, 86400,
      "seconds of sending (with --idle: of holding the connections)"),
    F("DRAIN", DW_CFG_INT, drain, "5", 0, 3600,
      "at most this many seconds to wait for deliveries after sending stops"),
    F("CONNECT_RATE", DW_CFG_INT, connect_rate, "0", 0, 10000000,
      "new connections per second; 0 = as fast as possible"),
    F("CONNECT_INFLIGHT", DW_CFG_INT, connect_inflight, "512", 1, 1000000,
      "handshakes in progress at once (keeps the listen backlog from overflowing)"),
    F("CONNECT_TIMEOUT", DW_CFG_INT, connect_timeout, "30", 1, 3600,
      "seconds allowed for connecting and for every connection to become ready"),
    F("SOURCE_IPS", DW_CFG_INT, source_ips, "1", 1, 254,
      "spread connections over source addresses 127.0.0.1..127.0.0.N (each has ~28k ports)"),
    F("SIZE", DW_CFG_INT, size, "0", 0, 256 * 1024,
      "pad each message's data to this many bytes (0 = no padding, ~45 bytes)"),
    F("CHURN", DW_CFG_INT, churn, "0", 0, 1000000,
      "while sending (or holding), also open this many extra connections per second and "
      "close each after --churn-hold-ms (they are not receivers)"),
    F("CHURN_HOLD_MS", DW_CFG_INT, churn_hold_ms, "1000", 0, 3600000,
      "how long each churn connection stays open before it sends its close frame"),
    F("ROOMS", DW_CFG_INT, rooms, "0", 0, 100000,
      "0: the plain (AWS) protocol, everyone in one room; N: the dynamowave.v1 subprotocol, "
      "connection i joins room r<i mod N> (ready once joined) and each sender sends to its "
      "own room"),
    F("PID", DW_CFG_STR, pid, "", 0, 0,
      "NAME=PID of a process whose RSS and CPU time to report; repeatable or comma-separated"),
    F("METRICS", DW_CFG_STR, metrics, "", 0, 0,
      "http://127.0.0.1:PORT/metrics of a service (an edge's port, the dispatcher's status "
      "port); repeatable or comma-separated: the result gets each stage's count, mean, p50 and "
      "p99 over the measured part of the run, from the services' own stage histograms"),
    F("IDLE", DW_CFG_BOOL, idle, "0", 0, 0,
      "only connect and hold the connections for --duration (connections scenario)"),
    F("SYNC", DW_CFG_BOOL, sync, "1", 0, 0,
      "before measuring, broadcast probes until every connection has received one "
      "(proves each is registered with the server)"),
    F("SCENARIO", DW_CFG_STR, scenario, "", 0, 0,
      "name written into the result (default: fanout, rate or idle)"),
    F("JSON_OUT", DW_CFG_STR, json_out, "", 0, 0, "also append the result line to this file"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static const char summary[] =
    "dwbench: open --connections WebSocket connections, have --senders of them send "
    "{\"action\":\"sendmessage\",\"data\":...} and check that every connection receives "
    "every message exactly once. Prints one JSON line: deliveries/s, lost, duplicates, "
    "latency percentiles, connect rate and the RSS/CPU of the --pid processes.\n"
    "Runs for at most connect-timeout + duration + drain seconds.";

/* Values of a repeatable flag (--name v or --name=v), in order. */
static int collect_flag(int argc, char **argv, const char *flag, char ***out, size_t *n)
{
    size_t fl = strlen(flag);
    for (int a = 1; a < argc; a++) {
        const char *v = NULL;
        if (!strncmp(argv[a], flag, fl) && argv[a][fl] == '=')
            v = argv[a] + fl + 1;
        else if (!strcmp(argv[a], flag) && a + 1 < argc)
            v = argv[++a];
        if (!v) continue;
        char **p = realloc(*out, (*n + 1) * sizeof *p);
        if (!p) return -1;
        *out = p;
        (*out)[(*n)++] = strdup(v);
    }
    return 0;
}

/* Split comma-separated text into list (appending). */
static int split_commas(const char *s, char ***out, size_t *n)
{
    while (s && *s) {
        size_t l = strcspn(s, ",");
        if (l) {
            char **p = realloc(*out, (*n + 1) * sizeof *p);
            if (!p) return -1;
            *out = p;
            (*out)[(*n)++] = strndup(s, l);
        }
        s += l + (s[l] == ',');
    }
    return 0;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

/* The final list of a repeatable option: every --flag value, or else the
 * environment's or default value; each may hold several items separated by
 * commas. */
static int gather(int argc, char **argv, const char *flag, const char *field, char ***out,
                  size_t *n)
{
    char **raw = NULL;
    size_t nraw = 0;
    int rc = collect_flag(argc, argv, flag, &raw, &nraw);
    if (!rc && !nraw) rc = split_commas(field, out, n);
    for (size_t i = 0; !rc && i < nraw; i++)
        rc = split_commas(raw[i], out, n);
    free_list(raw, nraw);
    return rc;
}

static json_t *jreal(double v, double scale)
{
    return json_real(round(v * scale) / scale);
}

static json_t *proc_json(const procstat *s, const procstat *start, const procstat *send)
{
    json_t *o = json_object();
    if (!s->ok) {
        json_object_set_new(o, "error", json_string("not readable at the end"));
        return o;
    }
    json_object_set_new(o, "rss_kb", json_integer(s->rss_kb));
    json_object_set_new(o, "cpu_s", jreal(s->cpu_s, 100));
    if (start && start->ok) {
        json_object_set_new(o, "rss_start_kb", json_integer(start->rss_kb));
        json_object_set_new(o, "cpu_run_s", jreal(s->cpu_s - start->cpu_s, 100));
    }
    if (send && send->ok)
        json_object_set_new(o, "cpu_measured_s", jreal(s->cpu_s - send->cpu_s, 100));
    return o;
}

static json_t *report(const bench *b)
{
    const bench_config *cfg = b->cfg;
    json_t *o = json_object();
    const char *scen = cfg->scenario[0] ? cfg->scenario
                       : cfg->idle      ? "idle"
                       : cfg->rate      ? "rate"
                                        : "fanout";
    uint64_t expected = bench_expected(b);
    uint64_t lost = expected > b->delivered ? expected - b->delivered : 0;
    /* Rates over the measured interval: from the first send to the last
     * delivery (or the end of the send phase if nothing arrived). */
    int64_t t_last = b->t_last_delivery > b->t_send_end ? b->t_last_delivery : b->t_send_end;
    if (t_last > b->t_end) t_last = b->t_end;
    double elapsed = b->t_send0 ? (double)(t_last - b->t_send0) / 1e9 : 0;
    double connect_s = (double)(b->t_connected - b->t_start) / 1e9;
    double ready_s = b->t_ready ? (double)(b->t_ready - b->t_start) / 1e9 : 0;
    const bench_errors *e = &b->err;
    uint64_t errors = e->connect + e->handshake + e->closed + e->protocol + e->not_ready +
                      e->bogus + e->other_frames + e->oom + b->churn_close_timeouts;

    json_object_set_new(o, "scenario", json_string(scen));
    json_object_set_new(o, "connections", json_integer((json_int_t)b->nconns));
    json_object_set_new(o, "opened", json_integer(b->nopened));
    json_object_set_new(o, "receivers", json_integer(b->nreceivers));
    json_object_set_new(o, "senders", json_integer(b->nsenders));
    json_object_set_new(o, "edges", json_integer(b->nurls));
    json_object_set_new(o, "rooms", json_integer(cfg->rooms));
    json_object_set_new(o, "rate", json_integer(cfg->rate));
    json_object_set_new(o, "window", json_integer(cfg->rate || cfg->idle ? 0 : cfg->window));
    json_object_set_new(o, "duration_s", json_integer(cfg->duration));
    json_object_set_new(o, "sent", json_integer((json_int_t)b->sent));
    json_object_set_new(o, "expected", json_integer((json_int_t)expected));
    json_object_set_new(o, "delivered", json_integer((json_int_t)b->delivered));
    json_object_set_new(o, "lost", json_integer((json_int_t)lost));
    json_object_set_new(o, "dup", json_integer((json_int_t)b->dup));
    json_object_set_new(
        o, "deliveries_per_s",
        json_integer(elapsed > 0 ? (json_int_t)((double)b->delivered / elapsed) : 0));
    json_object_set_new(o, "msgs_per_s",
                        json_integer(elapsed > 0 ? (json_int_t)((double)b->sent / elapsed) : 0));
    json_object_set_new(o, "elapsed_s", jreal(elapsed, 1000));

    json_t *lat = json_object();
    json_object_set_new(lat, "p50", jreal((double)hist_quantile(&b->hist, 0.50) / 1e6, 1000));
    json_object_set_new(lat, "p90", jreal((double)hist_quantile(&b->hist, 0.90) / 1e6, 1000));
    json_object_set_new(lat, "p99", jreal((double)hist_quantile(&b->hist, 0.99) / 1e6, 1000));
    json_object_set_new(lat, "p999", jreal((double)hist_quantile(&b->hist, 0.999) / 1e6, 1000));
    json_object_set_new(lat, "max", jreal((double)b->hist.max / 1e6, 1000));
    json_object_set_new(o, "latency_ms", lat);

    json_object_set_new(o, "connect_s", jreal(connect_s, 1000));
    json_object_set_new(o, "connect_per_s",
                        json_integer(connect_s > 0 ? (json_int_t)(b->nopened / connect_s) : 0));
    json_object_set_new(o, "ready_s", jreal(ready_s, 1000));
    json_object_set_new(o, "ready_per_s",
                        json_integer(ready_s > 0 ? (json_int_t)(b->nreceivers / ready_s) : 0));

    json_object_set_new(o, "errors", json_integer((json_int_t)errors));
    json_t *ed = json_object();
    json_object_set_new(ed, "connect", json_integer((json_int_t)e->connect));
    json_object_set_new(ed, "handshake", json_integer((json_int_t)e->handshake));
    json_object_set_new(ed, "closed", json_integer((json_int_t)e->closed));
    json_object_set_new(ed, "protocol", json_integer((json_int_t)e->protocol));
    json_object_set_new(ed, "not_ready", json_integer((json_int_t)e->not_ready));
    json_object_set_new(ed, "bogus", json_integer((json_int_t)e->bogus));
    json_object_set_new(ed, "other_frames", json_integer((json_int_t)e->other_frames));
    json_object_set_new(ed, "oom", json_integer((json_int_t)e->oom));
    json_object_set_new(ed, "churn_close_timeout",
                        json_integer((json_int_t)b->churn_close_timeouts));
    json_object_set_new(o, "error_detail", ed);
    json_object_set_new(o, "foreign", json_integer((json_int_t)b->foreign));
    json_object_set_new(o, "send_blocked", json_integer((json_int_t)b->send_blocked));
    if (b->interrupted) json_object_set_new(o, "interrupted", json_true());
    if (cfg->churn) {
        double cs = b->t_churn0 ? (double)(b->t_end - b->t_churn0) / 1e9 : 0;
        json_t *ch = json_object();
        json_object_set_new(ch, "rate", json_integer(cfg->churn));
        json_object_set_new(ch, "hold_ms", json_integer(cfg->churn_hold_ms));
        json_object_set_new(ch, "started", json_integer((json_int_t)b->churn_started));
        json_object_set_new(ch, "opened", json_integer((json_int_t)b->churn_opened));
        json_object_set_new(ch, "closed", json_integer((json_int_t)b->churn_closed));
        json_object_set_new(ch, "opened_per_s",
                            json_integer(cs > 0 ? (json_int_t)((double)b->churn_opened / cs) : 0));
        json_object_set_new(ch, "starved", json_integer((json_int_t)b->churn_starved));
        json_object_set_new(o, "churn", ch);
    }

    json_t *procs = json_object();
    for (uint32_t i = 0; i < b->nprocs; i++) {
        const bench_proc *p = &b->procs[i];
        json_object_set_new(procs, p->name, proc_json(&p->end, &p->start, &p->send));
    }
    json_object_set_new(o, "procs", procs);
    json_object_set_new(o, "self", proc_json(&b->self.end, &b->self.start, &b->self.send));
    if (b->nmetrics && b->stages_send && b->stages_end) {
        json_object_set_new(o, "stages", stages_json(b->stages_send, b->stages_end));
        if (b->stages_send->errors || b->stages_end->errors)
            json_object_set_new(o, "stages_unreadable",
                                json_integer(b->stages_send->errors + b->stages_end->errors));
    }
    return o;
}

int main(int argc, char **argv)
{
    bench_config cfg;
    memset(&cfg, 0, sizeof cfg);
    char **urls = NULL, **pids = NULL, **murls = NULL;
    size_t nurls = 0, npids = 0, nmurls = 0;
    bench *b = NULL;
    int ret = 2;

    int rc = dw_config_load(&cfg, fields, NFIELDS, argc, argv, "dwbench", summary);
    if (rc) {
        ret = rc > 0 ? 0 : 2;
        goto out;
    }
    dw_log_init("dwbench", cfg.log_level);
    if (gather(argc, argv, "--url", cfg.url, &urls, &nurls) ||
        gather(argc, argv, "--pid", cfg.pid, &pids, &npids) ||
        gather(argc, argv, "--metrics", cfg.metrics, &murls, &nmurls))
        goto out;
    if (!nurls) {
        fprintf(stderr, "dwbench: no --url\n");
        goto out;
    }

    b = calloc(1, sizeof *b);
    if (!b) goto out;
    b->cfg = &cfg;
    b->ep = -1;
    b->urls = calloc(nurls, sizeof *b->urls);
    b->procs = calloc(npids ? npids : 1, sizeof *b->procs);
    if (!b->urls || !b->procs) goto out;
    for (size_t i = 0; i < nurls; i++) {
        char err[300];
        if (url_parse(urls[i], &b->urls[i], err, sizeof err)) {
            fprintf(stderr, "dwbench: --url %s\n", err);
            goto out;
        }
        if (cfg.source_ips > 1 && b->urls[i].family != AF_INET) {
            fprintf(stderr, "dwbench: --source-ips needs IPv4 URLs\n");
            goto out;
        }
    }
    b->nurls = (uint32_t)nurls;
    for (size_t i = 0; i < npids; i++) {
        const char *eq = strchr(pids[i], '=');
        char *end = NULL;
        long pid = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || eq == pids[i] || (size_t)(eq - pids[i]) >= sizeof b->procs[i].name || pid <= 0 ||
            *end) {
            fprintf(stderr, "dwbench: --pid wants NAME=PID, not '%s'\n", pids[i]);
            goto out;
        }
        memcpy(b->procs[i].name, pids[i], (size_t)(eq - pids[i]));
        b->procs[i].pid = (int)pid;
    }
    b->nprocs = (uint32_t)npids;
    b->metrics_urls = murls;
    b->nmetrics = nmurls;
    if (nmurls && (!(b->stages_send = calloc(1, sizeof *b->stages_send)) ||
                   !(b->stages_end = calloc(1, sizeof *b->stages_end))))
        goto out;
    if (!cfg.idle && cfg.senders == 0) {
        fprintf(stderr, "dwbench: --senders 0 only makes sense with --idle\n");
        goto out;
    }

    long nofile = dw_raise_nofile();
    int64_t churn_fds = cfg.churn * (cfg.churn_hold_ms / 1000 + 3);
    if (nofile > 0 && cfg.connections + churn_fds + 64 > nofile)
        DW_WARN("connections exceed the open file limit", "connections=%lld nofile=%ld",
                (long long)cfg.connections, nofile);
    dw_signals_install(NULL, NULL);

    if (bench_run(b)) {
        ret = 1;
        goto out;
    }
    json_t *res = report(b);
    char *line = json_dumps(res, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(res);
    if (!line) goto out;
    printf("%s\n", line);
    fflush(stdout);
    if (cfg.json_out[0]) {
        FILE *f = fopen(cfg.json_out, "a");
        if (!f || fprintf(f, "%s\n", line) < 0 || fclose(f)) {
            fprintf(stderr, "dwbench: cannot append to %s: %s\n", cfg.json_out, strerror(errno));
            free(line);
            ret = 1;
            goto out;
        }
    }
    free(line);
    /* 0 only for a clean run: every expected delivery exactly once and no
     * errors; 3 when the run finished but was not clean. */
    ret = b->interrupted || b->err.connect || b->err.handshake || b->err.closed ||
                  b->err.protocol || b->err.not_ready || b->err.bogus || b->err.other_frames ||
                  b->err.oom || b->churn_close_timeouts || b->dup ||
                  b->delivered != bench_expected(b)
              ? 3
              : 0;
out:
    if (b) {
        bench_free(b);
        free(b->urls);
        free(b->procs);
        free(b->stages_send);
        free(b->stages_end);
        free(b);
    }
    free_list(urls, nurls);
    free_list(pids, npids);
    free_list(murls, nmurls);
    dw_config_free(&cfg, fields, NFIELDS);
    return ret;
}
