"""A process-wide, short-lived, single-flight cache of one value read from a remote service.

Many concurrent requests that need the same remote read (the live state of every unsettled
training job) share it: at most one load runs at a time, its result serves every caller for
`ttl_s`, callers arriving while a reload is in flight get the previous value instead of waiting,
and a failed reload keeps serving the previous value (stale-while-error) until the next try. The
caller that reloads an expired value may bound its own wait (`get(load, wait_s)`): past it, it
serves the previous value while the reload finishes in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LiveCache(Generic[T]):
    """One cached value; `get(load)` returns it, calling `load` at most once per `ttl_s`."""

    def __init__(self, name: str, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._loading: threading.Event | None = None  # set when the load in flight ends
        self._expires = float("-inf")
        self._has_value = False
        self._value: T | None = None
        self._error: Exception | None = None  # the last failure when there is no value to serve

    def get(self, load: Callable[[], T], wait_s: float | None = None) -> T:
        """The cached value, reloaded by this caller if it expired and no one else is loading.
        With `wait_s` and an earlier value, the reload runs in a thread of its own and this caller
        waits for it at most `wait_s`, then serves the earlier value (the reload goes on and serves
        the next callers): a slow remote service never holds a request longer than that. Raises the
        load's exception only when there is no earlier value to serve."""
        with self._lock:
            if self._clock() < self._expires or (self._loading is not None and self._has_value):
                return self._result()
            in_flight = self._loading
            if in_flight is None:
                self._loading = loading = threading.Event()
                in_background = wait_s is not None and self._has_value
        if in_flight is not None:  # the first load is in flight: wait for it
            in_flight.wait()
            with self._lock:
                return self._result()
        if in_background:
            threading.Thread(target=self._load, args=(load,), name=f"reload {self.name}", daemon=True).start()
            loading.wait(wait_s)
        else:
            self._load(load)
        with self._lock:
            return self._result()

    def _load(self, load: Callable[[], T]) -> None:
        try:
            value = load()
        except Exception as exc:
            with self._lock:
                self._finish()
                if self._has_value:
                    log.warning("%s: reload failed, serving the previous value: %s", self.name, exc)
                else:
                    self._error = exc
            return
        except BaseException:
            with self._lock:
                self._finish()
            raise
        with self._lock:
            self._finish()
            self._has_value, self._value, self._error = True, value, None

    def clear(self) -> None:
        """Forgets the value (the next `get` loads)."""
        with self._lock:
            self._expires, self._has_value, self._value, self._error = float("-inf"), False, None, None

    def _finish(self) -> None:
        self._expires = self._clock() + self.ttl_s
        assert self._loading is not None
        self._loading.set()
        self._loading = None

    def _result(self) -> T:
        if self._has_value:
            return self._value  # type: ignore[return-value]
        assert self._error is not None
        raise self._error
