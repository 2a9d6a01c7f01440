"""Node-to-node connections: mutually authenticated against the ledger's node keys,
encrypted, and carrying protocol rounds -- with time-outs instead of hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock

import pytest
from conftest import Ledger
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mpc.field import MERSENNE_127, PrimeField
from mpc.protocols import input_values, multiply, open_values
from mpc.runtime import Party, ProtocolAborted, ProtocolTimeout
from mpc.shamir import Scheme
from mpc.transport import Mesh, NodeIdentity, SecureChannel, TransportError, accept, connect

NAMES = ["node:a", "node:b", "node:c"]
CONTEXT = b"chain-test"
SCHEME = Scheme(PrimeField(MERSENNE_127), 3, 1)


@contextmanager
def meshes(timeout: float = 10.0) -> Iterator[list[Mesh]]:
    keys = {name: Ed25519PrivateKey.generate() for name in NAMES}
    registry: dict[str, list[Ed25519PublicKey]] = {n: [k.public_key()] for n, k in keys.items()}
    with ExitStack() as stack:
        made = [
            Mesh(NodeIdentity(n, keys[n]), lambda p: registry.get(p, []), CONTEXT,
                 listen=("127.0.0.1", 0), peers={}, timeout=timeout)
            for n in NAMES
        ]  # fmt: skip
        for mesh in made:
            stack.callback(mesh.close)
        for mesh in made:
            mesh.peers.update({other.me.name: other.address for other in made if other is not mesh})
            mesh.start()
        yield made


def _run_all(made: list[Mesh], program, session: str = "s1"):  # type: ignore[no-untyped-def]
    results: dict[int, object] = {}

    def one(index: int) -> None:
        endpoint = made[index].endpoint(session, NAMES)
        try:
            results[index] = program(Party(index + 1, SCHEME, endpoint))
        except Exception as exc:  # the test inspects it
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(made))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return [results[i] for i in range(len(made))]


def test_three_nodes_multiply_over_authenticated_connections() -> None:
    def program(party: Party) -> list[int]:
        a = input_values(party, 1, [6, 7] if party.index == 1 else None)
        b = input_values(party, 2, [5, 9] if party.index == 2 else None)
        return open_values(party, multiply(party, a, b))

    with meshes() as made:
        assert _run_all(made, program) == [[30, 63]] * 3


def test_a_silent_party_makes_the_others_time_out() -> None:
    def program(party: Party) -> object:
        if party.index == 3:
            return "silent"
        return open_values(party, [party.index])

    with meshes(timeout=0.5) as made:
        outcomes = _run_all(made, program)
    assert outcomes[2] == "silent"
    assert all(isinstance(o, ProtocolTimeout) and "node:c" in str(o) for o in outcomes[:2])


def test_a_party_that_gives_up_stops_the_others_waiting_and_says_why() -> None:
    def program(party: Party) -> object:
        if party.index == 2:
            made[1].give_up("s1", NAMES, "the bundle does not match its commitment")
            return "gave up"
        return open_values(party, [party.index])

    with meshes(timeout=60) as made:  # far beyond the join: only the give-up ends the wait
        outcomes = _run_all(made, program)
    assert outcomes[1] == "gave up"
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, ProtocolAborted), outcome
        assert "node:b gave up round 1 of s1: the bundle does not match its commitment" in str(outcome)


def test_a_give_up_also_stops_a_wait_for_another_peer_that_went_silent() -> None:
    """node:c died mid-session; node:b gives up on it. node:a, waiting for node:c's
    share, stops at once too, instead of holding up its next task for the time-out."""

    def program(party: Party) -> object:
        if party.index == 3:
            return "died"
        if party.index == 2:  # it sends its round, so node:a goes on to wait for node:c
            made[1].send("node:a", "s1", 1, b"")
            time.sleep(0.3)
            made[1].give_up("s1", NAMES, "node:c did not answer")
            return "gave up"
        return open_values(party, [party.index])

    with meshes(timeout=60) as made:
        started = time.monotonic()
        outcomes = _run_all(made, program)
        assert time.monotonic() - started < 20
    assert isinstance(outcomes[0], ProtocolAborted), outcomes[0]
    assert "node:b gave up round 1 of s1: node:c did not answer" in str(outcomes[0])


def test_a_give_up_before_the_session_starts_here_is_kept_until_it_does() -> None:
    with meshes(timeout=60) as made:
        made[2].give_up("later", NAMES, "no share bundle")
        with pytest.raises(ProtocolAborted, match="node:c gave up round 1 of later: no share bundle"):
            made[0].receive("node:c", "later", 1, timeout=60)
        made[0].forget("later")  # the session is over: a new one of that name waits again
        with pytest.raises(ProtocolTimeout, match="did not answer") as waited:
            made[0].receive("node:c", "later", 1, timeout=0.2)
        assert not isinstance(waited.value, ProtocolAborted)


def test_a_give_up_reason_is_bounded_and_never_breaks_decoding() -> None:
    """A peer's reason is its own text: cut to 500 bytes (here inside a character),
    decoded with replacement, and still a clean protocol error."""
    with meshes(timeout=60) as made:
        made[1].give_up("long", NAMES, "€" * 400)  # 1,200 bytes of 3-byte characters
        with pytest.raises(ProtocolAborted) as aborted:
            made[0].receive("node:b", "long", 1, timeout=60)
    why = str(aborted.value).split(": ", 1)[1]
    assert why == "€" * 166 + "\ufffd"  # 498 bytes whole, then 2 bytes of a character


def _handshake(
    initiator: NodeIdentity,
    responder: NodeIdentity,
    registry: dict[str, list[Ed25519PublicKey]],
    *,
    dial: str | None = None,
    context: bytes = CONTEXT,
) -> tuple[SecureChannel | Exception, SecureChannel | Exception]:
    """Both sides of one handshake over a socket pair: each side's channel or error."""
    left, right = socket.socketpair()
    answer: list[SecureChannel | Exception] = []

    def respond() -> None:
        try:
            answer.append(accept(right, responder, lambda p: registry.get(p, []), CONTEXT))
        except (TransportError, OSError) as exc:
            answer.append(exc)
            right.close()

    thread = threading.Thread(target=respond)
    thread.start()
    try:
        mine: SecureChannel | Exception = connect(
            left, initiator, dial or responder.name, lambda p: registry.get(p, []), context
        )
    except (TransportError, OSError) as exc:
        mine = exc
        left.close()
    thread.join(5)
    return mine, answer[0]


