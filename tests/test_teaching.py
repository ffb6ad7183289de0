"""The notebooks as teaching material: FINDINGS' numbers come from its JSON, and every symbol the
notebooks write is in GLOSSARY.md.

Two conventions a lecturer relies on, checked on the committed notebooks (no code is run):

1. **FINDINGS' numbers are printed, never typed.** A number quoted from FINDINGS must come from a
   code cell that reads the committed JSON (`json.load(open("../findings/<name>.json"))`), so a
   rerun of an experiment cannot leave a notebook's prose behind. Hence:
   - a markdown cell that mentions FINDINGS (or a `findings/` file) holds no decimal number
     (`\\d.\\d`) and no "±". Not counted as decimals: link targets `](...)`, arXiv ids
     (`2506.13702`) and version strings (`2.13.0`). Settings count too (write "the smaller τ",
     and let a code cell print it): the rule stays simple enough to apply by eye;
   - a notebook that prints a number next to the word FINDINGS (a code cell's output with both)
     reads `findings/` in a code cell at or before that output;
   - a code cell's source line that names FINDINGS holds no hand-typed decimal in a string
     (format specs such as `{x:.3f}` do not count; a label such as "mean ± 95% interval" is fine).
2. **GLOSSARY.md defines every symbol the notebooks' markdown uses.** Symbols are taken from every
   markdown cell: a Greek letter, or a Latin letter that carries a decoration (a star, a subscript,
   a hat, tilde or bar, or an argument `(x`), and the bare capitals K, Z, V, J, N and B ("prompt B"
   and "arm A" are names, not symbols); LaTeX is first
   turned into the same Unicode (`\\tau` → τ, `\\hat Z` → Ẑ, `\\pi^*_\\tau` → π*_τ). Each is
   normalised (markdown's `\\*` → `*`, arguments `(x)` dropped, index subscripts `_i`, `_j`
   dropped) and must appear in GLOSSARY.md as a token of its own. Operators (Σ, Δ, E, KL, ...) are
   listed in NOT_SYMBOLS.

Each check is a plain function of a cell's text, so a test can show it failing on a made-up cell.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GLOSSARY = ROOT / "GLOSSARY.md"


def cells(path):
    return json.loads(Path(path).read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def output_text(cell):
    parts = []
    for o in cell.get("outputs", []):
        if "text" in o:
            parts.append("".join(o["text"]))
        elif "data" in o and "text/plain" in o["data"]:
            parts.append("".join(o["data"]["text/plain"]))
    return "".join(parts)


# --- 1. FINDINGS' numbers are printed from its JSON ----------------------------------------------

MENTIONS_FINDINGS = re.compile(r"FINDINGS|findings/")
NOT_DECIMALS = [
    re.compile(r"\]\([^)]*\)"),                 # a link's target: ](../FINDINGS.md#3a-...)
    re.compile(r"https?://\S+"),                # a bare URL
    re.compile(r"\b\d{4}\.\d{4,5}(v\d+)?\b"),   # an arXiv id: 2506.13702
    re.compile(r"\b\d+\.\d+\.\d+\w*"),          # a version: torch 2.13.0+cpu
]
DECIMAL = re.compile(r"\d\.\d")


def findings_markdown_problems(text):
    """The hand-typed numbers of a markdown cell that mentions FINDINGS: [] when it is clean."""
    if not MENTIONS_FINDINGS.search(text):
        return []
    for pattern in NOT_DECIMALS:
        text = pattern.sub(" ", text)
    problems = []
    for line in text.splitlines():
        if DECIMAL.search(line) or "±" in line:
            problems.append(line.strip())
    return problems


READS_FINDINGS = re.compile(r"""findings/[\w{}.-]*\.json""")
FORMAT_SPEC = re.compile(r"\{[^{}]*\}")         # {x:.3f}, {len(d)}: computed, not typed
STRING = re.compile(r"""(?:[rfbu]{0,2})("[^"\n]*"|'[^'\n]*')""", re.IGNORECASE)


