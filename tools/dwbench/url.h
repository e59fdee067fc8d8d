/* ws:// URLs of the servers under test. Only loopback hosts are accepted:
 * dwbench is a tool for measuring this machine, never for loading others. */
#ifndef DWBENCH_URL_H
#define DWBENCH_URL_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct bench_url {
    char hostport[80]; /* the Host header */
    char path[256];
    struct sockaddr_storage addr; /* where to connect */
    socklen_t addrlen;
    int family; /* AF_INET or AF_INET6 */
} bench_url;

/* Parse "ws://host[:port][/path]" with host 127.x.x.x, localhost or [::1].
 * 0, or -1 with the reason in err. */
int url_parse(const char *s, bench_url *u, char *err, size_t errlen);

#endif
