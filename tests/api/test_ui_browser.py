"""The pair viewer in a real headless browser (Debian's chromium + chromedriver, Selenium).

Against a live tiny service started with `--api-key`, holding a dataset made by the real CSR
search (`run_pairs`, published over HTTP) plus one pair whose text is hostile markup, scored by
the service like any other. Screenshots are written to the test's tmp dir and, when
`SELFREWARD_ARTIFACTS` is set, to that folder too.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore, SentenceScore
from tests.conftest import start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "chromium and chromedriver are not installed (Debian: apt-get install -y chromium "
        "chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
KEY = "browser-key"
DATASET = "viewer-csr"
HOSTILE = [
    '<script>window.__pwned = "script"</script> There is a red box.',
    '<img src="x" onerror="window.__pwned = \'img\'"> A blue thing & "quotes".',
]


@pytest.fixture(scope="module")
def service(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    proc, url = start_server(
        tiny_models, tmp_path_factory.mktemp("ui-live"), "--api-key", KEY, "--torch-threads", "1"
    )
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def dataset(service: str, tmp_path_factory: pytest.TempPathFactory) -> list[PreferencePair]:
    """Real CSR pairs for two prompts, then one hostile pair scored by /v1/reward."""
    from PIL import Image, ImageDraw

    from selfreward_vlm.client import ScoringClient
    from selfreward_vlm.client.methods import build_config
    from selfreward_vlm.client.pairs import run_pairs

    root = tmp_path_factory.mktemp("ui-world")
    (root / "images").mkdir()
    prompts = []
    for i, colour in enumerate(["red", "blue"]):
        img = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(img).ellipse((4 + 3 * i, 6, 26, 28 - 2 * i), fill=colour)
        img.save(root / "images" / f"{i}.png")
        prompts.append({"id": f"u{i}", "image": f"{i}.png", "prompt": "Describe the image."})
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    config = build_config("csr", max_steps=3, max_new_tokens=8, language_score="mean_logprob")
    out = root / "pairs.jsonl"
    done = run_pairs(
        service, "csr", root / "prompts.jsonl", root / "images", out, config=config,
        publish=f"{service}/v1/datasets/{DATASET}", api_key=KEY, progress=False,
    )  # fmt: skip
    assert done.prompts_failed == 0
    pairs = [PreferencePair.model_validate_json(x) for x in out.read_text().splitlines()]
    assert pairs
    with ScoringClient(service, api_key=KEY) as client:
        image = client.upload_image(root / "images" / "0.png")
        scored = client.reward("Describe the image.", HOSTILE, image=image).results
        sentences = [
            SentenceScore(text=r.text, r_t=r.r_t, r_i=r.r_i, reward=r.reward) for r in scored
        ]
        hostile = PreferencePair(
            id="hostile", prompt_id="u0", prompt="<b>Describe</b> the image.",
            chosen=HOSTILE[0], rejected=HOSTILE[1], images=[image], method="csr",
            iteration=pairs[0].iteration,
            chosen_score=ResponseScore(reward=sentences[0].reward or 0, sentences=sentences[:1]),
            rejected_score=ResponseScore(reward=sentences[1].reward or 0, sentences=sentences[1:]),
        )  # fmt: skip
        client.upsert_pairs(DATASET, [hostile])
    return [*pairs, hostile]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    if artifacts := os.environ.get("SELFREWARD_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


def wait(driver: Any, condition: Any, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def css(selector: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, selector)


def log_errors(driver: Any) -> list[str]:
    """Console errors other than the 401 the first, key-less data call gets by design."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries if e["level"] == "SEVERE" and "401" not in e["message"]]


def goto(browser: Any, service: str, fragment: str) -> None:
    """Open a view of the page; a fresh tab is given the key as the dialog would store it."""
    browser.get(f"{service}/ui#{fragment}")
    browser.execute_script(
        "if (sessionStorage.getItem('selfreward.apiKey') === null) {"
        " sessionStorage.setItem('selfreward.apiKey', arguments[0]); location.reload(); }",
        KEY,
    )


def number(text: str) -> float:
    return float(text.replace("–", "nan"))


