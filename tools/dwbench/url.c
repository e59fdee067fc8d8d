#include "url.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int url_parse(const char *s, bench_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    if (strncasecmp(s, "ws://", 5)) {
        snprintf(err, errlen, "'%s': only ws:// URLs are supported", s);
        return -1;
    }
    const char *h = s + 5, *he, *rest;
    char host[64];
    if (*h == '[') {
        he = strchr(h, ']');
        if (!he) {
            snprintf(err, errlen, "'%s': unclosed '['", s);
            return -1;
        }
        h++;
        rest = he + 1;
    } else {
        he = h + strcspn(h, ":/");
        rest = he;
    }
    if (he == h || (size_t)(he - h) >= sizeof host) {
        snprintf(err, errlen, "'%s': bad host", s);
        return -1;
    }
    memcpy(host, h, (size_t)(he - h));
    host[he - h] = '\0';

    long port = 80;
    if (*rest == ':') {
        char *end;
        port = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || port < 1 || port > 65535 || (*end && *end != '/')) {
            snprintf(err, errlen, "'%s': bad port", s);
            return -1;
        }
        rest = end;
    } else if (*rest && *rest != '/') {
        snprintf(err, errlen, "'%s': bad URL", s);
        return -1;
    }
    const char *path = *rest ? rest : "/";
    if (strlen(path) >= sizeof u->path) {
        snprintf(err, errlen, "'%s': path too long", s);
        return -1;
    }
    strcpy(u->path, path);

    struct sockaddr_in *a4 = (struct sockaddr_in *)&u->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&u->addr;
    if (!strcasecmp(host, "localhost")) {
        a4->sin_family = AF_INET;
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) {
            snprintf(err, errlen, "'%s': not a loopback address (127.x.x.x, localhost, ::1)", s);
            return -1;
        }
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) {
            snprintf(err, errlen, "'%s': not a loopback address (127.x.x.x, localhost, ::1)", s);
            return -1;
        }
    } else {
        snprintf(err, errlen, "'%s': not a loopback address (127.x.x.x, localhost, ::1)", s);
        return -1;
    }
    u->family = a4->sin_family;
    if (u->family == AF_INET) {
        a4->sin_port = htons((uint16_t)port);
        u->addrlen = sizeof *a4;
        snprintf(u->hostport, sizeof u->hostport, "%s:%ld", host, port);
    } else {
        a6->sin6_port = htons((uint16_t)port);
        u->addrlen = sizeof *a6;
        snprintf(u->hostport, sizeof u->hostport, "[%s]:%ld", host, port);
    }
    return 0;
}
