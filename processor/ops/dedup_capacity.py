"""``processor dedup capacity``: the Redis memory a dedup window needs, from the measured bytes per id.

The model is the layout of processor.runtime.dedup: every remembered id is a field of ENTRY_BYTES in a
hash, and each hash costs HASH_BYTES more, shared by the ids it holds (the bucket's ids over its hashes).
Both constants come from two runs of ``processor bench --dedup-memory`` (a million ids, a layout sized
for them and one sized for 8 times more: 19.4 and 27.4 bytes per id, on Redis 7.0.15), solved for the two
unknowns. Past LISTPACK_MAX fields a hash is a hashtable: 72.2 bytes per id, measured at 2 048 per hash.
At most a window and one bucket of ids are kept at once (a bucket expires whole).
"""

from __future__ import annotations

from dataclasses import dataclass

from processor.runtime.done_marks import DONE_BUCKETS, DoneMarks

ENTRY_BYTES = 18.3
HASH_BYTES = 146.0
HASHTABLE_BYTES = 72.2
ONE_KEY_PER_ID_BYTES = 160.9  # the layout before (a key per id), measured by the same run
LISTPACK_MAX = 512  # Redis's hash-max-listpack-entries default


@dataclass(frozen=True)
class Capacity:
    """What ``handlers`` handlers at ``rate`` events/s each keep for ``window_seconds``."""

    rate: float
    window_seconds: int
    handlers: int
    peak_rate: float

    @property
    def ids(self) -> float:
        """The most ids kept at once: the window and the bucket that has not expired yet."""
        return self.rate * self.window_seconds * (1 + 1 / DONE_BUCKETS) * self.handlers

    @property
    def ids_per_hash(self) -> float:
        marks = DoneMarks("", self.window_seconds, self.peak_rate)
        return self.rate * marks.bucket_seconds / marks.hashes_per_bucket

    @property
    def hashtables(self) -> bool:
        """Past LISTPACK_MAX fields Redis turns a hash into a hashtable."""
        return self.ids_per_hash > LISTPACK_MAX

    @property
    def bytes_per_id(self) -> float:
        if self.hashtables:
            return HASHTABLE_BYTES
        return ENTRY_BYTES + HASH_BYTES / max(self.ids_per_hash, 1.0)

    @property
    def bytes(self) -> float:
        return self.ids * self.bytes_per_id


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def describe(c: Capacity) -> str:
    """The lines ``processor dedup capacity`` prints."""
    per = f"{c.rate:g} events/s" + (f" into each of {c.handlers} handlers" if c.handlers > 1 else "")
    return "\n".join([
        f"dedup memory for {per}, remembered {c.window_seconds}s (dedup_ttl_seconds), laid out for "
        f"{c.peak_rate:g} events/s (dedup_peak_rate):",
        f"  up to {c.ids:.3g} ids at once (the window and one bucket of {c.window_seconds / DONE_BUCKETS:.0f}s)",
        f"  {c.bytes_per_id:.1f} bytes per id ({_model(c)}): {_size(c.bytes)} of Redis used_memory",
        f"  (a key per id, as before: {ONE_KEY_PER_ID_BYTES:g} bytes per id, {_size(c.ids * ONE_KEY_PER_ID_BYTES)})",
        *([f"  warning: past {LISTPACK_MAX} fields a hash is a hashtable, near 4x the bytes per id: set "
           f"dedup_peak_rate to at least {c.rate:g}"] if c.ids_per_hash > LISTPACK_MAX * 0.8 else []),
    ])


def _model(c: Capacity) -> str:
    if c.hashtables:
        return f"hashes of {c.ids_per_hash:.0f} ids are hashtables"
    return f"{ENTRY_BYTES:g} per id + {HASH_BYTES:g} per hash of {c.ids_per_hash:.1f} ids"
