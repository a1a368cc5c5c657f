"""Errors that the CLI turns into one line on stderr and an exit code."""

# Exit codes shared by every command.  LSB init-script conventions where one exists.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # LSB status: program is not running
EXIT_UNKNOWN = 4  # LSB status: unknown (e.g. permission denied)
# `start` gave up waiting for readiness; the daemon may still come up.  Distinct from a
# failed start on purpose (pg_ctl is criticised for mixing the two); EX_TEMPFAIL.
EXIT_START_TIMEOUT = 75


class PonyError(Exception):
    """A problem the user can act on; `str()` is the whole message."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(PonyError):
    """Bad settings: flag, environment variable or configuration file."""

    exit_code = EXIT_USAGE
