"""Submitting the compiled pipeline to a Kubeflow Pipelines API server, once or on a schedule.

Everything a user can get wrong (the cron expression, `--param` syntax, the host, conflicting
credentials) is checked by pure functions before the first request, so a typo never leaves a
half-created pipeline version or experiment behind. The kfp SDK does the talking; it is
imported only when a request is about to be made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import itertools
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from hoh.errors import HohError, RunFailed

TOKEN_ENV = "HOH_KFP_TOKEN"
COOKIE_ENV = "HOH_KFP_COOKIE"

# --------------------------------------------------------------------------- validation (pure)

_CRON_FIELDS = (
    # name, low, high, names accepted for the values
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    (
        "month",
        1,
        12,
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    ),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_DESCRIPTORS = (
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)
_EVERY = re.compile(r"@every\s+(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def _cron_value(text: str, low: int, high: int, names: Sequence[str]) -> int:
    upper = text.upper()
    if upper in names:
        return names.index(upper) + low
    if not text.isdigit():
        raise ValueError(
            f"{text!r} is not a number" + (f" or one of {'/'.join(names)}" if names else "")
        )
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _check_cron_field(field: str, name: str, low: int, high: int, names: Sequence[str]) -> None:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"step {step!r} must be a positive number")
        if base in ("*", "?"):
            if base == "?" and name not in ("day of month", "day of week"):
                raise ValueError("'?' is only allowed for day of month / day of week")
            continue
        first, dash, last = base.partition("-")
        start = _cron_value(first, low, high, names)
        if dash and _cron_value(last, low, high, names) < start:
            raise ValueError(f"range {base!r} runs backwards")


def validate_cron(expression: str) -> str:
    """Return the expression if Kubeflow's scheduler (robfig/cron, six fields) accepts it."""
    text = " ".join(expression.split())
    if text.lower() in _CRON_DESCRIPTORS or _EVERY.fullmatch(text):
        return text
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        raise HohError(
            f"--cron {expression!r} has 5 fields, but Kubeflow Pipelines wants 6 with seconds "
            f"first (second minute hour day-of-month month day-of-week): did you mean '0 {text}'?"
        )
    if len(fields) != 6:
        raise HohError(
            f"--cron {expression!r} has {len(fields)} fields; Kubeflow Pipelines wants 6 with "
            "seconds first (second minute hour day-of-month month day-of-week), e.g. '0 0 3 * * *'"
        )
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        try:
            _check_cron_field(field, name, low, high, names)
        except ValueError as exc:
            raise HohError(f"--cron {expression!r}: {name} field {field!r}: {exc}") from None
    return text


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """`--param NAME=VALUE` (repeatable) -> {NAME: VALUE}; values stay strings
    (KFP STRING params)."""
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise HohError(f"--param {item!r}: expected NAME=VALUE")
        if name in params:
            raise HohError(f"--param {name} given twice")
        params[name] = value
    return params


def validate_host(host: str) -> str:
    authority = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", host or "")
    if "@" in re.split(r"[/?#]", authority, maxsplit=1)[0]:
        # user:password@host: refused without showing it, as it would land in logs and `ps`
        raise HohError(
            "--host: a user name or password in the URL is refused (the URL is shown in `ps` "
            f"and in messages); give the token in ${TOKEN_ENV} or --token-file instead"
        )
    if not re.match(r"https?://[^/\s]+", host or ""):
        raise HohError(
            f"--host {host!r}: give the Kubeflow Pipelines API URL with its scheme, e.g. "
            "http://localhost:8080 (a port-forward) or https://kubeflow.example.com/pipeline"
        )
    return host.rstrip("/")


def validate_max_concurrency(value: int) -> int:
    if value < 1:
        raise HohError(f"--max-concurrency {value}: must be at least 1")
    return value


# --------------------------------------------------------------------------- authentication


@dataclasses.dataclass(frozen=True)
class Auth:
    """Credentials passed through to the kfp SDK, as Kubeflow deployments use them.

    token: a bearer token (e.g. `gcloud auth print-access-token`, an OIDC id token);
    token_file: a file holding one, re-read on every request (a projected service-account token
    that rotates); cookie: `name=value` of a session (Dex / oauth2-proxy deployments), and where
    it came from, for messages that must name the input without showing it;
    namespace: the profile namespace of a multi-user deployment.
    The secrets are left out of repr(), so a stray print or traceback does not show them.
    """

    token: Optional[str] = dataclasses.field(default=None, repr=False)
    token_file: Optional[str] = None
    cookie: Optional[str] = dataclasses.field(default=None, repr=False)
    namespace: Optional[str] = None
    ssl_ca_cert: Optional[str] = None
    cookie_source: str = "--cookie"

    def has_credentials(self) -> bool:
        return bool(self.token or self.token_file or self.cookie)


