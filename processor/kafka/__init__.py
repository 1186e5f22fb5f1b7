"""The only runtime code that speaks Kafka: the Faust app and its consumer overrides, the producer, topic admin
and lag reads.
"""
