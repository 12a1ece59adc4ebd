"""Bad input to the shell's routes: always a 4xx in the one error shape naming the field, and
the service keeps serving. (Scoring-route limits are tested in test_scoring_api.py.)"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.test_service_shell import assert_error, make_client
from tests.api.test_store import make_pair


def png(size: tuple[int, int] = (32, 32), noise: bool = False) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    if noise:
        image = Image.frombytes("RGB", size, random.Random(0).randbytes(3 * size[0] * size[1]))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width x height` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("bad-input")
    with make_client(
        tmp, max_body_bytes=200_000, max_image_bytes=100_000, max_image_pixels=300 * 300,
        max_pairs_per_request=3,
    ) as c:  # fmt: skip
        yield c


def post_image(client: TestClient, data: bytes, content_type: str = "image/png"):
    return client.post("/v1/images", content=data, headers={"content-type": content_type})


# --------------------------------------------------------------------------- images


def test_not_an_image(client: TestClient) -> None:
    assert_error(post_image(client, b"hello, world"), 422, "invalid_image", "body")
    files = {"file": ("x.png", b"GIF89a but not really", "image/png")}
    assert_error(client.post("/v1/images", files=files), 422, "invalid_image", "file")
    assert_error(post_image(client, b""), 422, "invalid_image", "body")


def test_truncated_image(client: TestClient) -> None:
    data = png((64, 64), noise=True)
    error = assert_error(post_image(client, data[: len(data) // 2]), 422, "invalid_image", "body")
    assert "truncated" in error["message"] or "broken" in error["message"]


def test_decompression_bomb_header(client: TestClient) -> None:
    error = assert_error(
        post_image(client, png_header_only(100_000, 100_000)), 413, "image_too_large", "body"
    )
    assert "pixels" in error["message"]


def test_pixel_count_over_the_limit(client: TestClient) -> None:
    # 400x400 = 160k pixels > 90k, in a file far under the byte limit
    error = assert_error(post_image(client, png((400, 400))), 413, "image_too_large", "body")
    assert "400x400" in error["message"]


def test_image_file_over_the_byte_limit(client: TestClient) -> None:
    big = png((220, 220), noise=True)
    assert 100_000 < len(big) < 200_000
    assert_error(post_image(client, big), 413, "image_too_large", "body")


def test_body_over_the_limit_by_header_and_by_stream(client: TestClient) -> None:
    blob = b"\x00" * 300_000
    assert_error(post_image(client, blob), 413, "payload_too_large", "body")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(30):
            yield b"\x00" * 10_000

    streamed = client.post("/v1/images", content=chunks(), headers={"content-type": "image/png"})
    assert "content-length" not in streamed.request.headers
    assert_error(streamed, 413, "payload_too_large", "body")
    pairs_body = b'{"pairs": [' + b" " * 250_000 + b"]}"
    sent = client.post(
        "/v1/datasets/ds/pairs", content=iter([pairs_body]),
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert_error(sent, 413, "payload_too_large", "body")


def test_unknown_and_malformed_image_ids(client: TestClient) -> None:
    assert_error(client.get("/v1/images/" + "0" * 64), 404, "image_not_found", "image_id")
    assert_error(client.get("/v1/images/not-a-hash"), 422, "invalid_request", "image_id")


def test_wrong_upload_shapes(client: TestClient) -> None:
    assert_error(post_image(client, png(), "application/json"), 415, "unsupported_media_type")
    files = {"file": ("a.png", png(), "image/png")}
    extra = client.post("/v1/images", files=files, data={"caption": "hi"})
    assert_error(extra, 422, "invalid_request", "caption")
    no_file = client.post("/v1/images", files={"image": ("a.png", png(), "image/png")})
    assert_error(no_file, 422, "invalid_request")
    as_text = client.post("/v1/images", files={"file": (None, "not a file")})
    assert_error(as_text, 422, "invalid_request", "file")
    urlencoded = client.post("/v1/images", data={"file": "not a file"})
    assert_error(urlencoded, 415, "unsupported_media_type", "content-type")


# --------------------------------------------------------------------------- datasets


def pair_json(i: int = 0, **changes: object) -> dict:
    return {**make_pair(i).model_dump(mode="json"), **changes}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"pairs": []}, "pairs", "at least 1"),
        ({"pairs": [pair_json(bogus=1)]}, "pairs.0.bogus", "Extra inputs"),
        ({"pairs": [pair_json(iteration="x")]}, "pairs.0.iteration", "integer"),
        (
            {"pairs": [{k: v for k, v in pair_json().items() if k != "chosen"}]},
            "pairs.0.chosen",
            "required",
        ),
        ({"pairs": [pair_json()], "extra": True}, "extra", "Extra inputs"),
        ({"pair": [pair_json()]}, "pairs", "required"),
        ({"pairs": "nope"}, "pairs", "list"),
    ],
)
def test_pairs_validation_names_the_field(
    client: TestClient, body: dict, field: str, words: str
) -> None:
    error = assert_error(client.post("/v1/datasets/ds/pairs", json=body), 422, "invalid_request")
    assert error["field"] == field
    assert f"body.{field}" in error["message"] and words in error["message"]


def test_pairs_bad_names_limits_cursors(client: TestClient) -> None:
    body = {"pairs": [pair_json()]}
    assert_error(client.post("/v1/datasets/-bad/pairs", json=body), 422, "invalid_request", "name")
    four = {"pairs": [pair_json(i) for i in range(4)]}
    assert_error(client.post("/v1/datasets/ds/pairs", json=four), 413, "payload_too_large", "pairs")
    unknown_image = {"pairs": [pair_json(images=["f" * 64])]}
    assert_error(
        client.post("/v1/datasets/ds/pairs", json=unknown_image), 404, "image_not_found",
        "pairs.0.images.0",
    )  # fmt: skip
    malformed = client.post(
        "/v1/datasets/ds/pairs",
        content=b'{"pairs": [',
        headers={"content-type": "application/json"},
    )
    assert_error(malformed, 400, "invalid_json", "body")
    assert_error(client.get("/v1/datasets/never-written/pairs"), 404, "not_found", "name")
    assert client.post("/v1/datasets/ds/pairs", json=body).status_code == 200
    assert_error(client.get("/v1/datasets/ds/pairs?limit=0"), 422, "invalid_request", "limit")
    assert_error(client.get("/v1/datasets/ds/pairs?limit=x"), 422, "invalid_request", "limit")
    assert_error(client.get("/v1/datasets/ds/pairs?after=zz"), 422, "invalid_request", "after")


def test_scoring_request_validation_messages(client: TestClient) -> None:
    """The shell's validation handler: field path in the message, bare field in `field`."""
    body = {"prompt": "Describe.", "continuations": []}
    error = assert_error(client.post("/v1/logprobs", json=body), 422, "invalid_request")
    assert error["field"] == "continuations"
    assert "body.continuations: List should have at least 1 item" in error["message"]
    both = {"prompt": "p", "continuations": ["a"], "image": {"id": "x", "base64": "eA=="}}
    assert_error(client.post("/v1/logprobs", json=both), 422, "invalid_request", "image")


