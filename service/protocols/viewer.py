"""Wire models of the pair viewer's one data endpoint, `GET /v1/datasets/{name}/summary`.

The viewer's other data comes from the API as it is (`GET /v1/datasets`, the cursor pages of
`GET /v1/datasets/{name}/pairs`, `GET /v1/images/{id}`); these models say what the API lacked:
which methods and iterations a dataset holds, and the distributions of CSR's Figure 5 and
SBSPO's Table 2.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GroupStats(_Response):
    """One (method, iteration) group of a dataset's pairs; means skip missing values."""

    method: str
    iteration: int
    pairs: int
    chosen_reward: float | None = Field(description="mean response reward of the chosen")
    rejected_reward: float | None = Field(description="mean response reward of the rejected")
    margin: float | None = Field(description="mean chosen − rejected reward")
    chosen_words: float | None = Field(description="mean length of the chosen, in words")
    rejected_words: float | None = Field(description="mean length of the rejected, in words")
    chosen_r_i: float | None = Field(
        description="mean over pairs of the chosen's mean sentence R_I (null without sentences)"
    )
    rejected_r_i: float | None = Field(description="the same for the rejected")


class Histogram(_Response):
    """Chosen and rejected counts over shared bins: `edges` has one more entry than the
    counts; bin i holds `edges[i] <= x < edges[i+1]` (the last bin includes its right edge)."""

    edges: list[float]
    chosen: list[int]
    rejected: list[int]
    chosen_mean: float | None = None
    rejected_mean: float | None = None


class IterationDistributions(_Response):
    """The distributions of one iteration. Every iteration of a summary shares the same bin
    edges for a quantity, so iterations compare at a glance (CSR's Figure 5)."""

    iteration: int
    pairs: int
    reward: Histogram | None = Field(description="response reward of chosen vs rejected")
    r_i: Histogram | None = Field(
        description="each response's mean sentence R_I (null when no pair has sentence scores)"
    )
    words: Histogram | None = Field(description="response length in words")


class DatasetSummary(_Response):
    """What the viewer shows about a dataset besides its pairs."""

    dataset: str
    total: int = Field(description="pairs in the dataset")
    pairs: int = Field(description="pairs the distributions cover (after the method filter)")
    method: str | None = Field(description="the method filter, if one was given")
    methods: dict[str, int] = Field(description="pairs per method, whole dataset")
    iterations: dict[str, int] = Field(description="pairs per iteration, whole dataset")
    groups: list[GroupStats] = Field(description="per (method, iteration), whole dataset")
    distributions: list[IterationDistributions] = Field(
        description="per iteration, over the pairs of `method` (all pairs when not given)"
    )
