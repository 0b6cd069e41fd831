"""The "Inside the model" panel in a real browser (headless Debian chromium via Playwright):
coloured tokens, an attention heatmap with hover, next-token probabilities that follow the
temperature slider; every number checked against the model computed here directly."""

from __future__ import annotations

import re

import pytest
import torch

from llamita.glass.attention import attention_weights

from serving_helpers import start_server

TIMEOUT_MS = 30_000
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def glass_server(loaded, tmp_path_factory):
    running, stop = start_server(loaded, kv_cache_tokens=512, data_dir=str(tmp_path_factory.mktemp("glass")))
    yield running
    stop()


def shown_percent(page) -> list[float]:
    return [float(s.rstrip("%")) for s in page.locator("#glass-next .prob").all_inner_texts()]


def test_panel_tokens_heatmap_and_temperature(browser, glass_server, loaded):
    tok = loaded.tokenizer
    ids = tok.encode(PROMPT, add_bos=tok.add_bos)
    page = browser.new_page(locale="en-US")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(glass_server.url + "/")
    assert page.locator("#glass summary").inner_text() == "Inside the model"
    page.click("#glass summary")
    page.fill("#glass-text", PROMPT)
    page.click("#glass-run")

    # Tokens: the tokenizer's ids, each coloured by its id.
    page.wait_for_selector("#glass-tokens .token")
    tokens = page.locator("#glass-tokens .token")
    assert [int(x) for x in tokens.evaluate_all("els => els.map(e => e.dataset.id)")] == tok.encode(PROMPT)
    colours = tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(colours)) == len(colours) and "rgba(0, 0, 0, 0)" not in colours
    assert page.locator("#glass-tokens .piece").first.inner_text() == "The"
    assert page.locator("#glass-token-count").inner_text().startswith(f"{len(ids)} tokens")

    # Heatmap of the average over layers and heads; hover reads one cell.
    page.wait_for_selector("#glass-heatmap[data-tokens]")
    heatmap = page.locator("#glass-heatmap")
    assert heatmap.get_attribute("data-tokens") == str(len(ids))
    coloured = page.evaluate("""() => { const c = document.getElementById('glass-heatmap');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let k = 0; k < d.length; k += 4) if (d[k + 3] > 0 && d[k + 2] < 250) n++; return n; }""")
    assert coloured > 0
    # Both axes labelled with the tokens, each label beside its row / above its column.
    pieces = [tok.token_bytes(i).decode().replace(" ", "␣") for i in ids]
    assert page.locator("#glass-rows span").all_inner_texts() == pieces
    assert page.locator("#glass-columns span").evaluate_all("els => els.map(e => e.textContent)") == pieces
    box = heatmap.bounding_box()
    for axis, along in (("rows", "y"), ("columns", "x")):
        labels = page.locator(f"#glass-{axis} span")
        for k in (0, len(ids) - 1):
            label = labels.nth(k).bounding_box()
            assert label[along] == pytest.approx(box[along] + k * int(heatmap.get_attribute("data-cell")), abs=2)
    weights = attention_weights(loaded.model, ids)  # (L, H, S, S)
    cell = int(heatmap.get_attribute("data-cell"))
    last = len(ids) - 1

    def hover(i: int, j: int) -> float:
        heatmap.hover(position={"x": j * cell + cell / 2, "y": i * cell + cell / 2})
        text = page.locator("#glass-hover").inner_text()
        pieces = [tok.token_bytes(ids[k]).decode().replace(" ", "␣") for k in (i, j)]
        assert text.startswith(f"«{pieces[0]}» → «{pieces[1]}»:"), text
        return float(text.rsplit(":", 1)[1])

    assert hover(last, 0) == pytest.approx(float(weights[:, :, last, 0].mean()), abs=1e-4)
    assert heatmap.get_attribute("data-shown") == "mean/mean"
    page.select_option("#glass-layer", "3")
    page.select_option("#glass-head", "5")
    page.wait_for_selector('#glass-heatmap[data-shown="3/5"]')
    assert hover(last, 1) == pytest.approx(float(weights[3, 5, last, 1]), abs=1e-4)

    # Next token: at T = 1 the model's own distribution; the slider reshapes it.
    page.wait_for_selector("#glass-next li")
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids]))[0, -1, : tok.vocab_size].double()
    top = logits.topk(10).indices.tolist()
    assert page.locator("#glass-next .piece").all_inner_texts()[0] == tok.token_bytes(top[0]).decode().replace(" ", "␣")
    at_one = shown_percent(page)
    expected = (100 * torch.softmax(logits, -1)[top]).tolist()
    assert at_one == pytest.approx(expected, abs=0.051)
    page.focus("#glass-temperature")
    for _ in range(7):
        page.keyboard.press("ArrowLeft")  # 1.0 -> 0.3
    assert page.locator("#glass-temperature-value").inner_text() == "0.3"
    at_cold = shown_percent(page)
    assert at_cold != at_one and at_cold[0] > at_one[0]  # a colder softmax is sharper
    assert at_cold == pytest.approx((100 * torch.softmax(logits / 0.3, -1)[top]).tolist(), abs=0.051)
    assert re.fullmatch(r"entropy \d+\.\d\d bits", page.locator("#glass-entropy").inner_text())

    page.click("#lang")
    assert page.locator("#glass summary").inner_text() == "Dentro del modelo"
    assert page.locator("#glass-layer option").first.inner_text() == "media"
    assert page.locator("#glass-entropy").inner_text().startswith("entropía")
    assert not errors, errors
    page.close()


def test_panel_shows_markup_as_text(browser, glass_server):
    page = browser.new_page(locale="es-ES")
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(glass_server.url + "/")
    assert page.locator("#glass summary").inner_text() == "Dentro del modelo"
    page.click("#glass summary")
    page.fill("#glass-text", '<img src=x onerror="window.hacked=1"><b>hola</b>')
    page.click("#glass-run")
    page.wait_for_selector("#glass-next li")
    page.wait_for_selector("#glass-heatmap[data-tokens]")
    assert page.locator("#glass img, #glass b").count() == 0
    assert "<b" in "".join(page.locator("#glass-tokens .piece").all_inner_texts())
    assert page.evaluate("window.hacked") is None
    page.close()
