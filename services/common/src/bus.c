#include "dw/bus.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dw/log.h"
#include "dw/util.h"
#include "dw/metrics.h"

int dw_room_valid(const char *room, size_t len)
{
    if (!room || len == 0 || len > DW_ROOM_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = room[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
        if (c == '.' && (i == 0 || i + 1 == len || room[i - 1] == '.')) return 0;
    }
    return 1;
}

uint32_t dw_room_partition(const char *room)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)room; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h % DW_MSG_PARTITIONS;
}

int dw_subj_msg(char *buf, size_t len, const char *room)
{
    /* By hand, not snprintf: that was about 1,000 instructions of every
     * chat message's publish at the edge. Same result. */
    static const size_t plen = sizeof DW_SUBJ_MSG_PREFIX - 1;
    char num[10];
    size_t nd = 0;
    uint32_t p = dw_room_partition(room);
    do
        num[nd++] = (char)('0' + p % 10);
    while ((p /= 10));
    size_t rlen = strlen(room);
    if (plen + nd + 1 + rlen >= len) {
        if (len) buf[0] = '\0';
        return -1;
    }
    memcpy(buf, DW_SUBJ_MSG_PREFIX, plen);
    char *q = buf + plen;
    while (nd)
        *q++ = num[--nd];
    *q++ = '.';
    memcpy(q, room, rlen + 1);
    return 0;
}

void dw_subj_msg_partition(char *buf, size_t len, uint32_t partition)
{
    snprintf(buf, len, DW_SUBJ_MSG_PREFIX "%u.>", partition);
}

const char *dw_subj_msg_room(const char *subject, uint32_t *partition)
{
    static const size_t plen = sizeof DW_SUBJ_MSG_PREFIX - 1;
    if (partition) *partition = UINT32_MAX;
    if (!subject || strncmp(subject, DW_SUBJ_MSG_PREFIX, plen)) return NULL;
    const char *p = subject + plen, *q = p;
    uint32_t part = 0;
    while (*q >= '0' && *q <= '9' && q - p < 6)
        part = part * 10 + (uint32_t)(*q++ - '0');
    /* A number token followed by a room: the partitioned form. A room that
     * is only digits ("dw.msg.42") is the old form. */
    if (q > p && *q == '.' && q[1] && part < DW_MSG_PARTITIONS) {
        if (partition) *partition = part;
        return q + 1;
    }
    return *p ? p : NULL;
}

void dw_subj_edge_deliver(char *buf, size_t len, const char *edge_id)
{
    snprintf(buf, len, "dw.edge.%s.deliver", edge_id);
}

void dw_subj_edge_conn(char *buf, size_t len, const char *edge_id)
{
    snprintf(buf, len, "dw.edge.%s.conn", edge_id);
}

const char *dw_subj_conn_event(Dw__ConnEvent__Kind kind)
{
    switch (kind) {
    case DW__CONN_EVENT__KIND__CONNECT: return "dw.conn.connect";
    case DW__CONN_EVENT__KIND__DISCONNECT: return "dw.conn.disconnect";
    case DW__CONN_EVENT__KIND__JOIN: return "dw.conn.join";
    case DW__CONN_EVENT__KIND__LEAVE: return "dw.conn.leave";
    case DW__CONN_EVENT__KIND__EDGE_DOWN: return "dw.conn.edge_down";
    default: return "dw.conn.unknown";
    }
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    /* A deliberate close also lands here; only a lost connection is news. */
    if (!natsConnection_IsClosed(nc))
        DW_WARN("nats disconnected", "name=%s", (const char *)closure);
}

static void on_connected(natsConnection *nc, void *closure)
{
    DW_INFO("nats connected", "name=%s", (const char *)closure);
}

static dw_metric *reconnects;

/* nats.c spins on a busy mutex (trylock in a loop, 2,000 times by default)
 * before it sleeps on it. On a machine with as many busy threads as cores,
 * the spinning thread only burns the time the lock holder needs: a profile
 * of the edge under fan-out showed 5% of its instructions in that loop. So
 * no spinning, unless DW_NATS_LOCK_SPIN says otherwise. Must run before the
 * first nats.c call of the process (natsOptions_Create opens the library). */
static void open_library(void)
{
    const char *v = getenv("DW_NATS_LOCK_SPIN");
    long long spin = v && *v ? atoll(v) : 0;
    nats_Open(spin < 0 ? 0 : spin);
}

