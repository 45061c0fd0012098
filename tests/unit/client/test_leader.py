"""MetaserverChannel against metaservers in memory: it finds and follows the Raft
leader, survives metaservers that die or hang, and gives up with one clear error."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dfs.client.connection import NoMetaserverReachable
from dfs.client.leader import LAST_PAUSE, MetaserverChannel, attempt_timeout
from dfs.protocol.commands import Mkdir, RenewLease, Stat
from dfs.protocol.errors import FileNotFound, NotLeader, SafeMode

A, B, C = "10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"
REQUEST_TIMEOUT = 60.0


class FakeTransport:
    def __init__(self, session: FakeSession) -> None:
        self._session = session

    def loseConnection(self) -> None:
        self._session.lose(ConnectionDone())


class FakeSession:
    """The client's end of a session with a FakeMetaserver."""

    def __init__(self, server: FakeMetaserver) -> None:
        self.server = server
        self.is_open = True
        self.transport = FakeTransport(self)
        self.pending: list[Deferred[Any]] = []
        self.aborted = False

    def callRemote(self, command: Any, **arguments: Any) -> Deferred[Any]:
        if not self.is_open:
            return fail(ConnectionDone())
        return self.server.handle(self, command, arguments)

    def abort(self) -> None:
        self.aborted = True
        self.lose(ConnectionLost())

    def lose(self, error: Exception) -> None:
        """The connection drops: every call waiting on it fails with ``error``."""
        if not self.is_open:
            return
        self.is_open = False
        pending, self.pending = self.pending, []
        for call in pending:
            call.errback(Failure(error))


class FakeMetaserver:
    """A metaserver as the client sees it.

    ``role`` is "leader" (answers), "follower" (NotLeader naming ``leader``, or no one)
    or "hung" (accepts requests and never answers). A leader applies a request id
    once: a repeat gets the first answer, as the real metaserver promises.
    """

    def __init__(self, address: str, role: str = "follower", leader: str = "") -> None:
        self.address = address
        self.role = role
        self.leader = leader
        self.up = True
        self.safe_mode_answers = 0
        self.safe_mode_message = "loading the namespace"
        self.sessions: list[FakeSession] = []
        self.requests: list[tuple[Any, dict[str, Any]]] = []
        self.applied: dict[str, dict[str, Any]] = {}

    def handle(self, session: FakeSession, command: Any, arguments: dict[str, Any]) -> Any:
        self.requests.append((command, arguments))
        if self.role == "hung":
            call: Deferred[Any] = Deferred()
            session.pending.append(call)
            return call
        if self.role == "follower":
            return fail(NotLeader(self.leader))
        if self.safe_mode_answers:
            self.safe_mode_answers -= 1
            return fail(SafeMode(self.safe_mode_message))
        if command is Stat and arguments["path"] == "/missing":
            return fail(FileNotFound("/missing"))
        request_id = arguments.get("request_id")
        if request_id in self.applied:
            return succeed(self.applied[request_id])
        answer = {"answered_by": self.address, "applied": len(self.applied) + 1}
        if request_id is not None:
            self.applied[request_id] = answer
        return succeed(answer)

    def die(self) -> None:
        """kill -9: connections drop, new ones are refused."""
        self.up = False
        for session in self.sessions:
            session.lose(ConnectionLost("killed"))


class FakeGroup:
    """Metaservers by address, and the connect function the channel is given."""

    def __init__(self, *servers: FakeMetaserver) -> None:
        self.servers = {server.address: server for server in servers}
        self.dials: list[str] = []
        #: when set, a dial waits for this Deferred before it connects
        self.gate: Deferred[None] | None = None

    def __getitem__(self, address: str) -> FakeMetaserver:
        return self.servers[address]

    async def connect(self, address: str) -> FakeSession:
        self.dials.append(address)
        if self.gate is not None:
            await self.gate
        server = self.servers.get(address)
        if server is None or not server.up:
            raise ConnectionRefusedError(f"connection to {address} refused")
        session = FakeSession(server)
        server.sessions.append(session)
        return session


