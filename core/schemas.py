"""Wire schemas shared by the service, the client and the trainer.

Pydantic only: this module must import without torch, transformers, open_clip or fastapi, so
that a client on a laptop can talk to a remote GPU box. Every request model forbids unknown
fields, so a typo in a field name is a 422 that names the field rather than a silent default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from selfreward_vlm.core import defaults

LanguageScore = Literal["prob", "mean_logprob", "sum_logprob"]
Strategy = Literal["diverse_beam", "beam", "sample", "greedy"]
StopMode = Literal["sentence", "token", "eos"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _json_number(kind: str) -> Any:
    """A number must come as a JSON number: pydantic's lax mode took `false` as 0 and "5" as
    5, which the OpenAPI document does not allow. (Python numbers, numpy's included, pass.)"""

    def check(value: Any) -> Any:
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"must be {kind}, not {type(value).__name__}")
        return value

    return BeforeValidator(check)


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


# Request scalars as the schema states them (not strict mode: that would refuse a tuple for a
# list or numpy's int64 from Python callers, which are fine).
_INTEGER, _NUMBER = _json_number("an integer"), _json_number("a number")
Int = Annotated[int, _INTEGER]
Float = Annotated[float, _NUMBER]
Bool = Annotated[bool, BeforeValidator(_boolean)]


# Limits the service enforces from its settings, shown in the OpenAPI document at their
# defaults (a server started with other limits says so in GET /info `limits`).
DEFAULT_MAX_ITEMS = 64  # settings.max_items
DEFAULT_MAX_NEW_TOKENS = 1024  # settings.max_new_tokens


def _items(description: str) -> Any:
    """A required list of 1..max_items strings (the maximum is checked against settings)."""
    return Field(
        ...,
        min_length=1,
        description=f"{description} (at most max_items, {DEFAULT_MAX_ITEMS} by default)",
        json_schema_extra={"maxItems": DEFAULT_MAX_ITEMS},
    )


def _exactly_one_schema(schema: dict[str, Any]) -> None:
    """`ImageRef` in JSON Schema: exactly one of id, base64, url is a string, the others
    absent or null (what `_exactly_one` enforces)."""
    names = ("id", "base64", "url")
    given = {
        "id": {"type": "string", "minLength": 1},
        "base64": {"type": "string", "pattern": BASE64_PATTERN},
        "url": {"type": "string", "pattern": DATA_URI_PATTERN},
    }
    schema["minProperties"] = 1
    schema["oneOf"] = [
        {
            "required": [name],
            "properties": {n: given[n] if n == name else {"type": "null"} for n in names},
        }
        for name in names
    ]


# Well-formed base64 (what `base64.b64decode(validate=True)` takes), and a data: URI of an image
# with a base64 payload: the forms the service reads with default settings (http(s) image URLs
# only when the operator allows them). Whether the bytes are an image no schema can say.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
DATA_URI_PATTERN = r"^data:image/[A-Za-z0-9.+-]+;base64," + BASE64_PATTERN[1:]


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------- common


