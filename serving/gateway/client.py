"""`hoh predict --gateway`: the same predictions as the Triton client, through `hoh gateway`.

The token never travels on the command line (visible in `ps` and shell history): it comes from
HOH_TOKEN or a file, and errors name where it came from, never its value. A value holding a
line break or a space is refused, so a file cannot inject headers. The gateway's JSON errors
become the Triton client's HohErrors, so a caller (and the exit code) does not depend on which
path the images took.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from hoh.errors import HohError, RunFailed, UsageError
from hoh.serving.client import (
    ClientError,
    ImageLike,
    InvalidImage,
    ModelNotReady,
    Prediction,
    ServerUnavailable,
    load_images,
    plan_requests,
)

TOKEN_ENV = "HOH_TOKEN"
_IMAGE_INDEX = "image "


def read_token(
    token_file: str | None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[str, str]:
    """(token, where it came from): `token_file` when given, else HOH_TOKEN."""
    if token_file:
        source = f"--token-file {token_file}"
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc}") from None
        value = lines[0].strip() if lines else ""
        if len([line for line in lines if line.strip()]) > 1:
            raise UsageError(f"{source}: more than one line; the file must hold the token only")
    else:
        source = f"${TOKEN_ENV}"
        value = environ.get(TOKEN_ENV, "").strip()
    if not value:
        raise UsageError(
            f"no token: set {TOKEN_ENV} or pass --token-file FILE "
            "(`hoh gateway dev-token` makes one for a local gateway)"
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"the token from {source} holds spaces or control characters")
    return value, source


class GatewayImageClient:
    """Classify images through `hoh gateway`'s predict route (multipart, several per request)."""

    def __init__(
        self,
        url: str,
        token: str,
        token_source: str = "the token",
        model_name: str = "hoh",
        model_version: str = "",
        timeout: float = 60.0,
        ca_cert: str | None = None,
        images_per_request: int = 8,
        bytes_per_request: int = 8 * 1024 * 1024,
    ):
        import httpx

        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise UsageError(f"--gateway {url!r}: expected https://HOST:PORT")
        if parts.username or parts.password:
            raise UsageError(
                f"--gateway: credentials in the URL are refused; use {TOKEN_ENV} or --token-file"
            )
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            print(
                f"hoh: WARNING: sending the token from {token_source} over plain http to "
                f"{parts.hostname}",
                file=sys.stderr,
            )
        if ca_cert and not Path(ca_cert).is_file():
            raise UsageError(f"--ca-cert {ca_cert} does not exist")
        self.url = url.rstrip("/")
        self.token_source = token_source
        self.model_name, self.model_version = model_name, str(model_version or "")
        self.images_per_request, self.bytes_per_request = images_per_request, bytes_per_request
        verify: object = True
        if ca_cert:
            import ssl

            verify = ssl.create_default_context(cafile=ca_cert)
        self._http = httpx.Client(
            base_url=self.url,
            verify=verify,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
        self._httpx = httpx

    def _post(self, data: Sequence[bytes], sources: Sequence[str]) -> list[Prediction]:
        files = [("images", (f"{i}", d, "application/octet-stream")) for i, d in enumerate(data)]
        params = {"version": self.model_version} if self.model_version else {}
        try:
            response = self._http.post(
                f"/v1/models/{self.model_name}/predict", files=files, params=params
            )
        except self._httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise ClientError(
                    f"the gateway {self.url} has a certificate this machine does "
                    "not trust; pass its CA with --ca-cert PEM"
                ) from None
            raise ServerUnavailable(f"no gateway at {self.url}: {exc}") from None
        except self._httpx.HTTPError as exc:
            raise ServerUnavailable(f"the gateway {self.url} failed: {exc}") from None
        if response.status_code == 200:
            body = response.json()
            version = str(body.get("version", ""))
            return [
                Prediction(p["class"], float(p["probability"]), p["probabilities"], version)
                for p in body["predictions"]
            ]
        raise self._error(response, sources)

    def _error(self, response, sources: Sequence[str]) -> HohError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "unknown", f"HTTP {response.status_code} without a hoh error body"
        status = response.status_code
        where = f"the gateway {self.url}"
        if status in (401, 403):
            return UsageError(f"{where} refused the token from {self.token_source}: {message}")
        if status == 400 and code == "invalid_image" and message.startswith(_IMAGE_INDEX):
            index, _, reason = message[len(_IMAGE_INDEX) :].partition(":")
            if index.isdigit() and int(index) < len(sources):
                return InvalidImage(sources[int(index)], reason.strip())
        if status == 404:
            return ModelNotReady(f"{where}: {message}")
        if status == 429:
            return RunFailed(
                f"{where}: {message} (Retry-After {response.headers.get('retry-after', '?')} s)"
            )
        if status >= 500:
            return ServerUnavailable(f"{where}: {message}")
        return ClientError(f"{where} refused {', '.join(sources)}: {message}")

    def predict(self, images: Sequence[ImageLike]) -> list[Prediction]:
        """Predictions in input order, a few images per request."""
        data, sources = load_images(images)
        out: list[Prediction] = []
        for chunk in plan_requests(
            [len(d) for d in data], self.images_per_request, self.bytes_per_request
        ):
            out.extend(self._post(data[chunk], sources[chunk]))
        return out

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayImageClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
