"""Small HTTP/1.1 servers on 127.0.0.1 that misbehave on purpose (test support, never shipped).

A :class:`FaultServer` answers the three Personalize endpoints. Each endpoint has a default
behaviour (healthy unless told otherwise) and a script of behaviours consumed one per request, so
a test can say "reset the connection three times, then answer" or switch a fault off with
:meth:`FaultServer.heal`. Behaviours write raw bytes on the socket: a delay before the headers, a
trickling body, a reset (RST through ``SO_LINGER`` 0) before the answer or in the middle of the
body, a body shorter than its ``Content-Length``, a body that is not JSON, a 50 MB body...

Every thread a server starts is named ``fault-server...`` so that tests can count the threads
of the code under test apart from the server's (:func:`client_side_threads`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import requests
import requests.adapters

from moengage_personalize import (
    DataSource,
    ExperienceCampaign,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    User,
)

from support import API_KEY, APP_ID, CONTEXT, DEFAULT_META, served, wait_for

META = "/v1/experiences/metadata"
FETCH = "/v1/experiences/fetch"
EVENTS = "/v1/experiences/events"
EVENTS_OK = {"status": "success", "message": "Your request has been accepted."}
SERVED_KEY = "cart-upsell"
THREAD_PREFIX = "fault-server"
MB = 1024 * 1024


def client_side_threads() -> int:
    """``threading.active_count()`` without the fault servers' own threads."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith(THREAD_PREFIX))


class Request:
    """One request as the server read it."""

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        target: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.target = path if target is None else target  # as sent: absolute through a proxy
        self.at = time.monotonic()  # when the server had read it
        self.answered: int | None = None  # the status of the complete answer sent, if any

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """A server-side connection and what a behaviour needs to misbehave on it."""

    def __init__(self, server: FaultServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.interrupt = server.interrupt  # the server's when the current request came in

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the client went away."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the server stops or is healed; True if the wait ran out."""
        return not self.interrupt.wait(seconds)

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER on, timeout 0)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# A behaviour answers (or not) one request; it returns True to keep the connection for the next.
Behaviour = Callable[[Conn, Request], bool]