def test_pairs_view_in_a_real_browser(
    browser: Any, service: str, dataset: list[PreferencePair], tmp_path: Path
) -> None:
    browser.get(f"{service}/ui")
    # The service has a key: the page asks for it once, and keeps it for this tab only.
    key_input = wait(browser, ec.visibility_of_element_located(css("#key-input")))
    save_screenshot(browser, tmp_path, "ui-key.png")
    key_input.send_keys("not-the-key\n")
    refused = wait(browser, ec.visibility_of_element_located(css("#key-error")))
    assert "refused" in refused.text
    key_input.send_keys(KEY + "\n")
    row = wait(browser, ec.presence_of_element_located(css(f'tr[data-dataset="{DATASET}"]')))
    wait(browser, lambda d: "csr" in row.text)
    assert str(len(dataset)) in row.text
    assert browser.execute_script("return sessionStorage.getItem('selfreward.apiKey')") == KEY
    # The page's data calls without the key are refused (the same fetch, no header).
    status = browser.execute_async_script(
        "const done = arguments[0]; fetch('v1/datasets').then((r) => done(r.status));"
    )
    assert status == 401

    row.find_element(By.LINK_TEXT, "Pairs").click()
    first = dataset[0]
    detail = wait(browser, ec.presence_of_element_located(css(f'.pair[data-pair-id="{first.id}"]')))
    for side, score in (("chosen", first.chosen_score), ("rejected", first.rejected_score)):
        spans = detail.find_elements(By.CSS_SELECTOR, f".side.{side} .sent")
        assert [s.text for s in spans] == [s.text or "END" for s in score.sentences]
        assert detail.find_element(By.CSS_SELECTOR, f".side.{side} .score").text.startswith("R ")
    image = detail.find_element(By.CSS_SELECTOR, "img.pair-image")
    wait(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 32)
    assert image.get_attribute("data-image-id") == first.images[0]

    # Hovering a sentence shows its R_T / R_I / R: the stored numbers, as formatted.
    sentence = first.chosen_score.sentences[0]
    ActionChains(browser).move_to_element(
        detail.find_element(By.CSS_SELECTOR, ".side.chosen .sent")
    ).perform()
    tip = wait(browser, ec.visibility_of_element_located(css("#tooltip")))
    shown = {
        r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
        for r in tip.find_elements(By.CSS_SELECTOR, "tr")
    }
    for label, value in (("R_T", sentence.r_t), ("R_I", sentence.r_i), ("R", sentence.reward)):
        assert number(shown[label]) == pytest.approx(value, rel=0.01, abs=1e-12), (label, shown)
    save_screenshot(browser, tmp_path, "ui-pairs.png")
    assert not log_errors(browser)


def test_hostile_text_renders_as_text(
    browser: Any, service: str, dataset: list[PreferencePair]
) -> None:
    goto(browser, service, f"/d/{DATASET}/pairs?pair=hostile")  # the key is kept in this tab
    detail = wait(browser, ec.presence_of_element_located(css('.pair[data-pair-id="hostile"]')))
    chosen = detail.find_element(By.CSS_SELECTOR, ".side.chosen .sent").text
    rejected = detail.find_element(By.CSS_SELECTOR, ".side.rejected .sent").text
    assert chosen == HOSTILE[0] and rejected == HOSTILE[1]
    assert detail.find_element(By.CSS_SELECTOR, ".prompt").text == "<b>Describe</b> the image."
    time.sleep(0.3)  # give an injected onerror handler the time it would need
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    assert not browser.find_elements(By.CSS_SELECTOR, 'main img[src="x"], main b')


