"""The CLIP side: transformers `CLIPModel` / `SiglipModel` directories and a SigLIP-style
open_clip model, each against the model's own forward; /info reports the logit scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfreward_vlm.core.schemas import Usage
from tests.families_fixtures import picture

TEXTS = ["a red circle", "a blue square on the mat", "the cat"]


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from selfreward_vlm.tiny.clip import build_tiny_clip, build_tiny_hf_clip

    root = tmp_path_factory.mktemp("clips")
    return {
        "clip": build_tiny_hf_clip(root / "hf-clip", "clip"),
        "siglip": build_tiny_hf_clip(root / "hf-siglip", "siglip"),
        "open_clip_siglip": build_tiny_clip(root / "oc-siglip", siglip=True),
    }


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_dual_encoder_cosines_equal_its_own_forward(kind, clip_dirs) -> None:
    """cos from the model's own logits: (logits_per_image - bias) / exp(logit_scale)."""
    from transformers import AutoModel, AutoProcessor

    from selfreward_vlm.service.engine.clip import ClipScorer

    scorer = ClipScorer.load(str(clip_dirs[kind]), torch.device("cpu"), cache_size=8)
    img = picture((40, 30))
    got = scorer.cosines("img", img, TEXTS, Usage())
    model = AutoModel.from_pretrained(clip_dirs[kind]).eval()
    processor = AutoProcessor.from_pretrained(clip_dirs[kind])
    padding = "max_length" if kind == "siglip" else True
    enc = processor(text=TEXTS, images=img, padding=padding, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits_per_image[0]
    bias = float(model.logit_bias) if kind == "siglip" else 0.0
    want = (logits - bias) / model.logit_scale.exp()
    assert [r.cosine for r in got] == pytest.approx(want.tolist(), abs=1e-5)
    assert scorer.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    again = scorer.cosines("img", img, TEXTS[:1], usage := Usage())
    assert again[0].cosine == got[0].cosine and usage.image_cache_hits == 1


def test_open_clip_siglip_cosines_and_scale(clip_dirs) -> None:
    import open_clip

    from selfreward_vlm.service.engine.clip import ClipScorer

    spec = str(clip_dirs["open_clip_siglip"])
    scorer = ClipScorer.load(spec, torch.device("cpu"), cache_size=8)
    img = picture((32, 32))
    got = scorer.cosines(None, img, TEXTS, Usage())
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{spec}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{spec}")
    with torch.no_grad():
        out = model.eval()(preprocess(img)[None], tokenizer(TEXTS))
    image_f, text_f = out[0], out[1]  # normalised by open_clip
    assert [r.cosine for r in got] == pytest.approx((text_f @ image_f[0]).tolist(), abs=1e-5)
    assert scorer.logit_scale == pytest.approx(10.0, rel=1e-4)
    assert float(model.logit_bias) == pytest.approx(-10.0)


def test_info_reports_clip_logit_scale(clip_dirs, family_dirs) -> None:
    from selfreward_vlm.service.engine.loader import load_models
    from selfreward_vlm.service.settings import ServiceSettings

    settings = ServiceSettings(
        model=str(family_dirs["gemma3"]), clip=str(clip_dirs["siglip"]), device="cpu"
    )
    served = load_models(settings).served_info()
    assert served == {"family": "gemma3", "path": "fast", "clip_logit_scale": pytest.approx(1.0),
                      "decode_batching": "continuous (mixed adapters)"}  # fmt: skip