def head(status: int, headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    reasons = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
    reasons.update({500: "Internal Server Error", 503: "Service Unavailable"})
    lines = [f"HTTP/1.1 {status} {reasons.get(status, 'Whatever')}"]
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if length is not None:
        all_headers["Content-Length"] = str(length)
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    """A complete answer (JSON unless ``body`` is bytes); the connection is kept."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def behave(conn: Conn, request: Request) -> bool:
        request.answered = status  # before sending: the client may read it before we go on
        if not conn.send(head(status, headers, len(data)) + data):
            request.answered = None
            return False
        return True

    return behave


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    """An error status with the service's JSON envelope."""
    return answer({"title": f"HTTP {code}", "description": "fault injected"}, code, headers)


def not_json() -> Behaviour:
    """A 200 whose body is HTML."""
    return answer(b"<html><body>502 Bad Gateway</body></html>", 200, {"Content-Type": "text/html"})


def hang() -> Behaviour:
    """Read the request and never answer (until the server is healed or stopped: then the
    connection is closed without an answer, as when a hung server is restarted)."""

    def behave(conn: Conn, _request: Request) -> bool:
        conn.pause(3600)
        return False

    return behave


def slow_headers(delay: float, then: Behaviour) -> Behaviour:
    """Wait ``delay`` seconds before answering as ``then`` does."""

    def behave(conn: Conn, request: Request) -> bool:
        if not conn.pause(delay):
            return False
        return then(conn, request)

    return behave


def _drip(start: bytes, drop: bytes, interval: float, count: int) -> Behaviour:
    """``start`` at once, then ``drop`` every ``interval`` seconds, ``count`` times (until
    healed/stopped): each read gets something, so only the deadline ends the call."""

    def behave(conn: Conn, _request: Request) -> bool:
        if not conn.send(start):
            return False
        for _ in range(count):
            if not conn.pause(interval) or not conn.send(drop):
                return False
        return False

    return behave


def trickle(interval: float = 0.05, length: int = 100_000) -> Behaviour:
    """Headers at once, then one body byte every ``interval`` seconds."""
    return _drip(head(200, None, length), b" ", interval, length)


def trickle_headers(interval: float = 0.02, count: int = 100_000) -> Behaviour:
    """A status line at once, then one header byte every ``interval`` seconds."""
    return _drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a", interval, count)


def reset() -> Behaviour:
    """Read the request, then reset the connection without answering."""

    def behave(conn: Conn, _request: Request) -> bool:
        conn.reset()
        return False

    return behave


def reset_mid_body() -> Behaviour:
    """Headers and part of the body, then a reset."""

    def behave(conn: Conn, _request: Request) -> bool:
        conn.send(head(200, None, 1000) + b'{"metadata": {"experiences": [')
        time.sleep(0.02)  # let the client start reading the body
        conn.reset()
        return False

    return behave


def truncated() -> Behaviour:
    """``Content-Length: 1000`` but only a valid-looking prefix is sent, then a normal close."""

    def behave(conn: Conn, _request: Request) -> bool:
        conn.send(head(200, None, 1000) + b'{"metadata": {"count": 0, "experiences": []}}')
        conn.sock.shutdown(socket.SHUT_WR)
        return False

    return behave


def truncated_chunked(body: Any) -> Behaviour:
    """A chunked answer carrying a complete JSON document, closed before the final 0-chunk."""
    data = json.dumps(body).encode()

    def behave(conn: Conn, _request: Request) -> bool:
        chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        conn.send(head(200, {"Transfer-Encoding": "chunked"}) + chunk)
        conn.sock.shutdown(socket.SHUT_WR)
        return False

    return behave


def huge(size: int = 50 * MB, *, chunked: bool = False) -> Behaviour:
    """A 200 of ``size`` bytes of JSON-looking padding, with ``Content-Length`` or chunked; sent
    until the client stops reading (the server does not insist)."""
    block = b"[" + b"0," * (32 * 1024) + b"0]"

    def behave(conn: Conn, request: Request) -> bool:
        if chunked:
            ok = conn.send(head(200, {"Transfer-Encoding": "chunked"}))
        else:
            ok = conn.send(head(200, None, size))
        sent = 0
        while ok and sent < size and not conn.interrupt.is_set():
            piece = block[: size - sent]
            frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            ok = conn.send(frame)
            sent += len(piece)
        if ok and chunked:
            ok = conn.send(b"0\r\n\r\n")
        if ok:
            request.answered = 200
        return False

    return behave


@functools.lru_cache(maxsize=1)
def _gzipped_padding(size: int) -> bytes:
    block = b"[" + b"0," * (512 * 1024) + b"0]"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    parts = [compressor.compress(block) for _ in range(size // len(block) + 1)]
    return b"".join(parts) + compressor.flush()


def gzip_bomb(size: int = 50 * MB) -> Behaviour:
    """A 200 whose gzip body (tens of KiB, declared) inflates to over ``size`` bytes."""
    return answer(_gzipped_padding(size), 200, {"Content-Encoding": "gzip"})


def healthy_defaults() -> dict[str, Behaviour]:
    return {
        META: answer(DEFAULT_META),
        FETCH: answer(served(SERVED_KEY, "homepage-banner")),
        EVENTS: answer(EVENTS_OK),
    }


class FaultServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 whose endpoints misbehave as a test says.

    ``listener`` may be a socket already bound (not yet listening): until the server starts,
    connections to that port are refused, which makes "closed port, then up" race-free.
    """

    def __init__(self, listener: socket.socket | None = None, *, start: bool = True) -> None:
        if listener is None:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self.interrupt = threading.Event()  # set by heal() and close(): ends waits and hangs
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._defaults = healthy_defaults()
        self._scripts: dict[str, collections.deque[Behaviour]] = collections.defaultdict(
            collections.deque
        )
        self.log: list[Request] = []
        self._unread: dict[str, int] = {}  # path -> body size from which the body is not read
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor: threading.Thread | None = None
        if start:
            self.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self._acceptor = threading.Thread(
            target=self._accept, name=f"{THREAD_PREFIX}-accept", daemon=True
        )
        self._acceptor.start()

    # what to answer ------------------------------------------------------------------------

    def always(self, path: str, behaviour: Behaviour) -> None:
        """Answer every request on ``path`` with ``behaviour`` (after any script)."""
        with self._lock:
            self._defaults[path] = behaviour

    def script(self, path: str, behaviours: Iterable[Behaviour]) -> None:
        """Answer the next requests on ``path`` with ``behaviours``, one each, then the default."""
        with self._lock:
            self._scripts[path].extend(behaviours)

    def stop_reading(self, path: str, *, over: int) -> None:
        """A request on ``path`` with a body of more than ``over`` bytes: the server reads its
        head, then nothing more (the client's send blocks once the socket buffers are full)
        until the server heals or closes."""
        with self._lock:
            self._unread[path] = over

    def heal(self, *, release: bool = True) -> None:
        """Every endpoint healthy again. With ``release``, answers still hanging or trickling
        end too (their connection is closed); without, they go on as long as the server runs."""
        with self._lock:
            self._defaults = healthy_defaults()
            self._scripts.clear()
        if release:  # what waits now is let go; what comes later waits on a new event
            released, self.interrupt = self.interrupt, threading.Event()
            released.set()

    def _pick(self, path: str) -> Behaviour:
        with self._lock:
            script = self._scripts.get(path)
            if script:
                return script.popleft()
            return self._defaults.get(path, status(404))

    # what was asked --------------------------------------------------------------------------

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path == path]

    def event_actions(self, *, accepted_only: bool = True) -> list[tuple[str, dict[str, Any]]]:
        """(customer_id, action) of every event request received (answered 200 only, unless
        ``accepted_only`` is False)."""
        out = []
        for request in self.requests_to(EVENTS):
            if accepted_only and request.answered != 200:
                continue
            for element in request.json()["elements"]:
                out.extend((element["customer_id"], a) for a in element["actions"])
        return out

    # serving ---------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                continue
            sock.settimeout(None)
            thread = threading.Thread(
                target=self._serve, args=(sock,), name=f"{THREAD_PREFIX}-conn", daemon=True
            )
            with self._lock:
                self._conns.append(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Conn(self, sock)
        buffer = b""
        try:
            while not self._stop.is_set():
                request, buffer = self._read_request(sock, buffer)
                if request is None:
                    return
                with self._lock:
                    self.log.append(request)
                conn.interrupt = self.interrupt
                if not self._pick(request.path)(conn, request):
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _read_request(self, sock: socket.socket, buffer: bytes) -> tuple[Request | None, bytes]:
        sock.settimeout(0.05)
        while b"\r\n\r\n" not in buffer:
            if self._stop.is_set():
                return None, buffer
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return None, buffer
            buffer += data
        raw_head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        path = _origin_form(target)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        with self._lock:
            unread = length > self._unread.get(path, length)
        if unread:
            with self._lock:
                self.log.append(Request(method, path, headers, b"", target))
            self.interrupt.wait()
            return None, buffer
        while len(buffer) < length:
            if self._stop.is_set():
                return None, buffer
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return None, buffer
            buffer += data
        sock.settimeout(None)
        body, buffer = buffer[:length], buffer[length:]
        return Request(method, path, headers, body, target), buffer

    def close(self) -> None:
        self._stop.set()
        self.interrupt.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() at once
        if self._acceptor is not None:
            self._acceptor.join(2)
        self.listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(2)

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _origin_form(target: str) -> str:
    """The path of a request target: a client talking to a proxy sends the absolute URL
    (``GET http://127.0.0.1:port/v1/...``), and a server used as its own proxy answers it alike."""
    if target.startswith(("http://", "https://")):
        return "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return target


def bound_port() -> socket.socket:
    """A socket bound to a free loopback port and not listening: connections are refused until
    it is handed to a :class:`FaultServer`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class ShortSleeps:
    """Records the sleeps asked for (with the asking thread's name) and really sleeps at most
    ``cap`` seconds, so retry loops neither wait for real nor spin."""

    def __init__(self, cap: float = 0.005) -> None:
        self.cap = cap
        self.calls: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.calls.append((threading.current_thread().name, seconds))
        time.sleep(min(seconds, self.cap))

    def on(self, prefix: str) -> list[float]:
        """The sleeps asked for by threads whose name starts with ``prefix``."""
        with self._lock:
            return [s for name, s in self.calls if name.startswith(prefix)]


# clients, calls and checks ------------------------------------------------------------------

TIMEOUT = 0.5  # config.timeout of every client in this folder
MARGIN = 0.3  # how late past its deadline a Future may complete (a loaded CI machine)
FUTURE_WAIT = 10  # every Future is awaited with a timeout
ENDPOINTS = ("metadata", "fetch", "metadata-via-fetch")
EVENTS_THREAD = "moengage-personalize-events"


def make_client(
    base_url: str, sleeps: ShortSleeps, session: Any = None, **options: Any
) -> MoEngagePersonalize:
    """A client with a short deadline, one worker (a worker held by a fault shows at once as an
    unusable client), injected sleeps and a fast event flush."""
    settings: dict[str, Any] = {
        "timeout": TIMEOUT,
        "max_workers": 1,
        "sleep": sleeps,
        "event_flush_interval": 0.05,
        **options,
    }
    return MoEngagePersonalize(
        APP_ID,
        api_key=API_KEY,
        base_url=base_url,
        config=PersonalizeConfig(**settings),
        session=session,
    )


SESSIONS = ("plain", "adapter", "proxy")  # kinds of injected requests.Session


class OwnAdapter(requests.adapters.HTTPAdapter):
    """A mounted adapter of the caller's own (its ``send`` is not HTTPAdapter's): requests carries
    the calls, through ``adapter.send``. Counts the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        return super().send(request, *args, **kwargs)


def make_session(kind: str, server: FaultServer) -> requests.Session:
    """An injected session: ``plain`` (a default HTTPAdapter and no proxy: the SDK reads its
    settings and takes its direct http.client path), ``adapter`` (an adapter of its own mounted)
    or ``proxy`` (the fault server is its own HTTP proxy): both of those go through requests.
    The environment's proxy settings are ignored (``trust_env``), so the kind alone picks the
    path."""
    session = requests.Session()
    session.trust_env = False
    if kind == "adapter":
        session.mount("http://", OwnAdapter())
    elif kind == "proxy":
        session.proxies = {"http": f"http://127.0.0.1:{server.port}"}
    elif kind != "plain":
        raise ValueError(kind)
    return session


def check_session_path(kind: str, session: requests.Session, server: FaultServer) -> None:
    """The requests went the way the session kind says: through the session's adapter, through
    the proxy (absolute request targets), or neither."""
    adapter = session.get_adapter("http://127.0.0.1/")
    sent_by_adapter = adapter.sent if isinstance(adapter, OwnAdapter) else 0
    absolute = [r for r in server.log if r.target.startswith("http://")]
    assert server.log, "nothing reached the server"
    if kind == "adapter":
        assert sent_by_adapter >= 1
    if kind == "proxy":
        assert len(absolute) == len(server.log)
    else:
        assert absolute == []


def fault_path(endpoint: str) -> str:
    """The path that misbehaves when ``endpoint`` is under test."""
    return FETCH if endpoint == "fetch" else META


def call(client: MoEngagePersonalize, endpoint: str) -> Future[Any]:
    """The public call that reaches ``endpoint``: the metadata list, or a fetch (which loads the
    metadata first: ``metadata-via-fetch`` makes that load fail)."""
    if endpoint == "metadata":
        return client.fetch_experiences_meta()
    return client.fetch_experience(SERVED_KEY, user="u1")


def check_healthy(client: MoEngagePersonalize, endpoint: str) -> None:
    """The call succeeds, within its deadline, with what the healthy server serves."""
    result = call(client, endpoint).result(FUTURE_WAIT)
    if endpoint == "metadata":
        assert isinstance(result, ExperienceCampaignsMetadata)
        assert SERVED_KEY in [m.experience_key for m in result.experiences]
    else:
        assert isinstance(result, ExperienceCampaignsResult)
        assert [c.experience_key for c in result.experiences] == [SERVED_KEY]


WAYS = ("result", "callback")  # how a test waits for a Future (a worker runs the call either way)


def timed_failure(
    future: Future[Any], started: float, how: str = "result"
) -> tuple[PersonalizeError, float]:
    """The error a Future failed with, and how long after ``started`` it completed. ``result``
    blocks in ``result()`` (which runs the call on this thread); ``callback`` waits for a
    done-callback (which hands it to a worker). Either way the Future is failed by the client's
    deadline thread when the deadline passes first."""
    if how == "callback":
        done = threading.Event()
        ended: list[float] = []
        future.add_done_callback(lambda _: (ended.append(time.monotonic()), done.set()))
        assert done.wait(FUTURE_WAIT), "the Future never completed"
        error = future.exception(0)
        if isinstance(error, PersonalizeError):
            return error, ended[0] - started
        raise AssertionError(f"a PersonalizeError was expected, got {error!r}")
    try:
        future.result(FUTURE_WAIT)
    except PersonalizeError as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the call succeeded; a PersonalizeError was expected")


def threads_back_to(baseline: int, timeout: float = 3.0) -> bool:
    """Whether the thread count (fault servers' threads aside) comes back to ``baseline``."""
    return wait_for(lambda: client_side_threads() <= baseline, timeout)


def campaign(customer_id: str) -> ExperienceCampaign:
    """A campaign as a fetch for ``customer_id`` returns it (what tracking calls take)."""
    return ExperienceCampaign(
        experience_key="homepage-banner",
        payload={},
        experience_context=CONTEXT,
        source=DataSource.NETWORK,
        user=User(customer_id=customer_id),
    )


def track(client: MoEngagePersonalize, count: int, prefix: str = "u") -> list[str]:
    """One impression for each of ``count`` users; returns their customer ids."""
    ids = [f"{prefix}{i}" for i in range(count)]
    for customer_id in ids:
        client.experience_shown(campaign(customer_id))
    return ids


def assert_every_event_arrived(server: FaultServer, customer_ids: list[str]) -> None:
    """Each tracked event was accepted by the server; a repeat is only a resend (same uuid)."""
    accepted = server.event_actions()
    assert sorted({cid for cid, _ in accepted}) == sorted(customer_ids)
    uuids: dict[str, set[str]] = collections.defaultdict(set)
    for cid, action in server.event_actions(accepted_only=False):
        uuids[cid].add(action["moe_event_uuid"])
    assert all(len(u) == 1 for u in uuids.values()), "an event was sent twice with new uuids"
    assert len({next(iter(u)) for u in uuids.values()}) == len(customer_ids)


# name resolution ------------------------------------------------------------------------

FAKE_HOST = "personalize.fault.invalid"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class FakeResolver:
    """``socket.getaddrinfo`` for :data:`FAKE_HOST`: fails (``gaierror``), hangs until released,
    or resolves to 127.0.0.1. Loopback names resolve as usual; any other name fails, so no test
    ever sends a real DNS query."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.mode = "fail"
        self.released = threading.Event()
        self.asked = 0
        self.refused: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name == FAKE_HOST:
            self.asked += 1
            if self.mode == "hang":
                self.released.wait(10)
            if self.mode == "fail":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return self._real("127.0.0.1", port, *args, **kwargs)
        if name in _LOOPBACK:
            return self._real(host, port, *args, **kwargs)
        self.refused.append(str(name))
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in this test suite")

    def heal(self) -> None:
        self.mode = "ok"
        self.released.set()
