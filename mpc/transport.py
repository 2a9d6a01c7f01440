"""Mutually authenticated, encrypted connections between computation nodes.

Every node listens on one TCP port and dials the others. A connection starts with a
three-message handshake in the SIGMA style (sign-and-MAC, as in IKE and TLS 1.3):

1. initiator -> responder: ``dfg-mpc/1``, the ledger's chain id, the initiator's
   principal id and a fresh X25519 public key;
2. responder -> initiator: its principal id, its fresh X25519 key, and an Ed25519
   signature over both messages so far;
3. initiator -> responder: an Ed25519 signature over the whole transcript.

Each side checks the other's signature against the node's keys registered on the
ledger *in its own replica* (``keys_of``), so only node operators the ledger admits can
connect, and each knows whom it talks to. The X25519 secret, salted with the
transcript hash, gives one AES-256-GCM key per direction (hardware AES: about three
times ChaCha20-Poly1305's speed here, measured); frames carry a counter
nonce, so a reordered, replayed or altered frame ends the connection.

On top, ``Mesh.endpoint`` gives a protocol session (one task of one analysis) the
``Endpoint`` interface of ``mpc.runtime``: one vector of field elements to and from
every party per round, with a time-out instead of a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpc.runtime import Message, ProtocolAborted, ProtocolTimeout

MAGIC: Final = b"dfg-mpc/1"
HANDSHAKE_TIMEOUT_S: Final = 10.0
#: A round's message is sent in frames of this many bytes (streamed, not buffered whole).
PIECE: Final = 1 << 20
#: The largest frame a peer may send: one piece and its header (the session's name, up
#: to 65,535 bytes, the round's number and the piece's kind).
MAX_FRAME: Final = PIECE + 2 + 0xFFFF + 5
#: Peers' round messages this node holds, received and not yet taken by a session, at
#: most (all sessions and peers together): an authenticated peer that streams pieces
#: without end, or runs far ahead, cannot take the node's memory.
DEFAULT_MAX_BUFFERED: Final = 2 << 30
#: Undelivered rounds per session and peer: every member sends each round to every
#: other and waits for theirs, so an honest peer is at most one round ahead.
_MAX_ROUNDS_AHEAD: Final = 2
#: Sessions a peer may have sent rounds for that have not started here (this node's
#: replica may lag the peer's), each; they are dropped after twice the session time-out,
#: by when the peer has given the session up. A peer over it is cut off, not the others.
_MAX_WAITING_SESSIONS: Final = 256
#: A frame's last header byte: more pieces of the round follow, the round's last piece,
#: or the sender has given up the session (the payload says why).
_MORE, _LAST, _ABORT = 0, 1, 2
#: How many peers' give-ups are remembered for sessions this node has not started yet.
_MAX_ABORTS_KEPT: Final = 1024
#: How an inbox marks a give-up (rounds are numbered from 1).
_ABORTED: Final = -1
#: How many sessions over here are remembered, so that a peer's late frames for one
#: (it had not yet heard of the give-up or time-out) are dropped.
_MAX_FORGOTTEN_KEPT: Final = 1024

log = logging.getLogger("dfg.mpc.transport")

#: The Ed25519 keys the ledger currently registers for a node principal (empty: unknown).
KeysOf = Callable[[str], Sequence[Ed25519PublicKey]]


class TransportError(RuntimeError):
    """A connection could not be made or authenticated, or broke a rule of the protocol."""


class _PeerOverLimit(TransportError):
    """A peer sent more than this node holds for it: its connection is cut."""


@dataclass(frozen=True)
class NodeIdentity:
    """This node's principal id on the ledger and its Ed25519 signing key."""

    name: str
    key: Ed25519PrivateKey


#: TCP keep-alive: a peer whose host vanished (powered off, cut from the network) sends
#: no FIN, and the thread reading its connection would wait for ever; probes end it
#: after about KEEPALIVE_IDLE_S + 6 * KEEPALIVE_INTERVAL_S.
KEEPALIVE_IDLE_S: Final = 60
KEEPALIVE_INTERVAL_S: Final = 10


