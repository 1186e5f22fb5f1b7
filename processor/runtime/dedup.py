"""Deduplication in Redis: per handler, by event id, crash-safe, one round trip per batch per step.

An event in flight has a key per (handler, event id) that walks through these states::

    (absent, not done) --claim--> "c|token"  in flight; expires after the lease if its owner dies
    "c|token" --store_results--> "r|token|deadline_ms|outputs"
                                             the handler succeeded; its outputs are being delivered
    "r|..." --mark_done--> (absent, done)    outputs acknowledged by the broker: the key is deleted and
                                             the event's done-mark written, in one script
    "r|..." --claim after the deadline-->    taken over: another worker produces the stored outputs
    "c|token" --release--> (absent)          the handler failed: the retry copy may claim it again

Finished events are remembered as done-marks (processor.runtime.done_marks: their layout, about 19
bytes per id); a claim looks its id up there, inside the claim script.

While its batch runs, a worker renews the lease of its claims and stored results every third of the
lease (``Dedup.holding``): a live batch keeps its events however long its handlers take, and a dead
worker's events are free one lease after its last renewal, whatever the handlers' timeouts.

A token names one batch of one worker (``Dedup.new_token``). A claim call retried after a timeout may find
its own first attempt already applied (Redis ran the script after the client gave up): the same token
recognises it as ours, while another batch of the same worker (a copy of the event on another partition)
still sees it as busy.

Storing the handler's outputs (while they are produced) means a worker that dies once they are stored but
before they are marked done is not followed by a second run of the handler: the next claimer finds the
stored outputs (once the deadline passed) and produces them instead.

Redis being down never makes the worker skip dedup or drop an event: every call waits, with back-off,
until Redis answers again, and reports the dependency as down meanwhile.

The crash windows, where a crash costs more than a redelivery: a worker killed while its handler runs, or
in the round trip that stores its outputs, leaves a claim that expires after the lease; then the handler
runs again (its side effects are once only if the downstream honours ``ctx.idempotency_key``). Outputs
may be produced twice in the same windows; every copy carries the same event-id header. Dedup lasts as
long as Redis keeps the done-marks (the TTL, and a Redis that persists them across a restart): a
duplicate after that is processed again, as is one after the TTL itself changes (the buckets' length
follows it, and marks are looked up in buckets of the current length only).

The scripts name the in-flight keys they touch but build the done-marks' hash names themselves. On Redis
Cluster (REDIS_MODE=cluster) each group is spread over CLUSTER_SHARDS hash tags, ``{group:shard}``, chosen
by a byte of the id's digest: an id's in-flight key and every done-mark hash it can be in share its tag, so
each script call (one per shard of a batch) touches one slot.

Replication is asynchronous, on one primary with replicas as on a cluster: a write acknowledged by a master
that dies before its replica has it is lost with it. A lost claim lets another worker claim the event while
its first handler run is still going; a lost stored result or done-mark means a redelivered copy runs the
handler again. Side effects stay once through ``ctx.idempotency_key``; outputs may repeat (with the same
event-id header). With ``wait_replicas`` (REDIS_WAIT_REPLICAS) every claim, store and done is followed by
``WAIT`` on the script's own connection: the call returns once that many replicas have the write (or the
wait times out, which is logged), which closes the gap at the price of a replica round trip per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from processor.runtime.done_marks import DONE_MARKS_LUA, DoneMarks, digest
from processor.runtime.redis_client import RedisClient
from processor.runtime.replicated import ReplicatedWrites

log = logging.getLogger(__name__)
T = TypeVar("T")

# The Redis server's clock in ms, for the deadlines below: one clock for every worker, whatever theirs say.
_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS[i]: one per event; ARGV: DONE_ARGS, token, lease_ms, then one digest per key. Returns {codes,
# payload, payload, ...}: one status letter per key (c claimed, d done, s stored, b busy), then the stored
# outputs of each 's', in order. One string rather than a pair per key: the client parses two replies per
# batch instead of two per event. Stops at the first busy key (see Dedup.claim): the codes may be fewer
# than the keys.
_CLAIM = _NOW_MS + DONE_MARKS_LUA + """
local token, lease_ms = ARGV[3], ARGV[4]
local codes = {}
local out = {''}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    if is_done(ARGV[4 + i]) then
      codes[i] = 'd'
    else
      redis.call('SET', key, 'c|' .. token, 'PX', lease_ms)
      codes[i] = 'c'
    end
  elseif v == 'c|' .. token then
    codes[i] = 'c'
  elseif v == 'd' then  -- a done-mark of the one-key-per-id layout, kept until its TTL
    codes[i] = 'd'
  elseif string.sub(v, 1, 2) == 'r|' then
    local owner, deadline, payload = string.match(v, '^r|([^|]*)|(%d+)|(.*)$')
    if tonumber(deadline) < now_ms then
      local taken = 'r|' .. token .. '|' .. (now_ms + tonumber(lease_ms)) .. '|' .. payload
      redis.call('SET', key, taken, 'KEEPTTL')
      codes[i] = 's'
      out[#out + 1] = payload
    else
      codes[i] = 'b'
      break
    end
  else
    codes[i] = 'b'
    break
  end
end
out[1] = table.concat(codes)
return out
"""

# KEYS[i]: one per event; ARGV: token, lease_ms, ttl_seconds, then one payload per key. The deadline
# lets another claimer take over the delivery only once this owner's lease has run out.
_STORE = _NOW_MS + """
local deadline = now_ms + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 'r|' .. ARGV[1] .. '|' .. deadline .. '|' .. ARGV[3 + i], 'EX', ARGV[3])
end
return #KEYS
"""

# KEYS[i]: one per event; ARGV: DONE_ARGS, ttl_seconds, hashes per bucket, then one digest per key. The
# bucket's count is set by its first mark; its hashes expire a TTL after the bucket ends.
_DONE = _NOW_MS + DONE_MARKS_LUA + """
local expire_at = (current + 1) * bucket_seconds + tonumber(ARGV[3])
redis.call('SET', prefix .. current .. ':n', ARGV[4], 'EXAT', expire_at, 'NX')
local n = count(current)
for i, key in ipairs(KEYS) do
  local digest = ARGV[4 + i]
  local hash = hash_of(current, n, digest)
  redis.call('HSET', hash, string.sub(digest, 5), '')
  redis.call('EXPIREAT', hash, expire_at, 'NX')
  redis.call('DEL', key)
