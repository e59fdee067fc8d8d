/* edge: holds the WebSocket connections (the API Gateway of DynamoWave). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "dw/config.h"
#include "dw/log.h"
#include "edge.h"

#define F(name, type, field, def, min, max, help) \
    {name, type, offsetof(edge_config, field), def, min, max, help}

static const dw_cfg_field fields[] = {
    F("NATS_URL", DW_CFG_STR, nats_url, "nats://127.0.0.1:4222", 0, 0, "NATS server URL"),
    F("HOST", DW_CFG_STR, host, "", 0, 0, "address to listen on (empty: all)"),
    F("PORT", DW_CFG_INT, port, "8080", 1, 65535, "WebSocket and HTTP port"),
    F("EDGE_ID", DW_CFG_STR, edge_id, "", 0, 0,
      "this edge's id, 16 chars [A-Za-z0-9_-] (empty: random at each start)"),
    F("MAX_MESSAGE", DW_CFG_INT, max_message, "131072", 1, 16 * 1024 * 1024,
      "largest message a client may send, bytes (close 1009 above)"),
    F("MAX_PENDING_RX", DW_CFG_INT, max_pending_rx, "32", 1, 10000,
      "messages held per connection until its connect event is durable"),
    F("PUBLISH_TIMEOUT_MS", DW_CFG_INT, publish_timeout_ms, "5000", 100, 600000,
      "how long to wait for a JetStream ack"),
    F("PUBLISH_MAX_PENDING", DW_CFG_INT, publish_max_pending, "65536", 1, 10000000,
      "JetStream publishes in flight before new ones are refused"),
    F("HEARTBEAT_MS", DW_CFG_INT, heartbeat_ms, "2000", 100, 60000,
      "how often the edge tells the dispatcher it is alive"),
    F("DEDUP_WINDOW", DW_CFG_INT, dedup_window, "65536", 1, 10000000,
      "recent message sequences remembered to drop redeliveries"),
    F("WRITE_COALESCE", DW_CFG_INT, write_coalesce, "65536", 4096, 16 * 1024 * 1024,
      "bytes of queued frames written to a socket in one call"),
    F("MAX_ROOMS", DW_CFG_INT, max_rooms, "128", 1, 10000, "rooms one v1 connection may join"),
    F("RESUME_MAX", DW_CFG_INT, resume_max, "10000", 0, 1000000,
      "missed messages replayed on a v1 resume (more: recovered=false)"),
    F("JOB_THREADS", DW_CFG_INT, job_threads, "2", 1, 64,
      "threads for v1 joins, history and presence (bus round trips)"),
    F("MAX_PENDING_ACKS", DW_CFG_INT, max_pending_acks, "1024", 1, 1000000,
      "v1 messages per connection awaiting their JetStream ack"),
    F("WEB_DIR", DW_CFG_STR, web_dir, DW_WEB_DIR_DEFAULT, 0, 0, "directory of the chat page"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

int main(int argc, char **argv)
{
    edge_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = dw_config_load(&cfg, fields, NFIELDS, argc, argv, "edge",
                            "DynamoWave edge: holds the WebSocket connections, routes frames on "
                            "\"action\", publishes to NATS JetStream and writes deliveries.");
    if (rc) {
        dw_config_free(&cfg, fields, NFIELDS);
        return rc > 0 ? 0 : 2;
    }
    dw_log_init("edge", cfg.log_level);

    edge e;
    memset(&e, 0, sizeof e);
    e.cfg = &cfg;
    if (cfg.edge_id[0]) {
        if (!dw_id_valid(cfg.edge_id, strlen(cfg.edge_id))) {
            fprintf(stderr, "edge: DW_EDGE_ID must be 16 characters of [A-Za-z0-9_-]\n");
            dw_config_free(&cfg, fields, NFIELDS);
            return 2;
        }
        memcpy(e.edge_id, cfg.edge_id, DW_ID_LEN + 1);
    } else if (dw_id_random(e.edge_id)) {
        DW_ERROR("csprng failed", "%s", "");
        dw_config_free(&cfg, fields, NFIELDS);
        return 1;
    }
    long nofile = dw_raise_nofile();
    DW_INFO("starting", "edge=%s version=%s nofile=%ld", e.edge_id, DW_VERSION, nofile);
    dw_signals_install(NULL, NULL);

    rc = edge_run(&e);
    nats_Close();
    DW_INFO("stopped", "edge=%s", e.edge_id);
    dw_config_free(&cfg, fields, NFIELDS);
    return rc ? 1 : 0;
}