static void register_metrics(void)
{
    open_library();
    reconnects =
        dw_counter("dw_nats_reconnects_total", NULL, "times the NATS connection came back");
}

static pthread_mutex_t hooks_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    void (*fn)(void *);
    void *arg;
} hooks[8];
static size_t n_hooks;

int dw_bus_on_reconnect(void (*fn)(void *arg), void *arg)
{
    int rc = -1;
    pthread_mutex_lock(&hooks_mu);
    if (n_hooks < sizeof hooks / sizeof hooks[0]) {
        hooks[n_hooks].fn = fn;
        hooks[n_hooks].arg = arg;
        n_hooks++;
        rc = 0;
    }
    pthread_mutex_unlock(&hooks_mu);
    return rc;
}

void dw_bus_on_reconnect_remove(void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&hooks_mu);
    for (size_t i = 0; i < n_hooks; i++)
        if (hooks[i].fn == fn && hooks[i].arg == arg) {
            hooks[i] = hooks[--n_hooks];
            break;
        }
    pthread_mutex_unlock(&hooks_mu);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    DW_INFO("nats reconnected", "name=%s", (const char *)closure);
    dw_metric_inc(reconnects);
    pthread_mutex_lock(&hooks_mu);
    for (size_t i = 0; i < n_hooks; i++)
        hooks[i].fn(hooks[i].arg);
    pthread_mutex_unlock(&hooks_mu);
}

/* With reconnects forever, a connection closes on its own only when the
 * server refused our credentials twice in a row: then nothing will bring
 * it back, and the operator must hear why. */
static void on_closed(natsConnection *nc, void *closure)
{
    const char *text = NULL;
    natsStatus s = natsConnection_GetLastError(nc, &text);
    if (s == NATS_CONNECTION_AUTH_FAILED || (text && strstr(text, "Authorization Violation")))
        DW_ERROR("nats refused this service's credentials; no more reconnects: check "
                 "DW_NATS_USER and DW_NATS_PASSWORD_FILE, then restart",
                 "name=%s err=\"%s\"", (const char *)closure, text ? text : "");
}

/* nats.c reports what the server refused (a publish or subscribe outside
 * this user's permissions) and slow consumers only here: without it they
 * would be silent, and a refused publish looks like a timeout. */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    const char *text = NULL;
    natsConnection_GetLastError(nc, &text);
    if (err == NATS_NOT_PERMITTED)
        DW_ERROR("nats refused an operation: not in this user's permissions", "name=%s err=\"%s\"",
                 (const char *)closure, text ? text : "");
    else
        DW_WARN("nats async error", "name=%s status=%s subject=%s err=\"%s\"",
                (const char *)closure, natsStatus_GetText(err),
                sub ? natsSubscription_GetSubject(sub) : "-", text ? text : "");
}

void dw_bus_env_help(FILE *out)
{
    fprintf(out,
            "\nNATS credentials and TLS (environment only; docs/security.md):\n"
            "  DW_NATS_USER             NATS user of this service (empty: no authentication)\n"
            "  DW_NATS_PASSWORD_FILE    file holding its password (mode 0600; trailing newline "
            "ignored)\n"
            "  DW_NATS_PASSWORD         the password itself, when there is no file\n"
            "  DW_NATS_CA               PEM CA bundle: connect with TLS and verify the server\n"
            "  DW_NATS_CERT, DW_NATS_KEY  PEM client certificate and key (TLS client auth)\n"
            "  DW_NATS_TLS_HOSTNAME     name expected in the server certificate (default: the "
            "URL's host)\n");
}

/* A secret from a file: at most 1 KB, trailing newlines dropped. Returns a
 * malloc'd string or NULL with err set. */
static char *read_secret_file(const char *path, char *err, size_t errlen)
{
    char buf[1025];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "DW_NATS_PASSWORD_FILE %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO)))
        DW_WARN("the NATS password file can be read by others than its owner: chmod 600 it",
                "file=\"%s\"", path);
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf && (r = read(fd, buf + n, sizeof buf - n)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            snprintf(err, errlen, "DW_NATS_PASSWORD_FILE %s: %s", path, strerror(errno));
            close(fd);
            return NULL;
        }
        n += (size_t)r;
    }
    close(fd);
    if (n == sizeof buf) {
        snprintf(err, errlen, "DW_NATS_PASSWORD_FILE %s: longer than 1024 bytes", path);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (!n || memchr(buf, '\0', n)) {
        snprintf(err, errlen, "DW_NATS_PASSWORD_FILE %s: empty or not text", path);
        return NULL;
    }
    char *out = strndup(buf, n);
    explicit_bzero(buf, sizeof buf);
    if (!out) snprintf(err, errlen, "out of memory");
    return out;
}

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* A user name that is one subject token: usable in the inbox prefix. */
static int token_ok(const char *s)
{
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return 0;
    return 1;
}

