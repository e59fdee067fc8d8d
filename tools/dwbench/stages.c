#include "stages.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static stage_hist *find(stage_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++)
        if (!strcmp(set->h[i].name, name)) return &set->h[i];
    if (set->n == STAGES_MAX) return NULL;
    stage_hist *h = &set->h[set->n++];
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", name);
    return h;
}

/* "dw_edge_stage_seconds_bucket{stage="stored",le="0.001"} 12" and friends. */
static void parse_line(stage_set *set, const char *line)
{
    const char *p = strstr(line, "_stage_seconds");
    if (!p || strncmp(line, "dw_", 3)) return;
    char svc[24];
    size_t sl = (size_t)(p - (line + 3));
    if (!sl || sl >= sizeof svc) return;
    memcpy(svc, line + 3, sl);
    svc[sl] = '\0';
    p += strlen("_stage_seconds");
    int kind = !strncmp(p, "_bucket{", 8)  ? 0
               : !strncmp(p, "_sum{", 5)   ? 1
               : !strncmp(p, "_count{", 7) ? 2
                                           : -1;
    if (kind < 0) return;
    const char *st = strstr(p, "stage=\"");
    const char *close = strchr(p, '}');
    if (!st || !close || st > close) return;
    st += 7;
    const char *q = strchr(st, '"');
    if (!q || q - st >= 32) return;
    char name[64];
    snprintf(name, sizeof name, "%s.%.*s", svc, (int)(q - st), st);
    double v = strtod(close + 1, NULL);
    stage_hist *h = find(set, name);
    if (!h) return;
    if (kind == 1) {
        h->sum += v;
    } else if (kind == 2) {
        h->count += v;
    } else {
        const char *le = strstr(p, "le=\"");
        if (!le || le > close) return;
        double bound = !strncmp(le + 4, "+Inf", 4) ? 1e300 : strtod(le + 4, NULL);
        size_t i = 0;
        while (i < h->nb && h->le[i] != bound)
            i++;
        if (i == h->nb) {
            if (h->nb == STAGES_BUCKETS) return;
            h->le[h->nb] = bound;
            h->cum[h->nb] = 0;
            h->nb++;
        }
        h->cum[i] += v;
    }
}

void stages_parse(stage_set *set, const char *text)
{
    const char *s = text;
    while (s && *s) {
        const char *e = strchr(s, '\n');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        char line[512];
        if (len < sizeof line && *s != '#') {
            memcpy(line, s, len);
            line[len] = '\0';
            parse_line(set, line);
        }
        s = e ? e + 1 : NULL;
    }
}

int stages_scrape(stage_set *set, const char *url)
{
    unsigned a, b, c, d, port;
    char path[128] = "/metrics";
    if (sscanf(url, "http://%u.%u.%u.%u:%u%127s", &a, &b, &c, &d, &port, path) < 5 || a != 127 ||
        port > 65535) {
        set->errors++;
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        set->errors++;
        return -1;
    }
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl((a << 24) | (b << 16) | (c << 8) | d);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    int rc = -1;
    if (buf && !connect(fd, (struct sockaddr *)&sa, sizeof sa) && write(fd, req, (size_t)n) == n) {
        ssize_t r;
        while ((r = read(fd, buf + len, cap - len - 1)) > 0) {
            len += (size_t)r;
            if (len + 1 == cap) {
                char *g = realloc(buf, cap * 2);
                if (!g) break;
                buf = g;
                cap *= 2;
            }
        }
        buf[len] = '\0';
        const char *body = strstr(buf, "\r\n\r\n");
        if (body) {
            stages_parse(set, body + 4);
            rc = 0;
        }
    }
    if (rc) set->errors++;
    free(buf);
    close(fd);
    return rc;
}

/* The value at quantile q of bucket counts (upper bound of its bucket). */
static double quantile(const double *le, const double *cnt, size_t nb, double total, double q)
{
    double want = q * total;
    for (size_t i = 0; i < nb; i++)
        if (cnt[i] >= want) return le[i];
    return nb ? le[nb - 1] : 0;
}

static int cmp_le(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

json_t *stages_json(const stage_set *before, const stage_set *after)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < after->n; i++) {
        const stage_hist *h = &after->h[i], *h0 = NULL;
        for (size_t k = 0; k < before->n && !h0; k++)
            if (!strcmp(before->h[k].name, h->name)) h0 = &before->h[k];
        double count = h->count - (h0 ? h0->count : 0), sum = h->sum - (h0 ? h0->sum : 0);
        /* Buckets sorted by bound, deltas of their cumulative counts. */
        double le[STAGES_BUCKETS], cnt[STAGES_BUCKETS];
        size_t nb = h->nb;
        memcpy(le, h->le, nb * sizeof *le);
        qsort(le, nb, sizeof *le, cmp_le);
        for (size_t b = 0; b < nb; b++) {
            double now = 0, was = 0;
            for (size_t k = 0; k < h->nb; k++)
                if (h->le[k] == le[b]) now = h->cum[k];
            for (size_t k = 0; h0 && k < h0->nb; k++)
                if (h0->le[k] == le[b]) was = h0->cum[k];
            cnt[b] = now - was;
        }
        json_t *s = json_object();
        json_object_set_new(s, "count", json_integer((json_int_t)count));
        if (count > 0) {
            double p50 = quantile(le, cnt, nb, count, 0.5),
                   p99 = quantile(le, cnt, nb, count, 0.99);
            json_object_set_new(s, "mean_ms", json_real(sum / count * 1000));
            json_object_set_new(s, "p50_ms_le", p50 > 1e299 ? json_null() : json_real(p50 * 1000));
            json_object_set_new(s, "p99_ms_le", p99 > 1e299 ? json_null() : json_real(p99 * 1000));
        }
        json_object_set_new(o, h->name, s);
    }
    return o;
}
