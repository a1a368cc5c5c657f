"""The gateway: the local HTTP API and the hub for the scheduler's events."""