int dw_bus_new_inbox(char *buf, size_t len)
{
    natsInbox *nb = NULL;
    if (natsInbox_Create(&nb) != NATS_OK) return -1;
    const char *user = env_or_null("DW_NATS_USER");
    const char *nuid = strchr(nb, '.'); /* nb is "_INBOX.<nuid>" */
    int n = user && token_ok(user) ? snprintf(buf, len, "_INBOX.%s.%s", user, nuid ? nuid + 1 : nb)
                                   : snprintf(buf, len, "%s", nb);
    natsInbox_Destroy(nb);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

/* A drain's waits are cut in slices this long, to notice that NATS went
 * away meanwhile (a server that stopped answering is noticed by the pings
 * only after a few seconds). */
#define DRAIN_SLICE_MS 100

/* Subscriptions dw_subs_drain gave up on (dw_subs_undrained). */
static atomic_size_t subs_undrained;

size_t dw_subs_undrained(void)
{
    return atomic_load(&subs_undrained);
}

int dw_subs_drain(natsConnection *nc, natsSubscription **subs, size_t n, int64_t connected_ms,
                  int64_t away_ms)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (subs[i] && natsSubscription_Drain(subs[i]) != NATS_OK)
            natsSubscription_Unsubscribe(subs[i]);
    bool away = !nc || natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED;
    int64_t deadline = dw_mono_ns() / 1000000 + dw_stop_left_ms(away ? away_ms : connected_ms);
    for (size_t i = 0; i < n; i++) {
        if (!subs[i]) continue;
        for (;;) {
            int64_t now = dw_mono_ns() / 1000000;
            if (!away && natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) {
                away = true;
                if (now + away_ms < deadline) deadline = now + away_ms;
            }
            int64_t left = deadline - now;
            natsStatus s = natsSubscription_WaitForDrainCompletion(subs[i], left < 1 ? 1
                                                                            : left < DRAIN_SLICE_MS
                                                                                ? left
                                                                                : DRAIN_SLICE_MS);
            if (s == NATS_OK) break;
            if (s != NATS_TIMEOUT || left <= DRAIN_SLICE_MS) {
                atomic_fetch_add(&subs_undrained, 1);
                rc = -1;
                break;
            }
        }
        natsSubscription_Destroy(subs[i]);
        subs[i] = NULL;
    }
    return rc;
}

int dw_bus_options_env(natsOptions *opts, char *err, size_t errlen)
{
    const char *user = env_or_null("DW_NATS_USER");
    const char *pass_file = env_or_null("DW_NATS_PASSWORD_FILE");
    const char *pass_env = env_or_null("DW_NATS_PASSWORD");
    const char *ca = env_or_null("DW_NATS_CA");
    const char *cert = env_or_null("DW_NATS_CERT");
    const char *key = env_or_null("DW_NATS_KEY");
    const char *host = env_or_null("DW_NATS_TLS_HOSTNAME");
    char *pass = NULL;
    natsStatus s = NATS_OK;

    if ((pass_file || pass_env) && !user) {
        snprintf(err, errlen, "a NATS password is set but DW_NATS_USER is not");
        return -1;
    }
    if (user) {
        if (pass_file)
            pass = read_secret_file(pass_file, err, errlen);
        else if (pass_env)
            pass = strdup(pass_env);
        else
            snprintf(err, errlen,
                     "DW_NATS_USER is set but neither DW_NATS_PASSWORD_FILE nor "
                     "DW_NATS_PASSWORD");
        if (!pass) return -1;
        s = natsOptions_SetUserInfo(opts, user, pass);
        explicit_bzero(pass, strlen(pass));
        free(pass);
        if (s != NATS_OK) goto nats_error;
        /* Replies to this process come to _INBOX.<user>.>, so the server
         * can keep each user to its own replies (deploy/nats/auth.conf). */
        if (token_ok(user)) {
            char prefix[160];
            snprintf(prefix, sizeof prefix, "_INBOX.%s", user);
            if ((s = natsOptions_SetCustomInboxPrefix(opts, prefix)) != NATS_OK) goto nats_error;
        }
    }
    if ((cert != NULL) != (key != NULL)) {
        snprintf(err, errlen, "DW_NATS_CERT and DW_NATS_KEY go together");
        return -1;
    }
    if (ca || cert) {
        s = natsOptions_SetSecure(opts, true);
        if (s == NATS_OK && ca) s = natsOptions_LoadCATrustedCertificates(opts, ca);
        if (s == NATS_OK && cert) s = natsOptions_LoadCertificatesChain(opts, cert, key);
        if (s == NATS_OK && host) s = natsOptions_SetExpectedHostname(opts, host);
        if (s != NATS_OK) goto nats_error;
    }
    return 0;
nats_error:
    snprintf(err, errlen, "NATS credentials/TLS options: %s (%s)", natsStatus_GetText(s),
             nats_GetLastError(NULL));
    return -1;
}