def make_channel(
    group: FakeGroup, addresses: tuple[str, ...] = (A, B, C), timeout: float = REQUEST_TIMEOUT
) -> tuple[MetaserverChannel, Clock]:
    clock = Clock()
    return MetaserverChannel(clock, addresses, group.connect, timeout), clock


def start(channel: MetaserverChannel, command: Any, **arguments: Any) -> list[Any]:
    """Start a call; the returned list receives its answer or Failure."""
    outcome: list[Any] = []
    Deferred.fromCoroutine(channel.call(command, **arguments)).addBoth(outcome.append)
    return outcome


def advance(clock: Clock, seconds: float) -> None:
    """Let ``seconds`` pass in small steps, as a reactor would."""
    end = clock.seconds() + seconds
    while clock.seconds() < end:
        clock.advance(min(0.01, end - clock.seconds()))


def run_until_done(clock: Clock, outcome: list[Any], limit: float = 600.0) -> Any:
    """Advance time in small steps until the call ends; its answer (or raise)."""
    step = 0.01
    while not outcome and clock.seconds() < limit:
        clock.advance(step)
    assert outcome, f"no answer after {clock.seconds()} s"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def test_follows_not_leader_to_the_named_leader_with_the_same_request_id() -> None:
    group = FakeGroup(
        FakeMetaserver(A, leader=B), FakeMetaserver(B, "leader"), FakeMetaserver(C, leader=B)
    )
    channel, clock = make_channel(group)

    outcome = start(channel, Mkdir, path="/a", mode=0o755, parents=False, request_id="r1")

    # No pause is needed to follow a named leader.
    assert run_until_done(clock, outcome, limit=0.0) == {"answered_by": B, "applied": 1}
    assert channel.address == B
    assert group.dials == [A, B]
    [(_, asked_a)] = group[A].requests
    [(_, asked_b)] = group[B].requests
    assert asked_a == asked_b and asked_b["request_id"] == "r1"
    # The session with the follower is closed; later calls go straight to the leader.
    assert not group[A].sessions[0].is_open
    assert run_until_done(clock, start(channel, Stat, path="/a"))["answered_by"] == B
    assert group.dials == [A, B]


def test_not_leader_without_an_address_tries_the_next_metaserver() -> None:
    group = FakeGroup(FakeMetaserver(A), FakeMetaserver(B), FakeMetaserver(C, "leader"))
    channel, clock = make_channel(group)

    answer = run_until_done(clock, start(channel, Stat, path="/"))

    assert answer["answered_by"] == C
    assert group.dials == [A, B, C]


def test_a_not_leader_that_names_no_address_counts_as_no_leader_known() -> None:
    # An error sent with an empty message arrives over AMP with its user_text.
    group = FakeGroup(FakeMetaserver(A, leader="Not the leader"), FakeMetaserver(B, "leader"))
    channel, clock = make_channel(group, (A, B))

    assert run_until_done(clock, start(channel, Stat, path="/"))["answered_by"] == B
    assert group.dials == [A, B]


def test_a_dead_leader_still_named_by_followers_is_not_dialled_again_in_the_same_round() -> None:
    group = FakeGroup(FakeMetaserver(A, leader=C), FakeMetaserver(B, leader=C))
    channel, clock = make_channel(group)
    outcome = start(channel, Stat, path="/")

    # C was the leader and died; until the election ends the followers still name it.
    assert group.dials == [A, C, B]
    assert not outcome

    group[B].role = "leader"
    group[A].leader = B
    assert run_until_done(clock, outcome)["answered_by"] == B


