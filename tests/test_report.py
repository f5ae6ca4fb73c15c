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
