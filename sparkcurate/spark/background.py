"""One call run on a daemon thread, whose value or error the caller takes later (``Background.result``).

Why: a fresh application's fixed costs are seconds each (starting Spark, the executor probe, the models' pre-flight
on the driver; the model load in a Python worker), and several can overlap. Every such overlap needs the same
four things: start the call at once, wait with or without a limit, hand its error to the caller's thread (never
lost on the thread), and say how long it took. The driver's session start (``spark.session``), the executor probe
(``spark.resources``) and the worker's model load (``spark.stage``) use this one class.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Background(Generic[T]):
    """``fn(*args)`` on a daemon thread named ``name``, started at once. ``result`` waits for it and returns its
    value or raises its error (any ``BaseException``) in the calling thread; ``seconds`` is how long it ran."""

    def __init__(self, fn: Callable[..., T], *args: Any, name: str) -> None:
        self.seconds = 0.0
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        start = time.perf_counter()
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to result(), never lost
            self._error = exc
        finally:
            self.seconds = time.perf_counter() - start

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the call (at most ``timeout`` seconds); whether it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> T:
        """The call's value, once it has ended; its error, raised here, if it failed."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