def test_a_leader_not_serving_yet_is_asked_again_after_a_pause() -> None:
    group = FakeGroup(FakeMetaserver(A, leader=A), FakeMetaserver(B, leader=A))
    channel, clock = make_channel(group, (A, B))
    outcome = start(channel, Stat, path="/")
    assert not outcome  # A names itself: just elected, not serving yet

    group[A].role = "leader"

    assert run_until_done(clock, outcome)["answered_by"] == A
    assert group.dials == [A]


def test_an_election_in_progress_is_waited_out_with_growing_pauses() -> None:
    group = FakeGroup(FakeMetaserver(A), FakeMetaserver(B), FakeMetaserver(C))
    channel, clock = make_channel(group)
    outcome = start(channel, Stat, path="/")
    advance(clock, 3.0)
    assert not outcome
    # Pauses of 0.05, 0.1, 0.2, 0.4, 0.8 s then 1 s: about a round a second by now,
    # not one per hundredth of a second.
    assert 3 * 6 <= len(group.dials) <= 3 * 8

    group[B].role = "leader"
    for server in (group[A], group[C]):
        server.leader = B
    assert run_until_done(clock, outcome, limit=clock.seconds() + LAST_PAUSE)["answered_by"] == B


def test_a_connection_lost_mid_call_is_asked_again_on_another_metaserver() -> None:
    group = FakeGroup(FakeMetaserver(A, "hung"), FakeMetaserver(B, "leader"), FakeMetaserver(C))
    channel, clock = make_channel(group)
    outcome = start(channel, Mkdir, path="/a", mode=0o755, parents=False, request_id="r1")
    assert group[A].requests and not outcome

    group[A].die()  # its connection drops while the request waits for an answer

    assert run_until_done(clock, outcome, limit=0.0)["answered_by"] == B
    [(_, asked)] = group[B].requests
    assert asked["request_id"] == "r1"


def test_a_mutation_repeated_after_a_lost_answer_is_applied_once() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"), FakeMetaserver(B, leader=A))
    channel, clock = make_channel(group, (A, B))
    first = run_until_done(clock, start(channel, Stat, path="/"))
    assert first["answered_by"] == A

    # The leader applies the request, then its connection drops before the answer:
    # the channel dials again and repeats the same request id.
    session = group[A].sessions[0]
    real_handle = group[A].handle

    def apply_then_drop(session_: FakeSession, command: Any, arguments: dict[str, Any]) -> Any:
        real_handle(session_, command, arguments)
        group[A].handle = real_handle  # type: ignore[method-assign]
        call: Deferred[Any] = Deferred()
        session_.pending.append(call)
        session_.lose(ConnectionLost())
        return call

    group[A].handle = apply_then_drop  # type: ignore[method-assign]
    outcome = start(channel, Mkdir, path="/a", mode=0o755, parents=False, request_id="r2")

    answer = run_until_done(clock, outcome)
    assert answer == {"answered_by": A, "applied": 1}
    assert len(group[A].applied) == 1
    assert not session.is_open


def test_a_hung_metaserver_times_out_and_the_next_one_answers() -> None:
    group = FakeGroup(FakeMetaserver(A, "hung"), FakeMetaserver(B, "leader"), FakeMetaserver(C))
    channel, clock = make_channel(group)
    per_attempt = attempt_timeout(REQUEST_TIMEOUT)
    assert per_attempt < REQUEST_TIMEOUT

    outcome = start(channel, Stat, path="/")
    clock.advance(per_attempt - 0.1)
    assert not outcome  # still waiting for the hung one

    clock.advance(0.1)
    assert run_until_done(clock, outcome, limit=per_attempt)["answered_by"] == B
    # The hung session is dropped, not left to pile up requests.
    assert group[A].sessions[0].aborted


def test_other_calls_waiting_on_a_hung_metaserver_fail_over_together() -> None:
    group = FakeGroup(FakeMetaserver(A, "hung"), FakeMetaserver(B, "leader"))
    channel, clock = make_channel(group, (A, B))
    first = start(channel, Stat, path="/1")
    clock.advance(1.0)
    second = start(channel, Stat, path="/2")

    clock.advance(attempt_timeout(REQUEST_TIMEOUT) - 1.0)

    # The first timed out; dropping the hung session failed the second over too,
    # without it waiting for its own timeout.
    assert first and second
    assert first[0]["answered_by"] == second[0]["answered_by"] == B
    assert group.dials == [A, B]


