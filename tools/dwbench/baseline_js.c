/* dwbench-baseline-js: the durability baseline. Publishes --count messages
 * of --size bytes to a fresh file-backed JetStream stream with
 * js_PublishAsync, at most --window unacknowledged at a time, waits for every
 * ack and prints {"scenario":"js_baseline","msgs_per_s":...}. Nothing that
 * writes to JetStream and waits for its acks can accept more than this. */
#include <jansson.h>
#include <math.h>
#include <nats/nats.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/config.h"
#include "dw/log.h"
#include "dw/util.h"
#include "procstat.h"

typedef struct jsb_config {
    char *nats_url;
    int64_t count;
    int64_t size;
    int64_t window;
    int msg_id;
    int64_t timeout;
    char *pid;
    char *json_out;
    char *log_level;
} jsb_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(jsb_config, field), def, min, max, help                               \
    }

static const dw_cfg_field fields[] = {
    F("NATS_URL", DW_CFG_STR, nats_url, "nats://127.0.0.1:4222", 0, 0,
      "NATS server (loopback) with JetStream enabled"),
    F("COUNT", DW_CFG_INT, count, "200000", 1, 1000000000, "messages to publish"),
    F("SIZE", DW_CFG_INT, size, "128", 0, 8 * 1024 * 1024, "payload bytes per message"),
    F("WINDOW", DW_CFG_INT, window, "4096", 1, 10000000, "publishes awaiting their ack at once"),
    F("MSG_ID", DW_CFG_BOOL, msg_id, "1", 0, 0,
      "give every message a Nats-Msg-Id (the edge does: dedup costs the server work too)"),
    F("TIMEOUT", DW_CFG_INT, timeout, "60", 1, 3600, "seconds to wait for the last acks"),
    F("PID", DW_CFG_STR, pid, "", 0, 0,
      "NAME=PID (e.g. nats=1234) whose RSS and CPU seconds to report"),
    F("JSON_OUT", DW_CFG_STR, json_out, "", 0, 0, "also append the result line to this file"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static atomic_ullong acked, failed;

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    if (pa)
        atomic_fetch_add_explicit(&acked, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&failed, 1, memory_order_relaxed);
    natsMsg_Destroy(msg);
}

int main(int argc, char **argv)
{
    jsb_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = dw_config_load(&cfg, fields, NFIELDS, argc, argv, "dwbench-baseline-js",
                            "The durability baseline: raw JetStream async publish with acks "
                            "into a file stream. Prints one JSON line.");
    if (rc) {
        dw_config_free(&cfg, fields, NFIELDS);
        return rc > 0 ? 0 : 2;
    }
    dw_log_init("baseline-js", cfg.log_level);
    dw_raise_nofile();

    int ret = 1;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    char *payload = NULL;
    int stream_made = 0;
    natsStatus s;
    char stream[32], subj[48];
    unsigned char rnd[4];
    int pid = 0;
    char pname[64] = "";

    if (cfg.pid[0]) {
        const char *eq = strchr(cfg.pid, '=');
        if (!eq || eq == cfg.pid || (size_t)(eq - cfg.pid) >= sizeof pname ||
            (pid = atoi(eq + 1)) <= 0) {
            fprintf(stderr, "dwbench-baseline-js: --pid wants NAME=PID\n");
            dw_config_free(&cfg, fields, NFIELDS);
            return 2;
        }
        memcpy(pname, cfg.pid, (size_t)(eq - cfg.pid));
    }
    if (RAND_bytes(rnd, sizeof rnd) != 1) goto out;
    snprintf(stream, sizeof stream, "DWBENCH_%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    snprintf(subj, sizeof subj, "dwbench.%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);

    natsOptions *no = NULL;
    s = natsOptions_Create(&no);
    if (s == NATS_OK) s = dw_bus_set_servers(no, cfg.nats_url);
    if (s == NATS_OK) s = natsOptions_SetName(no, "dwbench-baseline-js");
    if (s == NATS_OK) s = natsConnection_Connect(&nc, no);
    natsOptions_Destroy(no);
    if (s != NATS_OK) {
        DW_ERROR("cannot connect", "url=%s err=\"%s\"", cfg.nats_url, natsStatus_GetText(s));
        goto out;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = cfg.window;
    jo.PublishAsync.AckHandler = on_ack;
    /* A full window waits (inside js_PublishAsync) for room, not an error. */
    jo.PublishAsync.StallWait = cfg.timeout * 1000;
    s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK) goto nats_err;

    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[] = {subj};
    sc.Name = stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Replicas = 1;
    sc.Duplicates = (int64_t)120 * 1000000000; /* as DW_MSG */
    jsErrCode jerr = 0;
    s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s != NATS_OK) goto nats_err;
    stream_made = 1;

    payload = malloc((size_t)cfg.size + 1);
    if (!payload) goto out;
    memset(payload, 'x', (size_t)cfg.size);

    procstat p0 = {0}, p1 = {0};
    if (pid) procstat_read(pid, &p0);
    DW_INFO("publishing", "stream=%s count=%lld size=%lld window=%lld", stream,
            (long long)cfg.count, (long long)cfg.size, (long long)cfg.window);
    int64_t t0 = dw_mono_ns();
    jsPubOptions po;
    jsPubOptions_Init(&po);
    char id[64];
    for (int64_t i = 0; i < cfg.count; i++) {
        if (cfg.msg_id) {
            snprintf(id, sizeof id, "%s-%lld", stream, (long long)i);
            po.MsgId = id;
        }
        s = js_PublishAsync(js, subj, payload, (int)cfg.size, cfg.msg_id ? &po : NULL);
        if (s != NATS_OK) goto nats_err;
    }
    jsPubOptions cpo;
    jsPubOptions_Init(&cpo);
    cpo.MaxWait = cfg.timeout * 1000;
    s = js_PublishAsyncComplete(js, &cpo);
    int64_t t1 = dw_mono_ns();
    if (s != NATS_OK) DW_WARN("not every ack arrived", "err=\"%s\"", natsStatus_GetText(s));
    if (pid) procstat_read(pid, &p1);

    double el = (double)(t1 - t0) / 1e9;
    unsigned long long ok = atomic_load(&acked);
    json_t *o = json_object();
    json_object_set_new(o, "scenario", json_string("js_baseline"));
    json_object_set_new(o, "count", json_integer(cfg.count));
    json_object_set_new(o, "size", json_integer(cfg.size));
    json_object_set_new(o, "window", json_integer(cfg.window));
    json_object_set_new(o, "msg_id", json_boolean(cfg.msg_id));
    json_object_set_new(o, "acked", json_integer((json_int_t)ok));
    json_object_set_new(o, "errors", json_integer((json_int_t)((uint64_t)cfg.count - ok)));
    json_object_set_new(o, "elapsed_s", json_real(round(el * 1000) / 1000));
    json_object_set_new(o, "msgs_per_s", json_integer(el > 0 ? (json_int_t)((double)ok / el) : 0));
    json_object_set_new(
        o, "mb_per_s",
        json_real(el > 0 ? round((double)ok * (double)cfg.size / el / 1e4) / 100 : 0));
    if (pid) {
        json_t *procs = json_object(), *pj = json_object();
        if (p1.ok) {
            json_object_set_new(pj, "rss_kb", json_integer(p1.rss_kb));
            json_object_set_new(pj, "cpu_s", json_real(round(p1.cpu_s * 100) / 100));
            if (p0.ok)
                json_object_set_new(pj, "cpu_run_s",
                                    json_real(round((p1.cpu_s - p0.cpu_s) * 100) / 100));
        }
        json_object_set_new(procs, pname, pj);
        json_object_set_new(o, "procs", procs);
    }
    procstat self;
    procstat_read(0, &self);
    json_t *sj = json_object();
    json_object_set_new(sj, "rss_kb", json_integer(self.rss_kb));
    json_object_set_new(sj, "cpu_s", json_real(round(self.cpu_s * 100) / 100));
    json_object_set_new(o, "self", sj);
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12));
    json_decref(o);
    if (line) {
        printf("%s\n", line);
        fflush(stdout);
        if (cfg.json_out[0]) {
            FILE *f = fopen(cfg.json_out, "a");
            if (f) {
                fprintf(f, "%s\n", line);
                fclose(f);
            } else {
                DW_ERROR("cannot append", "file=%s", cfg.json_out);
            }
        }
        free(line);
    }
    ret = ok == (unsigned long long)cfg.count ? 0 : 1;
    goto out;

nats_err:
    DW_ERROR("jetstream", "err=\"%s\" detail=\"%s\"", natsStatus_GetText(s),
             nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
out:
    if (stream_made && js) js_DeleteStream(js, stream, NULL, NULL);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    free(payload);
    dw_config_free(&cfg, fields, NFIELDS);
    return ret;
}