A, B = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def test_a_peer_whose_key_is_not_on_the_ledger_is_refused() -> None:
    registry = {"node:a": [A.public_key()], "node:b": [Ed25519PrivateKey.generate().public_key()]}
    _, answer = _handshake(NodeIdentity("node:b", B), NodeIdentity("node:a", A), registry)
    assert isinstance(answer, TransportError) and "does not verify" in str(answer)


def test_a_node_key_outside_its_validity_is_not_one_the_mesh_lets_in(ledger: Ledger) -> None:
    """The keys a node checks its peers' handshakes against were every unrevoked key of
    theirs in its replica, also one before its not_before (or past its not_after),
    which may sign nothing on the ledger."""
    from joserfc.jwk import OKPKey

    from gateways.cli.node_engine_wiring import ledger_node_keys
    from infra.bootstrap import open_views
    from ledger.signing import public_jwk
    from projections.base import catch_up, prepare
    from projections.keys import PrincipalsView

    ledger.admit("node:a", "node_operator")
    later = public_jwk(OKPKey.generate_key("Ed25519")).as_dict()
    body = {"principal": "node:a", "jwk": later, "not_before": "2099-01-01T00:00:00Z"}
    ledger.accept(ledger.sign(ledger.operator, "key.add", body))
    views = open_views(ledger.settings)
    try:
        read = ledger.sequencer.store.read_entries
        prepare(views, PrincipalsView(), read)
        catch_up(views, PrincipalsView(), read)
        assert len(ledger_node_keys(views)("node:a")) == 1  # the key it was admitted with
    finally:
        views.close()


def test_an_unknown_node_and_another_ledger_are_refused() -> None:
    registry = {"node:a": [A.public_key()], "node:b": [B.public_key()]}
    _, unknown = _handshake(NodeIdentity("node:x", B), NodeIdentity("node:a", A), registry)
    assert isinstance(unknown, TransportError) and "not a node" in str(unknown)
    _, other = _handshake(NodeIdentity("node:b", B), NodeIdentity("node:a", A), registry, context=b"other")
    assert isinstance(other, TransportError) and "another ledger" in str(other)


def test_the_initiator_refuses_a_responder_it_cannot_verify_or_did_not_dial() -> None:
    registry = {"node:a": [Ed25519PrivateKey.generate().public_key()], "node:b": [B.public_key()]}
    mine, _ = _handshake(NodeIdentity("node:b", B), NodeIdentity("node:a", A), registry)
    assert isinstance(mine, TransportError) and "does not verify" in str(mine)
    registry["node:a"] = [A.public_key()]
    mine, _ = _handshake(NodeIdentity("node:b", B), NodeIdentity("node:a", A), registry, dial="node:c")
    assert isinstance(mine, TransportError) and "but node:a answered" in str(mine)