natsStatus dw_bus_set_servers(natsOptions *opts, const char *url_list)
{
    if (!url_list) return NATS_INVALID_ARG;
    char *copy = strdup(url_list);
    if (!copy) return NATS_NO_MEMORY;
    const char *urls[DW_BUS_MAX_SERVERS];
    int n = 0;
    natsStatus s = NATS_OK;
    /* strtok_r would skip empty entries silently; a list like "a,,b" is
     * a typo the operator should hear about. */
    for (char *p = copy, *next; p && s == NATS_OK; p = next) {
        next = strchr(p, ',');
        if (next) *next++ = '\0';
        while (*p == ' ' || *p == '\t')
            p++;
        char *end = p + strlen(p);
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (!*p || n == DW_BUS_MAX_SERVERS)
            s = NATS_INVALID_ARG;
        else
            urls[n++] = p;
    }
    if (s == NATS_OK && n == 0) s = NATS_INVALID_ARG;
    if (s == NATS_OK) s = natsOptions_SetServers(opts, urls, n);
    free(copy);
    return s;
}

static natsStatus bus_connect(natsConnection **out, const char *url, const char *name,
                              bool send_asap);

natsStatus dw_bus_connect(natsConnection **out, const char *url, const char *name)
{
    return bus_connect(out, url, name, true);
}

natsStatus dw_bus_connect_batched(natsConnection **out, const char *url, const char *name)
{
    return bus_connect(out, url, name, false);
}

static natsStatus bus_connect(natsConnection **out, const char *url, const char *name,
                              bool send_asap)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_metrics);
    natsOptions *opts = NULL;
    char err[512];
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK && (s = dw_bus_set_servers(opts, url)) == NATS_INVALID_ARG)
        DW_ERROR("bad NATS URL list: comma-separated URLs, none empty", "name=%s max=%d", name,
                 DW_BUS_MAX_SERVERS);
    if (s == NATS_OK) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK && dw_bus_options_env(opts, err, sizeof err)) {
        DW_ERROR("bad NATS credentials or TLS settings", "name=%s err=\"%s\"", name, err);
        s = NATS_INVALID_ARG;
    }
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    /* A server that stalls (SIGSTOP, a cut-off cluster node) keeps the TCP
     * connection open: without pings it would be noticed only after
     * nats.c's default 2 minutes. With these, within ~3 s, and the client
     * moves to another node of the list. */
    if (s == NATS_OK) s = natsOptions_SetPingInterval(opts, 1000);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(opts, 3);
    /* With a connected callback, Connect returns at once while NATS is
     * away (NATS_NOT_YET_CONNECTED) instead of blocking until it is up, so
     * a service can still be stopped. */
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, (void *)name);
    /* Replies and publishes leave at once: without this nats.c holds them
     * up to ~1 ms for batching, which is most of a delivery's latency. */
    if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, send_asap);
    /* A large reconnect buffer keeps publishes made during a NATS restart. */
    if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, (void *)name);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, (void *)name);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(opts, on_async_error, (void *)name);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(opts, on_closed, (void *)name);
    if (s == NATS_OK) s = natsConnection_Connect(out, opts);
    natsOptions_Destroy(opts);
    if (s == NATS_NOT_YET_CONNECTED) {
        /* Retrying in the background; say why the first attempt failed, so
         * that refused credentials do not pass for a server still starting. */
        const char *text = NULL;
        natsStatus why = natsConnection_GetLastError(*out, &text);
        if (why == NATS_CONNECTION_AUTH_FAILED || (text && strstr(text, "Authorization")))
            DW_ERROR("nats refused this service's credentials; retrying: check DW_NATS_USER and "
                     "DW_NATS_PASSWORD_FILE",
                     "name=%s err=\"%s\"", name, text ? text : "");
        else
            DW_WARN("nats not reachable yet; retrying in the background", "name=%s err=\"%s\"",
                    name, text && *text ? text : "no server answered");
        s = NATS_OK;
    }
    return s;
}

