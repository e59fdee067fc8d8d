/* Every protobuf message a service decodes from the bus (proto/dw.proto).
 * data[0] picks the type, the rest is the packed message. A decoded message
 * is walked field by field through its descriptor (in instrumented code, so
 * a string without its NUL or a short bytes field is a sanitizer report),
 * then packed, decoded and packed again: the two packings must be equal. */
#include <stdlib.h>
#include <string.h>

#include "dw/dw.pb-c.h"
#include "fuzz.h"

static const ProtobufCMessageDescriptor *const types[] = {
    &dw__conn_event__descriptor, &dw__conn_record__descriptor,    &dw__chat_message__descriptor,
    &dw__room_query__descriptor, &dw__room_edges__descriptor,     &dw__list_query__descriptor,
    &dw__list_reply__descriptor, &dw__edges_reply__descriptor,    &dw__delivery_item__descriptor,
    &dw__delivery__descriptor,   &dw__delivery_reply__descriptor, &dw__edge_heartbeat__descriptor,
};
#define NTYPES (sizeof types / sizeof types[0])

static volatile uint64_t sink;
/* protobuf-c 1.4 accepts field number 0 when its tag is encoded overlong
 * (80 00) and keeps it as an unknown field, which it then packs as the
 * canonical 00 that it refuses to decode. The services never re-publish
 * unknown fields, so such a message skips the round trip. */
static int has_field_zero;

static void walk(const ProtobufCMessage *m, int depth);

static void walk_value(const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        if (!s) abort(); /* protobuf-c gives "" for an absent string, never NULL */
        sink += strlen(s);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        if (b->len && !b->data) abort();
        for (size_t i = 0; i < b->len; i++)
            sink += b->data[i];
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (sub) walk(sub, depth + 1);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL: sink += *(const protobuf_c_boolean *)p; break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: sink += *(const uint64_t *)p; break;
    default: sink += *(const uint32_t *)p; break;
    }
}

static size_t value_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    default: return 4;
    }
}

static void walk(const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (depth > 8 || !d) abort(); /* dw.proto nests two levels at most */
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *p = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(char *const *)p;
            if (n && !arr) abort();
            for (size_t j = 0; j < n; j++)
                walk_value(f, arr + j * value_size(f), depth);
        } else {
            walk_value(f, p, depth);
        }
    }
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0) has_field_zero = 1;
        for (size_t j = 0; j < m->unknown_fields[i].len; j++)
            sink += m->unknown_fields[i].data[j];
    }
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (!buf) abort();
    if (protobuf_c_message_pack(m, buf) != *len) abort();
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const ProtobufCMessageDescriptor *d = types[data[0] % NTYPES];
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);
    if (!m) return 0;
    if (!protobuf_c_message_check(m)) abort();
    has_field_zero = 0;
    walk(m, 0);
    if (has_field_zero) {
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }
    size_t n1, n2;
    uint8_t *p1 = pack(m, &n1);
    protobuf_c_message_free_unpacked(m, NULL);
    ProtobufCMessage *m2 = protobuf_c_message_unpack(d, NULL, n1, p1);
    if (!m2) abort(); /* what we packed must decode */
    uint8_t *p2 = pack(m2, &n2);
    if (n1 != n2 || memcmp(p1, p2, n1) != 0) abort();
    protobuf_c_message_free_unpacked(m2, NULL);
    free(p1);
    free(p2);
    return 0;
}
