"""Service settings: one pydantic-settings class; every field is a `SELFREWARD_*` env var, and
a `selfreward serve` flag (a dedicated one for the common fields, a line each in
`service.cli.SERVE_FLAGS`; `--set FIELD=VALUE` for all)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from selfreward_vlm.core import defaults


class ServiceSettings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="SELFREWARD_", extra="ignore")

    # models
    model: str = Field(..., description="policy model: Hugging Face id or local directory")
    clip: str | None = Field(
        None,
        description="CLIP model: 'NAME:PRETRAINED' (open_clip), a local open_clip directory, "
        "or 'local-dir:DIR'; omit to serve without /v1/clip and /v1/reward",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters loaded at start-up: name -> directory"
    )
    served_model_name: list[str] = Field(
        default_factory=list,
        description="names the OpenAI-compatible routes accept for the base model, besides "
        "'base' and the --model value (as vLLM's --served-model-name); /v1/models lists them",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model_path: Literal["auto", "generic"] = Field(
        "auto",
        description="how the policy VLM is run: 'auto' = its family's fast path (cached image "
        "features and prefix KV) when one exists, else the generic path (the model's own full "
        "forward for every score); 'generic' forces the generic path",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op CPU threads; 0 = torch's default (one per core). Small "
        "models on a shared CPU run far faster with 1 (measured: 65x on 2 busy cores)",
    )

    # network / auth
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # repr=False: a settings object printed in a log or a traceback never shows a key
    api_key: str | None = Field(
        None, repr=False, description="bearer token required on every route but the probes"
    )
    read_key: str | None = Field(
        None,
        repr=False,
        description="optional read-only token: scoring, generation, image upload and reads; "
        "no pair writes, no adapter or dataset changes",
    )
    admin_key: str | None = Field(
        None,
        repr=False,
        description="optional admin token: when set, adapter upload/delete and dataset delete "
        "need it (it also works everywhere api_key does)",
    )

    # deadlines and shutdown
    request_timeout_s: float = Field(
        300.0, gt=0, description="server-side deadline of a request (504 after it); a request "
        "may ask for less with the x-request-timeout-ms header",
    )  # fmt: skip
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM: how long in-flight requests may finish (while new "
        "ones get 503) before the server stops",
    )  # fmt: skip

    # storage
    data_dir: Path = Field(
        Path("./selfreward-data"), description="SQLite store + uploaded adapters"
    )
    store: str | None = Field(
        None,
        repr=False,  # a PostgreSQL URL may carry a password
        description="the store of pairs, datasets, images and the adapter registry: a SQLite "
        "file (default: data_dir/selfreward.db) or postgresql://user:password@host:port/db, "
        "which several replicas share",
    )
    adapter_store: Path | None = Field(
        None,
        description="where uploaded adapters' files live, by content hash (default: "
        "data_dir/adapter-store); replicas sharing a PostgreSQL store must share this "
        "directory too (NFS, a ReadWriteMany volume)",
    )

    # reliability: store outages, retention, shutdown, slow clients (README "Reliability")
    store_timeout_s: float = Field(
        3.0, gt=0, description="longest wait for a store connection (or a SQLite lock) before "
        "a request answers 503 store_unavailable; never past the request's deadline",
    )  # fmt: skip
    store_reconnect_s: float = Field(
        2.0, gt=0, description="PostgreSQL: how long the pool retries a lost connection with "
        "backoff before the next request starts a fresh attempt (bounds the recovery time "
        "after an outage)",
    )  # fmt: skip
    drain_grace_s: float = Field(
        5.0, ge=0, description="on SIGTERM, after the drain: keep answering new connections "
        "503 + Connection: close this long (the time a load balancer needs to see /ready "
        "fail) before the listener closes",
    )  # fmt: skip
    header_timeout_s: float = Field(
        10.0, gt=0, description="a connection whose request line and headers are not complete "
        "this long after it opened (or after its previous response) is answered 408 and closed",
    )  # fmt: skip
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body not received in full this long after its "
        "headers is answered 408 and its connection closed (slow uploads); raise it for "
        "large adapter uploads over slow links",
    )  # fmt: skip
    max_connections: int | None = Field(
        1024, ge=1, description="open connections (and running requests) before uvicorn "
        "answers 503 to new requests; None = no limit",
    )  # fmt: skip
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections close after")
    gc_min_age_s: float = Field(
        86400.0, ge=0, description="gc keeps unreferenced images and adapter files younger "
        "than this (a search uploads its images before it posts their pairs)",
    )  # fmt: skip

    # limits (bad input is a 4xx, never a 500 or an OOM)
    max_body_bytes: int = Field(32 * 2**20, description="largest request body")
    max_image_bytes: int = Field(16 * 2**20, description="largest image file")
    max_image_pixels: int = Field(40_000_000, description="decompression-bomb guard")
    max_items: int = Field(
        64, description="most continuations/candidates/texts/responses a request"
    )
    max_text_tokens: int = Field(
        2048,
        description="longest prompt + prefix + continuation; when not set, the service uses "
        "the loaded model's context length (2048 if its config names none)",
    )
    max_new_tokens: int = Field(1024, description="largest max_new_tokens for /v1/generate")
    max_adapter_bytes: int = Field(512 * 2**20, description="largest adapter upload")
    max_pairs_per_request: int = Field(1000, description="largest pair batch for the store")

    # batching
    max_batch_size: int = Field(32, ge=1, description="scoring items merged into one forward")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="how long an idle worker waits for more scoring work to batch with the "
        "first item (0: run at once; under load work queues behind the running step anyway)",
    )
    max_batch_tokens: int = Field(65536, ge=1, description="token budget of one scoring batch")
    max_queue: int = Field(256, ge=1, description="queued requests before 429")
    decode_batching: Literal["continuous", "isolated"] = Field(
        "continuous",
        description="'continuous': every live generation advances in one decoder forward per "
        "step; 'isolated': each generation's step is its own forward, so its numbers never "
        "depend on what else runs (bit-for-bit reproducible; the demo uses it)",
    )
    adapter_batching: Literal["mixed", "grouped"] = Field(
        "mixed",
        description="rows of different adapters in one step: 'mixed' runs one forward with "
        "per-row LoRA (PEFT's mixed-batch forward), 'grouped' one forward per adapter",
    )
    max_live_rows: int = Field(
        64, ge=1, description="decoder rows (beams, samples) of all live generations together"
    )
    kv_cache_bytes: int = Field(
        0,
        ge=0,
        description="KV bytes the live generations may hold; 0: on CUDA kv_cache_memory_fraction "
        "of the memory free after warm-up, elsewhere no byte limit (max_live_rows still holds)",
    )
    kv_cache_memory_fraction: float = Field(
        0.5, gt=0, le=0.95, description="on CUDA with kv_cache_bytes 0: share of free memory"
    )
    max_prefill_tokens_per_step: int = Field(
        4096,
        ge=1,
        description="prompt tokens joining generations may forward between two decode steps; "
        "a longer prompt's text goes in chunks over several steps (an image prompt's own "
        "forward in one), so joining never stalls the running rows for long",
    )
    cross_prefix_batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="score rows with different prefix states in one padded forward; 'auto': "
        "on for CUDA, off on CPU (measured: the padding costs more than it saves there)",
    )

    # caches (set to 0 to disable one)
    image_cache_size: int = Field(256, ge=0, description="images whose features stay cached")
    prefix_cache_size: int = Field(64, ge=0, description="image+prompt+prefix KV states cached")
    prefix_cache_tokens: int = Field(262144, ge=0, description="total tokens the KV cache holds")
    clip_cache_size: int = Field(4096, ge=0, description="CLIP image/text embeddings cached")
    decoded_image_cache_size: int = Field(
        64, ge=0, description="decoded images (PIL, RGB) the image store keeps in memory"
    )

    # images by URL (ImageRef.url); data: URIs are always accepted
    allow_image_urls: bool = Field(
        False, description="fetch http(s) image URLs (off: only data: URIs and uploads)"
    )
    image_url_allow_hosts: list[str] = Field(
        default_factory=list,
        description="hosts (or host:port) image URLs may name; empty = any public host. A host "
        "resolving to a loopback, link-local or private address must be listed",
    )
    image_url_max_bytes: int = Field(8 * 2**20, ge=1, description="largest fetched image")
    image_url_timeout_s: float = Field(5.0, gt=0, description="whole fetch time limit")

    # OpenRLHF remote reward model (POST /get_reward)
    openrlhf_reward: Literal["calibrated", "clip", "implicit"] = Field(
        "calibrated",
        description="reward /get_reward returns: calibrated R per sentence, CLIP R_I per "
        "sentence, or the implicit reward of --openrlhf-policy vs --openrlhf-reference",
    )
    openrlhf_aggregation: Literal["mean", "sum"] = Field(
        "mean", description="sentences' rewards -> one reward (implicit: token average or sum)"
    )
    openrlhf_policy: str = Field("base", description="implicit mode: policy adapter")
    openrlhf_reference: str = Field("base", description="implicit mode: reference adapter")
    openrlhf_beta: float = Field(defaults.IMPLICIT_BETA, gt=0, description="implicit mode: beta")
    openrlhf_queue_wait_s: float = Field(
        4.0, ge=0, description="how long /get_reward waits for a full queue before 503"
    )
    openrlhf_score_center: float | None = Field(
        None,
        description="/get_reward scores = 1/(1+exp(-(reward-center)/scale)); default center: "
        "20 (calibrated, clip), 0 (implicit)",
    )
    openrlhf_score_scale: float | None = Field(
        None, gt=0, description="see openrlhf_score_center; default 5 (calibrated, clip), 1"
    )

    naive_mode: bool = Field(
        False,
        description="benchmark baseline: no caches, no batching, every candidate forwarded "
        "from scratch (as the published CSR code does)",
    )
    warmup: bool = Field(True, description="run one tiny request before /ready turns 200")
