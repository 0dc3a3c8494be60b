/*
 * Copyright 2026 The Nexus Authors
 * SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
 *
 * libnexus from C, against a real nexus-backend (tests/c_program.rs builds and runs it):
 *   roundtrip CONTROL_SOCKET VM_ID TENANT PREFIX EXPECTED
 * reads PREFIX/from-rust (which must hold EXPECTED), then PUTs, GETs (three ways), HEADs,
 * LISTs, DELETEs and write-behind PUTs objects under PREFIX/, leaving PREFIX/from-c
 * ("written by C") and PREFIX/behind-c ("behind") for the Rust side to read.
 * Exit status 0 when every check passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nexus.h"

static int failures = 0;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "FAIL line %d: ", __LINE__);                         \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, " (last error: %s)\n", nexus_last_error_message()); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

#define OK(call) CHECK((status = (call)) == NEXUS_STATUS_OK, "%s: %s", #call, nexus_strerror(status))

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s CONTROL_SOCKET VM_ID TENANT PREFIX EXPECTED\n", argv[0]);
        return 2;
    }
    const char *prefix = argv[4];
    const char *expected = argv[5];
    char key[512], from_c[512], gone[512], behind[512];
    snprintf(key, sizeof key, "%s/from-rust", prefix);
    snprintf(from_c, sizeof from_c, "%s/from-c", prefix);
    snprintf(gone, sizeof gone, "%s/deleted-by-c", prefix);
    snprintf(behind, sizeof behind, "%s/behind-c", prefix);
    NexusStatus status;

    CHECK(nexus_abi_version() == NEXUS_ABI_VERSION, "ABI version %u", nexus_abi_version());
    NexusClient *client = NULL;
    status = nexus_open_loopback(argv[1], argv[2], argv[3], 0, &client);
    if (status != NEXUS_STATUS_OK) {
        fprintf(stderr, "open: %s: %s\n", nexus_strerror(status), nexus_last_error_message());
        return 1;
    }
    CHECK(nexus_max_payload(client) > 0, "max payload");

    /* The object the Rust side wrote: into a buffer, too small a buffer, library-owned. */
    uint8_t buf[256];
    size_t len = 0;
    OK(nexus_get(client, key, buf, sizeof buf, &len));
    CHECK(len == strlen(expected) && memcmp(buf, expected, len) == 0, "from-rust: %.*s",
          (int)len, (const char *)buf);
    status = nexus_get(client, key, buf, 3, &len);
    CHECK(status == NEXUS_STATUS_BUFFER_TOO_SMALL && len == strlen(expected),
          "small buffer: %d, %zu", status, len);
    uint8_t *data = NULL;
    OK(nexus_get_alloc(client, key, &data, &len));
    CHECK(data != NULL && len == strlen(expected) && memcmp(data, expected, len) == 0,
          "get_alloc");
    nexus_buf_free(data, len);
    uint64_t size = 0;
    OK(nexus_get_range(client, key, 2, buf, 4, &len, &size));
    CHECK(len == 4 && size == strlen(expected) && memcmp(buf, expected + 2, 4) == 0, "range");

    /* PUT, GET back, HEAD. */
    const char *text = "written by C";
    OK(nexus_put(client, from_c, (const uint8_t *)text, strlen(text)));
    OK(nexus_get(client, from_c, buf, sizeof buf, &len));
    CHECK(len == strlen(text) && memcmp(buf, text, len) == 0, "from-c read back");
    NexusObjectInfo info;
    OK(nexus_head(client, from_c, &info));
    CHECK(info.size == strlen(text), "head size %llu", (unsigned long long)info.size);
    CHECK(info.etag_len == strlen(info.etag), "etag length");

    /* DELETE, then NOT_FOUND on GET and HEAD. */
    OK(nexus_put(client, gone, (const uint8_t *)"x", 1));
    OK(nexus_delete(client, gone));
    status = nexus_get(client, gone, buf, sizeof buf, &len);
    CHECK(status == NEXUS_STATUS_NOT_FOUND, "get after delete: %s", nexus_strerror(status));
    CHECK(strlen(nexus_last_error_message()) > 0, "a message for NOT_FOUND");
    status = nexus_head(client, gone, &info);
    CHECK(status == NEXUS_STATUS_NOT_FOUND, "head after delete: %s", nexus_strerror(status));

    /* Write-behind, flushed. */
    OK(nexus_put_behind(client, behind, (const uint8_t *)"behind", 6));
    OK(nexus_flush(client));

    /* LIST the prefix, page by page. */
    char list_prefix[520];
    snprintf(list_prefix, sizeof list_prefix, "%s/", prefix);
    int seen_rust = 0, seen_c = 0, seen_gone = 0, entries = 0;
    const uint8_t *token = NULL;
    size_t token_len = 0;
    uint8_t saved[1024];
    for (;;) {
        NexusListPage *page = NULL;
        OK(nexus_list(client, list_prefix, token, token_len, &page));
        if (status != NEXUS_STATUS_OK) break;
        for (size_t i = 0; i < nexus_list_page_len(page); i++) {
            NexusListEntry entry;
            OK(nexus_list_page_entry(page, i, &entry));
            entries++;
            seen_rust += strcmp(entry.key, key) == 0;
            seen_gone += strcmp(entry.key, gone) == 0;
            if (strcmp(entry.key, from_c) == 0) {
                seen_c++;
                CHECK(entry.size == strlen(text), "listed size");
            }
        }
        NexusListEntry none;
        CHECK(nexus_list_page_entry(page, nexus_list_page_len(page), &none) ==
                  NEXUS_STATUS_INVALID_ARGUMENT, "entry out of range");
        const uint8_t *next = NULL;
        size_t next_len = 0;
        int more = nexus_list_page_next_token(page, &next, &next_len);
        if (more && next_len <= sizeof saved) {
            memcpy(saved, next, next_len);
            token = saved;
            token_len = next_len;
        }
        nexus_list_page_free(page);
        if (!more) break;
    }
    CHECK(seen_rust == 1 && seen_c == 1 && seen_gone == 0, "listed %d entries: rust %d c %d gone %d",
          entries, seen_rust, seen_c, seen_gone);

    /* Bad arguments are refused, not crashed on. */
    CHECK(nexus_get(client, NULL, buf, sizeof buf, &len) == NEXUS_STATUS_INVALID_ARGUMENT, "NULL key");
    CHECK(nexus_put(NULL, from_c, buf, 1) == NEXUS_STATUS_INVALID_ARGUMENT, "NULL client");

    nexus_close(client);
    printf("roundtrip: %d entries listed, %d failures\n", entries, failures);
    return failures == 0 ? 0 : 1;
}
