"""The dedup step of a batch: claim every event id in Redis, and sort the batch by what the claims say."""

from __future__ import annotations

import asyncio

from processor.runtime.dedup import Claim, Dedup
from processor.runtime.records import unpack_outputs
from processor.runtime.spans import Spans
from processor.runtime.work import Work


async def claim_all(dedup: Dedup, works: list[Work], token: str, spans: Spans) -> tuple[list[Work], list[Work], int]:
    """Split ``works`` into (claimed: run the handler, replayed: stored outputs to produce, duplicates), the
    claimed ones in batch order. Waits for ids another processor holds, however long it holds them."""
    claimed: list[Work] = []
    replayed: list[Work] = []
    duplicates = 0
    pending = works
    wait = 0.05
    while pending:
        busy = []
        results = await dedup.claim([w.event_id for w in pending], token)
        for work, result in zip(pending, results, strict=True):
            if result.status is Claim.CLAIMED:
                claimed.append(work)
            elif result.status is Claim.DONE:
                duplicates += 1
                spans.skip(work, "duplicate")
            elif result.status is Claim.STORED:
                work.outputs = unpack_outputs(result.stored)
                replayed.append(work)
            else:
                busy.append(work)
        if busy:
            # Another processor holds these ids (a copy on another partition, or a batch from before a
            # rebalance, here or on another replica): wait for its outcome, never process alongside it.
            # Claims are taken in one order everywhere (Dedup.claim), so two waiting batches never
            # hold what the other waits for.
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)
        pending = busy
    order = {id(w): i for i, w in enumerate(works)}
    claimed.sort(key=lambda w: order[id(w)])
    return claimed, replayed, duplicates
