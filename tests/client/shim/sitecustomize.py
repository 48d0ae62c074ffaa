"""Loaded by the `qlora` processes of tests/client (PYTHONPATH=tests/client/shim) to play the
network's part in failures: it records every PUT to a pre-signed S3 URL and, on request, fails
one part's first attempt (a dropped connection) or presses Ctrl-C when a part is about to go up.

    QLORA_TEST_PUT_LOG=FILE           one line per PUT attempt: the part number (0: a single PUT)
    QLORA_TEST_FAIL_PART_ONCE=N       the first PUT of part N raises httpx.ConnectError
    QLORA_TEST_INTERRUPT_AT_PART=N    SIGINT to the process when part N is about to be PUT
"""

import os
import re
import signal

try:
    import httpx
except ImportError:  # not a client process
    httpx = None

if httpx is not None and any(k.startswith("QLORA_TEST_") for k in os.environ):
    _send = httpx.Client.send
    _failed: set[int] = set()

    def _part(url: str) -> int | None:
        if "X-Amz-Signature=" not in url:
            return None
        found = re.search(r"[?&]partNumber=(\d+)", url)
        return int(found.group(1)) if found else 0

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        part = _part(str(request.url)) if request.method == "PUT" else None
        if part is not None:
            log = os.environ.get("QLORA_TEST_PUT_LOG")
            if log:
                with open(log, "a") as out:
                    out.write(f"{part}\n")
            if str(part) == os.environ.get("QLORA_TEST_INTERRUPT_AT_PART"):
                os.kill(os.getpid(), signal.SIGINT)
                raise httpx.ConnectError("test: interrupted", request=request)
            if str(part) == os.environ.get("QLORA_TEST_FAIL_PART_ONCE") and part not in _failed:
                _failed.add(part)
                raise httpx.ConnectError("test: connection reset by peer", request=request)
        return _send(self, request, **kwargs)

    httpx.Client.send = send