def typed_findings_numbers(code):
    """Lines of a code cell's source that name FINDINGS and type a decimal inside a string."""
    problems = []
    for line in code.splitlines():
        if "FINDINGS" not in line:
            continue
        for s in STRING.findall(line):
            if DECIMAL.search(FORMAT_SPEC.sub("", s)):
                problems.append(line.strip())
                break
    return problems


def unread_findings_outputs(nb_cells):
    """Code cells whose output prints a number beside the word FINDINGS before any code cell of the
    notebook has read findings/: (cell index, first such output line)."""
    problems, read = [], False
    for i, c in enumerate(nb_cells):
        if c["cell_type"] != "code":
            continue
        read = read or bool(READS_FINDINGS.search(source(c)))
        for line in output_text(c).splitlines():
            if "FINDINGS" in line and DECIMAL.search(line) and not read:
                problems.append((i, line.strip()))
                break
    return problems


def findings_problems(path):
    found = []
    nb = cells(path)
    for i, c in enumerate(nb):
        if c["cell_type"] == "markdown":
            found += [f"cell {i} (markdown) types a number beside FINDINGS: {p!r}"
                      for p in findings_markdown_problems(source(c))]
        elif c["cell_type"] == "code":
            found += [f"cell {i} (code) types a FINDINGS number in a string: {p!r}"
                      for p in typed_findings_numbers(source(c))]
    found += [f"cell {i} prints a FINDINGS number before any cell reads findings/: {p!r}"
              for i, p in unread_findings_outputs(nb)]
    return found


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_findings_numbers_come_from_the_json(nb):
    problems = findings_problems(nb)
    assert not problems, f"{nb.name}:\n  " + "\n  ".join(problems)


def test_findings_checks_catch_a_typed_number():
    # a markdown cell quoting FINDINGS by hand fails; links, arXiv ids and versions do not count
    assert findings_markdown_problems("FINDINGS' tuned table has RPO at 1.473 nats.")
    assert findings_markdown_problems("FINDINGS: DRO − RPO +0.009 ± 0.018")
    assert findings_markdown_problems("FINDINGS measures it at τ = 0.3 as well.")
    assert findings_markdown_problems("as `findings/gap.json` says, ± a little")
    assert not findings_markdown_problems(
        "See [FINDINGS](../FINDINGS.md#3a-dros-value) and RPO (arXiv 2506.13702), torch 2.13.0.")
    assert not findings_markdown_problems("This run's KL is 0.25 nats.")   # no FINDINGS: its own run
    # a code cell typing a FINDINGS number in a string fails; a computed one does not
    assert typed_findings_numbers('print("FINDINGS: RPO 1.473 nats")')
    assert not typed_findings_numbers('print(f"FINDINGS: RPO {gap[\'rpo\']:.3f} nats")')
    # an output quoting FINDINGS needs a findings/ read at or before it
    made_up = [{"cell_type": "code", "source": ["print('FINDINGS: 1.473')"],
                "outputs": [{"output_type": "stream", "text": ["FINDINGS: 1.473\n"]}]}]
    assert unread_findings_outputs(made_up) == [(0, "FINDINGS: 1.473")]
    made_up[0]["source"] = ["d = json.load(open('../findings/frontier.json'))\n", "print(f'FINDINGS: {d[1]}')"]
    assert unread_findings_outputs(made_up) == []


# --- 2. GLOSSARY.md defines every symbol of the notebooks' markdown --------------------------------

GREEK = "α-ωΑ-Ωϕϑϵ"
LATEX_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε", "zeta": "ζ",
    "eta": "η", "theta": "θ", "kappa": "κ", "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π",
    "rho": "ρ", "sigma": "σ", "tau": "τ", "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Sigma": "Σ", "Pi": "Π", "Delta": "Δ", "nabla": "∇", "partial": "∂"}
HAT, TILDE, MACRON = "\u0302", "\u0303", "\u0304"
PRECOMPOSED = {"Ẑ": "Z" + HAT}                  # written both ways; compared as one form

