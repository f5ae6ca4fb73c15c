"""`deltaspec report`: one self-contained HTML file. A plain parse checks that it references nothing outside
itself and shows what the analyses say; a headless-Chromium test renders it and records every request."""
import hashlib
import io
import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

import deltaspec as ds
from deltaspec.formatting import fmt_num as _fmt
from deltaspec_cli.main import cli
from browser import find_chromium, render

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_checkpoints")
LORA, MULTI, FULL, BASE = (os.path.join(SAMPLES, n) for n in ("lora", "multilora", "full", "base"))
URL_ATTRS = {"href", "src", "xlink:href", "srcset", "action", "formaction", "poster", "data", "background",
             "longdesc", "cite", "manifest", "ping", "lowsrc", "codebase", "archive", "profile", "usemap"}
FORBIDDEN_TAGS = {"script", "link", "iframe", "frame", "object", "embed", "img", "audio", "video", "source", "track",
                  "base", "applet", "portal", "form", "input", "meta-refresh"}


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.styles, self.text = [], [], [], []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r.html"
    r = run("report", LORA, MULTI, FULL, "--base", BASE, "--labels", "LoRA,MultiLoRA,FT", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    return out


def parse(path) -> Collect:
    c = Collect()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def test_references_nothing_outside_the_file(three):
    doc = three.read_text(encoding="utf-8")
    c = parse(three)
    assert not FORBIDDEN_TAGS & set(c.tags), FORBIDDEN_TAGS & set(c.tags)
    for tag, k, v in c.attrs:
        if k.lower() in URL_ATTRS:
            assert v.startswith("#") or v.startswith("data:image/png;base64,"), (tag, k, v[:80])
        if k.lower().startswith("on"):
            pytest.fail(f"event handler attribute {k} on <{tag}>")
        if k.lower() == "style" or k.lower() == "clip-path":
            assert all(u.startswith("#") for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", v)), v
    css = "".join(c.styles)
    assert "@import" not in css and "url(" not in css
    rest = re.sub(r'data:image/png;base64,[^"]*', "", doc).replace("http-equiv", "")  # inline heatmap pixels
    assert re.search(r"(https?:|ftp:|file:)?//[a-z0-9]", rest, re.I) is None  # no URL anywhere
    csp = [v for tag, k, v in c.attrs if tag == "meta" and k == "content" and "default-src" in v]
    assert csp and "default-src 'none'" in csp[0]
    ids = [v for _, k, v in c.attrs if k == "id"]
    assert len(ids) == len(set(ids))  # several inline SVGs never clash
    for _, k, v in c.attrs:
        if k == "href":
            assert v.startswith("data:") or v[1:] in ids, v  # every internal link resolves


def test_figures_have_alt_text_and_captions(three):
    c = parse(three)
    n_svg = c.tags.count("svg")
    assert n_svg == 3 + 2 * 3  # Figure 2, spectra, energy; heatmap and rank-needed per input
    assert c.tags.count("figcaption") == n_svg and c.tags.count("title") == n_svg + 1  # + the page's <title>
    roles = [v for t, k, v in c.attrs if t == "svg" and k == "role"]
    labels = [v for t, k, v in c.attrs if t == "svg" and k == "aria-labelledby"]
    assert roles == ["img"] * n_svg and len(labels) == n_svg


def test_report_shows_what_the_analyses_say(three):
    doc = three.read_text(encoding="utf-8")
    text = " ".join(parse(three).text)
    sha = hashlib.sha256(open(os.path.join(LORA, "adapter_model.safetensors"), "rb").read()).hexdigest()
    assert sha in text and ds.__version__ in text and "deltaspec report" in text and "--labels LoRA,MultiLoRA,FT" in text
    for section in ("Provenance", "Warnings", "Summary per module type", "Comparison", "Figures", "Rank suggestions",
                    "Per-layer metrics"):
        assert f">{section}</h2>" in doc
    lora = ds.analyze(LORA, progress=False)
    mean = lora.aggregates()["q_proj"]["mean"]
    assert _fmt(mean["top1_energy"]) in text and _fmt(mean["effective_rank"]) in text
    ft = ds.analyze(FULL, base=BASE, progress=False)
    s = ft.suggest_ranks()
    r = next(x for x in s.module_table() if x["module"] == "down_proj")
    assert f"{r['needed'][0.9][0]:g} ({r['needed'][0.9][1]})" in text  # rank needed, per module type
    assert "MultiLoRA − LoRA" in text and "FT − LoRA" in text and "LoraConfig(" in text
    assert "peft" in text and "multilora" in text and "full" in text  # detected formats


def test_saved_analysis_input_with_warning(tmp_path):
    saved = tmp_path / "lora.json"
    assert run("analyze", LORA, "-o", saved, "-q").exit_code == 0
    d = json.loads(saved.read_text())
    d["warnings"] = ["adapter.safetensors: 2 tensor(s) not understood, skipped: a, b"]
    saved.write_text(json.dumps(d))
    out = tmp_path / "one.html"
    r = run("report", saved, "--no-hash", "--title", "Just one", "-o", out, "-q")
    assert r.exit_code == 0, r.output
    doc = out.read_text(encoding="utf-8")
    assert "2 tensor(s) not understood" in doc and "Just one" in doc and "not computed (--no-hash)" in doc
    assert ">Comparison</h2>" not in doc  # one input: nothing to compare


def test_report_refuses_to_overwrite_an_input(tmp_path):
    r = run("report", LORA, "-o", os.path.join(LORA, "adapter_config.json"))
    assert r.exit_code == 2 and "refusing to write inside the input checkpoint" in r.output


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="no chromium installed (apt-get install chromium)")
@pytest.mark.parametrize("width", [1366, 800])
def test_chromium_renders_without_any_request_leaving_the_file(three, tmp_path, width):
    import matplotlib.image as mpimg

    png, requests, errors, (scroll_w, n_svg) = render(three, width=width, evaluate=[
        "document.documentElement.scrollWidth", "document.querySelectorAll('svg').length"])
    assert requests[0] == three.resolve().as_uri()
    assert all(u == requests[0] or u.startswith("data:image/png") for u in requests), requests
    assert errors == []
    assert scroll_w <= width  # laptop and narrow windows: wide tables scroll inside their box, the page does not
    assert n_svg == 9
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.shape[1] == width and img.shape[0] > 3000
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100  # text, tables and coloured figures, not a blank page
    (tmp_path / f"report_{width}.png").write_bytes(png)


def test_report_leads_with_findings_and_ends_with_provenance(three):
    doc = three.read_text(encoding="utf-8")
    pos = [doc.index(f">{s}</h2>") for s in ("Findings", "Comparison", "Figures", "Warnings", "Provenance")]
    assert pos == sorted(pos)
    text = " ".join(parse(three).text)
    lora = ds.analyze(LORA, progress=False)
    kv = np.array([r.metrics["top1_energy"] for r in lora.layers if r.module in ("k_proj", "v_proj")])
    from deltaspec.formatting import fmt_spread
    assert f"LoRA: top-1 energy {fmt_spread(kv.mean(), kv.std())} on k_proj, v_proj ({kv.size} layers)" in text
    assert f"in {int((kv >= 0.5).sum())} of {kv.size} layers" in text  # 'dominated': top-1 energy ≥ 0.5
    assert "MultiLoRA − LoRA: " in text and "beyond their spread" in text
    q = lora.aggregates()["q_proj"]
    assert fmt_spread(q["mean"]["top1_energy"], q["std"]["top1_energy"], "±") in text  # the table keeps the ± spread


def test_heatmaps_of_one_report_share_one_colour_scale(monkeypatch):
    import deltaspec.plots as dp
    from deltaspec import report as R

    seen, draw = [], dp.heatmap
    monkeypatch.setattr(dp, "heatmap", lambda data, metric, **kw: seen.append((kw.get("vmin"), kw.get("vmax")))
                        or draw(data, metric, **kw))
    res = {"LoRA": ds.analyze(LORA, progress=False, modules=["q_proj"]),
           "FT": ds.analyze(FULL, base=BASE, progress=False, modules=["q_proj"])}
    R.build(res)
    every = [r.metrics["normalized_entropy"] for x in res.values() for r in x.layers]
    assert seen == [(min(every), max(every))] * 2


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="no chromium installed (apt-get install chromium)")
def test_first_screen_shows_the_findings_and_the_comparison_table(three):
    js = ("JSON.stringify([document.querySelector('#findings').getBoundingClientRect().bottom, "
          "document.querySelector('#comparison tbody tr:nth-child(6)').getBoundingClientRect().bottom])")
    _, _, errors, (pos,) = render(three, width=1366, height=900, evaluate=[js])
    findings_bottom, first_block_bottom = json.loads(pos)
    assert errors == [] and findings_bottom < 900 and first_block_bottom < 900  # summary + a whole module block
