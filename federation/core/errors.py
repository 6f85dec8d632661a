"""User-facing errors: one clear sentence naming the problem and the fix."""

from __future__ import annotations


class FedKafkaError(Exception):
    """An error the user can act on.

    The message names what went wrong and how to fix it; the CLI prints it on
    one line and exits non-zero, without a traceback.
    """

    exit_code: int = 1


class ConfigError(FedKafkaError):
    """A bad configuration value or command-line argument."""

    exit_code = 2
