"""Exceptions that map to the exit codes of DESIGN section 3."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78


class EslBridgeError(Exception):
    """A runtime failure with a message meant for the operator (exit 1)."""

    exit_code = EXIT_FAILURE


class UsageError(EslBridgeError):
    """The command line is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(EslBridgeError):
    """Configuration, key files or credentials are wrong (exit 78)."""

    exit_code = EXIT_CONFIG
