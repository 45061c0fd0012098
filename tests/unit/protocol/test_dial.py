"""dial: a caller that gives up gets CancelledError, at whatever stage the attempt
was (a name lookup cancelled fails as a DNSLookupError, a connection as
ConnectingCancelledError), so that code dialling can tell giving up from a
server that failed."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock

from dfs.config import Address
from dfs.protocol.dial import dial
from dfs.security.identity import Identity, Role

ALICE = Identity(Role.CLIENT, "alice")


def failure_of(deferred: Deferred[Any]) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "it should have ended"
    return results[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_giving_up_on_a_dial_is_a_cancellation_whatever_its_stage(pki, host):
    reactor = MemoryReactorClock()
    dialling = Deferred.fromCoroutine(
        dial(reactor, Address(host, 7000), pki.client, ALICE, server_name="localhost")
    )
    reactor.advance(0)
    dialling.cancel()
    failure = failure_of(dialling)
    assert failure.check(CancelledError), failure
