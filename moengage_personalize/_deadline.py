"""One call's deadline, and the one thread that enforces every deadline of a client.

A :class:`Deadline` is made by whoever starts a call (the facade for a fetch, the event dispatcher
for an events attempt) and passed explicitly down to the transport. The transport attaches the
connection it is using; when the deadline passes, the :class:`Watchdog` expires it: the socket is
shut down (so the thread blocked on it returns at once, whatever the server does) and
``on_expire`` runs (the facade fails the caller's Future there). Sockets are blocking between
those two points: no per-read timeout, no poll before each read.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("moengage_personalize")


class Deadline:
    """When a call must be over (a ``time.monotonic()`` value), and what to stop when it is.

    ``budget`` and ``name`` only word the error (``"3 s (config.timeout)"``).
    """

    __slots__ = (
        "_lock",
        "_sock",
        "at",
        "budget",
        "done",
        "expired",
        "here",
        "name",
        "on_expire",
        "on_start",
        "start_at",
        "watched",
    )

    def __init__(
        self,
        budget: float,
        name: str = "config.timeout",
        on_expire: Callable[[], None] | None = None,
        spent: float = 0.0,
    ) -> None:
        self.at = time.monotonic() + budget - spent  # ``spent``: of the budget, already gone
        self.budget = budget
        self.name = name
        self.on_expire = on_expire
        self.on_start: Callable[[], None] | None = None  # see start_by()
        self.start_at = math.inf
        self.expired = False
        self.done = False  # set by the call's owner when it ends: the watchdog forgets it
        self.watched = False  # a watchdog will expire it (else reads need timeouts of their own)
        self.here = False  # the call runs on the thread waiting for it: a connect there waits
        # at most until the deadline (a name look-up cannot be interrupted; a worker may wait)
        self._sock: Any = None  # the socket the call is using (kept even when http.client hands
        # it to a response that closes the connection)
        self._lock = threading.Lock()

    def start_by(self, delay: float, on_start: Callable[[], None]) -> None:
        """Also run ``on_start`` (on the watchdog's thread) ``delay`` seconds from now unless
        the call ended or :meth:`started` was called by then; set before :meth:`Watchdog.watch`."""
        self.start_at = time.monotonic() + delay
        self.on_start = on_start

    def started(self) -> None:
        self.on_start = None

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def describe(self) -> str:
        return f"its deadline of {self.budget:g} s ({self.name})"

    def attach(self, sock: Any) -> bool:
        """``sock`` carries the call from now on; False if the deadline passed already."""
        with self._lock:
            if self.expired:
                return False
            self._sock = sock
            return True

    def detach(self) -> None:
        """The call is done with its socket (before its connection serves anybody else)."""
        with self._lock:
            self._sock = None

    def stop(self) -> None:
        """Shut the call's socket down (never raises): its thread returns at once."""
        with self._lock:
            self.expired = True
            sock = self._sock
            if sock is not None:
                # socket.socket's own shutdown: an SSLSocket's would drop its TLS state under
                # the reading thread's feet; closed meanwhile: nothing left to stop
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def expire(self) -> None:
        """:meth:`stop`, then run ``on_expire`` (once)."""
        self.stop()
        callback = self.on_expire
        if callback is not None:
            self.on_expire = None
            callback()


_Entry = tuple[float, int, Deadline]


class Watchdog:
    """Expires deadlines on time, on a thread of its own (started with the first one).

    The thread itself only shuts sockets down and starts calls nobody started (quick, and no code
    of the app's): ``on_expire`` callbacks (which complete Futures, so they run the app's done
    callbacks and ``on_error`` hook) run on a second thread, so that a callback that blocks, or
    waits for another call, can never hold up a deadline.

    Callers never take its lock on the common path: :meth:`watch` appends to an inbox (atomic)
    and wakes the thread only when it would otherwise sleep past the new deadline. A call that
    ended only sets ``deadline.done``: the thread drops such entries when it next wakes. While
    deadlines keep coming (the last one less than ``LINGER`` ago), the thread wakes every
    ``tick`` seconds by itself, so that a short deadline (a call's start-by) costs no wake-up
    of its own.
    """

    LINGER = 0.5

    def __init__(self, on_thread: Callable[[], None] | None = None, tick: float = math.inf) -> None:
        self._on_thread = on_thread  # runs first on the watchdog's own thread
        self._tick = tick
        self._last_watch = -math.inf  # about when the newest call to start was made
        self._cond = threading.Condition(threading.Lock())
        self._inbox: collections.deque[_Entry] = collections.deque()
        self._heap: list[_Entry] = []  # the thread's own
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._completer: threading.Thread | None = None
        self._completions: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._stopped = False
        self._wake_at = math.inf  # when the thread next wakes by itself; -inf while awake

    def watch(self, deadline: Deadline) -> bool:
        """Expire ``deadline`` when it passes; False once stopped, or when the thread cannot be
        started (interpreter exit): then nobody will, and the caller bounds its reads itself."""
        if self._stopped:
            return False
        if self._thread is None and not self._start():
            return False
        due = deadline.start_at if deadline.on_start is not None else deadline.at
        self._inbox.append((due, next(self._seq), deadline))
        if deadline.on_start is not None:  # a call to start: tick while they keep coming
            self._last_watch = deadline.start_at
        if self._wake_at > due:
            with self._cond:
                self._cond.notify()
        deadline.watched = not self._stopped
        return deadline.watched

    def _start(self) -> bool:
        with self._cond:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(
                    target=self._run, name="moengage-personalize-deadline", daemon=True
                )
                try:
                    thread.start()
                except RuntimeError:  # "can't create new thread at interpreter shutdown"
                    return False
                self._thread = thread
            return self._thread is not None

    def stop(self, timeout: float) -> None:
        """Stop the thread (waiting at most ``timeout``), then expire, here and now, every
        deadline it still held: no call is left with a socket nobody will shut."""
        end = time.monotonic() + timeout
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, end - time.monotonic()))
        with self._cond:
            left = [entry[2] for entry in (*self._heap, *self._inbox) if not entry[2].done]
            self._heap.clear()
            self._inbox.clear()
        for deadline in left:
            deadline.expire()
        self._completions.put(None)  # ends the completer once it ran what is queued

    def _complete(self) -> None:
        """The completer thread: runs ``on_expire`` callbacks in order."""
        while True:
            callback = self._completions.get()
            if callback is None:
                return
            try:
                callback()
            except Exception:  # a callback's bug must not end the others
                log.exception("moengage-personalize: completing an expired call failed")

    def _hand_over(self, deadline: Deadline) -> None:
        """Shut ``deadline``'s socket now; its ``on_expire`` goes to the completer thread."""
        deadline.stop()
        callback = deadline.on_expire
        if callback is None:
            return
        deadline.on_expire = None
        if self._completer is None:
            completer = threading.Thread(
                target=self._complete, name="moengage-personalize-expire", daemon=True
            )
            try:
                completer.start()
            except RuntimeError:  # interpreter exit: run it here
                callback()
                return
            self._completer = completer
        self._completions.put(callback)

    def _run(self) -> None:
        if self._on_thread is not None:
            self._on_thread()
        while True:
            try:
                if self._watch():
                    return
            except Exception:  # a bug here must not end every deadline: log it, go on
                log.exception("moengage-personalize: the deadline thread failed; going on")

    def _watch(self) -> bool:
        """Expire deadlines as they pass until stopped (True)."""
        expired: list[Deadline] = []
        starting: list[Callable[[], None]] = []
        heap, inbox = self._heap, self._inbox
        while True:
            with self._cond:
                while not self._stopped:
                    self._wake_at = -math.inf
                    while inbox:
                        entry = inbox.popleft()
                        if not entry[2].done:  # most calls end before the thread looks
                            heapq.heappush(heap, entry)
                    now = time.monotonic()
                    while heap and (heap[0][0] <= now or heap[0][2].done):
                        due, _, deadline = heapq.heappop(heap)
                        if deadline.done:
                            continue
                        if due < deadline.at:  # its start-by entry: the deadline stays watched
                            on_start = deadline.on_start
                            if on_start is not None:
                                deadline.on_start = None
                                starting.append(on_start)
                            heapq.heappush(heap, (deadline.at, next(self._seq), deadline))
                        else:
                            expired.append(deadline)
                    if expired or starting:
                        break
                    self._wake_at = heap[0][0] if heap else math.inf
                    if now - self._last_watch < self.LINGER:  # busy: tick, unasked
                        self._wake_at = min(self._wake_at, now + self._tick)
                    if inbox:  # arrived meanwhile; its caller may have seen -inf
                        continue
                    self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)
                if self._stopped:
                    return True
            for deadline in expired:  # outside the lock
                self._hand_over(deadline)
            for on_start in starting:
                try:
                    on_start()
                except Exception:  # (an injected executor's own error): the others go on
                    log.exception("moengage-personalize: starting a call failed")
            expired.clear()
            starting.clear()
