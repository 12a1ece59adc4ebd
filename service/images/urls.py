"""Images by URL (`ImageRef.url`): `data:` URIs always, `http(s)` only when the operator allows it.

A URL a client gives is an instruction to make a request from inside the operator's network, so
the fetch is fenced (server-side request forgery is the risk):

- off by default (`--allow-image-urls` turns it on);
- an optional host allow-list (`image_url_allow_hosts`, `host` or `host:port`);
- every address the host resolves to is checked, and one that is not globally reachable
  unicast (loopback, link-local, private, carrier-grade NAT, reserved, multicast; or an IPv6
  address wrapping such an IPv4 one: mapped, 6to4, Teredo) is refused unless the allow-list
  names the host; the request then goes to the
  checked address itself (Host header and TLS SNI keep the name), so a second DNS answer cannot
  swap in another address between the check and the connection;
- no redirects, a size cap counted while the body streams (uncompressed: a Content-Encoding
  is refused, never inflated), one deadline for the whole fetch.

Other schemes (`file:`, `ftp:`, a bare path) are refused: a client-given path is never read.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

from selfreward_vlm.service.errors import InvalidRequestError, PayloadTooLargeError

if TYPE_CHECKING:
    from selfreward_vlm.service.settings import ServiceSettings


class ImageUrlRefusedError(InvalidRequestError):
    """The URL is not one this service may fetch (scheme, host, address, or URLs are off)."""

    type = "image_url_refused"


class ImageUrlFetchError(InvalidRequestError):
    """Fetching an allowed URL failed: timeout, connection, HTTP status, redirect."""

    type = "image_url_failed"


class ImageUrlTooLargeError(PayloadTooLargeError):
    type = "image_too_large"


@dataclass(frozen=True)
class UrlPolicy:
    """What `load_image_url` may do. The default fetches nothing but `data:` URIs."""

    allow_http: bool = False
    allow_hosts: tuple[str, ...] = ()
    max_bytes: int = 8 * 2**20
    timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> UrlPolicy:
        return cls(
            allow_http=settings.allow_image_urls,
            allow_hosts=tuple(h.strip().lower() for h in settings.image_url_allow_hosts),
            max_bytes=min(settings.image_url_max_bytes, settings.max_image_bytes),
            timeout_s=settings.image_url_timeout_s,
        )


def load_image_url(url: str, policy: UrlPolicy, field: str = "image.url") -> bytes:
    """The image file bytes a URL names (blocking: call from a worker thread)."""
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_uri(url, policy.max_bytes, field)
    if scheme not in ("http", "https"):
        raise ImageUrlRefusedError(
            "an image URL must be a data: URI or http(s) (file paths are never read)", field
        )
    if not policy.allow_http:
        raise ImageUrlRefusedError(
            "http(s) image URLs are off on this service (operator: --allow-image-urls); send a "
            "data: URI, base64, or upload with POST /v1/images",
            field,
        )
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ImageUrlRefusedError("the image URL names no host", field)
    port = parts.port or (443 if scheme == "https" else 80)
    listed = host in policy.allow_hosts or f"{host}:{port}" in policy.allow_hosts
    if policy.allow_hosts and not listed:
        raise ImageUrlRefusedError(f"host {host!r} is not in the image URL allow-list", field)
    address = _checked_address(host, port, listed, field)
    return _fetch(url, host, address, policy, field)


def decode_data_uri(url: str, max_bytes: int, field: str) -> bytes:
    """Bytes of a `data:image/...;base64,...` URI (or percent-encoded, without `;base64`)."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise InvalidRequestError("malformed data: URI (no ',')", field)
    media = header[5:].split(";")
    if media[0] and not media[0].lower().startswith("image/"):
        raise InvalidRequestError(f"data: URI media type {media[0]!r} is not an image", field)
    if "base64" not in (m.lower() for m in media[1:]):
        data = unquote_to_bytes(payload)
    else:
        text = "".join(payload.split())
        if len(text) > 4 * (max_bytes // 3 + 1) + 4:
            raise ImageUrlTooLargeError(f"data: URI image is over {max_bytes} bytes", field)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("data: URI payload is not valid base64", field) from None
    if len(data) > max_bytes:
        raise ImageUrlTooLargeError(f"data: URI image is over {max_bytes} bytes", field)
    return data


def _is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not a globally reachable unicast address, or an IPv6 one carrying an IPv4 address that
    is not (6to4 and Teredo reach it through a relay; carrier-grade NAT 100.64/10 holds cloud
    metadata services, and `is_global` excludes it where `is_private` does not)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_internal(ip.ipv4_mapped)
        wrapped = [ip.sixtofour, *(ip.teredo or ())]
        if any(_is_internal(v4) for v4 in wrapped if v4 is not None):
            return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved


def _checked_address(host: str, port: int, listed: bool, field: str) -> str:
    """One address of `host`, after checking all of them (internal ones need the allow-list)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ImageUrlFetchError(f"cannot resolve image URL host {host!r}: {e}", field) from None
    addresses = [str(info[4][0]).split("%", 1)[0] for info in infos]
    if not addresses:
        raise ImageUrlFetchError(f"image URL host {host!r} has no address", field)
    for addr in addresses:
        if _is_internal(ipaddress.ip_address(addr)) and not listed:
            raise ImageUrlRefusedError(
                f"image URL host {host!r} resolves to an internal address ({addr}); only an "
                "allow-listed host may",
                field,
            )
    return addresses[0]


def _fetch(url: str, host: str, address: str, policy: UrlPolicy, field: str) -> bytes:
    """GET the URL at the checked address, capped in bytes and in total time."""
    target = httpx.URL(url)
    request_url = target.copy_with(host=address)
    # identity: the cap counts the bytes as they arrive; an inflated body could be 1000x them
    headers = {
        "Host": target.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"
    }  # fmt: skip
    deadline = time.monotonic() + policy.timeout_s
    try:
        with (
            httpx.Client(timeout=policy.timeout_s, follow_redirects=False) as client,
            client.stream(
                "GET", request_url, headers=headers, extensions={"sni_hostname": host}
            ) as response,
        ):
            if response.is_redirect:
                raise ImageUrlFetchError("the image URL redirects; give the final URL", field)
            if response.status_code != 200:
                raise ImageUrlFetchError(
                    f"fetching the image URL answered HTTP {response.status_code}", field
                )
            encoding = response.headers.get("content-encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise ImageUrlFetchError(
                    f"the image URL answered Content-Encoding {encoding!r}; only an "
                    "uncompressed body is fetched",
                    field,
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise _too_large(policy.max_bytes, field)
            chunks, size = [], 0
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise _too_large(policy.max_bytes, field)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("deadline passed while reading")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise ImageUrlFetchError(
            f"fetching the image URL took over {policy.timeout_s:g} s", field
        ) from None
    except httpx.HTTPError as e:
        raise ImageUrlFetchError(f"fetching the image URL failed: {e}", field) from None
    return b"".join(chunks)


def _too_large(limit: int, field: str) -> ImageUrlTooLargeError:
    return ImageUrlTooLargeError(f"the image at the URL is over {limit} bytes", field)
