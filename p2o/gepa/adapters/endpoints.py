"""The GEPA service's own endpoint table: which credentials it sends where, chosen at service start.

A job names the URLs it wants called (`policy_url`, `reflection.base_url`), never credentials. The
service is started with named endpoints and, for some, the environment variable holding their key:

    p2o gepa-serve --endpoint policy=http://node3:8001/v1 --endpoint-key-env policy=P2O_GATEWAY_TOKEN \\
                   --endpoint teacher=https://api.example.com/v1 --endpoint-key-env teacher=TEACHER_KEY

A request goes out with an endpoint's key only when its URL *is* that endpoint (same scheme, host, port
and path, after normalising the trailing /v1); every other URL is called with no credentials ("none").
With `only=True` (`--endpoints-only`), a job whose URLs are not registered endpoints is refused (400
naming the field), so the service calls nothing but its own table.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from p2o.gepa.adapters.policy_evaluator import v1_url

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a base URL with /v1 appended when missing; ValueError when not http(s)."""
    parts = urlsplit(v1_url(url.strip()))
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme], parts.path.rstrip("/")


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    key_env: str = ""
    """Environment variable (of the service process) holding the key sent to this endpoint ('' = none)."""


@dataclass
class Endpoints:
    """The service's endpoint table (see the module docstring)."""

    endpoints: list[Endpoint] = field(default_factory=list)
    only: bool = False

    def match(self, url: str) -> Endpoint | None:
        try:
            key = normalize_url(url)
        except ValueError:
            return None
        return next((e for e in self.endpoints if normalize_url(e.url) == key), None)

    def key_env(self, url: str) -> str:
        """The variable whose value is sent as the bearer key to `url` ('' = no credentials)."""
        e = self.match(url)
        return e.key_env if e is not None else ""

    def api_key(self, url: str) -> str:
        env = self.key_env(url)
        return (os.environ.get(env) or "none") if env else "none"

    def refusal(self, url: str) -> str | None:
        """Why a job may not use `url` (only with `only=True`), or None."""
        if self.only and self.match(url) is None:
            names = ", ".join(f"{e.name}={e.url}" for e in self.endpoints) or "none registered"
            return f"{url!r} is not one of the service's endpoints ({names})"
        return None

    def describe(self) -> str:
        return ", ".join(f"{e.name}={e.url}" + (f" (key from ${e.key_env})" if e.key_env else "")
                         for e in self.endpoints) or "none"

    @staticmethod
    def from_args(endpoints: Iterable[str] = (), key_envs: Iterable[str] = (), only: bool = False,
                  environ: Mapping[str, str] = os.environ) -> Endpoints:
        """From `NAME=URL` and `NAME=ENV` strings (the gepa-serve flags); ValueError naming the bad flag."""
        urls: dict[str, str] = {}
        for item in endpoints:
            name, sep, url = item.partition("=")
            if not sep or not name or not url:
                raise ValueError(f"--endpoint {item!r}: expected NAME=URL")
            if name in urls:
                raise ValueError(f"--endpoint {name}: given twice")
            try:
                normalize_url(url)
            except ValueError as e:
                raise ValueError(f"--endpoint {name}: {e}") from None
            urls[name] = url
        keys: dict[str, str] = {}
        for item in key_envs:
            name, sep, env = item.partition("=")
            if not sep or not name or not env:
                raise ValueError(f"--endpoint-key-env {item!r}: expected NAME=ENVIRONMENT_VARIABLE")
            if name not in urls:
                raise ValueError(f"--endpoint-key-env {name}: no --endpoint named {name!r}")
            if not environ.get(env):
                raise ValueError(f"--endpoint-key-env {name}={env}: the variable {env} is not set in the service's "
                                 f"environment")
            keys[name] = env
        return Endpoints([Endpoint(n, u, keys.get(n, "")) for n, u in urls.items()], only)
