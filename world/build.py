"""Build (or resume) a miniature world: images and splits, the tiny CLIP, the tiny VLM.

Layout of ``out_dir``::

    images/             train_*.png, prompt_*.png, eval_*.png (64×64 RGB)
    splits.json         {"train": [...], "prompt": [...], "eval": [...]} image file names
    prompts.jsonl       {"id", "image", "prompt"} per prompt image (image relative to images/)
    train_truth.json    objects of the train images (CLIP/SFT training data only)
    eval_truth.json     objects of the eval images (read by world.evaluate only)
    clip/               open_clip local dir: open_clip_config.json + open_clip_model.safetensors
    vlm/                HF LLaVA dir (model + processor); AutoModelForImageTextToText loads it
    manifest.json       config, per-stage config hash, timings, CLIP report

The prompt images' objects are written nowhere. Each stage records its config hash in the
manifest only after its outputs are complete, so an interrupted build resumes at that stage and
a changed setting rebuilds exactly the stages that depend on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from selfreward_vlm.world.spec import COMPANIONS, DEFAULT_PROMPT, PROMPTS, parse_object

MANIFEST_FILE = "manifest.json"
STAGE_VERSIONS = {"images": 1, "clip": 2, "vlm": 1}  # bump when a stage's code changes output


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and training settings of a world (see :meth:`full` and :meth:`quick`)."""

    seed: int = 0
    n_train: int = 6000
    n_prompt: int = 400
    n_eval: int = 300
    n_clip_heldout: int = 300  # extra train-split scenes, never trained on, for the CLIP report
    companion_p: float = 0.6
    # share of SFT caption sentences with a disfluency CLIP does not see (`scenes.DISFLUENCIES`)
    disfluency: float = 0.0
    clip_steps: int = 1500
    clip_batch: int = 64
    clip_lr: float = 1e-3
    vlm_steps: int = 1000
    vlm_batch: int = 32
    vlm_lr: float = 1e-3

    @classmethod
    def full(cls, seed: int = 0) -> WorldConfig:
        """The demo world (a few minutes on 2 CPU cores)."""
        return cls(seed=seed)

    @classmethod
    def quick(cls, seed: int = 0) -> WorldConfig:
        """A much smaller world for smoke tests: the VLM still captions and hallucinates."""
        return cls(
            seed=seed,
            n_train=3000,
            n_prompt=300,
            n_eval=200,
            n_clip_heldout=200,
            clip_steps=700,
            vlm_steps=600,
            vlm_lr=2e-3,  # fewer steps: learn faster
        )


@dataclass(frozen=True)
class BuiltWorld:
    """Paths of a built world and its manifest."""

    root: Path
    manifest: dict[str, Any]

    @property
    def images_dir(self) -> Path:
        """Folder of all images."""
        return self.root / "images"

    @property
    def clip_dir(self) -> Path:
        """open_clip ``local-dir:`` folder of the tiny CLIP."""
        return self.root / "clip"

    @property
    def vlm_dir(self) -> Path:
        """Hugging Face folder of the tiny VLM (model + processor)."""
        return self.root / "vlm"

    @property
    def prompts_file(self) -> Path:
        """JSONL of the prompt set."""
        return self.root / "prompts.jsonl"


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def stage_hashes(cfg: WorldConfig) -> dict[str, str]:
    """Config hash per stage; a stage's hash covers the stages it depends on."""
    images = _hash(
        {"v": STAGE_VERSIONS["images"], "seed": cfg.seed, "n": [cfg.n_train, cfg.n_prompt,
         cfg.n_eval]}
    )  # fmt: skip
    clip = _hash(
        {"v": STAGE_VERSIONS["clip"], "images": images, "seed": cfg.seed,
         "train": [cfg.clip_steps, cfg.clip_batch, cfg.clip_lr]}
    )  # fmt: skip
    # a world without disfluency keeps the hash it had before the option existed (its cache)
    form = {"disfluency": cfg.disfluency} if cfg.disfluency else {}
    vlm = _hash(
        {"v": STAGE_VERSIONS["vlm"], "clip": clip, "p": cfg.companion_p, "prompts": PROMPTS,
         "train": [cfg.vlm_steps, cfg.vlm_batch, cfg.vlm_lr], **form}
    )  # fmt: skip
    return {"images": images, "clip": clip, "vlm": vlm}


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)  # atomic: readers never see half a file


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _commit_dir(tmp: Path, final: Path) -> None:
    for path in tmp.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; other users of a shared cache must read
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _build_images(root: Path, cfg: WorldConfig) -> dict[str, Any]:
    from selfreward_vlm.world.scenes import generate_scenes, write_images

    tmp = _fresh_dir(root / ".images.tmp")
    splits = {
        split: generate_scenes(cfg.seed, split, n)
        for split, n in (("train", cfg.n_train), ("prompt", cfg.n_prompt), ("eval", cfg.n_eval))
    }
    for scenes in splits.values():
        write_images(scenes, tmp)
    _write_json(root / "splits.json", {k: [s.name for s in v] for k, v in splits.items()})
    _write_json(root / "train_truth.json", {s.name: s.object_names for s in splits["train"]})
    _write_json(root / "eval_truth.json", {s.name: s.object_names for s in splits["eval"]})
    lines = [
        json.dumps({"id": s.name.removesuffix(".png"), "image": s.name, "prompt": DEFAULT_PROMPT})
        for s in splits["prompt"]
    ]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    _commit_dir(tmp, root / "images")
    return {"n_images": sum(len(v) for v in splits.values())}


