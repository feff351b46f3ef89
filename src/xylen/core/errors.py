"""One error tree, split by what the operator has to do next.

Every message quotes the bad value and names the fix; the CLI maps each class to a documented exit
code and the server maps it to a 4xx/503 JSON body with the same sentence.
"""

from __future__ import annotations


class XylenError(Exception):
    """Root of every error xylen raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} Hint: {hint}")


class ConfigError(XylenError):
    """A setting, option or environment variable is invalid: fix the configuration."""

    exit_code = 2


class DataError(XylenError):
    """Input data (a file, a candle frame, a request body) is malformed: fix or replace the data."""

    exit_code = 3


class BundleError(XylenError):
    """A model bundle or the registry is missing, corrupt or inconsistent: replace the model."""

    exit_code = 4


class TrainingError(XylenError):
    """Training could not produce a model (too little data for the folds, a memory cap too small...)."""

    exit_code = 5


class ExchangeError(XylenError):
    """The exchange answered something unusable, or refused us: check the endpoint or symbol."""

    exit_code = 6


class ExchangeTemporaryError(ExchangeError):
    """Rate limit, ban window, 5xx, timeout: wait and retry; nothing is wrong with the configuration."""

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, hint=hint)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of a library's error message (torch's start with a newline), or its type."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


# Exit codes, documented in the README and in `xylen --help`.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CODES = {
    0: "success",
    1: "unexpected internal failure (a bug: please report it with the log)",
    2: "bad option, setting or environment variable, or an unwritable XYLEN_HOME (permissions, a full disk)",
    3: "bad input data: a candle file, store partition or request (fix or replace the data)",
    4: "model bundle or registry problem: missing, corrupt or tampered model (replace or roll back)",
    5: "training failed: too little data for the folds, memory cap too small, evaluation impossible",
    6: "exchange error: rate limit, ban, unreachable endpoint or unusable answer",
    130: "interrupted by Ctrl-C, or by SIGTERM during `xylen collect --once`/`--until` or a one-off `xylen retrain`; "
    "nothing was left half-written (SIGTERM is the normal stop of `xylen serve`, which drains requests in flight, of "
    "`xylen retrain --loop` and of `xylen collect` following live: they exit 0)",
}