def _secret_file(flag: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise HohError(f"{flag} {path}: cannot read it ({reason})") from None
    if not text:
        raise HohError(f"{flag} {path}: the file is empty")
    return text


def read_auth(
    token: Optional[str] = None,
    token_file: Optional[str] = None,
    cookie: Optional[str] = None,
    cookie_file: Optional[str] = None,
    namespace: Optional[str] = None,
    ssl_ca_cert: Optional[str] = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Auth, list[str]]:
    """Credentials from the environment or a file, and warnings about the flags that take them
    on the command line, where any user of the machine sees them in `ps` and the shell keeps
    them in its history. A flag or file given for a credential wins over its variable."""
    warnings = []
    if token is not None:
        warnings.append(
            f"--token shows the token to every user of this machine (`ps`) and "
            f"keeps it in your shell history; set ${TOKEN_ENV} or use --token-file"
        )
    if cookie is not None:
        warnings.append(
            f"--cookie shows the session to every user of this machine (`ps`) and "
            f"keeps it in your shell history; set ${COOKIE_ENV} or use --cookie-file"
        )
    if token is not None and token_file:
        raise HohError("give either --token or --token-file, not both")
    if cookie is not None and cookie_file:
        raise HohError("give either --cookie or --cookie-file, not both")
    cookie_source = "--cookie"
    if cookie_file:
        cookie = _secret_file("--cookie-file", cookie_file)
        cookie_source = f"--cookie-file {cookie_file}"
    elif cookie is None and environ.get(COOKIE_ENV):
        cookie, cookie_source = environ[COOKIE_ENV], f"${COOKIE_ENV}"
    if token is None and not token_file:
        token = environ.get(TOKEN_ENV) or None
    auth = Auth(
        token=token or None,
        token_file=token_file,
        cookie=cookie or None,
        namespace=namespace,
        ssl_ca_cert=ssl_ca_cert,
        cookie_source=cookie_source,
    )
    return auth, warnings


def transport_warning(host: str, auth: Auth) -> Optional[str]:
    """Plain http:// carries the token or cookie readable to anything on the way."""
    if auth.has_credentials() and host.lower().startswith("http://"):
        return (
            f"credentials are sent unencrypted to {validate_host(host)} (http://); use "
            "https:// unless this is a port-forward to this machine"
        )
    return None


def _one_line(value: str, source: str) -> None:
    """A line break in a header value would start a new header: refused, without the value."""
    if any(c in value for c in "\r\n\0"):
        raise HohError(f"{source}: holds a line break or NUL character (value not shown)")


def client_kwargs(host: str, auth: Auth) -> dict[str, Any]:
    """Keyword arguments of `kfp.Client` (without importing kfp); errors name the flag and
    never show a token or cookie."""
    if auth.token and auth.token_file:
        raise HohError(f"give either --token (or ${TOKEN_ENV}) or --token-file, not both")
    kwargs: dict[str, Any] = {"host": validate_host(host)}
    if auth.token:
        _one_line(auth.token, f"--token / ${TOKEN_ENV}")
        kwargs["existing_token"] = auth.token
    if auth.token_file:
        if not Path(auth.token_file).is_file():
            raise HohError(f"--token-file {auth.token_file}: no such file")
        kwargs["token_file"] = auth.token_file  # becomes `credentials` in make_client
    if auth.cookie:
        _one_line(auth.cookie, auth.cookie_source)
        name, sep, _ = auth.cookie.partition("=")
        if not sep or not name.strip():
            raise HohError(
                f"{auth.cookie_source}: expected NAME=VALUE, e.g. "
                "authservice_session=... (the value given is not shown)"
            )
        kwargs["cookies"] = auth.cookie
    if auth.namespace:
        kwargs["namespace"] = auth.namespace
    if auth.ssl_ca_cert:
        if not Path(auth.ssl_ca_cert).is_file():
            raise HohError(f"--ssl-ca-cert {auth.ssl_ca_cert}: no such file")
        kwargs["ssl_ca_cert"] = auth.ssl_ca_cert
    return kwargs


@contextlib.contextmanager
def _api_errors(host: str) -> Iterator[None]:
    """kfp SDK / HTTP failures -> one HohError naming the server and what it said."""
    import kfp_server_api
    import urllib3

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the SDK prints its own links
            yield
    except kfp_server_api.ApiException as exc:
        body = (exc.body or b"").decode() if isinstance(exc.body, bytes) else (exc.body or "")
        raise RunFailed(
            f"Kubeflow Pipelines at {host} answered {exc.status} {exc.reason}: {body[:300]}"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        raise RunFailed(f"cannot reach Kubeflow Pipelines at {host}: {exc}") from None


def make_client(host: str, auth: Auth):
    kwargs = client_kwargs(host, auth)
    import warnings

    import kfp

    token_file = kwargs.pop("token_file", None)
    if token_file:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=token_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2+"
        with _api_errors(kwargs["host"]):
            return kfp.Client(**kwargs)


# --------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class Submitted:
    kind: str  # "run" or "recurring run"
    id: str
    url: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str

    def lines(self) -> list[str]:
        return [
            f"{self.kind} {self.id}",
            f"  {self.url}",
            f"  pipeline {self.pipeline_id}, version {self.pipeline_version_id}, "
            f"experiment {self.experiment_id}",
        ]


def version_name(package: str, now: Optional[datetime.datetime] = None) -> str:
    """Unique per upload, and says which package it was: `<sha256[:12]>-<UTC time>`."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{digest}-{stamp}"


def upload(client, package: str, pipeline_name: str) -> tuple[str, str]:
    """Upload `package` as a new version of `pipeline_name` (created on first use)."""
    name = version_name(package)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=pipeline_name).pipeline_id
        versions = client.list_pipeline_versions(
            pipeline_id, page_size=1, sort_by="created_at desc"
        )
        if not versions.pipeline_versions:
            raise RunFailed(
                f"pipeline {pipeline_name} was uploaded but the server lists no version of it"
            )
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(
        package, pipeline_version_name=name, pipeline_id=pipeline_id
    )
    return pipeline_id, version.pipeline_version_id


def ui_url(host: str, path: str) -> str:
    """The page of a run or schedule; KF_PIPELINES_UI_ENDPOINT wins, as in the kfp SDK."""
    base = os.environ.get("KF_PIPELINES_UI_ENDPOINT") or host
    return f"{base.rstrip('/')}/#/{path}"


@dataclasses.dataclass(frozen=True)
class Request:
    """What `submit` and `schedule` share."""

    host: str
    package: str
    pipeline_name: str
    experiment: str
    params: Mapping[str, str]
    pipeline_root: Optional[str] = None
    run_name: Optional[str] = None
    enable_caching: Optional[bool] = None
    service_account: Optional[str] = None
    auth: Auth = Auth()

    def job_name(self) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return self.run_name or f"{self.pipeline_name} {stamp}"


def with_caching(package: str, enable: bool, never_cached: Sequence[str], directory: str) -> str:
    """A copy of `package` in `directory` whose tasks use Kubeflow's cache as `enable` says,
    but for `never_cached` ones.

    What `--cache/--no-cache` needs: the kfp client applies `enable_caching` only to a run
    created from a package file, while hoh runs an uploaded pipeline version, where the setting
    would be dropped without a word. The caching options live in the uploaded spec instead."""
    import yaml

    text = Path(package).read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
        tasks = spec["root"]["dag"]["tasks"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise HohError(f"--cache: {package} is not a compiled pipeline spec YAML ({exc})") from None
    for name, task in tasks.items():
        task["cachingOptions"] = {"enableCache": enable and name not in never_cached}
    lines = text.splitlines()
    header = "".join(f"{line}\n" for line in itertools.takewhile(lambda x: x[:1] == "#", lines))
    copy = Path(directory) / Path(package).name
    copy.write_text(header + yaml.safe_dump(spec, sort_keys=True), encoding="utf-8")
    return str(copy)


def _prepare(request: Request):
    import tempfile

    client = make_client(request.host, request.auth)
    with tempfile.TemporaryDirectory(prefix="hoh-kfp-") as tmp, _api_errors(request.host):
        package = request.package
        if request.enable_caching is not None:
            from hoh.pipeline.runners.kubeflow import NEVER_CACHED

            package = with_caching(package, request.enable_caching, NEVER_CACHED, tmp)
        pipeline_id, version_id = upload(client, package, request.pipeline_name)
        experiment = client.create_experiment(request.experiment, namespace=request.auth.namespace)
    return client, pipeline_id, version_id, experiment.experiment_id


def submit(request: Request) -> Submitted:
    """Upload the package as a new pipeline version and start one run of it."""
    client, pipeline_id, version_id, experiment_id = _prepare(request)
    with _api_errors(request.host):
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=request.job_name(),
            params=dict(request.params),
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=request.pipeline_root,
            enable_caching=request.enable_caching,
            service_account=request.service_account,
        )
    return Submitted(
        "run",
        run.run_id,
        ui_url(request.host, f"runs/details/{run.run_id}"),
        pipeline_id,
        version_id,
        experiment_id,
    )


def schedule(
    request: Request, cron: str, max_concurrency: int = 1, catchup: bool = False
) -> Submitted:
    """Upload the package as a new pipeline version and run it on `cron` (6 fields)."""
    cron = validate_cron(cron)
    validate_max_concurrency(max_concurrency)
    client, pipeline_id, version_id, experiment_id = _prepare(request)
    with _api_errors(request.host):
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=request.run_name or request.pipeline_name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=dict(request.params),
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=request.pipeline_root,
            enable_caching=request.enable_caching,
            service_account=request.service_account,
        )
    rid = job.recurring_run_id
    return Submitted(
        "recurring run",
        rid,
        ui_url(request.host, f"recurringrun/details/{rid}"),
        pipeline_id,
        version_id,
        experiment_id,
    )


# --------------------------------------------------------------------------- runs

FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


@dataclasses.dataclass(frozen=True)
class RunState:
    """One Kubeflow run as `hoh kfp runs` and `submit --wait` show it."""

    id: str
    name: str
    state: str
    created_at: Optional[datetime.datetime]
    finished_at: Optional[datetime.datetime]
    error: str = ""

    @classmethod
    def of(cls, run) -> "RunState":
        """From the SDK's V2beta1Run (a run not finished yet has the zero time as its end)."""
        finished = run.finished_at
        if finished is not None and finished.year < 1971:
            finished = None
        error = getattr(run.error, "message", None) or "" if run.error else ""
        return cls(
            run.run_id,
            run.display_name or "",
            str(run.state or "UNKNOWN"),
            run.created_at,
            finished,
            error,
        )

    @property
    def seconds(self) -> Optional[float]:
        if self.created_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.created_at).total_seconds()

    def line(self) -> str:
        when = self.created_at.strftime("%Y-%m-%d %H:%M") if self.created_at else "?"
        took = (
            "-"
            if self.seconds is None
            else f"{int(self.seconds // 60)}m{int(self.seconds % 60):02d}s"
        )
        tail = f"  {self.error}" if self.error else ""
        return f"{when}  {self.state:<10} {took:>9}  {self.id}  {self.name}{tail}"


def list_runs(host: str, auth: Auth, experiment: Optional[str], limit: int) -> list[RunState]:
    """The newest `limit` runs, of one experiment (by name) or all."""
    client = make_client(host, auth)
    with _api_errors(host):
        experiment_id = None
        if experiment:
            try:
                experiment_id = client.get_experiment(
                    experiment_name=experiment, namespace=auth.namespace
                ).experiment_id
            except ValueError:
                raise RunFailed(f"Kubeflow Pipelines at {host} has no experiment {experiment!r}")
        response = client.list_runs(
            page_size=limit,
            sort_by="created_at desc",
            experiment_id=experiment_id,
            namespace=auth.namespace,
        )
    return [RunState.of(run) for run in response.runs or []]


def wait_for_run(
    host: str,
    auth: Auth,
    run_id: str,
    timeout_s: float,
    poll_s: float,
    echo: Callable[[str], None] = print,
) -> RunState:
    """Poll the run until it ends (a line per change of state); its final state."""
    import time

    client = make_client(host, auth)
    deadline = time.monotonic() + timeout_s
    seen = None
    while True:
        with _api_errors(host):
            run = RunState.of(client.get_run(run_id))
        if run.state != seen:
            echo(f"run {run_id}: {run.state}")
            seen = run.state
        if run.state in FINAL_STATES:
            return run
        if time.monotonic() + poll_s > deadline:
            raise RunFailed(
                f"run {run_id} still {run.state} after {timeout_s:g} s "
                "(kubeflow.wait_timeout_s); it goes on in Kubeflow"
            )
        time.sleep(poll_s)