# --------------------------------------------------------------------------- adapters


def test_adapter_form_shapes(client: TestClient) -> None:
    files = {
        "adapter_config.json": ("c.json", b'{"peft_type": "LORA"}', "application/json"),
        "adapter_model.safetensors": ("w.st", b"\x00" * 16, "application/octet-stream"),
    }
    missing_name = client.post("/v1/adapters", files=files)
    assert_error(missing_name, 422, "invalid_request", "name")
    extra = client.post("/v1/adapters", files=files, data={"name": "a", "path": "/etc"})
    assert_error(extra, 422, "invalid_request", "path")
    as_text = client.post(
        "/v1/adapters",
        data={"name": "a", "adapter_config.json": "{}"},
        files={"adapter_model.safetensors": files["adapter_model.safetensors"]},
    )
    assert_error(as_text, 422, "invalid_request", "adapter_config.json")
    json_body = client.post("/v1/adapters", json={"name": "a"})
    assert_error(json_body, 422, "invalid_request")


def test_still_serving_after_all_of_the_above(client: TestClient, tmp_path: Path) -> None:
    uploaded = post_image(client, png((40, 30)))
    assert uploaded.status_code == 200, uploaded.text
    image = uploaded.json()
    assert (image["width"], image["height"]) == (40, 30)
    body = {"pairs": [pair_json(7, images=[image["id"]])]}
    assert client.post("/v1/datasets/after/pairs", json=body).json()["inserted"] == 1
    assert client.get("/health").status_code == 200


def test_image_refs_resolve_or_name_the_field(tmp_path: Path) -> None:
    """`ImageStore.resolve` (what the scoring routes call): ids, base64, data URLs, errors."""
    import base64

    from selfreward_vlm.core.schemas import ImageRef
    from selfreward_vlm.service.errors import ServiceError
    from selfreward_vlm.service.images.store import ImageStore
    from selfreward_vlm.service.store import PairStore

    def ref(**fields: str) -> ImageRef:
        return ImageRef.model_validate(fields)

    store = PairStore(tmp_path / "db.sqlite")
    images = ImageStore(store, max_bytes=50_000, max_pixels=100 * 100, cache_size=2)
    try:
        assert images.resolve(None) == (None, None)
        data = png((20, 10))
        image_id, image = images.resolve(ref(base64=base64.b64encode(data).decode()))
        assert image is not None and image.size == (20, 10) and image.mode == "RGB"
        assert image_id is not None
        assert images.get_bytes(image_id) == data  # stored: the id works from now on
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        assert images.resolve(ref(base64=url))[0] == image_id
        assert images.resolve(ref(id=image_id), field="image")[0] == image_id
        for bad, status, type_, field in [
            (ref(base64="!!not base64!!"), 422, "invalid_image", "image.base64"),
            (ref(base64=base64.b64encode(b"text").decode()), 422, "invalid_image",
             "image.base64"),
            (ref(base64=base64.b64encode(png((200, 200))).decode()), 413,
             "image_too_large", "image.base64"),
            (ref(id="0" * 64), 404, "image_not_found", "image.id"),
        ]:  # fmt: skip
            with pytest.raises(ServiceError) as e:
                images.resolve(bad)
            assert (e.value.status_code, e.value.type, e.value.field) == (status, type_, field)
    finally:
        store.close()
