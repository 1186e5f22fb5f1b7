"""The worker and the path of an event: decode, dedup, handler, produce, ack; retry and DLQ routing."""
