"""What a topology author declares: handlers and their topics, retry policies, SLOs."""
