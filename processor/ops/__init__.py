"""What an operator runs: alert rules, dashboards, runbooks, status, DLQ tools."""