def test_distributions_and_filters(
    browser: Any, service: str, dataset: list[PreferencePair], tmp_path: Path
) -> None:
    goto(browser, service, f"/d/{DATASET}/dist")
    charts = wait(browser, ec.presence_of_all_elements_located(css(".chart svg")))
    assert len(charts) == 3 * len({p.iteration for p in dataset})
    assert not browser.find_element(By.ID, "tooltip").is_displayed()  # left with its view
    # One bar per non-empty (bin, side) of the summary the page drew from.
    summary = httpx.get(
        f"{service}/v1/datasets/{DATASET}/summary",
        params={"method": "csr", "bins": 24},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    hists = [d[q] for d in summary["distributions"] for q in ("reward", "r_i", "words")]
    want = sum(c > 0 for h in hists if h for c in (*h["chosen"], *h["rejected"]))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart rect.bar")) == want > 0
    rows = browser.find_elements(By.CSS_SELECTOR, "table.lengths tbody tr")
    assert len(rows) == len(summary["groups"])
    save_screenshot(browser, tmp_path, "ui-distributions.png")
    # A minimum margin above every pair's margin leaves none; one below every margin, all.
    margins = [p.chosen_score.reward - p.rejected_score.reward for p in dataset]
    goto(browser, service, f"/d/{DATASET}/pairs?min_margin={max(margins) + 1}")
    wait(browser, ec.presence_of_element_located(css(".pair-list .empty")))
    goto(browser, service, f"/d/{DATASET}/pairs?min_margin={min(margins) - 1}")
    wait(
        browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".pair-list .row")) == len(dataset)
    )
    assert not log_errors(browser)


def test_paging_through_filters(browser: Any, service: str, dataset: list[PreferencePair]) -> None:
    """130 pairs, every other one of iteration 2: the filtered view reads across the API's
    cursor pages (100 a call) and shows 20 matches a page: 20, 20, 20, 5, and back."""
    from selfreward_vlm.client import ScoringClient

    base = dataset[0]
    many = [
        base.model_copy(update={"id": f"copy-{i:03d}", "iteration": 1 + i % 2}) for i in range(130)
    ]
    with ScoringClient(service, api_key=KEY) as client:
        client.upsert_pairs("viewer-paging", many)
    goto(browser, service, "/d/viewer-paging/pairs?iteration=2")

    def shown() -> list[str]:
        script = (
            "return [...document.querySelectorAll('.pair-list .row')].map((r) => r.dataset.pairId)"
        )
        return browser.execute_script(script)  # in one go: rows are replaced while paging

    want = [p.id for p in many if p.iteration == 2]
    pages = [want[i : i + 20] for i in range(0, len(want), 20)]
    button = lambda label: browser.find_element(By.XPATH, f"//button[contains(., '{label}')]")  # noqa: E731
    for n, page in enumerate(pages):
        wait(browser, lambda d, page=page: shown() == page)
        assert button("Next").is_enabled() == (n < len(pages) - 1)
        assert button("Previous").is_enabled() == (n > 0)
        if n < len(pages) - 1:
            button("Next").click()
    button("Previous").click()
    wait(browser, lambda d: shown() == pages[-2])


def test_whole_response_pair(browser: Any, service: str, dataset: list[PreferencePair]) -> None:
    """A method without sentence scores (SBSPO, self-judge): the texts whole, and the
    response-level scores."""
    from selfreward_vlm.client import ScoringClient

    base = dataset[0]
    extra = {"reward_sum": 1.25, "reward_avg": 0.125, "num_tokens": 10.0}
    whole = base.model_copy(
        update={
            "id": "whole-1", "method": "sbspo",
            "chosen_score": ResponseScore(reward=1.25, extra=extra),
            "rejected_score": ResponseScore(reward=-0.5, extra={**extra, "reward_sum": -0.5}),
        }
    )  # fmt: skip
    with ScoringClient(service, api_key=KEY) as client:
        client.upsert_pairs("viewer-whole", [whole])
    goto(browser, service, "/d/viewer-whole/pairs?method=sbspo&pair=whole-1")
    pair = wait(browser, ec.presence_of_element_located(css('.pair[data-pair-id="whole-1"]')))
    assert pair.find_element(By.CSS_SELECTOR, ".side.chosen .whole").text == base.chosen
    assert pair.find_element(By.CSS_SELECTOR, ".side.rejected .whole").text == base.rejected
    assert not pair.find_elements(By.CSS_SELECTOR, ".sent")
    assert pair.find_element(By.CSS_SELECTOR, ".side.chosen .score").text == "R 1.25"
    terms = pair.find_elements(By.CSS_SELECTOR, ".side.chosen .extras dt")
    values = pair.find_elements(By.CSS_SELECTOR, ".side.chosen .extras dd")
    shown = {t.text: v.text for t, v in zip(terms, values, strict=True)}
    assert shown == {"reward_sum": "1.25", "reward_avg": "0.125", "num_tokens": "10"}
    assert "margin +1.75" in pair.find_element(By.CSS_SELECTOR, ".pair-head").text