def test_gives_up_after_request_timeout_with_a_one_line_error_naming_each_metaserver() -> None:
    group = FakeGroup()  # nothing answers
    channel, clock = make_channel(group)
    outcome = start(channel, Stat, path="/")

    advance(clock, REQUEST_TIMEOUT - 0.5)
    assert not outcome
    with pytest.raises(NoMetaserverReachable) as raised:
        run_until_done(clock, outcome, limit=REQUEST_TIMEOUT + 1.0)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("no metaserver answered Stat within 60 s")
    for address in (A, B, C):
        assert f"{address}: ConnectionRefusedError" in message


def test_gives_up_with_not_leader_when_no_leader_is_elected_in_time() -> None:
    group = FakeGroup(FakeMetaserver(A), FakeMetaserver(B), FakeMetaserver(C))
    channel, clock = make_channel(group, timeout=10.0)

    with pytest.raises(NotLeader):
        run_until_done(clock, start(channel, Stat, path="/"))
    assert 10.0 <= clock.seconds() < 10.0 + LAST_PAUSE


def test_errors_that_are_answers_are_raised_at_once() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"))
    channel, clock = make_channel(group, (A,))

    with pytest.raises(FileNotFound):
        run_until_done(clock, start(channel, Stat, path="/missing"), limit=0.0)
    assert len(group[A].requests) == 1


def test_safe_mode_is_asked_again_on_the_same_session_after_a_pause() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"), FakeMetaserver(B, leader=A))
    group[A].safe_mode_answers = 3
    channel, clock = make_channel(group, (A, B))

    outcome = start(channel, Stat, path="/")
    assert not outcome

    assert run_until_done(clock, outcome)["answered_by"] == A
    assert len(group[A].requests) == 4
    assert group.dials == [A]


def test_safe_mode_that_lasts_gives_up_with_safe_mode() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"))
    group[A].safe_mode_answers = 1_000_000
    channel, clock = make_channel(group, (A,), timeout=5.0)

    with pytest.raises(SafeMode):
        run_until_done(clock, start(channel, Stat, path="/"))


def test_safe_mode_entered_by_an_administrator_is_raised_at_once() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"), FakeMetaserver(B, leader=A))
    group[A].safe_mode_answers = 1_000_000
    group[A].safe_mode_message = f"{SafeMode.MANUAL}: no namespace change until it is left"
    channel, clock = make_channel(group, (A, B))

    with pytest.raises(SafeMode) as raised:
        run_until_done(clock, start(channel, Mkdir, path="/a"), limit=0.0)
    assert raised.value.manual
    assert len(group[A].requests) == 1
    assert clock.seconds() == 0.0


def test_concurrent_calls_share_one_reconnect() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"), FakeMetaserver(B, leader=A))
    channel, clock = make_channel(group, (A, B))
    group.gate = Deferred()

    outcomes = [start(channel, Stat, path=f"/{n}") for n in range(5)]
    assert group.dials == [A]
    group.gate.callback(None)
    group.gate = None
    assert all(outcome and outcome[0]["answered_by"] == A for outcome in outcomes)

    # The leader dies with calls in flight and a new one is elected: they all fail
    # over through a single dial of each metaserver.
    group[A].role = "hung"
    outcomes = [start(channel, Stat, path=f"/{n}") for n in range(5)]
    group[B].role = "leader"
    group.gate = Deferred()
    group[A].die()
    assert group.dials == [A, B]
    group.gate.callback(None)

    answers = [run_until_done(clock, outcome) for outcome in outcomes]
    assert {answer["answered_by"] for answer in answers} == {B}
    assert group.dials == [A, B]


