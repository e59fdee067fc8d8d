#include "dw/mailbox.h"

#include "dw/util.h"

int dw_mailbox_init(dw_mailbox *mb, void (*wake)(void *arg), void *wake_arg)
{
    mb->head = mb->tail = NULL;
    mb->kicked = false;
    mb->wake = wake;
    mb->wake_arg = wake_arg;
    if (pthread_mutex_init(&mb->mu, NULL)) return -1;
    if (dw_cond_init_mono(&mb->cv)) {
        pthread_mutex_destroy(&mb->mu);
        return -1;
    }
    return 0;
}

void dw_mailbox_destroy(dw_mailbox *mb)
{
    dw_mail_free_list(mb->head);
    mb->head = mb->tail = NULL;
    pthread_cond_destroy(&mb->cv);
    pthread_mutex_destroy(&mb->mu);
}

void dw_mailbox_post(dw_mailbox *mb, dw_mail *m)
{
    if (!m) return;
    m->next = NULL;
    pthread_mutex_lock(&mb->mu);
    /* Only the post that finds the mailbox empty wakes the consumer: mail
     * already waiting had its own wake, and the take that ends that wait
     * takes this mail with it. (For the edge each wake is a write to lws's
     * pipe and one more pass of its poll() over every socket; a burst of
     * JetStream acks used to be one of each per ack.) */
    bool was_empty = mb->head == NULL;
    if (mb->tail)
        mb->tail->next = m;
    else
        mb->head = m;
    mb->tail = m;
    pthread_cond_signal(&mb->cv);
    pthread_mutex_unlock(&mb->mu);
    if (mb->wake && was_empty) mb->wake(mb->wake_arg);
}

void dw_mailbox_kick(dw_mailbox *mb)
{
    pthread_mutex_lock(&mb->mu);
    mb->kicked = true;
    pthread_cond_signal(&mb->cv);
    pthread_mutex_unlock(&mb->mu);
    if (mb->wake) mb->wake(mb->wake_arg);
}

dw_mail *dw_mailbox_take(dw_mailbox *mb)
{
    pthread_mutex_lock(&mb->mu);
    dw_mail *m = mb->head;
    mb->head = mb->tail = NULL;
    mb->kicked = false;
    pthread_mutex_unlock(&mb->mu);
    return m;
}

dw_mail *dw_mailbox_wait(dw_mailbox *mb, int64_t deadline_ns)
{
    pthread_mutex_lock(&mb->mu);
    while (!mb->head && !mb->kicked && dw_mono_ns() < deadline_ns)
        dw_cond_wait_until(&mb->cv, &mb->mu, deadline_ns);
    dw_mail *m = mb->head;
    mb->head = mb->tail = NULL;
    mb->kicked = false;
    pthread_mutex_unlock(&mb->mu);
    return m;
}

void dw_mail_free(dw_mail *m)
{
    if (m && m->destroy) m->destroy(m);
}

void dw_mail_free_list(dw_mail *m)
{
    while (m) {
        dw_mail *next = m->next;
        dw_mail_free(m);
        m = next;
    }
}