# Operators and words that look like symbols but are none.
NOT_SYMBOLS = {"Σ", "Π", "Δ", "E", "KL", "P", "O", "sd", "Var", "e"}
BARE_CAPITALS = "KZVJNB"                        # symbols even without a decoration (K = 8, log Z)
PER_SAMPLE = {"x", "y", "r", "r" + TILDE, "ρ", "A"}   # numbered per sample: y₁ … y_K are samples
INDEX_SUBSCRIPT = re.compile(r"_(?:\{[^}]*\}|[ijkn](?![\w]))")   # r_i, y_{<j}, Σ_{j≠i}: an index


def latex_to_unicode(math):
    """A LaTeX formula, written the way the prose writes it: \\pi^*_\\tau → π*_τ, \\hat Z → Ẑ."""
    s = re.sub(r"\\(?:text|operatorname|mathbb|mathcal)\{[^}]*\}", " ", math)
    s = re.sub(r"\\(?:mathrm|rm)\s*\{([^}]*)\}", r"{\1}", s)
    s = re.sub(r"\\hat\s*\{?\s*([A-Za-z])\}?", lambda m: " " + m.group(1) + HAT, s)
    s = re.sub(r"\\tilde\s*\{?\s*([A-Za-z])\}?", lambda m: " " + m.group(1) + TILDE, s)
    s = re.sub(r"_(\\[A-Za-z]+|[^\s{\\])", r"_\1 ", s)   # a bare subscript is one token: \beta_2\rho
    s = re.sub(r"\\([A-Za-z]+)", lambda m: LATEX_GREEK.get(m.group(1), " "), s)
    s = s.replace("^*", "*").replace("^{*}", "*")
    s = re.sub(r"_\{([^{}]*)\}", lambda m: "_" + m.group(1).replace(" ", "") if len(m.group(1)) <= 4 else " ", s)
    s = re.sub(r"\^\{([^{}]*)\}", r" \1 ", s)     # powers: e^{r/τ} → e r/τ
    s = re.sub(r"\^(\w)", r" \1", s)                # Z^2 → Z 2
    return s.replace("{", " ").replace("}", " ")


ITALIC = re.compile(r"(?<![\w*\u0302-\u0304])\*(\S(?:[^*\n]*?\S)?)\*(?![\w*])")


def unmark(text):
    """Markdown's emphasis dropped, its escaped star kept as a star (**π\\*** → π*), and Ẑ in one
    form."""
    text = text.replace("\\*", "\0").replace("**", "")
    text = ITALIC.sub(r"\1", text).replace("\0", "*")
    for pre, decomposed in PRECOMPOSED.items():
        text = text.replace(pre, decomposed)
    return text


