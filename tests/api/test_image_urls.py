"""Images by URL: data: URIs, http(s) off by default, the allow-list, internal addresses, size
and time caps, against a real HTTP server on loopback; and through the API (/v1/clip)."""

from __future__ import annotations

import base64
import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient

from selfreward_vlm.service.app import build_app
from selfreward_vlm.service.images.urls import (
    ImageUrlFetchError,
    ImageUrlRefusedError,
    ImageUrlTooLargeError,
    UrlPolicy,
    load_image_url,
)
from selfreward_vlm.service.settings import ServiceSettings
from tests.api.test_scoring_api import png

PNG = png((10, 120, 200))
BIG = b"\x89PNG" + b"0" * 5000


class _Handler(http.server.BaseHTTPRequestHandler):
    accept_encoding: ClassVar[list[str | None]] = []  # what each request asked for

    def do_GET(self) -> None:
        _Handler.accept_encoding.append(self.headers.get("Accept-Encoding"))
        if self.path == "/img.png":
            self._send(PNG)
        elif self.path == "/gzip-bomb":  # 20 MB of zeros in ~20 KB: the cap counts wire bytes
            body = gzip.compress(b"\0" * 20_000_000)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big":
            self._send(BIG)
        elif self.path == "/big-chunked":  # no Content-Length: the cap counts the stream
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"0" * 1000)
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(PNG)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/img.png")
            self.end_headers()
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the slow-server test): that is the point

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A real HTTP server on loopback serving a PNG, an oversized body, a slow answer."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def data_uri(data: bytes = PNG) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_data_uri_decodes_and_bad_ones_are_refused() -> None:
    assert load_image_url(data_uri(), UrlPolicy()) == PNG
    with pytest.raises(ImageUrlTooLargeError):
        load_image_url(data_uri(BIG), UrlPolicy(max_bytes=1000))
    with pytest.raises(Exception, match="not valid base64"):
        load_image_url("data:image/png;base64,@@@", UrlPolicy())
    with pytest.raises(Exception, match="not an image"):
        load_image_url("data:text/html;base64,PGI+", UrlPolicy())


def test_http_refused_by_default_and_paths_never_read(image_server: str) -> None:
    for url in (f"http://{image_server}/img.png", "https://example.com/a.png"):
        with pytest.raises(ImageUrlRefusedError, match="--allow-image-urls"):
            load_image_url(url, UrlPolicy())
    for url in ("file:///etc/passwd", "/etc/passwd", "ftp://example.com/a.png"):
        with pytest.raises(ImageUrlRefusedError, match="file paths are never read"):
            load_image_url(url, UrlPolicy(allow_http=True))


def test_loopback_needs_the_allow_list(image_server: str) -> None:
    url = f"http://{image_server}/img.png"
    with pytest.raises(ImageUrlRefusedError, match="internal address"):
        load_image_url(url, UrlPolicy(allow_http=True))
    with pytest.raises(ImageUrlRefusedError, match="allow-list"):
        load_image_url(url, UrlPolicy(allow_http=True, allow_hosts=("example.com",)))
    for listed in ("127.0.0.1", image_server):  # host, or host:port
        assert load_image_url(url, UrlPolicy(allow_http=True, allow_hosts=(listed,))) == PNG


