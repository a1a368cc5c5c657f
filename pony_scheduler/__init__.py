"""pony-scheduler: a job-scheduling daemon for Unix hosts."""

__version__ = "0.1.0"
