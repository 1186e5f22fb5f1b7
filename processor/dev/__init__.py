"""The development stack: embedded broker and Redis, the demo, simulated downstream services."""
