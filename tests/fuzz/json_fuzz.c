/* libFuzzer driver: a JSON body through ab_event_from_body(); see fuzz_check.h. */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_one(AB_FORMAT_JSON, data, size);
}
