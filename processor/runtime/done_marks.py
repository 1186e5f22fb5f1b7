"""Done-marks: how dedup remembers a finished event id for the TTL, in little memory.

A done-mark is what dedup (processor.runtime.dedup) keeps for the TTL, for every event, so it is what its
memory is made of: at one key per event id (``dedup:<group>:<id>`` = ``d`` with a TTL) it was about 150
bytes per id, 270 GB for a week at 1 000 events/s into three handlers. Now it is a 12-byte field (of a
16-byte BLAKE2b digest of the id) in a small hash: time is cut into eight buckets per TTL, each bucket's
marks are spread over enough hashes that each keeps Redis's compact listpack encoding (about 128 fields:
``DONE_PER_HASH``), and a bucket's hashes expire together, a TTL after the bucket ends (a mark lives between
one TTL and 9/8 of it). The hashes per bucket follow ``peak_rate``, the events/s the handler is sized for;
each bucket records the count it was written with, so changing the rate never hides a mark. 19 bytes per id
at the rate it is sized for, 27 at an eighth of it, 161 before (`processor bench --dedup-memory`, a million
ids; `processor dedup capacity` turns them into memory for a rate and a window). The digest's first 4 bytes
choose the hash: two ids are confused only if they share a hash and their fields agree (2^-96 a pair: about
10^-11 for a billion ids in one window). A claim looks an id up in each of the nine buckets a TTL spans,
inside the claim script.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

DONE_BUCKETS = 8  # per TTL: a done-mark outlives its TTL by at most an eighth of it
# On Redis Cluster, the hash slots each group's dedup state is spread over: a batch costs up to this many
# script calls (claims shard after shard), and up to this many masters share one group's load.
CLUSTER_SHARDS = 16
DONE_PER_HASH = 128  # at the peak rate, on average; Redis keeps a hash of up to 512 fields a listpack

# Lua the dedup scripts include after their clock (which sets ``now``). DONE_ARGS (prefix, bucket_seconds)
# come first in ARGV; a digest is 16 bytes: the first 4 pick the hash of the bucket, the other 12 are the field.
# ``each_hash`` visits the hash a digest would be in, in every bucket a TTL spans (DONE_BUCKETS + 1), newest
# first, and stops when ``visit`` returns true: the one walk is_done and forgetting both take.
DONE_MARKS_LUA = """
local prefix, bucket_seconds = ARGV[1], tonumber(ARGV[2])
local current = math.floor(tonumber(now[1]) / bucket_seconds)
local function hash_of(bucket, n, digest)
  local b1, b2, b3, b4 = string.byte(digest, 1, 4)
  return prefix .. bucket .. ':' .. (((b1 * 256 + b2) * 256 + b3) * 256 + b4) % n
end
local counts = {}
local function count(bucket)
  local n = counts[bucket]
  if n == nil then
    n = tonumber(redis.call('GET', prefix .. bucket .. ':n')) or false
    counts[bucket] = n
  end
  return n
end
local function each_hash(digest, visit)
  for bucket = current, current - DONE_BUCKETS, -1 do
    local n = count(bucket)
    if n and visit(hash_of(bucket, n, digest)) then
      return true
    end
  end
  return false
end
local function is_done(digest)
  local field = string.sub(digest, 5)
  return each_hash(digest, function(hash) return redis.call('HEXISTS', hash, field) == 1 end)
end
""".replace("DONE_BUCKETS", str(DONE_BUCKETS))



def digest(event_id: str) -> bytes:
    """The 16 bytes a done-mark keeps of an event id."""
    return hashlib.blake2b(event_id.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class DoneMarks:
    """Where one handler's done-marks live, and how they are spread (see the module docstring)."""

    group: str
    ttl_seconds: int
    peak_rate: float
    shards: int = 1  # on Redis Cluster: hash slots a group's dedup state is spread over (see ``tag``)

    @property
    def bucket_seconds(self) -> int:
        return max(1, math.ceil(self.ttl_seconds / DONE_BUCKETS))

    @property
    def hashes_per_bucket(self) -> int:
        """Per shard."""
        return max(1, math.ceil(self.peak_rate * self.bucket_seconds / DONE_PER_HASH / self.shards))

    def shard_of(self, event_digest: bytes) -> int:
        # The fifth byte: the first four choose the hash, so the shards' hashes fill alike.
        return event_digest[4] % self.shards

    def tag(self, shard: int) -> str:
        """What names the group (and shard) in every key of that shard. On Redis Cluster a hash tag, so one
        id's in-flight key and done-mark hashes, and every key of one script call, share a slot; on one Redis
        the plain group, the layout before shards."""
        return self.group if self.shards == 1 else f"{{{self.group}:{shard}}}"

    def args(self, shard: int = 0) -> list[str | int]:
        """The scripts' first ARGV, for the keys of ``shard``."""
        return [f"dd:{self.tag(shard)}:{self.bucket_seconds}:", self.bucket_seconds]  # short: one per ~128 ids