end
return #KEYS
"""

# KEYS[i]: one per event; ARGV: DONE_ARGS, then one digest per key. Deletes the in-flight key and the
# done-mark wherever it is.
_FORGET = _NOW_MS + DONE_MARKS_LUA + """
for i, key in ipairs(KEYS) do
  local digest = ARGV[2 + i]
  local field = string.sub(digest, 5)
  each_hash(digest, function(hash) redis.call('HDEL', hash, field) end)
  redis.call('DEL', key)
end
return #KEYS
"""

# KEYS[1]: one event's key; ARGV: DONE_ARGS, its digest. Its state: the key's value, or 'd' when done.
_STATE = _NOW_MS + DONE_MARKS_LUA + """
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
if is_done(ARGV[3]) then
  return 'd'
end
return false
"""


# KEYS[i]: one per event; ARGV: token, lease_ms. Extends the claims and stored-results deadlines this batch
# holds; any other state (done, released, someone else's) is left as it is.
_RENEW = _NOW_MS + """
local deadline = now_ms + tonumber(ARGV[2])
local stored = 'r|' .. ARGV[1] .. '|'
for _, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == 'c|' .. ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif v and string.sub(v, 1, #stored) == stored then
    local payload = string.match(v, '^r|[^|]*|%d+|(.*)$')
    redis.call('SET', key, stored .. deadline .. '|' .. payload, 'KEEPTTL')
  end
end
return #KEYS
"""

# KEYS[i]: one per event; ARGV: token. Deletes only claims this batch holds.
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == 'c|' .. ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


def dedup_key(tag: str, event_id: str) -> str:
    """The Redis key of one event id in flight in one handler's dedup space (``DoneMarks.tag``: the group,
    or on Redis Cluster the group and the id's shard)."""
    return f"dedup:{tag}:{event_id}"


def by_shard(marks: DoneMarks, event_ids: Sequence[str]) -> list[tuple[int, list[int]]]:
    """(shard, indexes of ``event_ids`` in it), shards in order: one script call each."""
    if marks.shards == 1:  # one Redis: one call, and no digest to compute for it
        return [(0, list(range(len(event_ids))))] if event_ids else []
    shards: dict[int, list[int]] = {}
    for index, event_id in enumerate(event_ids):
        shards.setdefault(marks.shard_of(digest(event_id)), []).append(index)
    return sorted(shards.items())


Call = tuple[list[str], list[str | int | bytes]]  # a script call's keys and args


def forget_calls(marks: DoneMarks, event_ids: Sequence[str]) -> tuple[str, list[Call]]:
    """The script that deletes the dedup state of ``event_ids`` and its (keys, args), one per shard, for a
    client of either kind."""
    calls: list[Call] = []
    for shard, indexes in by_shard(marks, event_ids):
        ids = [event_ids[i] for i in indexes]
        calls.append(([dedup_key(marks.tag(shard), i) for i in ids], [*marks.args(shard), *(digest(i) for i in ids)]))
    return _FORGET, calls


class Claim(enum.Enum):
    CLAIMED = "c"  # ours: run the handler
    DONE = "d"  # a duplicate of a processed event: skip
    STORED = "s"  # the handler ran; produce its stored outputs, do not run it again
    BUSY = "b"  # another processor holds it: wait and ask again


@dataclass(frozen=True, slots=True)
class ClaimResult:
    status: Claim
    stored: bytes = b""


_RESULTS = {c.value: ClaimResult(c) for c in Claim}
_BUSY = _RESULTS[Claim.BUSY.value]


class Dedup:
    """Claims, results and done-marks for one handler's event ids."""

    def __init__(
        self,
        client: RedisClient,
        *,
        group: str,
        owner: str,
        lease_seconds: float,
        ttl_seconds: int,
        peak_rate: float = 100.0,
        shards: int = 1,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        on_dependency: Callable[[bool], None] = lambda up: None,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self._redis = client
        self._owner = owner
        self._batches = itertools.count()
        self._lease_ms = int(lease_seconds * 1000)
        self.marks = DoneMarks(group, ttl_seconds, peak_rate, shards)
        self._write = ReplicatedWrites(client, wait_replicas, wait_timeout_ms).run
        self._on_dependency = on_dependency
        self._max_backoff = max_backoff_seconds
        self._claim = client.register_script(_CLAIM)
        self._store = client.register_script(_STORE)
        self._release = client.register_script(_RELEASE)
        self._done = client.register_script(_DONE)
        self._renew = client.register_script(_RENEW)
        self._forget = client.register_script(_FORGET)
        self._state = client.register_script(_STATE)

    def new_token(self) -> str:
        """A claim token for one batch: this worker's id and a sequence number."""
        return f"{self._owner}/{next(self._batches)}"

    def key(self, event_id: str) -> str:
        return dedup_key(self.marks.tag(self.marks.shard_of(digest(event_id))), event_id)

    def _keys(self, shard: int, event_ids: Sequence[str]) -> list[str]:
        tag = self.marks.tag(shard)
        return [dedup_key(tag, i) for i in event_ids]

    async def claim(self, event_ids: Sequence[str], token: str) -> list[ClaimResult]:
        """Claim every id for the batch ``token``; one result per id, in order.

        Ids are claimed in (shard, id) order, and none after the first busy one (those are reported busy
        as well): a batch that waits for an id then holds only ids below it, so two batches (on this
        replica or others) can never each hold an id the other waits for. One script call per shard, shard
        after shard: on one Redis that is one call."""
        results = [_BUSY] * len(event_ids)
        for shard, indexes in by_shard(self.marks, event_ids):
            indexes.sort(key=event_ids.__getitem__)
            ids = [event_ids[i] for i in indexes]
            keys = self._keys(shard, ids)
            args = [*self.marks.args(shard), token, self._lease_ms, *(digest(i) for i in ids)]
            raw: list[bytes] = await self._call(functools.partial(self._write, self._claim, keys, args))
            codes = raw[0].decode()
            stored = iter(raw[1:])
            for index, code in zip(indexes, codes, strict=False):  # codes stop at the first busy
                results[index] = ClaimResult(Claim.STORED, next(stored)) if code == "s" else _RESULTS[code]
            if len(codes) < len(indexes):
                break  # busy: nothing after it, in this shard or the next
        return results

    async def _each_shard(self, event_ids: Sequence[str],
                          call: Callable[[int, list[str], list[int]], Awaitable[object]]) -> None:
        # Shards are independent slots: their calls go at once.
        shards = by_shard(self.marks, event_ids)
        await asyncio.gather(*(
            self._call(functools.partial(call, shard, self._keys(shard, [event_ids[i] for i in ix]), ix))
            for shard, ix in shards))

    @contextlib.asynccontextmanager
    async def holding(self, event_ids: Sequence[str], token: str) -> AsyncIterator[None]:
        """While the block runs, renew the lease of whatever the batch ``token`` holds among ``event_ids``
        (claims, stored results), every third of the lease."""
        renewing = asyncio.get_running_loop().create_task(self._keep(event_ids, token))
        try:
            yield
        finally:
            renewing.cancel()

    async def _keep(self, event_ids: Sequence[str], token: str) -> None:
        await asyncio.sleep(self._lease_ms / 3000)
        # Only now: most batches end before their first renewal, and this task with them.
        while True:
            await self._each_shard(event_ids, lambda _, keys, __: self._renew(keys=keys, args=[token, self._lease_ms]))
            await asyncio.sleep(self._lease_ms / 3000)

    async def store_results(self, results: Sequence[tuple[str, bytes]], token: str) -> None:
        """Record (event id, encoded outputs) for handlers that succeeded, before marking them done."""
        head: list[bytes | str | int] = [token, self._lease_ms, self.marks.ttl_seconds]
        await self._each_shard([event_id for event_id, _ in results], lambda _, keys, ix: self._write(
            self._store, keys, [*head, *(results[i][1] for i in ix)]))

    async def mark_done(self, event_ids: Sequence[str]) -> None:
        """Remember these ids as processed for the TTL; call only after their outputs are acknowledged."""
        # One script call (per shard): a pipeline of N SETs costs the client N command encodings and replies.
        marks = self.marks
        await self._each_shard(event_ids, lambda shard, keys, ix: self._write(self._done, keys, [
            *marks.args(shard), marks.ttl_seconds, marks.hashes_per_bucket, *(digest(event_ids[i]) for i in ix)]))

    async def release(self, event_ids: Sequence[str], token: str) -> None:
        """Drop our claims on ids whose handler failed, so their retry copies can claim them."""
        await self._each_shard(event_ids, lambda _, keys, __: self._release(keys=keys, args=[token]))

    async def forget(self, event_ids: Sequence[str]) -> None:
        """Delete the dedup state of ids: their claims, stored results and done-marks."""
        await self._each_shard(event_ids, lambda shard, keys, ix: self._forget(keys=keys, args=[
            *self.marks.args(shard), *(digest(event_ids[i]) for i in ix)]))

    async def state(self, event_id: str) -> bytes | None:
        """One id's state as the module docstring names it (b"d" once done; None: absent), for inspection."""
        shard = self.marks.shard_of(digest(event_id))
        value = await self._call(lambda: self._state(keys=[self.key(event_id)],
                                                     args=[*self.marks.args(shard), digest(event_id)]))
        assert value is None or isinstance(value, bytes)
        return value

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        # Never give up: an event whose dedup state is unknown must not be processed or dropped.
        delay = 0.05
        down = False
        while True:
            try:
                result = await op()
            # ClusterDown, TryAgain, SlotNotCovered: a cluster between a master's loss and its replica's promotion.
            except (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError,
                    SlotNotCoveredError) as exc:
                if not down:
                    log.warning("redis unreachable, waiting for it: %s", exc)
                    self._on_dependency(False)
                    down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
                continue
            if down:
                log.warning("redis is back")
                self._on_dependency(True)
            return result
