"""The reference topology with an error-budget policy: while its processing-latency SLO burns above 20x over a
minute, every retry waits 4x longer, charge_payment calls at most 4 at a time per partition, and
notify_shipping (declared low priority: a late notification hurts nobody) stops consuming until the burn
is under 10x again. Nothing is dropped: the deferred events wait in their partitions.

Run it as the reference: ``processor worker topologies.orders_guarded``; the chaos experiment
``budget-policy`` shows the policy acting and recovering.
"""

from __future__ import annotations

import dataclasses

from processor import BudgetPolicy, Defer, LowerConcurrency, StretchBackoff
from topologies import orders

topology = dataclasses.replace(
    orders.topology,
    handlers=[dataclasses.replace(h, priority="low") if h.name == "notify_shipping" else h
              for h in orders.topology.handlers],
    budget_policies=(BudgetPolicy(slo="processing-latency", when_burn_above=20, window="1m", then=(
        StretchBackoff(4), LowerConcurrency("charge_payment", 4), Defer("notify_shipping"))),),
)