def _train_data(root: Path) -> tuple[Any, list[list[Any]]]:
    from selfreward_vlm.world.scenes import load_images

    truth = json.loads((root / "train_truth.json").read_text())
    names = json.loads((root / "splits.json").read_text())["train"]
    objects = [[parse_object(o) for o in truth[n]] for n in names]
    return load_images(root / "images", names), objects


def _build_clip(root: Path, cfg: WorldConfig) -> dict[str, Any]:
    import numpy as np

    from selfreward_vlm.world.clip_model import clip_cosines, clip_report, save_clip, train_clip
    from selfreward_vlm.world.scenes import generate_scenes, render

    images, objects = _train_data(root)
    model = train_clip(
        images, objects, steps=cfg.clip_steps, batch_size=cfg.clip_batch, lr=cfg.clip_lr,
        seed=cfg.seed,
    )  # fmt: skip
    tmp = _fresh_dir(root / ".clip.tmp")
    save_clip(model, tmp)
    _commit_dir(tmp, root / "clip")
    # Held out: the train split's generator continued past n_train (never trained on).
    held = generate_scenes(cfg.seed, "train", cfg.n_train + cfg.n_clip_heldout)[cfg.n_train :]
    held_images = np.stack([np.asarray(render(s)) for s in held])
    report = clip_report(
        clip_cosines(model, held_images), [[p.obj for p in s.objects] for s in held]
    )
    return {"heldout": report}


def _build_vlm(root: Path, cfg: WorldConfig) -> dict[str, Any]:
    from selfreward_vlm.world.clip_model import load_clip
    from selfreward_vlm.world.vlm_model import build_vlm, save_vlm, train_vlm
    from selfreward_vlm.world.vlm_text import build_processor

    images, objects = _train_data(root)
    processor = build_processor()
    model = build_vlm(load_clip(root / "clip"), processor, cfg.seed)
    train_vlm(
        model, processor, images, objects, steps=cfg.vlm_steps, batch_size=cfg.vlm_batch,
        lr=cfg.vlm_lr, companion_p=cfg.companion_p, seed=cfg.seed, disfluency=cfg.disfluency,
    )  # fmt: skip
    tmp = _fresh_dir(root / ".vlm.tmp")
    save_vlm(model, processor, tmp)
    _commit_dir(tmp, root / "vlm")
    return {"parameters": sum(p.numel() for p in model.parameters())}


_STAGES: dict[str, tuple[Callable[[Path, WorldConfig], dict[str, Any]], tuple[str, ...]]] = {
    "images": (_build_images, ("images", "splits.json", "eval_truth.json", "prompts.jsonl")),
    "clip": (_build_clip, ("clip/open_clip_model.safetensors",)),
    "vlm": (_build_vlm, ("vlm/config.json",)),
}


def build_world(
    out_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    *,
    config: WorldConfig | None = None,
    verbose: bool = True,
    disfluency: float | None = None,
) -> BuiltWorld:
    """Build the world into ``out_dir``, skipping stages already built with the same settings.

    ``config`` overrides the preset chosen by ``quick`` (its seed is replaced by ``seed``);
    ``disfluency`` (when given) replaces its share of disfluent SFT sentences.
    Returns the paths and the manifest (config, stage hashes, seconds per stage, CLIP report).
    """
    cfg = (
        replace(config, seed=seed)
        if config
        else (WorldConfig.quick if quick else WorldConfig.full)(seed)
    )
    if disfluency is not None:
        cfg = replace(cfg, disfluency=disfluency)
    say: Callable[[str], None] = print if verbose else (lambda _msg: None)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST_FILE
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest: dict[str, Any] = {
        "config": asdict(cfg),
        "quick": quick,
        "companions": {t.name: c.name for t, c in COMPANIONS.items()},
        "stages": dict(old.get("stages", {})),
    }
    for name, want in stage_hashes(cfg).items():
        run, outputs = _STAGES[name]
        record = manifest["stages"].get(name, {})
        if record.get("hash") == want and all((root / o).exists() for o in outputs):
            say(f"[world] {name}: cached ({record.get('seconds', 0):.0f} s when built)")
            continue
        say(f"[world] {name}: building")
        start = time.perf_counter()
        info = run(root, cfg)
        seconds = time.perf_counter() - start
        manifest["stages"][name] = {"hash": want, "seconds": round(seconds, 1), **info}
        _write_json(manifest_path, manifest)  # commit point of the stage
        say(f"[world] {name}: done in {seconds:.0f} s {info if name == 'clip' else ''}".rstrip())
    _write_json(manifest_path, manifest)
    return BuiltWorld(root, manifest)
