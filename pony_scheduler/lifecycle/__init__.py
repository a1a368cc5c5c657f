"""Generic daemon lifecycle (start/stop/status/logs) shared by every service."""