class ImageRef(_Request):
    """An image: the sha256 id returned by `POST /v1/images`, the bytes inline as base64, or a
    URL (a `data:image/...;base64,` URI always; `http(s)` only where the operator allows it).
    Exactly one of the three."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_schema)

    id: str | None = Field(None, description="sha256 hex id from POST /v1/images")
    base64: str | None = Field(None, description="image file bytes (PNG/JPEG/...), base64")
    url: str | None = Field(
        None,
        description="data:image/...;base64,... URI, or an http(s) URL the service fetches "
        "when started with --allow-image-urls (host allow-list, size cap, timeout)",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if sum(v is not None for v in (self.id, self.base64, self.url)) != 1:
            raise ValueError("give exactly one of 'id', 'base64' or 'url'")
        return self


class Usage(_Response):
    """Work a request cost. `tokens_forwarded / tokens_scored` near 1.0 means no token was
    pushed through the model twice."""

    tokens_scored: int = Field(0, description="tokens whose log-prob the response reports")
    tokens_forwarded: int = Field(0, description="tokens pushed through the language model")
    tokens_cached: int = Field(0, description="tokens served from the prefix KV cache")
    image_cache_hits: int = Field(0, description="image encodings served from cache")
    image_encodes: int = Field(0, description="images encoded by the vision tower or CLIP")


class ErrorDetail(_Response):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(_Response):
    """The one error shape of the service: `{"error": {"type", "message", "field"}}`."""

    error: ErrorDetail


# --------------------------------------------------------------------------- images


class ImageUploadResponse(_Response):
    id: str
    width: int
    height: int


# --------------------------------------------------------------------------- logprobs


class LogprobsRequest(_Request):
    """Per-token log-probs of each continuation after image + prompt (+ prefix).

    The prompt goes through the model's chat template (with the image, if any); prefix +
    continuation is the assistant text.
    """

    model: str = Field("base", description="adapter name; 'base' = no adapter")
    image: ImageRef | None = None
    prompt: str
    prefix: str = ""
    continuations: list[str] = _items("texts scored after prompt + prefix")


class TokenLogprobs(_Response):
    text: str
    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[float]
    sum_logprob: float
    mean_logprob: float
    num_tokens: int


class LogprobsResponse(_Response):
    model: str
    results: list[TokenLogprobs]
    usage: Usage


# --------------------------------------------------------------------------- clip


class ClipRequest(_Request):
    image: ImageRef
    texts: list[str] = _items("texts scored against the image")
    scale: Float = Field(defaults.CLIP_SCALE, gt=0, description="R_I = max(scale * cos, 0)")


class ClipScore(_Response):
    text: str
    cosine: float
    relevance: float
    truncated: bool = Field(description="the text was cut to CLIP's context length")


class ClipResponse(_Response):
    results: list[ClipScore]
    usage: Usage


# --------------------------------------------------------------------------- reward


class RewardRequest(_Request):
    """Calibrated reward (CSR eq. 2-4) of candidate next sentences after prompt + prefix."""

    model: str = "base"
    image: ImageRef
    prompt: str
    prefix: str = ""
    candidates: list[str] = _items("candidate next sentences")
    lambda_: Float = Field(
        defaults.LAMBDA, alias="lambda", ge=0.0, le=1.0, description="weight of R_I"
    )
    language_score: LanguageScore = "prob"
    scale: Float = Field(defaults.CLIP_SCALE, gt=0)


class RewardScore(_Response):
    text: str
    r_t: float
    r_i: float
    reward: float
    cosine: float
    sum_logprob: float
    mean_logprob: float
    num_tokens: int
    truncated: bool


class RewardResponse(_Response):
    model: str
    lambda_: float = Field(alias="lambda")
    language_score: LanguageScore
    results: list[RewardScore]
    usage: Usage


# --------------------------------------------------------------------------- implicit reward


class ImplicitRewardRequest(_Request):
    """DPO implicit reward β·(log π_policy(y|x) − log π_ref(y|x)) (SBSPO eq. 2-3)."""

    policy: str = Field(..., description="adapter name of the policy ('base' allowed)")
    reference: str = Field("base", description="adapter name of the reference")
    beta: Float = Field(defaults.IMPLICIT_BETA, gt=0.0)
    image: ImageRef | None = None
    prompt: str
    responses: list[str] = _items("responses to score")


class ImplicitReward(_Response):
    text: str
    reward_sum: float
    reward_avg: float
    policy_logprob: float
    reference_logprob: float
    num_tokens: int


class ImplicitRewardResponse(_Response):
    policy: str
    reference: str
    beta: float
    results: list[ImplicitReward]
    usage: Usage


# --------------------------------------------------------------------------- generate


class GenerateRequest(_Request):
    """Candidate next sentences (stop='sentence') or whole responses (stop='eos')."""

    model: str = "base"
    image: ImageRef | None = None
    prompt: str
    prefix: str = ""
    strategy: Strategy = "diverse_beam"
    n: Int = Field(
        5,
        ge=1,
        description=f"candidates (at most max_items, {DEFAULT_MAX_ITEMS} by default)",
        json_schema_extra={"maximum": DEFAULT_MAX_ITEMS},
    )
    # (an optional field's bounds go inside the union, before the check: else the JSON
    # schema shows pydantic's "ge" instead of "minimum")
    num_beam_groups: Annotated[int, Field(ge=1), _INTEGER] | None = Field(
        None, description="default: n (diverse_beam)"
    )
    diversity_penalty: Float = Field(3.0, ge=0.0)
    temperature: Float = Field(0.7, gt=0.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    seed: Int | None = Field(None, description="candidate i samples with seed + i")
    stop: StopMode = Field(
        "sentence",
        description="where a candidate ends besides EOS: 'sentence', at any token whose text "
        "contains stop_text; 'token', at the token that is stop_text exactly (its vocabulary "
        "string, as the official CSR code stops at '.'); 'eos', at EOS only",
    )
    stop_text: str = Field(".", min_length=1, description="sentence delimiter")
    max_new_tokens: Int = Field(
        74,
        ge=1,
        description=f"at most the max_new_tokens setting ({DEFAULT_MAX_NEW_TOKENS} by default)",
        json_schema_extra={"maximum": DEFAULT_MAX_NEW_TOKENS},
    )


class Candidate(_Response):
    text: str
    token_ids: list[int]
    token_logprobs: list[float] = Field(description="raw log-softmax, no penalty/temperature")
    finished: bool = Field(description="the model emitted EOS")
    stop_reason: Literal["sentence", "eos", "length"]
    score: float | None = Field(
        None,
        description="beam strategies: the hypothesis score as HF ranks it, the cumulative "
        "processed log-prob (diversity penalty included) over the length; null for sampling",
    )


class GenerateResponse(_Response):
    model: str
    candidates: list[Candidate]
    usage: Usage


# --------------------------------------------------------------------------- pairs


class SentenceScore(_Response):
    """One sentence of a searched response with the scores it was chosen by."""

    text: str
    r_t: Float | None = None
    r_i: Float | None = None
    reward: Float | None = None
    extra: dict[str, Float] = Field(default_factory=dict)


class ResponseScore(_Response):
    """A whole response's score and its per-sentence breakdown."""

    reward: Float
    sentences: list[SentenceScore] = Field(default_factory=list)
    extra: dict[str, Float] = Field(default_factory=dict)


