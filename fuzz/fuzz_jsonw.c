// fuzz-sources: src/jsonw.c src/util.c src/log.c
/* libFuzzer harness for jsonw, which writes request fields a sandbox chooses (host, path,
 * method) into the audit line. Input: any bytes, taken as a string up to its first NUL.
 * Properties:
 * - the output is ASCII and jansson parses it as an object with that one member;
 * - when the input is valid UTF-8 (jansson accepts it as a string), it reads back exactly;
 * - otherwise it reads back as valid UTF-8 no longer than three bytes per input byte. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz.h"
#include "jsonw.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *in = xstrndup((const char *)data, size);
    size_t n = strlen(in);
    struct jsonw w;
    jsonw_begin(&w, 0);
    jsonw_str(&w, "v", in);
    size_t len;
    char *text = jsonw_finish(&w, &len);
    CHECK(strlen(text) == len);
    for (size_t i = 0; i < len; i++)
        CHECK((unsigned char)text[i] >= 0x20 && (unsigned char)text[i] < 0x80);
    json_t *o = json_loadb(text, len, 0, NULL);
    CHECK(o != NULL && json_object_size(o) == 1);
    json_t *v = json_object_get(o, "v");
    CHECK(json_is_string(v));
    json_t *direct = json_stringn(in, n); /* NULL when in is not valid UTF-8 */
    if (direct != NULL) {
        CHECK(json_string_length(v) == n);
        CHECK(memcmp(json_string_value(v), in, n) == 0);
    } else {
        CHECK(json_string_length(v) <= 3 * n);
    }
    json_decref(direct);
    json_decref(o);
    free(text);
    free(in);
    return 0;
}