void dw_stream_opts_default(dw_stream_opts *o)
{
    o->conn_max_age_s = 35LL * 24 * 3600;
    o->msg_max_age_s = 24LL * 3600;
    o->dedup_window_s = 120;
    o->events_max_age_s = 7LL * 24 * 3600;
    o->events = 1;
    o->route_max_age_s = 7LL * 24 * 3600;
    o->replicas = 1;
}

/* Does the stream as it is have what cfg asks for? Compares the fields
 * dw_streams_ensure sets; the server fills in the rest. */
static int stream_matches(const jsStreamConfig *have, const jsStreamConfig *want)
{
    if (have->SubjectsLen != want->SubjectsLen || have->Storage != want->Storage ||
        have->Retention != want->Retention || have->MaxAge != want->MaxAge ||
        have->Duplicates != want->Duplicates || have->Replicas != want->Replicas)
        return 0;
    for (int i = 0; i < want->SubjectsLen; i++)
        if (strcmp(have->Subjects[i], want->Subjects[i])) return 0;
    return 1;
}

/* How long a create or update may take before we try again. Short: a
 * service whose NATS user may not manage streams gets no answer at all
 * (the server drops the refused request), and it should look again soon
 * for the stream its owner made meanwhile. */
#define STREAM_WRITE_WAIT_MS 2000

static natsStatus ensure_one(jsCtx *js, jsStreamConfig *cfg)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = STREAM_WRITE_WAIT_MS;
    /* Look first: when the stream is already as wanted nothing is written,
     * so the services that only use it need no right to manage it. */
    natsStatus s = js_GetStreamInfo(&si, js, cfg->Name, NULL, &jerr);
    if (s == NATS_OK && stream_matches(si->Config, cfg)) {
        jsStreamInfo_Destroy(si);
        return NATS_OK;
    }
    int exists = s == NATS_OK;
    jsStreamInfo_Destroy(si);
    si = NULL;
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr) {
        DW_WARN("stream info failed", "stream=%s status=%s jserr=%d", cfg->Name,
                natsStatus_GetText(s), (int)jerr);
        return s;
    }
    jerr = 0;
    if (exists) {
        s = js_UpdateStream(&si, js, cfg, &o, &jerr);
    } else {
        s = js_AddStream(&si, js, cfg, &o, &jerr);
        /* "Subjects overlap" is what a second process gets when another one
         * created the same stream a moment earlier: then it exists; update. */
        if (s != NATS_OK && (jerr == JSStreamNameExistErr || jerr == JSStreamSubjectOverlapErr)) {
            jsStreamInfo_Destroy(si);
            si = NULL;
            s = js_UpdateStream(&si, js, cfg, &o, &jerr);
        }
    }
    if (s == NATS_TIMEOUT)
        DW_WARN("stream setup not answered: not created yet by its owner, or this NATS user may "
                "not manage it",
                "stream=%s", cfg->Name);
    else if (s != NATS_OK)
        DW_ERROR("stream setup failed", "stream=%s status=%s jserr=%d last=\"%s\"", cfg->Name,
                 natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
    jsStreamInfo_Destroy(si);
    return s;
}

/* What every stream of ours shares: file storage, one subject filter, the
 * duplicate window and the replica count; name, retention and age vary. */
static void stream_config(jsStreamConfig *cfg, const dw_stream_opts *o, const char *name,
                          const char **subj, jsRetentionPolicy retention, int64_t max_age_s)
{
    jsStreamConfig_Init(cfg);
    cfg->Name = name;
    cfg->Subjects = subj;
    cfg->SubjectsLen = 1;
    cfg->Storage = js_FileStorage;
    cfg->Retention = retention;
    cfg->MaxAge = max_age_s * 1000000000LL;
    cfg->Duplicates = o->dedup_window_s * 1000000000LL;
    cfg->Replicas = o->replicas;
}

