"""Reading a worker's ``/metrics``: the demo and ``processor status`` see what Prometheus would see."""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """Samples of one scrape, by metric sample name and sorted label pairs."""

    samples: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for k, v in self.samples.get(name, {}).items() if want <= set(k))

    def quantile(self, q: float, name: str, since: Scrape | None = None, **labels: str) -> float:
        """``histogram_quantile`` as PromQL computes it, over the buckets of ``name`` matching ``labels``;
        with ``since``, over what was observed after that earlier scrape (PromQL's ``increase``)."""
        buckets = self.buckets(name, **labels)
        if since is not None:
            for bound, count in since.buckets(name, **labels).items():
                buckets[bound] -= count
        return histogram_quantile(q, buckets)

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        """The cumulative counts of histogram ``name`` by upper bound, summed over the series matching ``labels``."""
        buckets: dict[float, float] = defaultdict(float)
        want = set(labels.items())
        for key, count in self.samples.get(f"{name}_bucket", {}).items():
            pairs = dict(key)
            if want <= set(key):
                buckets[float(pairs["le"])] += count
        return buckets


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Linear interpolation inside the bucket holding the q-th observation (NaN with no observations)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # PromQL returns the highest finite bound in this case
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return bounds[-1]


def parse(text: str) -> Scrape:
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return Scrape(samples)


def scrape(url: str, timeout_seconds: float = 2.0) -> Scrape:
    """Fetch and parse ``url`` (a worker's ``http://host:port/metrics``)."""
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
        return parse(response.read().decode())
