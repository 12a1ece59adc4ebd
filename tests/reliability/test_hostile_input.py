"""Hostile input against a live server: every case is a 4xx naming the field with nothing
stored, or (odd but valid images) a correct conversion checked against an independent one.

Images: decompression bombs, truncated files, huge metadata, 2000-frame animations, CMYK /
16-bit / palette / grey+alpha modes. JSON: deep nesting, oversize bodies, Unicode edge cases.
Names: path traversal, NUL, absolute and very long adapter and dataset names. Adapters:
safetensors headers that lie about sizes, an adapter for another base model, target_modules
matching nothing.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.reliability import Server, keyed_server, png_bytes, reference_numbers, upload_png

__all__ = ["keyed_server"]  # the session fixture, imported so pytest finds it here


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _post_image(server: Server, data: bytes) -> httpx.Response:
    headers = {**server.headers("api"), "content-type": "application/octet-stream"}
    return httpx.post(f"{server.url}/v1/images", content=data, headers=headers, timeout=60)


def _image_stored(server: Server, data: bytes) -> bool:
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    r = httpx.get(f"{server.url}/v1/images/{digest}", headers=server.headers("api"), timeout=30)
    return r.status_code == 200


def _truncated_png() -> bytes:
    data = _save(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def _huge_text_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 5_000_000, zip=True)  # 5 MB of metadata in ~5 KB
    return _save(Image.new("RGB", (8, 8)), "PNG", pnginfo=info)


REFUSED = {
    "bomb": (lambda: _save(Image.new("L", (10_000, 10_000)), "PNG"), 413),  # 100 MP in 97 KB
    "truncated-png": (_truncated_png, 422),
    "truncated-jpeg": (lambda: _save(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300], 422),
    "huge-metadata": (_huge_text_png, 422),
    "not-an-image": (lambda: b"GIF89a" + b"\x00" * 40, 422),
    "empty": (lambda: b"", 422),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_images_are_refused_and_not_stored(keyed_server: Server, case: str) -> None:
    make, status = REFUSED[case]
    data = make()
    r = _post_image(keyed_server, data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] in ("file", "body"), r.text
    assert not _image_stored(keyed_server, data)


def _animation(frames: int) -> bytes:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).convert("P")
        for _ in range(frames)
    ]
    return _save(images[0], "GIF", save_all=True, append_images=images[1:])


def _rgb_like(array: np.ndarray) -> bytes:
    return _save(Image.fromarray(array.astype(np.uint8), "RGB"), "PNG")


def _grey(value: float) -> np.ndarray:
    return np.full((16, 16, 3), value)


def _palette_image() -> Image.Image:
    pixels = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert("P")  # adaptive palette, deterministic


def _palette_lookup(im: Image.Image) -> np.ndarray:
    """RGB of a palette image by indexing its palette with numpy (not Pillow's convert)."""
    palette = np.array(im.getpalette()).reshape(-1, 3)
    return palette[np.asarray(im)]


# (image in an odd mode, the same picture as plain 8-bit RGB computed independently)
CONVERTED = {
    "16-bit-grey": (
        lambda: _save(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG"),
        lambda: _rgb_like(_grey(40000 * 255 / 65535)),
    ),
    "cmyk-jpeg": (
        lambda: _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "TIFF"),
        lambda: _rgb_like(np.tile(np.array([255, 0, 0]), (16, 16, 1))),
    ),
    "palette": (
        lambda: _save(_palette_image(), "PNG"),
        lambda: _rgb_like(_palette_lookup(_palette_image())),
    ),
    "grey-alpha": (
        lambda: _save(Image.new("LA", (16, 16), (90, 10)), "PNG"),
        lambda: _rgb_like(_grey(90)),
    ),
    "float-grey": (
        lambda: _save(Image.fromarray(np.full((16, 16), 0.5, np.float32), "F"), "TIFF"),
        lambda: _rgb_like(_grey(127)),
    ),
}


def _clip_cosine(server: Server, image_id: str) -> float:
    r = httpx.post(
        f"{server.url}/v1/clip", headers=server.headers("api"), timeout=60,
        json={"image": {"id": image_id}, "texts": ["a grey square"]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return float(r.json()["results"][0]["cosine"])


@pytest.mark.parametrize("case", sorted(CONVERTED))
def test_odd_image_modes_convert_correctly(keyed_server: Server, case: str) -> None:
    odd, plain = (f() for f in CONVERTED[case])
    odd_id, plain_id = upload_png(keyed_server, odd), upload_png(keyed_server, plain)
    assert _clip_cosine(keyed_server, odd_id) == pytest.approx(
        _clip_cosine(keyed_server, plain_id), abs=1e-6
    )


def test_animation_with_thousands_of_frames_uses_its_first_frame(keyed_server: Server) -> None:
    data = _animation(2000)
    r = _post_image(keyed_server, data)
    assert r.status_code in (200, 201), r.text
    first = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    plain_id = upload_png(keyed_server, _rgb_like(first))
    assert _clip_cosine(keyed_server, r.json()["id"]) == pytest.approx(
        _clip_cosine(keyed_server, plain_id), abs=1e-6
    )


# ---------------------------------------------------------------------- JSON and Unicode


def test_deep_and_huge_json_are_4xx(keyed_server: Server) -> None:
    url, headers = keyed_server.url, {**keyed_server.headers("api")}
    deep = '{"prompt": "x", "continuations": ' + "[" * 50_000 + "]" * 50_000 + "}"
    r = httpx.post(f"{url}/v1/logprobs", content=deep, headers=headers, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    huge = b'{"prompt": "' + b"a" * (33 * 2**20) + b'", "continuations": ["x"]}'
    r = httpx.post(f"{url}/v1/logprobs", content=huge, headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"


UNICODE = {
    "nul": "Describe\u0000 the image.",
    "lone-surrogate": "Describe \\ud800 the image.",  # sent as a JSON escape
    "rtl": "\u202eDescribe \u05e9\u05dc\u05d5\u05dd the image.\u202c",
    "combining-10k": "e" + "\u0301" * 10_000,
    "bom-and-zero-width": "\ufeffDescribe\u200b\u200d the image.",
}


@pytest.mark.parametrize("case", sorted(UNICODE))
def test_unicode_edge_cases_never_5xx(keyed_server: Server, case: str) -> None:
    text = UNICODE[case]
    prompt = text.replace("\u0000", "\\u0000")
    body = '{"prompt": "' + prompt + '", "continuations": ["A cat."]}'
    r = httpx.post(
        f"{keyed_server.url}/v1/logprobs", content=body.encode("utf-8", "surrogatepass"),
        headers={**keyed_server.headers("api"), "content-type": "application/json"}, timeout=60,
    )  # fmt: skip
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.json()["error"]["field"], r.text


# ---------------------------------------------------------------------- names

BAD_NAMES = ["../evil", "/etc/passwd", "a\u0000b", "x" * 300, "..", "a/b", " spaced"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_hostile_names_are_refused_and_nothing_is_created(keyed_server: Server, name: str) -> None:
    before = sorted(p.name for p in keyed_server.data_dir.rglob("*"))
    r = httpx.post(
        f"{keyed_server.url}/v1/adapters", headers=keyed_server.headers("admin"), timeout=30,
        data={"name": name},
        files={"adapter_config.json": b"{}", "adapter_model.safetensors": b"\x00" * 16},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["field"] == "name", r.text
    path = f"{keyed_server.url}/v1/datasets/{quote(name, safe='')}/pairs"  # one path segment
    for method in ("GET", "POST"):
        r = httpx.request(
            method, path, headers=keyed_server.headers("admin"), json={"pairs": []}, timeout=30
        )
        assert 400 <= r.status_code < 500, (method, r.status_code, r.text)
    after = sorted(p.name for p in keyed_server.data_dir.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith("selfreward.db")] == []


# ---------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def lora_dir(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter (r=4) on the tiny VLM's language model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["vlm"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    out = tmp_path_factory.mktemp("lora")
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def _read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _lying_sizes(lora: Path) -> tuple[bytes, bytes]:
    header, data = _read_safetensors(lora / "adapter_model.safetensors")
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [header[key]["shape"][0] * 2, header[key]["shape"][1]]
    return (lora / "adapter_config.json").read_bytes(), _write_safetensors(header, data)


def _other_base_model(lora: Path) -> tuple[bytes, bytes]:
    """Every LoRA matrix twice as wide: what an adapter of a bigger base model looks like."""
    header, _ = _read_safetensors(lora / "adapter_model.safetensors")
    out, blobs = {}, []
    offset = 0
    for key, meta in header.items():
        if key == "__metadata__":
            out[key] = meta
            continue
        rows, cols = meta["shape"]
        shape = [rows, cols * 2] if ".lora_A." in key else [rows * 2, cols]
        size = 4 * shape[0] * shape[1]
        out[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        blobs.append(b"\x00" * size)
        offset += size
    config = json.loads((lora / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/bigger-model"
    return json.dumps(config).encode(), _write_safetensors(out, b"".join(blobs))


def _no_targets(lora: Path) -> tuple[bytes, bytes]:
    config = json.loads((lora / "adapter_config.json").read_text())
    config["target_modules"] = ["nonexistent_proj"]
    return json.dumps(config).encode(), (lora / "adapter_model.safetensors").read_bytes()


HOSTILE_ADAPTERS = {
    "lying-sizes": (_lying_sizes, "adapter_model.safetensors"),
    "other-base-model": (_other_base_model, "adapter_model.safetensors"),
    "targets-nothing": (_no_targets, "adapter_config.json.target_modules"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ADAPTERS))
def test_hostile_adapters_are_refused_and_nothing_is_stored(
    keyed_server: Server, lora_dir: Path, case: str
) -> None:
    image_id = upload_png(keyed_server, png_bytes((10, 200, 10)))
    numbers = reference_numbers(keyed_server, image_id)
    make, field = HOSTILE_ADAPTERS[case]
    config, weights = make(lora_dir)
    name = f"hostile-{case}"
    r = httpx.post(
        f"{keyed_server.url}/v1/adapters", headers=keyed_server.headers("admin"), timeout=60,
        data={"name": name},
        files={"adapter_config.json": config, "adapter_model.safetensors": weights},
    )  # fmt: skip
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.text
    listed = httpx.get(f"{keyed_server.url}/v1/adapters", headers=keyed_server.headers("api"))
    assert name not in {a["name"] for a in listed.json()["adapters"]}
    adapters = keyed_server.data_dir / "adapters"
    assert not (adapters / name).exists()
    assert not any((adapters / ".tmp").glob("*")) if (adapters / ".tmp").exists() else True
    assert reference_numbers(keyed_server, image_id) == numbers  # the model is untouched


def test_a_real_adapter_still_uploads(keyed_server: Server, lora_dir: Path) -> None:
    r = httpx.post(
        f"{keyed_server.url}/v1/adapters", headers=keyed_server.headers("admin"), timeout=60,
        data={"name": "good-lora"},
        files={n: (lora_dir / n).read_bytes()
               for n in ("adapter_config.json", "adapter_model.safetensors")},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    assert (
        keyed_server.data_dir / "adapters" / "good-lora" / "adapter_model.safetensors"
    ).is_file()


@pytest.mark.parametrize("method, path", [("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/x"),
                                          ("DELETE", "/v1/datasets/d")])  # fmt: skip
def test_a_root_path_prefix_does_not_make_admin_actions_reads(method: str, path: str) -> None:
    """Review finding 12: the role check read `scope["path"]`, which holds the root path too;
    behind a proxy mounted at /prefix, `/prefix/v1/adapters` counted as a read."""
    import asyncio

    from selfreward_vlm.service.http.auth import BearerAuthMiddleware, ForbiddenError

    async def app(scope: dict, receive: object, send: object) -> None:
        raise AssertionError("reached the app with the read key")

    auth = BearerAuthMiddleware(app, api_key="api", read_key="reader")  # type: ignore[arg-type]
    scope = {"type": "http", "method": method, "path": f"/prefix{path}", "root_path": "/prefix",
             "headers": [(b"authorization", b"Bearer reader")]}  # fmt: skip
    with pytest.raises(ForbiddenError):
        asyncio.run(auth(scope, None, None))  # type: ignore[arg-type]