class PreferencePair(BaseModel):
    """A scored preference pair: TRL's vision preference columns plus provenance.

    `prompt`, `chosen`, `rejected`, `images` are what TRL's DPOTrainer reads (`images` holds
    image ids; the trainer fetches their bytes). The rest lets a pair be audited.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=200, description="stable id: upserts dedupe")
    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    images: list[str] = Field(default_factory=list, description="image sha256 ids")
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    model: str = Field("base", description="adapter the pair was generated with")
    reference: str | None = Field(None, description="reference adapter, where one was used")
    iteration: Int = 0
    chosen_score: ResponseScore
    rejected_score: ResponseScore


class PairsUpsertRequest(_Request):
    pairs: list[PreferencePair] = Field(..., min_length=1)


class PairsUpsertResponse(_Response):
    dataset: str
    inserted: int
    duplicates: int
    total: int


class PairsPage(_Response):
    dataset: str
    pairs: list[PreferencePair]
    next_cursor: str | None = Field(description="pass as ?after= for the next page; null at end")


class DatasetInfo(_Response):
    name: str
    count: int


class DatasetList(_Response):
    datasets: list[DatasetInfo]


class DatasetDeleted(_Response):
    dataset: str
    deleted: int = Field(..., description="pairs deleted")


class GcRequest(_Request):
    """What `POST /v1/admin/gc` may delete: images no pair names and adapter files no
    adapter name points to, older than `min_age_s`."""

    min_age_s: Annotated[float, Field(ge=0), _NUMBER] | None = Field(
        None,
        description="keep anything younger than this many seconds (default: the service's "
        "gc_min_age_s, 1 day): a search uploads its images before it posts their pairs",
    )
    dry_run: Bool = Field(False, description="count what would be deleted; delete nothing")


class GcResponse(_Response):
    dry_run: bool
    images_deleted: int = Field(..., description="images deleted (or, dry run, deletable)")
    image_bytes_freed: int
    images_kept_referenced: int = Field(..., description="kept: a pair names them")
    images_kept_recent: int = Field(..., description="kept: unreferenced but too recent")
    adapter_files_deleted: int = Field(
        ..., description="adapter versions (content digests) no name points to, deleted"
    )
    adapter_bytes_freed: int
    adapter_files_kept: int = Field(..., description="kept: a name points to them, or recent")


# --------------------------------------------------------------------------- adapters


class AdapterInfo(_Response):
    name: str
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | str | None = None
    size_bytes: int = 0
    source: Literal["startup", "upload"] = "upload"


class AdapterList(_Response):
    adapters: list[AdapterInfo]


# --------------------------------------------------------------------------- info


class ModelInfo(_Response):
    model: str
    kind: Literal["vlm", "causal_lm"]
    clip: str | None
    clip_context_length: int | None
    device: str
    dtype: str
    eos_token: str | None


class InfoResponse(_Response):
    version: str
    model: ModelInfo
    adapters: list[str]
    # registry version of each uploaded adapter this replica serves (replicas sharing a store
    # agree once each has used the name: none serves an older version than the registry's)
    adapter_versions: dict[str, int] = {}
    limits: dict[str, int | float]
    naive_mode: bool
    versions: dict[str, str]
