"""schemathesis hooks of scripts/api-fuzz."""

import math

import schemathesis

# A long poll (`POST /v1/sync` with `wait_ms`) on groups with nothing new waits its whole
# `wait_ms`, up to 30 s, which would spend the fuzzing time on waiting. Whole values in range are
# cut to this many milliseconds; it is still a valid value, so a valid request stays valid and an
# invalid one stays invalid.
LONGEST_WAIT_MS = 20


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/v1/sync" or not isinstance(case.body, dict):
        return
    wait = case.body.get("wait_ms")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait):
        return
    if wait == int(wait) and LONGEST_WAIT_MS < wait <= 30_000:
        case.body["wait_ms"] = type(wait)(LONGEST_WAIT_MS)
