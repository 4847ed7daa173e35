"""The gateway's settings: config file < HOH_GATEWAY_* environment < command-line flags.

Defaults and meanings live in `hoh.config.GatewayConfig` only. Secrets are never settings:
the TLS key password and the Redis password come from environment variables or files, and a
Redis URL carrying a password is refused so it cannot end up in a config file or `ps`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from hoh.config import ConfigError, GatewayConfig, load_config
from hoh.errors import UsageError

ENV_PREFIX = "HOH_GATEWAY_"
TLS_PASSWORD_ENV = "HOH_GATEWAY_TLS_KEY_PASSWORD"
CACHE_PASSWORD_ENV = "HOH_GATEWAY_CACHE_PASSWORD"
_SECRET_ENVS = (TLS_PASSWORD_ENV, CACHE_PASSWORD_ENV)


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """HOH_GATEWAY_<FIELD> values: strings as given, the rest parsed as YAML scalars/lists like
    `--set` values."""
    out: dict[str, Any] = {}
    for name, info in GatewayConfig.model_fields.items():
        key = ENV_PREFIX + name.upper()
        if key in environ and info.annotation in (str, Optional[str]):
            out[name] = environ[key]  # taken as is: "hoh:" must not become a YAML mapping
        elif key in environ and key not in _SECRET_ENVS:
            try:
                out[name] = yaml.safe_load(environ[key])
            except yaml.YAMLError as exc:
                raise ConfigError(f"{key}: not a valid value: {exc}") from None
    return out


def load_settings(
    config_path: Optional[str] = None,
    flags: Optional[Mapping[str, Any]] = None,
    environ: Mapping[str, str] = os.environ,
) -> GatewayConfig:
    base = load_config(config_path).gateway if config_path else GatewayConfig()
    data = base.model_dump()
    sources = [
        (f"environment ({ENV_PREFIX}*)", env_overrides(environ)),
        ("command line", {k: v for k, v in (flags or {}).items() if v is not None}),
    ]
    for _, values in sources:
        data.update(values)
    try:
        settings = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid gateway settings ({config_path or 'defaults'} + environment + flags):"]
        lines += [f"  gateway.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    check_settings(settings)
    return settings


def check_settings(settings: GatewayConfig) -> None:
    if settings.cache_url and urlsplit(settings.cache_url).password:
        raise UsageError(
            "the Redis URL holds a password; put it in the environment "
            f"({CACHE_PASSWORD_ENV}) or a file (cache_password_file), not in a URL"
        )
    if not settings.insecure_no_auth and not (settings.oidc_issuer or settings.jwks_file):
        raise UsageError(
            "no token issuer: set --oidc-issuer URL or --jwks-file FILE (see docs/GATEWAY.md), "
            "or run without authentication with --insecure-no-auth (binds 127.0.0.1 only)"
        )
    if settings.jwks_file and not settings.issuer:
        raise UsageError("--jwks-file needs --issuer (the `iss` tokens must carry)")


def secret(
    env_name: str,
    file: Optional[str],
    environ: Mapping[str, str] = os.environ,
) -> Optional[str]:
    """A secret from its environment variable, else from the first line of `file`."""
    if environ.get(env_name):
        return environ[env_name]
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise UsageError(f"cannot read the secret file {file}: {exc}") from None
    return None


def bind_host(settings: GatewayConfig) -> str:
    """Without authentication, only this machine may connect, whatever the config says."""
    return "127.0.0.1" if settings.insecure_no_auth else settings.host