int dw_action_valid(const char *action, size_t len)
{
    if (!action || len == 0 || len > DW_ACTION_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char c = action[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

static int subj_of(char *buf, size_t len, const char *prefix, const char *action)
{
    if (!action || !dw_action_valid(action, strlen(action))) return -1;
    int n = snprintf(buf, len, "%s%s", prefix, action);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

int dw_subj_route(char *buf, size_t len, const char *action)
{
    return subj_of(buf, len, DW_SUBJ_ROUTE_PREFIX, action);
}

int dw_subj_rpc(char *buf, size_t len, const char *action)
{
    return subj_of(buf, len, DW_SUBJ_RPC_PREFIX, action);
}

int dw_route_durable(char *buf, size_t len, const char *action)
{
    return subj_of(buf, len, DW_ROUTE_DURABLE_PREFIX, action);
}

natsStatus dw_streams_ensure(jsCtx *js, const dw_stream_opts *o)
{
    jsStreamConfig cfg;
    const char *conn_subj[] = {"dw.conn.>"};
    const char *msg_subj[] = {"dw.msg.>"};
    const char *events_subj[] = {DW_SUBJ_EVENTS_PREFIX ">"};
    const char *route_subj[] = {DW_SUBJ_ROUTE_PREFIX ">"};

    stream_config(&cfg, o, DW_STREAM_CONN, conn_subj, js_LimitsPolicy, o->conn_max_age_s);
    natsStatus s = ensure_one(js, &cfg);
    if (s != NATS_OK) return s;
    stream_config(&cfg, o, DW_STREAM_MSG, msg_subj, js_LimitsPolicy, o->msg_max_age_s);
    if ((s = ensure_one(js, &cfg)) != NATS_OK) return s;
    /* DW_ROUTE: async route frames for user workers. Work queue: a frame
     * is gone once a worker acked it; one that hit its consumer's
     * MaxDeliver stays (the deadletter service copies it to DW_DLQ) until
     * route_max_age_s. The duplicate window makes a client's retry with
     * the same v1 id one frame. */
    stream_config(&cfg, o, DW_STREAM_ROUTE, route_subj, js_WorkQueuePolicy, o->route_max_age_s);
    if ((s = ensure_one(js, &cfg)) != NATS_OK || !o->events) return s;
    /* DW_EVENTS: lifecycle events for user code. Limits retention, so that
     * every worker reads every event with its own consumer; the duplicate
     * window is what lets two registry replicas publish the same event. */
    stream_config(&cfg, o, DW_STREAM_EVENTS, events_subj, js_LimitsPolicy, o->events_max_age_s);
    return ensure_one(js, &cfg);
}

natsStatus dw_streams_exist(jsCtx *js)
{
    static const char *const names[] = {DW_STREAM_CONN, DW_STREAM_MSG};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetStreamInfo(&si, js, names[i], NULL, &jerr);
        jsStreamInfo_Destroy(si);
        if (s == NATS_OK) continue;
        if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) return NATS_NOT_FOUND;
        return s;
    }
    return NATS_OK;
}

uint8_t *dw_pb_pack(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return NULL;
    *len = protobuf_c_message_pack(m, buf);
    return buf;
}

natsStatus dw_js_publish_pb(jsCtx *js, const char *subj, const ProtobufCMessage *m,
                            const char *msg_id, int64_t max_wait_ms, dw_js_ack *ack,
                            jsErrCode *jerr)
{
    size_t len = 0;
    jsErrCode je = 0;
    uint8_t *buf = dw_pb_pack(m, &len);
    if (ack) memset(ack, 0, sizeof *ack);
    if (jerr) *jerr = 0;
    if (!buf) return NATS_NO_MEMORY;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = max_wait_ms;
    jsPubAck *pa = NULL;
    natsStatus s = js_Publish(&pa, js, subj, buf, (int)len, &po, &je);
    free(buf);
    if (s == NATS_OK && ack) {
        ack->seq = pa->Sequence;
        ack->duplicate = pa->Duplicate;
    }
    jsPubAck_Destroy(pa);
    if (jerr) *jerr = je;
    return s;
}
