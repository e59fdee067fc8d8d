#include "wsc.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int wsc_key_new(char *key)
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1) return -1;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw);
    return 0;
}

void wsc_accept_for(const char *key, char *out)
{
    char cat[WSC_KEY_LEN + sizeof ws_guid];
    size_t klen = strnlen(key, WSC_KEY_LEN);
    memcpy(cat, key, klen);
    memcpy(cat + klen, ws_guid, sizeof ws_guid - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(cat, klen + sizeof ws_guid - 1, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

size_t wsc_request(char *buf, size_t cap, const char *hostport, const char *path, const char *key,
                   const char *protocol)
{
    int n = snprintf(buf, cap,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "%s%s%s"
                     "User-Agent: dwbench\r\n"
                     "\r\n",
                     path, hostport, key, protocol ? "Sec-WebSocket-Protocol: " : "",
                     protocol ? protocol : "", protocol ? "\r\n" : "");
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

int wsc_response(const char *buf, size_t len, const char *key, size_t *hdr_len)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) return 0;
    *hdr_len = (size_t)(end - buf) + 4;
    if (*hdr_len < 12 || memcmp(buf, "HTTP/1.1 101", 12)) return -1;
    char want[WSC_ACCEPT_LEN + 1];
    wsc_accept_for(key, want);
    /* Walk the header lines; names are case-insensitive. */
    const char *p = memchr(buf, '\n', (size_t)(end - buf));
    while (p && p < end) {
        p++;
        const char *eol = memchr(p, '\r', (size_t)(end + 2 - p));
        if (!eol) break;
        static const char name[] = "Sec-WebSocket-Accept:";
        size_t nl = sizeof name - 1;
        if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl)) {
            const char *v = p + nl;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            return (size_t)(ve - v) == WSC_ACCEPT_LEN && !memcmp(v, want, WSC_ACCEPT_LEN) ? 1 : -1;
        }
        p = eol + 1;
    }
    return -1;
}

size_t wsc_frame_masked(unsigned char *dst, unsigned opcode, const void *payload, size_t len,
                        uint32_t mask)
{
    size_t h;
    dst[0] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        dst[1] = (unsigned char)(0x80 | len);
        h = 2;
    } else if (len < 65536) {
        dst[1] = 0x80 | 126;
        dst[2] = (unsigned char)(len >> 8);
        dst[3] = (unsigned char)len;
        h = 4;
    } else {
        dst[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            dst[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    unsigned char key[4];
    memcpy(key, &mask, 4);
    memcpy(dst + h, key, 4);
    h += 4;
    /* Eight bytes at a time: the key repeats every four bytes, so the same
     * 64-bit pattern masks every aligned-to-the-frame group of eight. */
    uint64_t k8;
    memcpy(&k8, key, 4);
    memcpy((unsigned char *)&k8 + 4, key, 4);
    const unsigned char *src = payload;
    unsigned char *out = dst + h;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k8;
        memcpy(out + i, &v, 8);
    }
    for (; i < len; i++)
        out[i] = src[i] ^ key[i & 3];
    return h + len;
}

long wsc_frame_parse(const unsigned char *b, size_t n, uint64_t max, wsc_frame *f)
{
    if (n < 2) return 0;
    if (b[0] & 0x70) return -1; /* no extension was negotiated */
    if (b[1] & 0x80) return -1; /* servers never mask */
    f->fin = b[0] >> 7;
    f->opcode = b[0] & 0x0f;
    uint64_t len = b[1] & 0x7f;
    size_t h = 2;
    if (len == 126) {
        if (n < 4) return 0;
        len = (uint64_t)b[2] << 8 | b[3];
        h = 4;
    } else if (len == 127) {
        if (n < 10) return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | b[2 + i];
        h = 10;
    }
    if (f->opcode >= 0x8 && (!f->fin || len > 125)) return -1;
    if (len > max) return -1;
    if (n - h < len) return 0;
    f->payload = b + h;
    f->len = len;
    return (long)(h + len);
}