def _keep_alive(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", 6)):  # fmt: skip
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults (hours)
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


# --- framing -----------------------------------------------------------------------------


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes, received in place (large frames are not copied again)."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        count = sock.recv_into(view[got:], size - got)
        if not count:
            raise TransportError("the connection closed")
        got += count
    return buffer


def _receive_block(sock: socket.socket, limit: int = MAX_FRAME) -> bytearray:
    size = int.from_bytes(_receive_exactly(sock, 4), "big")
    if size > limit:
        raise TransportError(f"a frame of {size} bytes is over the limit of {limit}")
    return _receive_exactly(sock, size)


def _receive_message(sock: socket.socket, deadline: float) -> bytes:
    """A (small) handshake message, whole by ``deadline`` (time.monotonic()): a socket
    time-out bounds each read only, and a peer sending a byte now and then would
    hold the connection for ever."""
    size = int.from_bytes(_receive_by(sock, 4, deadline), "big")
    if size > 4096:
        raise TransportError(f"a frame of {size} bytes is over the limit of 4096")
    return _receive_by(sock, size, deadline)


def _receive_by(sock: socket.socket, size: int, deadline: float) -> bytes:
    received = bytearray()
    while len(received) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(f"the handshake took over {HANDSHAKE_TIMEOUT_S:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(size - len(received))
        except TimeoutError:  # the socket's own "timed out" says not which wait ran out
            raise TransportError(f"the handshake took over {HANDSHAKE_TIMEOUT_S:g} s") from None
        if not chunk:
            raise TransportError("the connection closed")
        received += chunk
    return bytes(received)


def _fields(block: bytes, count: int) -> list[bytes]:
    """Split a block of ``count`` length-prefixed fields."""
    parts, at = [], 0
    for _ in range(count):
        size = int.from_bytes(block[at : at + 4], "big")
        parts.append(block[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(block):
        raise TransportError("a malformed handshake message")
    return parts


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- the secure channel ------------------------------------------------------------------------


class SecureChannel:
    """One authenticated connection: encrypted frames, one key and counter per direction."""

    def __init__(self, sock: socket.socket, peer: str, send_key: bytes, receive_key: bytes) -> None:
        self.sock = sock
        self.peer = peer
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self._sent = 0
        self._received = 0
        self._lock = threading.Lock()

    def send(self, plaintext: bytes) -> None:
        with self._lock:
            nonce = self._sent.to_bytes(12, "big")
            self._sent += 1
            ciphertext = self._send.encrypt(nonce, plaintext, None)
            self.sock.sendall(len(ciphertext).to_bytes(4, "big"))
            self.sock.sendall(ciphertext)

    def receive(self) -> bytes:
        ciphertext = _receive_block(self.sock, MAX_FRAME + 16)
        nonce = self._received.to_bytes(12, "big")
        self._received += 1
        try:
            return self._receive.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise TransportError(f"a frame from {self.peer} failed authentication") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _verify(keys_of: KeysOf, principal: str, signature: bytes, message: bytes) -> None:
    keys = keys_of(principal)
    if not keys:
        raise TransportError(f"{principal} has no node key on the ledger")
    for key in keys:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise TransportError(f"{principal}'s handshake signature does not verify with its ledger keys")


def _channel_keys(shared: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(initiator -> responder, responder -> initiator)."""
    material = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(transcript).digest(), info=MAGIC + b" keys"
    ).derive(shared)
    return material[:32], material[32:]


def connect(
    sock: socket.socket, me: NodeIdentity, expected_peer: str, keys_of: KeysOf, context: bytes
) -> SecureChannel:
    """The initiator's side of the handshake on a connected socket."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    ephemeral = X25519PrivateKey.generate()
    identity = _length_prefixed(context) + _length_prefixed(me.name.encode())
    hello = MAGIC + identity + _raw(ephemeral.public_key())
    sock.sendall(_length_prefixed(hello))
    reply = _receive_message(sock, deadline)
    name, their_ephemeral, their_signature = _fields(reply, 3)
    peer = name.decode()
    if len(their_ephemeral) != 32:
        raise TransportError("a malformed handshake message")
    if peer != expected_peer:
        raise TransportError(f"dialled {expected_peer} but {peer} answered")
    signed_part = _length_prefixed(name) + _length_prefixed(their_ephemeral)
    _verify(keys_of, peer, their_signature, b"responder" + hello + signed_part)
    transcript = hello + reply
    sock.sendall(_length_prefixed(me.key.sign(b"initiator" + transcript)))
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(their_ephemeral))
    outgoing, incoming = _channel_keys(shared, transcript)
    sock.settimeout(None)
    return SecureChannel(sock, peer, outgoing, incoming)


def accept(sock: socket.socket, me: NodeIdentity, keys_of: KeysOf, context: bytes) -> SecureChannel:
    """The responder's side of the handshake on an accepted socket."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    hello = _receive_message(sock, deadline)
    if not hello.startswith(MAGIC):
        raise TransportError("not a dfg MPC connection")
    their_context, name = _fields(hello[len(MAGIC) : -32], 2)
    if their_context != context:
        raise TransportError("the peer is on another ledger")
    peer, their_ephemeral = name.decode(), hello[-32:]
    if not keys_of(peer):
        raise TransportError(f"{peer} is not a node with a key on the ledger")
    ephemeral = X25519PrivateKey.generate()
    mine = _length_prefixed(me.name.encode()) + _length_prefixed(_raw(ephemeral.public_key()))
    signature = me.key.sign(b"responder" + hello + mine)
    reply = mine + _length_prefixed(signature)
    sock.sendall(_length_prefixed(reply))
    transcript = hello + reply
    _verify(keys_of, peer, _receive_message(sock, deadline), b"initiator" + transcript)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(their_ephemeral))
    incoming, outgoing = _channel_keys(shared, transcript)
    sock.settimeout(None)
    return SecureChannel(sock, peer, outgoing, incoming)


# --- sessions over a mesh of channels ------------------------------------------------------------


class Mesh:
    """This node's connections to the other computation nodes.

    It accepts authenticated connections from peers (frames they send arrive here) and
    dials each peer to send, once per session. Frames carry a session id and a round
    number; a session's rounds from one peer arrive in order (TCP)."""

    def __init__(
        self,
        me: NodeIdentity,
        keys_of: KeysOf,
        context: bytes,
        *,
        listen: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        timeout: float = 60.0,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.me = me
        self.keys_of = keys_of
        self.context = context
        self.peers = dict(peers)
        self.timeout = timeout
        self.max_buffered = max_buffered
        self._buffered = 0  # bytes of peers' messages held (pieces and queued rounds)
        self._rounds_queued: dict[tuple[str, str], int] = {}  # (session, peer) -> rounds
        self._started: set[str] = set()  # sessions with an endpoint here, not yet forgotten
        self._waiting: dict[tuple[str, str], float] = {}  # (session, peer) -> since (not started)
        self._server = socket.create_server(listen, reuse_port=False)
        self._outgoing: dict[tuple[str, str], SecureChannel] = {}  # (peer, session)
        self._incoming: list[SecureChannel] = []
        self._handshaking: set[socket.socket] = set()  # accepted, not yet authenticated
        self._serving: set[threading.Thread] = set()
        self._dial_lock = threading.Lock()
        self._sender: ThreadPoolExecutor | None = None  # sends a round to several peers at once
        self._inbox_lock = threading.Lock()
        self._inboxes: dict[tuple[str, str], queue.Queue[tuple[int, Message] | None]] = {}
        self._aborts: dict[tuple[str, str], bytes] = {}  # (session, peer) -> why it gave up
        self._forgotten: dict[str, None] = {}  # sessions over here, oldest first
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="dfg-mpc-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> Mesh:
        self._acceptor.start()
        return self

    @property
    def closed(self) -> bool:
        """This node is stopping: its own connections break, whatever its peers do."""
        return self._closed.is_set()

    def close(self) -> None:
        """Stop listening, end every connection (one still in its handshake too) and wake
        every ``receive``: a node being stopped fails its task now, not at the time-out.
        Shutting the listening socket down is what wakes a thread blocked in accept()."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        if self._acceptor.is_alive():
            self._acceptor.join(HANDSHAKE_TIMEOUT_S)
        with self._inbox_lock:
            channels = [*self._incoming]
            half_open = [*self._handshaking]
            serving = [*self._serving]
            for inbox in self._inboxes.values():
                inbox.put(None)
        with self._dial_lock:  # a dial ends outside it, and then sees the mesh closed
            channels += self._outgoing.values()
            sender, self._sender = self._sender, None
        if sender is not None:  # its sends fail at once now that the channels are closed
            sender.shutdown(wait=False)
        for channel in channels:
            channel.close()
        for sock in half_open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in serving:
            thread.join(HANDSHAKE_TIMEOUT_S)

    # incoming

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):  # a connection already reset: its handshake fails
                _keep_alive(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), name="dfg-mpc-peer", daemon=True)
            with self._inbox_lock:
                if self._closed.is_set():
                    sock.close()
                    return
                self._serving.add(thread)
                self._handshaking.add(sock)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._serve_channel(sock)
        finally:
            with self._inbox_lock:
                self._serving.discard(threading.current_thread())

    def _serve_channel(self, sock: socket.socket) -> None:
        try:
            channel = accept(sock, self.me, self.keys_of, self.context)
        except (TransportError, OSError, ValueError) as exc:
            if not self._closed.is_set():
                log.warning("refused an MPC connection: %s", exc)
            channel = None
        with self._inbox_lock:
            self._handshaking.discard(sock)
            if channel is not None and not self._closed.is_set():
                self._incoming.append(channel)
            elif channel is not None:  # closed during the handshake: close() did not see it
                channel.close()
                return
        if channel is None:
            sock.close()
            return
        pieces: list[memoryview] = []
        try:
            while True:
                frame = memoryview(channel.receive())
                size = int.from_bytes(frame[:2], "big")
                if len(frame) < 7 + size or frame[6 + size] not in (_MORE, _LAST, _ABORT):
                    raise TransportError(f"a frame of {len(frame)} bytes is not a round's frame")
                session = bytes(frame[2 : 2 + size]).decode()
                number = int.from_bytes(frame[2 + size : 6 + size], "big")
                if frame[6 + size] == _ABORT:
                    self._peer_gave_up(session, channel.peer, bytes(frame[7 + size :]))
                    continue
                piece = frame[7 + size :]
                self._hold(len(piece), channel.peer)
                pieces.append(piece)
                if frame[6 + size] == _LAST:
                    message: Message = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    pieces = []  # held from here on as the queued round (or released)
                    self._deliver(session, channel.peer, number, message)
        except (TransportError, OSError, ValueError) as exc:
            if isinstance(exc, _PeerOverLimit) and not self._closed.is_set():
                log.warning("cut the MPC connection from %s: %s", channel.peer, exc)
            elif pieces and not self._closed.is_set():  # it broke in the middle of a message
                log.warning("MPC connection from %s broke mid-message: %s", channel.peer, exc)
            else:  # a session's connection closes when its task is done
                log.debug("MPC connection from %s ended: %s", channel.peer, exc)
        finally:
            self._release(sum(len(piece) for piece in pieces))
            channel.close()
            with self._inbox_lock:
                self._incoming.remove(channel)

    def _hold(self, size: int, peer: str) -> None:
        """Count a received piece against ``max_buffered``, or refuse it."""
        with self._inbox_lock:
            if self._buffered + size > self.max_buffered:
                self._drop_expired_waiting()  # rounds no session here will take go first
            if self._buffered + size > self.max_buffered:
                raise _PeerOverLimit(
                    f"this node already holds {self._buffered:,} bytes of peers' messages not yet"
                    f" read, and the limit is {self.max_buffered:,}"
                )
            self._buffered += size

    def _release(self, size: int) -> None:
        if size:
            with self._inbox_lock:
                self._buffered -= size

    def _deliver(self, session: str, peer: str, number: int, message: Message) -> None:
        """Queue a peer's round for the session -- unless the session is over here: an
        inbox made for it now would never be read nor forgotten, and would count against
        the limit of open sessions until the node refused every new one."""
        with self._inbox_lock:
            if session in self._forgotten:
                self._buffered -= len(message)
                log.debug("dropped round %d of %s from %s: the session is over here", number, session, peer)
                return
            queued = self._rounds_queued.get((session, peer), 0)
            if queued >= _MAX_ROUNDS_AHEAD:
                self._buffered -= len(message)
                raise _PeerOverLimit(
                    f"it sent round {number} of {session} while {queued} of its rounds wait to be"
                    " read: an honest peer is at most one round ahead"
                )
            try:
                inbox = self._inbox_locked(session, peer, sent_by_peer=True)
            except TransportError:
                self._buffered -= len(message)
                raise
            self._rounds_queued[(session, peer)] = queued + 1
            inbox.put((number, message))

    def _inbox_locked(
        self, session: str, peer: str, *, sent_by_peer: bool = False
    ) -> queue.Queue[tuple[int, Message] | None]:
        """The session's inbox for ``peer``'s rounds. One a peer's round makes for a session
        not started here waits at most twice the session time-out, and a peer may have at
        most ``_MAX_WAITING_SESSIONS`` of them: one peer (or rounds for tasks this node
        never ran) cannot make the node refuse every other session."""
        key = (session, peer)
        inbox = self._inboxes.get(key)
        if inbox is None:
            self._drop_expired_waiting()
            if sent_by_peer and session not in self._started:
                if sum(1 for _, p in self._waiting if p == peer) >= _MAX_WAITING_SESSIONS:
                    raise _PeerOverLimit(
                        f"it sent rounds for over {_MAX_WAITING_SESSIONS} sessions this node has not started"
                    )
                self._waiting[key] = time.monotonic()
            inbox = self._inboxes[key] = queue.Queue()
        return inbox

    def _drop_expired_waiting(self) -> None:
        expired = time.monotonic() - 2 * self.timeout
        for key in [k for k, since in self._waiting.items() if since < expired]:
            self._drop_inbox_locked(key)

    def _drop_inbox_locked(self, key: tuple[str, str]) -> None:
        """Forget an inbox and free the rounds it held (with ``_inbox_lock`` held)."""
        inbox = self._inboxes.pop(key, None)
        for item in inbox.queue if inbox is not None else ():
            if item is not None and item[0] != _ABORTED:  # rounds never taken
                self._buffered -= len(item[1])
        self._rounds_queued.pop(key, None)
        self._waiting.pop(key, None)

    def _peer_gave_up(self, session: str, peer: str, why: bytes) -> None:
        """Wake every ``receive`` of the session -- the one waiting for a peer that died is
        as stuck as one waiting for the peer that gave up -- or remember it for one to come
        (the session may not have started here yet). Only inboxes that exist are woken, so
        a give-up for a session this node never runs leaves a bounded record, not an inbox."""
        reason = why[:500]
        with self._inbox_lock:
            if session in self._forgotten:  # over here already: nothing waits for it
                return
            self._aborts[(session, peer)] = reason
            while len(self._aborts) > _MAX_ABORTS_KEPT:
                del self._aborts[next(iter(self._aborts))]
            inboxes = [inbox for (s, _), inbox in self._inboxes.items() if s == session]
        for inbox in inboxes:
            inbox.put((_ABORTED, reason))

    def _abort_of(self, session: str) -> tuple[str, bytes] | None:
        """Who gave the session up first, and why (with ``_inbox_lock`` held)."""
        return next(((p, why) for (s, p), why in self._aborts.items() if s == session), None)

    def forget(self, session: str) -> None:
        """The session is over: drop its queued frames and close its connections; frames
        that still come for it are dropped."""
        with self._inbox_lock:
            self._forgotten[session] = None
            while len(self._forgotten) > _MAX_FORGOTTEN_KEPT:
                del self._forgotten[next(iter(self._forgotten))]
            self._started.discard(session)
            for key in [k for k in self._inboxes if k[0] == session]:
                self._drop_inbox_locked(key)
            for key in [k for k in self._aborts if k[0] == session]:
                del self._aborts[key]
        with self._dial_lock:
            channels = [self._outgoing.pop(k) for k in [k for k in self._outgoing if k[1] == session]]
        for channel in channels:
            channel.close()

    # outgoing: one fresh connection per peer and session, so that a peer that restarted
    # between sessions is never sent frames over a connection it no longer reads, and a
    # connection that breaks inside a session fails the session instead of losing a frame

    def _channel(self, peer: str, session: str, *, patient: bool = True) -> SecureChannel:
        """The session's connection to ``peer``, dialled if there is none. The dial runs
        outside the lock: a round is sent to every peer at once, and a peer being dialled
        again (refused, restarting) must not hold up the others' connections."""
        with self._dial_lock:
            channel = self._outgoing.get((peer, session))
            if channel is not None:
                return channel
            if self._closed.is_set():
                raise TransportError(f"{self.me.name} is stopping")
            if peer not in self.peers:
                raise TransportError(f"no address for {peer} (give it with --peer)")
        sock = self._dial(peer) if patient else self._dial_once(peer)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            channel = connect(sock, self.me, peer, self.keys_of, self.context)
            # A peer that stops reading (its process stopped or hung) fills the
            # connection, and TCP holds it open for ever: a send fails the session
            # at its time-out, as a receive does, instead of waiting for ever.
            sock.settimeout(self.timeout)
        except BaseException:  # a refused handshake: not left to the garbage collector
            sock.close()
            raise
        with self._dial_lock:
            if self._closed.is_set():  # close() ran during the dial: it did not see this one
                channel.close()
                raise TransportError(f"{self.me.name} is stopping")
            # another thread may have dialled the same peer for the session meanwhile (a
            # give-up beside a send): one connection stays, the other is not left open
            kept = self._outgoing.setdefault((peer, session), channel)
        if kept is not channel:
            channel.close()
        return kept

    def _dial(self, peer: str) -> socket.socket:
        """Connect, retrying while the peer is not listening yet (it may be starting or
        restarting) for up to the session time-out."""
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            try:
                return self._dial_once(peer)
            except ConnectionRefusedError:
                if time.monotonic() + delay > deadline or self._closed.is_set():
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _dial_once(self, peer: str) -> socket.socket:
        try:
            return _keep_alive(socket.create_connection(self.peers[peer], timeout=HANDSHAKE_TIMEOUT_S))
        except TimeoutError:  # the bare "timed out" told the operator nothing
            raise TransportError(
                f"no answer to a connection within {HANDSHAKE_TIMEOUT_S:g} s (the host is down, or a"
                " firewall drops the packets)"
            ) from None

    def send(self, peer: str, session: str, number: int, payload: bytes) -> None:
        """One round's message, in frames of at most ``PIECE`` bytes: the receiver
        decrypts one while the next is encrypted and sent."""
        name = session.encode()
        header = len(name).to_bytes(2, "big") + name + number.to_bytes(4, "big")
        view = memoryview(payload)
        try:
            channel = self._channel(peer, session)
            for start in range(0, max(len(payload), 1), PIECE):
                last = start + PIECE >= len(payload)
                channel.send(header + bytes([_LAST if last else _MORE]) + view[start : start + PIECE])
        except (OSError, TransportError) as exc:
            self._drop_channel(peer, session)
            raise ProtocolTimeout(f"cannot reach {peer}: {exc}") from exc

    def send_round(self, session: str, number: int, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send one round to several peers at once; once every send has ended, raise the
        first peer's failure. One after the other, a peer that cannot be reached (dialled
        again up to the time-out) kept the round from the peers after it, which then
        timed out and blamed this node on the ledger for the other's fault."""
        with self._dial_lock:
            if self._sender is None and not self._closed.is_set():
                self._sender = ThreadPoolExecutor(max(1, len(self.peers)), thread_name_prefix="dfg-mpc-send")
            sender = self._sender
        if sender is None or len(messages) < 2:  # stopping (each send fails), or one peer
            for peer, payload in messages:
                self.send(peer, session, number, payload)
            return
        try:
            pending = [sender.submit(self.send, peer, session, number, p) for peer, p in messages[:-1]]
        except RuntimeError:  # close() shut the sender down meanwhile
            raise TransportError(f"{self.me.name} is stopping") from None
        last_peer, last_payload = messages[-1]
        last: BaseException | None = None
        try:
            self.send(last_peer, session, number, last_payload)
        except BaseException as exc:  # reported once the others have ended, in peer order
            last = exc
        failures = [future.exception() for future in pending] + [last]
        first = next((exc for exc in failures if exc is not None), None)
        if first is not None:
            raise first

    def _drop_channel(self, peer: str, session: str) -> None:
        """A send that failed (a time-out mid-frame, a reset) leaves the connection unusable:
        the give-up after it must not wait on it again, nor reach the peer garbled."""
        with self._dial_lock:
            channel = self._outgoing.pop((peer, session), None)
        if channel is not None:
            channel.close()

    def give_up(self, session: str, members: Sequence[str], reason: str) -> None:
        """Tell the session's other members that this node has given it up, and why, so
        that they fail now instead of waiting out the time-out for a round that will
        not come. Best effort: a member that cannot be reached times out as before."""
        name = session.encode()
        frame = len(name).to_bytes(2, "big") + name + bytes(4) + bytes([_ABORT]) + reason.encode()[:500]
        for peer in members:
            if peer == self.me.name:
                continue
            try:
                self._channel(peer, session, patient=False).send(frame)
            except (OSError, TransportError) as exc:
                log.debug("could not tell %s that %s was given up: %s", peer, session, exc)

    def receive(self, peer: str, session: str, number: int, timeout: float) -> Message:
        with self._inbox_lock:  # with the give-up check, so that no give-up slips between
            if self._closed.is_set():  # close() has woken the inboxes that existed
                raise TransportError(f"{self.me.name} is stopping")
            inbox = self._inbox_locked(session, peer)
            abort = self._abort_of(session)
        try:
            item = (_ABORTED, abort[1]) if abort is not None else inbox.get(timeout=timeout)
        except queue.Empty:
            raise ProtocolTimeout(
                f"{peer} did not answer round {number} of {session} in {timeout:g} s"
            ) from None
        if item is None:  # put by close()
            raise TransportError(f"{self.me.name} is stopping")
        if item[0] != _ABORTED:  # a round: no longer the transport's to hold
            with self._inbox_lock:
                self._buffered -= len(item[1])
                key = (session, peer)
                if self._rounds_queued.get(key, 0) > 1:
                    self._rounds_queued[key] -= 1
                else:
                    self._rounds_queued.pop(key, None)
        if item[0] == _ABORTED:
            with self._inbox_lock:
                abort = self._abort_of(session)
            giver = abort[0] if abort is not None else peer
            why = bytes(item[1]).decode(errors="replace")
            raise ProtocolAborted(f"{giver} gave up round {number} of {session}: {why}")
        if item[0] != number:
            raise TransportError(f"{peer} is out of step in {session} (round {item[0]}, not {number})")
        return item[1]

    def endpoint(self, session: str, members: Sequence[str]) -> SessionEndpoint:
        if self.me.name not in members:
            raise TransportError(f"{self.me.name} is not a party of {session}")
        with self._inbox_lock:  # a session started again under its name takes frames again
            self._forgotten.pop(session, None)
            self._started.add(session)
            for key in [k for k in self._waiting if k[0] == session]:
                del self._waiting[key]  # its rounds are this session's now: kept until forget()
        return SessionEndpoint(self, session, list(members))


class SessionEndpoint:
    """One protocol session: party j is ``members[j - 1]``."""

    def __init__(self, mesh: Mesh, session: str, members: list[str]) -> None:
        self.mesh = mesh
        self.session = session
        self.members = members
        self.index = members.index(mesh.me.name) + 1
        self.rounds = 0

    def exchange(self, outgoing: Mapping[int, bytes]) -> dict[int, Message]:
        self.rounds += 1
        received: dict[int, Message] = {self.index: outgoing.get(self.index, b"")}
        others = [(m, outgoing.get(j, b"")) for j, m in enumerate(self.members, start=1) if j != self.index]
        self.mesh.send_round(self.session, self.rounds, others)
        for j, member in enumerate(self.members, start=1):
            if j != self.index:
                received[j] = self.mesh.receive(member, self.session, self.rounds, self.mesh.timeout)
        return received

    def close(self) -> None:
        self.mesh.forget(self.session)