@pytest.mark.parametrize(
    "address",
    [
        "100.100.100.200",  # carrier-grade NAT (100.64/10): a cloud metadata service
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 wrapping 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo (client 127.0.0.1)
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "::ffff:10.0.0.1",
        "239.1.2.3",
    ],
)
def test_non_global_and_wrapped_internal_addresses_are_refused(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the host resolves to is checked after unwrapping the IPv4 address an IPv6 one
    carries; anything not globally reachable needs the allow-list."""
    import socket

    def resolve(host: str, port: int, **kw: object) -> list[tuple]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ImageUrlRefusedError, match="internal address"):
        load_image_url("http://images.example.com/a.png", UrlPolicy(allow_http=True))


@pytest.mark.parametrize("address", ["93.184.216.34", "2002:5db8:d822::", "2606:4700::1"])
def test_global_addresses_are_fetched(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from selfreward_vlm.service.images import urls as image_urls

    def resolve(host: str, port: int, **kw: object) -> list[tuple]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(image_urls, "_fetch", lambda url, host, addr, *a: addr.encode())
    got = load_image_url("http://images.example.com/a.png", UrlPolicy(allow_http=True))
    assert got == address.encode()


def test_oversized_slow_and_redirected_are_refused(image_server: str) -> None:
    policy = UrlPolicy(allow_http=True, allow_hosts=("127.0.0.1",), max_bytes=2000, timeout_s=0.5)
    for path in ("/big", "/big-chunked"):
        with pytest.raises(ImageUrlTooLargeError):
            load_image_url(f"http://{image_server}{path}", policy)
    start = time.monotonic()
    with pytest.raises(ImageUrlFetchError, match="took over"):
        load_image_url(f"http://{image_server}/slow", policy)
    assert time.monotonic() - start < 1.4
    with pytest.raises(ImageUrlFetchError, match="redirects"):
        load_image_url(f"http://{image_server}/redirect", policy)
    with pytest.raises(ImageUrlFetchError, match="HTTP 404"):
        load_image_url(f"http://{image_server}/missing", policy)


def test_compressed_bodies_are_not_inflated(image_server: str) -> None:
    """The service asks for the image as it is (no Content-Encoding); a server that compresses
    anyway is refused rather than inflated past the cap in memory."""
    policy = UrlPolicy(allow_http=True, allow_hosts=("127.0.0.1",), max_bytes=30_000)
    _Handler.accept_encoding.clear()
    with pytest.raises(ImageUrlFetchError, match="Content-Encoding 'gzip'"):
        load_image_url(f"http://{image_server}/gzip-bomb", policy)
    assert load_image_url(f"http://{image_server}/img.png", policy) == PNG
    assert _Handler.accept_encoding == ["identity", "identity"]


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]):
    from selfreward_vlm.service.engine.loader import load_models

    return load_models(
        ServiceSettings(model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]))
    )


@pytest.fixture(scope="module")
def url_api(
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    image_server: str,
    models,
) -> Iterator[TestClient]:
    settings = ServiceSettings(
        model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]), warmup=False,
        data_dir=tmp_path_factory.mktemp("url-data"), allow_image_urls=True,
        image_url_allow_hosts=[image_server], image_url_max_bytes=3000, image_url_timeout_s=0.5,
    )  # fmt: skip
    with TestClient(build_app(settings, models)) as client:
        yield client


def test_clip_api_takes_url_images(url_api: TestClient, image_server: str) -> None:
    texts = ["a blue square", "a red circle"]
    image_id = url_api.post(
        "/v1/images", content=PNG, headers={"content-type": "image/png"}
    ).json()["id"]
    want = url_api.post("/v1/clip", json={"image": {"id": image_id}, "texts": texts}).json()
    for url in (data_uri(), f"http://{image_server}/img.png"):
        got = url_api.post("/v1/clip", json={"image": {"url": url}, "texts": texts})
        assert got.status_code == 200, got.text
        assert [r["cosine"] for r in got.json()["results"]] == pytest.approx(
            [r["cosine"] for r in want["results"]], abs=1e-6
        )
    bad = {
        "http://127.0.0.2:9/x.png": (422, "image_url_refused"),  # not on the allow-list
        f"http://{image_server}/big": (413, "image_too_large"),
        f"http://{image_server}/slow": (422, "image_url_failed"),
        "/etc/passwd": (422, "image_url_refused"),
    }
    for url, (status, kind) in bad.items():
        res = url_api.post("/v1/clip", json={"image": {"url": url}, "texts": texts})
        assert res.status_code == status, res.text
        assert res.json()["error"]["type"] == kind
        assert res.json()["error"]["field"] == "image.url"
    both = url_api.post("/v1/clip", json={"image": {"url": data_uri(), "id": image_id},
                                          "texts": texts})  # fmt: skip
    assert both.status_code == 422 and "exactly one" in both.json()["error"]["message"]


def test_default_service_refuses_http_urls(
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    image_server: str,
    models,
) -> None:
    settings = ServiceSettings(
        model=str(tiny_models["vlm"]), clip=str(tiny_models["clip"]), warmup=False,
        data_dir=tmp_path_factory.mktemp("url-off"),
    )  # fmt: skip
    with TestClient(build_app(settings, models)) as client:
        body = {"image": {"url": f"http://{image_server}/img.png"}, "texts": ["a"]}
        res = client.post("/v1/clip", json=body)
        assert res.status_code == 422 and res.json()["error"]["type"] == "image_url_refused"
        body["image"] = {"url": data_uri()}
        assert client.post("/v1/clip", json=body).status_code == 200


def test_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`selfreward serve --allow-image-urls --image-url-allow-host H --openrlhf-reward clip`."""
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from selfreward_vlm.service import app as app_module
    from selfreward_vlm.service.cli import serve_command

    seen: list[ServiceSettings] = []
    monkeypatch.setattr(app_module, "build_app", lambda settings: seen.append(settings))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: None)
    cli = typer.Typer()
    cli.command()(serve_command)
    res = CliRunner().invoke(cli, [
        "--model", "m", "--data-dir", str(tmp_path), "--allow-image-urls",
        "--image-url-allow-host", "img.example:8080", "--image-url-allow-host", "10.0.0.7",
        "--openrlhf-reward", "clip", "--openrlhf-aggregation", "sum",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    (settings,) = seen
    policy = UrlPolicy.from_settings(settings)
    assert policy.allow_http and policy.allow_hosts == ("img.example:8080", "10.0.0.7")
    assert (settings.openrlhf_reward, settings.openrlhf_aggregation) == ("clip", "sum")
