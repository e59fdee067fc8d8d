#include "evlib.h"

#include <dlfcn.h>
#include <ev.h>
#include <string.h>

int libev_start(edge_libev *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->lib = dlopen("libev.so.4", RTLD_NOW | RTLD_GLOBAL);
    if (!ev->lib) return -1;
    /* POSIX's way to turn dlsym's void * into a function pointer. */
    *(void **)&ev->loop_new = dlsym(ev->lib, "ev_loop_new");
    *(void **)&ev->run = dlsym(ev->lib, "ev_run");
    *(void **)&ev->loop_destroy = dlsym(ev->lib, "ev_loop_destroy");
    if (!ev->loop_new || !ev->run || !ev->loop_destroy) return -1;
    ev->loop = ev->loop_new(EVFLAG_AUTO);
    return ev->loop ? 0 : -1;
}

/* After lws_context_destroy. Safe on a zeroed or half-started one. */
void libev_stop(edge_libev *ev)
{
    if (ev->loop) ev->loop_destroy(ev->loop);
    if (ev->lib) dlclose(ev->lib);
    memset(ev, 0, sizeof *ev);
}
