"""The chunk access tokens a reader or writer holds, and when to renew them.

A token comes with a chunk's locations (GetChunks) or allocation (AddChunk,
BumpChunkVersion) and lasts ``token_lifetime`` seconds. A transfer that runs
longer renews it with RenewChunkTokens shortly before it runs out, and once more
whenever a dataserver still refuses it: an expired token is never the user's
failure.

The expiry a token claims is in the metaserver's clock, this process's may differ:
a renewal is due within a margin of that expiry, but never sooner than the margin
after the last renewal, so a clock far ahead costs one renewal per margin, not a
storm of them (and a clock behind leaves it to the refusal).
"""

from __future__ import annotations

import attrs

from dfs.security.tokens import expiry

#: Renew a token this many seconds before it runs out (a quarter of its lifetime
#: when that is shorter).
RENEW_MARGIN = 10.0


@attrs.define
class ChunkGrant:
    """One chunk's token, as received at ``received`` (reactor seconds)."""

    token: str
    received: float

    def renewal_due(self, now: float) -> bool:
        expires = expiry(self.token)
        if expires is None:
            return False
        lifetime = expires - self.received
        # (a lifetime that seems over at once: this clock is ahead of the metaserver's)
        margin = min(RENEW_MARGIN, lifetime / 4) if lifetime > 0 else RENEW_MARGIN
        return expires - now <= margin and now - self.received >= margin
