/* libev, loaded only for DW_EVENT_LOOP=libev: the default poll() loop then
 * needs neither libev nor lws's evlib plugin at run time. The plugin links
 * the same libev.so.4, so the loop made here is the one it drives. Main
 * thread only. */
#ifndef EDGE_EVLIB_H
#define EDGE_EVLIB_H

struct ev_loop;

typedef struct edge_libev {
    void *lib;
    struct ev_loop *(*loop_new)(unsigned int flags);
    int (*run)(struct ev_loop *loop, int flags);
    void (*loop_destroy)(struct ev_loop *loop);
    struct ev_loop *loop;
} edge_libev;

/* dlopen libev.so.4 and make a loop. 0, or -1 (dlerror() may say why). */
int libev_start(edge_libev *ev);
/* After lws_context_destroy. Safe on a zeroed or half-started one. */
void libev_stop(edge_libev *ev);

#endif
