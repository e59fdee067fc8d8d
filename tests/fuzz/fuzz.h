/* The libFuzzer entry point every harness defines (and replay_main.c calls).
 * Harnesses must return 0 and abort() on a broken invariant. */
#ifndef DW_FUZZ_H
#define DW_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
