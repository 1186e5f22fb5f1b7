"""Metrics, tracing, logs, the lag/latency monitor, lag status and error budgets."""