def test_an_altered_frame_ends_the_connection() -> None:
    registry = {"node:a": [A.public_key()], "node:b": [B.public_key()]}
    channel, server = _handshake(NodeIdentity("node:b", B), NodeIdentity("node:a", A), registry)
    assert isinstance(channel, SecureChannel) and isinstance(server, SecureChannel)
    channel.send(b"hello")
    assert server.receive() == b"hello"
    ciphertext = channel._send.encrypt((1).to_bytes(12, "big"), b"evil", None)
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    channel.sock.sendall(len(tampered).to_bytes(4, "big") + tampered)
    with pytest.raises(TransportError, match="failed authentication"):
        server.receive()


def _frame(session: str, number: int, payload: bytes) -> bytes:
    """A round's last (here: only) frame, as ``Mesh.send`` frames it."""
    name = session.encode()
    return len(name).to_bytes(2, "big") + name + number.to_bytes(4, "big") + b"\x01" + payload


def test_frames_that_arrive_after_a_session_is_over_are_dropped_not_kept_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """node:a gave a session up (or timed out) while node:b still sent its round. The late
    frames must not make an inbox nobody reads: kept, they would hold their data for
    ever and, once as many as the limit of open sessions, refuse every new session."""
    import mpc.transport

    monkeypatch.setattr(mpc.transport, "_MAX_WAITING_SESSIONS", 1)  # two inboxes with two peers
    with meshes(timeout=60) as made:
        a, b = made[0], made[1]
        for session in ("over-1", "over-2"):
            a.forget(session)  # its task failed here
            b.send("node:a", session, 1, b"late")
            # on the same connection, after the late frame: once it is here, that one was read
            b._channel("node:a", session).send(_frame(f"probe-{session}", 1, b"ok"))
            assert a.receive("node:b", f"probe-{session}", 1, timeout=10) == b"ok"
            a.forget(f"probe-{session}")
        assert not [key for key in a._inboxes if key[0].startswith("over")]
        b.send("node:a", "next", 1, b"fresh")
        assert a.receive("node:b", "next", 1, timeout=10) == b"fresh"


def _ended(sock: socket.socket) -> bool:
    """Whether the other side closed (or reset) the connection within the socket's time-out."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_closed_mesh_stops_listening_and_ends_a_connection_still_in_its_handshake() -> None:
    """SIGTERM while a peer's connection is half open: closing the mesh ends it at once
    (not at the handshake time-out), its acceptor stops, and its port takes no more
    connections -- which a thread still blocked in accept() went on taking."""
    with meshes() as made:
        a = made[0]
        half_open = socket.create_connection(a.address, timeout=5)  # it says nothing
        deadline = time.monotonic() + 5
        while not any(t.name == "dfg-mpc-peer" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the mesh never took the connection"
            time.sleep(0.01)
        a.close()
        assert _ended(half_open)
        half_open.close()
        assert not a._acceptor.is_alive()
        with pytest.raises(OSError):
            socket.create_connection(a.address, timeout=5).close()
        assert not any(t.name == "dfg-mpc-peer" for t in threading.enumerate())


def test_closing_a_mesh_ends_a_wait_for_a_round_at_once_saying_the_node_is_stopping() -> None:
    """Else a node stopped mid-task waits out the task time-out for a round that cannot
    come -- and its process is gone before it fails the task."""
    with meshes(timeout=60) as made:
        raised: list[Exception] = []

        def wait() -> None:
            try:
                made[0].receive("node:b", "s1", 1, timeout=60)
            except Exception as exc:  # the test inspects it
                raised.append(exc)

        waiting = threading.Thread(target=wait)
        waiting.start()
        made[0].close()
        waiting.join(10)
        assert not waiting.is_alive()
        (exc,) = raised
        assert isinstance(exc, TransportError) and str(exc) == "node:a is stopping", exc
        with pytest.raises(TransportError, match="node:a is stopping"):  # and any wait after it
            made[0].receive("node:c", "s1", 1, timeout=60)


def test_a_peer_that_trickles_its_handshake_is_cut_off_at_the_handshake_time_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The time-out bounded each read, so a connection that sends a byte now and then --
    nobody needs a key for that -- held its thread and socket for ever."""
    import mpc.transport

    monkeypatch.setattr(mpc.transport, "HANDSHAKE_TIMEOUT_S", 1.0)
    with meshes() as made:
        trickle = socket.create_connection(made[0].address, timeout=5)
        trickle.sendall((4000).to_bytes(4, "big"))  # a hello of 4,000 bytes, a byte at a time
        trickle.settimeout(0.1)
        started = time.monotonic()
        ended = False
        while not ended and time.monotonic() - started < 5:
            try:
                trickle.sendall(b"x")
            except OSError:  # reset
                ended = True
                break
            ended = _ended(trickle)
        trickle.close()
        assert ended and time.monotonic() - started < 5