def prose(markdown):
    """A markdown cell's text with its formulas turned into Unicode and its code spans dropped
    (code names functions, not symbols)."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)    # link targets
    text = re.sub(r"\b(prompts?|arms?) [A-Z]\b", r"\1", text)   # prompt B, arm A: names, not symbols
    text = re.sub(r"\$\$(.*?)\$\$", lambda m: " " + latex_to_unicode(m.group(1)) + " ", text, flags=re.S)
    text = re.sub(r"\$([^$]*)\$", lambda m: " " + latex_to_unicode(m.group(1)) + " ", text)
    return unmark(text.replace("\\_", "_").replace("\\|", "|"))


DECORATION = rf"(?:[{HAT}{TILDE}{MACRON}]|\*|_(?:\{{[^}}]*\}}|\w+)|[₀-₉])"
SYMBOL = re.compile(
    rf"(?<![\w])(?:"
    rf"[{GREEK}]{DECORATION}*"                               # τ, π_ref, π*_τ, ρ*, β₁
    rf"|[A-Za-z]{DECORATION}+"                               # V*, J*_τ, I_x, Ẑ, r̃, V_φ, q_v
    rf"|z0"                                                  # KTO's reference point
    rf"|[A-Za-z](?=\((?:x|y)\b)"                             # Z(x), b(x), s(x), π(y|x) → Z, b, s
    rf"|[{BARE_CAPITALS}](?![\w'’])"                          # K = 8, log Z
    rf")(?![\w])")


def subscript_digits(text):
    """β_1 → β₁, Ẑ_64 → Ẑ₆₄: one spelling of a numbered subscript."""
    return re.sub(r"_(\d+)(?!\w)", lambda m: "".join(chr(0x2080 + int(d)) for d in m.group(1)), text)


def normalise(symbol):
    symbol = subscript_digits(symbol)
    symbol = INDEX_SUBSCRIPT.sub("", symbol)
    numbered = re.fullmatch(r"(.+?)(?:_[\dKNm]|[₀-₉]+)", symbol)   # r₁, y_K: the K-th sample
    if numbered and numbered.group(1) in PER_SAMPLE:
        symbol = numbered.group(1)
    for pre, decomposed in PRECOMPOSED.items():
        symbol = symbol.replace(decomposed, pre)
    return symbol


def symbols_of(markdown):
    """The symbols a markdown cell uses, normalised; operators dropped."""
    found = {normalise(m.group(0)) for m in SYMBOL.finditer(prose(markdown))}
    return {s for s in found if s and s not in NOT_SYMBOLS and not s.startswith(("E_", "Σ_", "Π_"))}


def glossary_text():
    text = unmark(GLOSSARY.read_text().replace("\\_", "_"))
    return subscript_digits(INDEX_SUBSCRIPT.sub("", text))   # d_i defines d, Ẑ_64 defines Ẑ₆₄


def defined(symbol, glossary):
    """The symbol appears in the glossary as a token of its own (π* is not found inside π*_τ)."""
    for pre, decomposed in PRECOMPOSED.items():
        symbol = symbol.replace(pre, decomposed)
    return re.search(rf"(?<![\w]){re.escape(symbol)}(?![\w*{HAT}{TILDE}{MACRON}₀-₉])", glossary) is not None


def undefined_symbols(markdown, glossary):
    return sorted(s for s in symbols_of(markdown) if not defined(s, glossary))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_glossary_defines_every_symbol(nb):
    glossary = glossary_text()
    problems = []
    for i, c in enumerate(cells(nb)):
        if c["cell_type"] == "markdown":
            missing = undefined_symbols(source(c), glossary)
            if missing:
                problems.append(f"cell {i}: {', '.join(missing)}")
    assert not problems, f"{nb.name}: symbols not in GLOSSARY.md:\n  " + "\n  ".join(problems)


def test_symbol_extraction():
    got = symbols_of(r"RPO regresses ρ onto r/τ − log Ẑ(x); π\*_τ and V\*(x) = τ log Z(x); K = 8; "
                     r"KTO's z0; the group I_x; A_i = r̃_i − b(x); E_π[r] and Σ_j e^{r_j/τ}.")
    assert got == {"ρ", "τ", "Ẑ", "π*_τ", "V*", "Z", "K", "z0", "I_x", "A", "r̃", "b", "r"}, got
    assert symbols_of(r"$$\pi^*_\tau(y|x) = \pi_\mathrm{ref}(y|x)\, e^{r/\tau} / Z_\tau(x),\ \log\hat Z$$") \
        == {"π*_τ", "π_ref", "τ", "Z_τ", "Ẑ"}
    assert symbols_of("A response is the `log_partition` of I x.") == set()   # prose and code spans


def test_glossary_check_catches_an_undefined_symbol():
    glossary = unmark("- **τ** — the temperature.\n- **π\\*** — the optimum.\n- **π*_τ** — *it* at τ.")
    assert undefined_symbols("τ and π*_τ", glossary) == []
    assert undefined_symbols("τ, π* and the made-up ξ_q and W*", glossary) == ["W*", "ξ_q"]
    assert undefined_symbols("$\\hat V^*(x)$ and $\\beta$", glossary) == ["V̂*", "β"]
