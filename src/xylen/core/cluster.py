"""The Dask scheduler address rule (XYLEN_DASK_CLUSTER, `--cluster`): parsed here without importing dask."""

from __future__ import annotations

import re

from xylen.core.errors import ConfigError

ADDRESS_FORM = "tcp://HOST:PORT (or tls://HOST:PORT), like tcp://10.0.0.5:8786"
_ADDRESS_RE = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))\:(\d{1,5})$")


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a scheduler address (None when it is one)."""
    m = _ADDRESS_RE.fullmatch(address.strip())
    if m is None:
        return f"a Dask scheduler address is {ADDRESS_FORM}"
    if not 1 <= int(m.group(3)) <= 65535:
        return f"the port {m.group(3)} is not 1-65535 (the form: {ADDRESS_FORM})"
    return None


def check_address(address: str, *, source: str = "--cluster") -> str:
    """``address`` stripped, or a ConfigError quoting it with the form it must have."""
    why = address_problem(address)
    if why is not None:
        port = "" if why.startswith("a Dask") else f": the port {address.strip().rsplit(':', 1)[-1]} is not 1-65535"
        raise ConfigError(f"{source} {address[:200]!r} is not a Dask scheduler address{port}.",
                          hint=f"give the scheduler's address as {ADDRESS_FORM}.")
    return address.strip()