def test_connect_fails_fast_when_no_metaserver_can_be_reached() -> None:
    group = FakeGroup(FakeMetaserver(C, "leader"))
    group[C].up = False
    channel, _ = make_channel(group)
    outcome: list[Any] = []
    Deferred.fromCoroutine(channel.connect()).addBoth(outcome.append)

    # No time passes: each metaserver is tried once.
    [failure] = outcome
    assert isinstance(failure, Failure)
    assert failure.check(NoMetaserverReachable)
    assert group.dials == [A, B, C]
    assert str(failure.value).startswith("no metaserver reachable (10.0.0.1:7000: ")


def test_connect_takes_the_first_metaserver_that_answers() -> None:
    group = FakeGroup(FakeMetaserver(B), FakeMetaserver(C, "leader"))
    channel, clock = make_channel(group)
    outcome: list[Any] = []
    Deferred.fromCoroutine(channel.connect()).addBoth(outcome.append)

    assert outcome == [None]
    assert channel.address == B
    # The first request then finds the leader.
    group[B].leader = C
    assert run_until_done(clock, start(channel, Stat, path="/"))["answered_by"] == C


def test_a_short_budget_is_kept_and_the_session_too() -> None:
    group = FakeGroup(FakeMetaserver(A, "hung"))
    channel, clock = make_channel(group, (A,))
    outcome: list[Any] = []
    Deferred.fromCoroutine(
        channel.call_within(2.0, RenewLease, path="/f", client_id="alice/1")
    ).addBoth(outcome.append)

    with pytest.raises(NoMetaserverReachable, match="no answer within 2 s"):
        run_until_done(clock, outcome)
    assert clock.seconds() == pytest.approx(2.0, abs=0.02)
    # Running out of the request's own time is not the metaserver's failure.
    assert not group[A].sessions[0].aborted


def test_calls_fail_once_the_channel_is_closed() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"))
    channel, clock = make_channel(group, (A,))
    run_until_done(clock, start(channel, Stat, path="/"))

    channel.close()

    assert not group[A].sessions[0].is_open
    with pytest.raises(ConnectionDone):
        run_until_done(clock, start(channel, Stat, path="/"), limit=0.0)


@pytest.mark.parametrize(
    ("request_timeout", "expected"), [(60.0, 15.0), (10.0, 5.0), (3.0, 3.0), (400.0, 100.0)]
)
def test_one_attempt_waits_a_quarter_of_the_request_timeout_but_at_least_5_s(
    request_timeout: float, expected: float
) -> None:
    assert attempt_timeout(request_timeout) == expected


def test_a_session_the_metaserver_closed_while_idle_is_dialled_again() -> None:
    # A metaserver closes a connection idle for its idle_timeout (security_config.json).
    group = FakeGroup(FakeMetaserver(A, "leader"))
    channel, clock = make_channel(group, addresses=(A,))
    assert run_until_done(clock, start(channel, Stat, path="/"))["answered_by"] == A
    [session] = group[A].sessions
    session.lose(ConnectionDone())

    assert run_until_done(clock, start(channel, Stat, path="/"))["answered_by"] == A
    assert group.dials == [A, A]


def test_a_request_sent_as_the_idle_close_arrives_is_asked_again() -> None:
    group = FakeGroup(FakeMetaserver(A, "leader"))
    channel, clock = make_channel(group, addresses=(A,))
    assert run_until_done(clock, start(channel, Stat, path="/"))["answered_by"] == A
    [session] = group[A].sessions
    # Closed by the metaserver, but the client has not read the close yet.
    session.callRemote = lambda command, **arguments: fail(ConnectionDone())  # type: ignore[method-assign]

    outcome = start(channel, Mkdir, path="/a", mode=0o755, parents=False, request_id="r1")
    assert run_until_done(clock, outcome, limit=5.0)["answered_by"] == A
    assert group.dials == [A, A]
