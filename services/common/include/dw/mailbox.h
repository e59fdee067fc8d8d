/* A mailbox: other threads post mail, one thread takes it. The way news
 * reaches a thread that owns state no one else may touch: the edge's lws
 * thread (nats.c callbacks and job workers post; wake() is
 * lws_cancel_service), the dispatcher's loop (it waits on the mailbox).
 *
 * Mail is the caller's struct with a dw_mail inside (first member, or found
 * with offsetof). Each carries its own destructor, so whoever is left with
 * mail nobody took (the mailbox at destroy time, a consumer that stops
 * early) frees it without knowing its kind.
 *
 * Ownership: a posted mail belongs to the mailbox until taken; taken mail
 * is the taker's (dw_mail_free when done, or a destructor of its own).
 * Threads: post and kick from any thread; take and wait from the one
 * consumer; init and destroy while no one else uses it. */
#ifndef DW_MAILBOX_H
#define DW_MAILBOX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct dw_mail {
    struct dw_mail *next;
    /* Frees the mail and what it owns. NULL: nothing to free (static or
     * owned elsewhere). */
    void (*destroy)(struct dw_mail *m);
} dw_mail;

typedef struct dw_mailbox {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* monotonic (dw_cond_init_mono) */
    dw_mail *head, *tail;
    bool kicked;
    void (*wake)(void *arg); /* after a post into an empty mailbox, outside the lock; may be NULL */
    void *wake_arg;
} dw_mailbox;

/* wake(wake_arg) runs on the posting thread after a post that found the
 * mailbox empty (for a consumer that sleeps elsewhere, e.g. in poll()):
 * mail posted while some is waiting is taken with it, so the consumer must
 * take everything it is woken for (dw_mailbox_take does); NULL for one that
 * waits in dw_mailbox_wait. 0 or -1. */
int dw_mailbox_init(dw_mailbox *mb, void (*wake)(void *arg), void *wake_arg);

/* Free every mail not taken (their destructors) and the lock. */
void dw_mailbox_destroy(dw_mailbox *mb);

/* Queue m (the mailbox takes it) and wake the consumer. NULL is ignored. */
void dw_mailbox_post(dw_mailbox *mb, dw_mail *m);

/* Wake a consumer in dw_mailbox_wait without mail (news it reads from
 * elsewhere, e.g. an atomic flag). */
void dw_mailbox_kick(dw_mailbox *mb);

/* Take everything queued, oldest first (linked by next), or NULL. */
dw_mail *dw_mailbox_take(dw_mailbox *mb);

/* Take everything queued; if nothing is, wait for a post or a kick until
 * deadline_ns (dw_mono_ns clock) at the latest. NULL when none came. */
dw_mail *dw_mailbox_wait(dw_mailbox *mb, int64_t deadline_ns);

/* Run the destructor of one mail. NULL-safe. */
void dw_mail_free(dw_mail *m);
/* The same for a list (linked by next). */
void dw_mail_free_list(dw_mail *m);

#endif
