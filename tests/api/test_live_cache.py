"""`LiveCache` with a bounded wait (`get(load, wait_s)`): the request that finds the shared value
expired reloads it but does not wait longer than `wait_s` for a slow remote service (bench.load: the
list's p99 was 18.9 s under load, the reloading request waiting for Airflow each TTL); it serves the
previous value while the reload finishes in the background, single-flight as before."""

from __future__ import annotations

import threading
import time

from api.services.live_cache import LiveCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Load:
    """A remote read that blocks until `release` (or fails with `error`)."""

    def __init__(self, value: str) -> None:
        self.value, self.calls, self.error = value, 0, None
        self.release = threading.Event()

    def __call__(self) -> str:
        self.calls += 1
        self.release.wait(30)
        if self.error:
            raise self.error
        return self.value


def expired_cache() -> tuple[LiveCache[str], Clock]:
    clock = Clock()
    cache: LiveCache[str] = LiveCache("runs", 2.0, clock)
    assert cache.get(lambda: "first", wait_s=0.1) == "first"  # no earlier value: waited for
    clock.now += 5
    return cache, clock


def test_a_slow_reload_is_not_waited_for_past_wait_s() -> None:
    cache, clock = expired_cache()
    slow = Load("second")
    asked = time.monotonic()
    assert cache.get(slow, wait_s=0.1) == "first"  # the previous value, after at most wait_s
    assert time.monotonic() - asked < 10  # not the 30 s the load takes
    assert cache.get(slow, wait_s=0.1) == "first" and slow.calls == 1  # one reload in flight, not two
    slow.release.set()
    deadline = time.monotonic() + 10
    while cache.get(slow, wait_s=0.1) != "second" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get(slow, wait_s=0.1) == "second" and slow.calls == 1  # the background reload serves


def test_a_reload_within_wait_s_is_served_at_once() -> None:
    cache, _ = expired_cache()
    quick = Load("second")
    quick.release.set()
    assert cache.get(quick, wait_s=5) == "second" and quick.calls == 1


def test_without_an_earlier_value_the_load_is_waited_for() -> None:
    cache: LiveCache[str] = LiveCache("runs", 2.0, Clock())
    load = Load("first")
    threading.Timer(0.3, load.release.set).start()
    assert cache.get(load, wait_s=0.05) == "first"


def test_a_failed_background_reload_keeps_the_previous_value() -> None:
    cache, clock = expired_cache()
    failing = Load("never")
    failing.error = RuntimeError("Airflow answered 503")
    failing.release.set()
    assert cache.get(failing, wait_s=5) == "first"
    clock.now += 5
    assert cache.get(lambda: "third", wait_s=5) == "third"