@pytest.mark.parametrize("frame", [b"", b"\x00", b"\x00\x05ab", _frame("s", 1, b"")[:-1] + b"\x07"])
def test_a_frame_that_is_not_a_rounds_frame_ends_the_connection_without_a_crash(
    frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's frame shorter than its header raised an IndexError in the thread that
    serves the connection: a traceback instead of a refusal."""
    with meshes() as made:
        a, b = made[0], made[1]
        channel = b._channel("node:a", "s")
        with caplog.at_level("DEBUG", logger="dfg.mpc.transport"):
            channel.send(frame)
            channel.sock.settimeout(10)
            assert _ended(channel.sock)
        assert "is not a round's frame" in caplog.text
        b.send("node:a", "next", 1, b"fresh")  # the node goes on with a new connection
        assert a.receive("node:b", "next", 1, timeout=10) == b"fresh"


def _piece(session: str, number: int, payload: bytes) -> bytes:
    """A frame that says more pieces of the round follow."""
    return _frame(session, number, payload)[: -len(payload) - 1] + b"\x00" + payload


def _cut_off(channel: SecureChannel, frames: Iterator[bytes]) -> bool:
    """Send until the node cuts the connection (True) or the frames run out (False)."""
    channel.sock.settimeout(10)
    try:
        for frame in frames:
            channel.send(frame)
    except OSError:
        return True
    return _ended(channel.sock)


def test_a_peer_streaming_pieces_without_end_is_cut_off_at_the_nodes_buffer_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An authenticated peer could send a round's "more follows" pieces for ever: the node
    kept every one until its memory was gone."""
    from mpc.transport import PIECE

    with meshes() as made:
        a, b = made[0], made[1]
        a.max_buffered = 3 * PIECE
        endless = (_piece("s", 1, bytes(PIECE)) for _ in range(50))
        with caplog.at_level("WARNING", logger="dfg.mpc.transport"):
            assert _cut_off(b._channel("node:a", "s"), endless)
            deadline = time.monotonic() + 10
            while a._buffered and time.monotonic() < deadline:  # the serving thread ends
                time.sleep(0.01)
        assert "cut the MPC connection from node:b" in caplog.text and "the limit is" in caplog.text
        assert a._buffered == 0  # what it held of the cut message is let go
        b.send("node:a", "next", 1, bytes(2 * PIECE))  # a message under the limit still passes
        assert len(a.receive("node:b", "next", 1, timeout=10)) == 2 * PIECE


def test_a_peer_running_rounds_ahead_of_the_protocol_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    """An honest peer waits for this node's round before it sends its next, so at most two
    of its rounds wait here: more are a peer filling the node's memory."""
    with meshes() as made:
        a, b = made[0], made[1]
        rounds = (_frame("s", number, b"x" * 100) for number in range(1, 10))
        with caplog.at_level("WARNING", logger="dfg.mpc.transport"):
            assert _cut_off(b._channel("node:a", "s"), rounds)
        assert "an honest peer is at most one round ahead" in caplog.text
        assert [a.receive("node:b", "s", n, timeout=10) for n in (1, 2)] == [b"x" * 100] * 2
        assert a._buffered == 0


def test_the_bytes_a_node_holds_for_its_peers_are_let_go_when_read_or_forgotten() -> None:
    def square(party: Party) -> object:
        x = input_values(party, 1, [7] if party.index == 1 else None)
        return open_values(party, multiply(party, x, x))

    with meshes() as made:
        assert [result == [49] for result in _run_all(made, square)] == [True] * 3
        a, b = made[0], made[1]
        b.send("node:a", "unread", 1, b"y" * 1000)
        deadline = time.monotonic() + 10
        while a._buffered != 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert a._buffered == 1000
        for mesh in made:
            mesh.forget("unread")
        assert [mesh._buffered for mesh in made] == [0, 0, 0]
        assert not a._rounds_queued


def test_a_frame_over_one_piece_and_its_header_ends_the_connection() -> None:
    """Frames were taken up to 256 MiB each, where an honest one is a piece of 1 MiB."""
    from mpc.transport import PIECE

    with meshes() as made:
        a, b = made[0], made[1]
        longest_header = 2 + 0xFFFF + 5
        assert _cut_off(b._channel("node:a", "s"), iter([bytes(PIECE + longest_header + 1)]))
        b.send("node:a", "next", 1, b"fresh")
        assert a.receive("node:b", "next", 1, timeout=10) == b"fresh"


def test_a_peer_that_takes_the_connection_and_never_answers_is_said_to_be_silent_in_its_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hung node (stopped, swapping) still has its port open: the kernel takes the
    connection. The task.fail then said only "cannot reach node:b: timed out", after
    10 s rather than --task-timeout, with nothing to tell which wait had run out."""
    import mpc.transport

    monkeypatch.setattr(mpc.transport, "HANDSHAKE_TIMEOUT_S", 0.5)
    with meshes() as made, socket.create_server(("127.0.0.1", 0)) as hung:
        made[0].peers["node:b"] = hung.getsockname()[:2]
        with pytest.raises(ProtocolTimeout) as raised:
            made[0].send("node:b", "s1", 1, b"hello")
    assert str(raised.value) == "cannot reach node:b: the handshake took over 0.5 s"


def test_a_peer_that_stops_reading_fails_the_session_at_its_time_out() -> None:
    """A peer whose process stopped reading (stopped, hung) held a round's send for ever:
    TCP keeps a full connection open, and only receives had a time-out, so the session
    (and the node's engine, which runs one task at a time) never ended."""
    with meshes(timeout=1.0) as made:
        a, b = made[0], made[1]
        stopped = threading.Event()
        b._deliver = lambda *_: stopped.wait(30)  # type: ignore[method-assign]  # reads a round, then no more
        outcome: list[BaseException] = []

        def send() -> None:
            try:
                a.send("node:b", "s", 1, b"read")
                a.send("node:b", "s", 2, bytes(32 << 20))  # more than the connection holds
            except BaseException as exc:  # the test inspects it
                outcome.append(exc)

        sending = threading.Thread(target=send, daemon=True)
        sending.start()
        sending.join(15)
        stopped.set()
        assert not sending.is_alive(), "the send never ended"
        assert isinstance(outcome[0], ProtocolTimeout), outcome
        # the connection the send broke off in is dropped: the give-up that follows would
        # wait on it a second time, and reach the peer in the middle of a frame
        assert ("node:b", "s") not in a._outgoing


def test_one_peer_sending_rounds_for_sessions_never_started_here_is_cut_off_not_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every inbox counted against one limit for all peers: one peer (or rounds for tasks
    this node never ran) filled it, and every later session, with any peer, was refused."""
    import mpc.transport

    monkeypatch.setattr(mpc.transport, "_MAX_WAITING_SESSIONS", 3)
    with meshes() as made:
        a, b, c = made
        for n in range(3):
            b.send("node:a", f"never-{n}", 1, b"r")
        with caplog.at_level("WARNING", logger="dfg.mpc.transport"):
            assert _cut_off(b._channel("node:a", "never-3"), iter([_frame("never-3", 1, b"r")]))
        assert "sessions this node has not started" in caplog.text
        c.send("node:a", "fine", 1, b"from c")  # another peer is not held to b's count
        assert a.receive("node:c", "fine", 1, timeout=10) == b"from c"
        a.endpoint("never-0", NAMES)  # a session that starts here takes its waiting round
        assert a.receive("node:b", "never-0", 1, timeout=10) == b"r"


def test_rounds_for_a_session_that_never_starts_here_are_dropped_after_twice_the_time_out() -> None:
    with meshes(timeout=0.2) as made:
        a, b = made[0], made[1]
        b.send("node:a", "stale", 1, b"x" * 100)
        deadline = time.monotonic() + 10
        while ("stale", "node:b") not in a._inboxes and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # past twice the session time-out
        b.send("node:a", "next", 1, b"y")  # a new waiting session sweeps the expired ones
        assert a.receive("node:b", "next", 1, timeout=10) == b"y"
        assert ("stale", "node:b") not in a._inboxes and a._buffered == 0


def test_expired_rounds_are_let_go_before_a_peers_round_is_refused_at_the_buffer_limit() -> None:
    """Rounds for a session that never started here were swept only when an inbox was
    made, after the round that makes it had been refused at the limit: the bytes they
    held cut an honest peer off, and its session failed."""
    with meshes(timeout=0.2) as made:
        a, b = made[0], made[1]
        a.max_buffered = 1000
        b.send("node:a", "stale", 1, b"x" * 800)
        deadline = time.monotonic() + 10
        while a._buffered != 800 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # past twice the session time-out
        b.send("node:a", "next", 1, b"y" * 300)
        deadline = time.monotonic() + 10  # queued before any receive here sweeps
        while ("next", "node:b") not in a._rounds_queued and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("next", "node:b") in a._rounds_queued, "the round was refused"
        assert a.receive("node:b", "next", 1, timeout=10) == b"y" * 300
        assert ("stale", "node:b") not in a._inboxes and a._buffered == 0


def test_connections_both_ways_probe_a_peer_that_vanished() -> None:
    """A peer whose host went away sends no FIN: the thread reading its connection waited
    for ever, one per session. TCP keep-alive probes end it."""
    from mpc.transport import KEEPALIVE_IDLE_S

    with meshes() as made:
        a, b = made[0], made[1]
        b.send("node:a", "s", 1, b"hello")
        assert a.receive("node:b", "s", 1, timeout=10) == b"hello"
        dialled = b._outgoing[("node:a", "s")].sock
        (accepted,) = [c.sock for c in a._incoming]
        for sock in (dialled, accepted):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S


def test_a_connection_nobody_answers_is_said_to_get_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packets dropped (a firewall, a host gone): the task failed "cannot reach node:b:
    timed out", which said neither what timed out nor why."""
    import mpc.transport

    def dropped(address: object, timeout: float) -> socket.socket:
        raise TimeoutError("timed out")

    monkeypatch.setattr(mpc.transport.socket, "create_connection", dropped)
    with meshes() as made, pytest.raises(ProtocolTimeout) as raised:
        made[0].send("node:b", "s1", 1, b"hello")
    assert str(raised.value).startswith("cannot reach node:b: no answer to a connection within 10 s")


def test_a_round_reaches_every_reachable_peer_while_another_cannot_be_reached() -> None:
    """node:b died mid-task after node:c had sent it its round. node:a sent to its peers
    one after the other: it dialled node:b (refused) until its time-out, and never sent
    node:c anything, so node:c's task.fail blamed node:a ("node:a did not answer
    round 1"), an innocent node, on the ledger."""
    with meshes(timeout=2.0) as made, socket.create_server(("127.0.0.1", 0)) as gone:
        refused = gone.getsockname()[:2]
        gone.close()  # nothing listens there: node:a's dials to node:b are refused
        made[0].peers["node:b"] = refused
        outcomes: dict[str, object] = {}

        def one(index: int) -> None:
            endpoint = made[index].endpoint("s1", NAMES)
            try:
                outcomes[NAMES[index]] = endpoint.exchange({1: b"1", 2: b"2", 3: b"3"})
            except Exception as exc:  # the test inspects it
                outcomes[NAMES[index]] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in (0, 2)]  # node:b says nothing
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert isinstance(outcomes["node:a"], ProtocolTimeout)
    assert str(outcomes["node:a"]).startswith("cannot reach node:b")
    assert isinstance(outcomes["node:c"], ProtocolTimeout)
    assert str(outcomes["node:c"]).startswith("node:b did not answer round 1"), outcomes["node:c"]


def test_two_dials_of_one_peer_for_one_session_keep_one_connection_and_close_the_other() -> None:
    """Dials run outside the mesh's lock (so that one slow peer holds up no other): two
    threads dialling the same peer for one session (a give-up beside a send) each made a
    connection, and the one overwritten in the table was left open."""
    import mpc.transport as transport

    made_channels: list[mock.Mock] = []
    both_dialled = threading.Barrier(2)

    def fake_connect(sock: socket.socket, *args: object) -> mock.Mock:
        both_dialled.wait(10)
        channel = mock.Mock()
        made_channels.append(channel)
        return channel

    with meshes() as made, mock.patch.object(transport, "connect", fake_connect):
        got: list[object] = []
        threads = [
            threading.Thread(target=lambda: got.append(made[0]._channel("node:b", "s1"))) for _ in (1, 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(made_channels) == 2 and got[0] is got[1]
        kept = got[0]
        (other,) = [c for c in made_channels if c is not kept]
        other.close.assert_called_once()
        assert made[0]._outgoing[("node:b", "s1")] is kept
