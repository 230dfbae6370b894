"""A deterministic corpus of prompts for checking tokenizers against their references.

Real art-prompt phrasing (styles, artist-like names, subjects, lighting, quality tags, weight syntax) mixed
with the text that breaks tokenizers: Unicode of every kind, html entities, curly quotes, contractions,
digits, punctuation runs, very long words, literal special tokens, control characters, mojibake, and
empty or whitespace-only strings. Used by tests/tokenizer/test_tokenizer.py and bench/bench_tokenizer.py.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "a portrait of a young woman", "an old fisherman", "a red fox in the snow", "a cyberpunk city street",
    "a cozy cabin in the woods", "a dragon curled around a tower", "an astronaut riding a horse",
    "a bowl of ramen", "a lighthouse on a cliff", "a samurai warrior", "a cat wearing a tiny hat",
    "a futuristic sports car", "an enchanted forest", "a steampunk airship", "a knight in ornate armor",
    "a girl with a pearl earring", "mountains at dawn", "a bustling market in marrakech", "1girl, solo",
    "a robot tending a garden", "the ruins of an ancient temple", "a koi pond", "a wizard's study",
]
STYLES = [
    "oil painting", "watercolor", "digital art", "concept art", "studio ghibli style", "art nouveau",
    "ukiyo-e", "photorealistic", "cinematic still", "unreal engine 5", "octane render", "isometric",
    "pixel art", "low poly", "charcoal sketch", "impressionism", "baroque", "vaporwave", "synthwave",
    "matte painting", "35mm film photograph", "polaroid", "anime key visual", "line art",
]
ARTISTS = [
    "greg rutkowski", "alphonse mucha", "artgerm", "wlop", "makoto shinkai", "hayao miyazaki",
    "james gurney", "thomas kinkade", "zdzisław beksiński", "moebius", "simon stålenhag", "ilya kuvshinov",
    "john singer sargent", "rembrandt van rijn", "claude monet", "hr giger", "yoji shinkawa", "ross tran",
]
LIGHTING = [
    "golden hour", "volumetric lighting", "rim light", "soft diffused light", "dramatic lighting",
    "god rays", "neon glow", "moonlight", "backlit", "chiaroscuro", "studio lighting", "bioluminescent",
]
QUALITY = [
    "masterpiece", "best quality", "highly detailed", "intricate", "sharp focus", "8k", "4k uhd", "hdr",
    "trending on artstation", "award winning", "ultra realistic", "depth of field", "bokeh", "f/1.8",
    "85mm lens", "cgsociety", "lowres", "bad anatomy", "worst quality", "jpeg artifacts", "extra fingers",
]
UNICODE = [
    "猫", "東京の夜景", "桜の木の下で", "고양이", "café crème", "crème brûlée", "naïve", "Ångström", "Straße",
    "İstanbul", "ΑΣ ὀδυσσεύς", "ΣΊΣΥΦΟΣ", "кошка", "قطة", "חתול", "แมว", "नमस्ते", "Ελλάδα", "piñata",
    "🐈", "🔥🔥🔥", "👩‍🚀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "✨sparkles✨", "🇯🇵", "e\u0301", "a\u0308o\u0308",
    "Ｆｕｌｌｗｉｄｔｈ", "ＡＢＣ１２３！", "（笑）", "｢quote｣", "ﬁsh", "ﬂower", "ﬀ", "œuvre", "Æsir", "ß",
    "\u200bzero\u200bwidth", "non\xa0breaking", "ideo\u3000space", "\u200frtl", "\ufeffbom", "½ ¾ ²",
    "①②③", "٣ ٤", "２０２３", "™ © ®", "°C", "→ ←", "…", "–—", "·", "ǅ ǈ", "K\u212a", "ﬆ", "ｶﾀｶﾅ",
]
ENTITIES = [
    "&amp;", "&lt;", "&gt;", "&#39;", "&nbsp;", "&quot;", "&#x27;", "&amp;amp;", "&copy;", "&eacute;",
    "&AMP;", "&notanentity;", "R&D", "rock & roll", "&#128512;", "&lt;lora&gt;", "&amp;lt;", "Tom &amp; Jerry",
    "a < b &amp; c", "&EACUTE;", "&hellip;", "&#8217;", "fish&chips",
]
QUOTES = [
    "“quoted”", "‘single’", "\"straight\"", "'apostrophe'", "`backtick`", "´acute", "„low“", "«guillemets»",
    "′prime″", "it’s", "don’t", "cuphead’s", "L’Oréal", "‛reversed‛",
]
CONTRACTIONS = [
    "it's", "IT'S", "It'S", "don't", "DON'T", "we're", "We'Re", "they've", "THEY'VE", "i'm", "I'M",
    "she'll", "she'LL", "they'd", "THEY'D", "'s", "'S", "rock'n'roll", "o'clock", "'tis", "y'all'd've",
    "cat's cat's", "'''s", "''m", "'ll'll",
]
DIGITS = ["1girl", "2boys", "8k", "4K UHD", "3.5mm", "1920x1080", "v1.5", "2023", "000123", "3:2", "+1", "-0.5", "1e10", "#42"]
PUNCT = [
    "!!!", "...", "?!?!", "---", "***", "((((", "))))", ":::", ",,,,", "~~~", "_under_score_", "@#$%^&*",
    "<<>>", "[[]]", "{{}}", "\\\\", "//", "|||", "=>", ";-)", ":)", "^_^", "o_O", "--no", "/imagine",
]
SPECIALS = [
    "<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|EndOfText|>", "<end_of_text>", "<START_OF_TEXT>",
    "<|endoftext|", "x<|endoftext|>y", "!!<|endoftext|>!!", "<|pad|>", "<|endoftext|><|endoftext|>",
    "<|endoftext|>'s", "<|startoftext|>hello", "< |endoftext| >", "<end_of_text>s",
]
CONTROL = [
    "\x00", "\x01", "\x07", "\x1b[31mred\x1b[0m", "\x7f", "\x85", "\x9d", "\r\n", "\r", "\x0b", "\x0c",
    "\x1c", "\x1f", "\u2028", "\u2029", "\t", "\n", "\x80", "\u206a", "\ufffc", "\ufffd",
]
MOJIBAKE = [
    "cafÃ©", "Ã¢â‚¬â„¢", "â€œquotedâ€\x9d", "Ãºnico", "ãƒ‹ãƒ¥ãƒ¼ã‚¹", "Ã\xa0 la carte", "doesnâ€™t",
    "SÃ£o Paulo", "Ã©tÃ©", "â€”", "Â£100", "ÃƒÂ©",
]
WHITESPACE = ["", " ", "   ", "\t\n", "\u3000", "\xa0\xa0", " \n \t ", "\u2003"]

EDGE_GROUPS = [UNICODE, ENTITIES, QUOTES, CONTRACTIONS, DIGITS, PUNCT, SPECIALS, CONTROL, MOJIBAKE, WHITESPACE]


def _weighted(rng: random.Random, text: str) -> str:
    """Wrap a phrase in one of the weight syntaxes users type."""
    r = rng.random()
    if r < 0.55:
        return text
    if r < 0.7:
        return f"({text}:{rng.choice(['1.2', '0.8', '1.35', '1.1', '0.5', '2'])})"
    if r < 0.8:
        return "(" * rng.randint(1, 3) + text + ")" * rng.randint(1, 3)
    if r < 0.87:
        return f"[{text}]"
    if r < 0.93:
        return text + rng.choice(["+", "++", "-", "--"])
    return f"{text} BREAK"


def art_prompt(rng: random.Random, phrases: int | None = None) -> str:
    """A real-looking prompt: subject, style, artists, lighting, quality tags, with weight syntax."""
    parts = [rng.choice(SUBJECTS), rng.choice(STYLES)]
    if rng.random() < 0.7:
        parts.append("by " + " and ".join(rng.sample(ARTISTS, rng.randint(1, 3))))
    parts += rng.sample(LIGHTING, rng.randint(0, 2)) + rng.sample(QUALITY, rng.randint(1, 6))
    if phrases:
        while len(parts) < phrases:
            parts.append(rng.choice(SUBJECTS + STYLES + LIGHTING + QUALITY))
    rng.shuffle(parts[1:])
    text = ", ".join(_weighted(rng, p) for p in parts)
    if rng.random() < 0.1:
        text += f" <lora:{rng.choice(['detail', 'style_v2', 'add-more'])}:{rng.choice(['0.6', '1'])}>"
    if rng.random() < 0.05:
        text = text.upper() if rng.random() < 0.5 else text.title()
    return text


def _long_word(rng: random.Random) -> str:
    kind = rng.randrange(5)
    n = rng.randint(100, 600)
    if kind == 0:
        return rng.choice("abcdefghijklmnopqrstuvwxyz") * n
    if kind == 1:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if kind == 2:
        return "supercalifragilisticexpialidocious" * (n // 34 + 1)
    if kind == 3:
        return "".join(rng.choice("0123456789") for _ in range(n))
    return "".join(rng.choice("!?.,;:-_*#") for _ in range(n // 3))


def edge_prompt(rng: random.Random) -> str:
    """An art phrase or two mixed with edge-case fragments, glued with and without spaces."""
    bits = [rng.choice(SUBJECTS)] if rng.random() < 0.7 else []
    for _ in range(rng.randint(1, 4)):
        bits.append(rng.choice(rng.choice(EDGE_GROUPS)))
    if rng.random() < 0.05:
        bits.append(_long_word(rng))
    rng.shuffle(bits)
    out = bits[0] if bits else ""
    for b in bits[1:]:
        out += rng.choice([" ", ", ", "", "  ", "\n"]) + b
    return out


def fixed_cases() -> list[str]:
    """Every edge fragment alone, plus a few hand-picked combinations."""
    cases = [x for group in EDGE_GROUPS for x in group]
    cases += [
        "wow!!!", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "a\nb\r\nc", "A  B\t\tC",
        "&amp;amp;amp;", "<b>&amp;</b>", "line1 < x\n&amp; line2", "&amp;\n<", "ＡＢＣ’s", "İ", "ǅ", "ΣΑΣ ΣΑΣ.",
        "x" * 1000, "é" * 300, "🐈" * 50, "\u0301" * 20, "a\u0301\u0301b",
    ]
    return cases


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """`n` prompts (plus the fixed cases): about 45% real-phrase art prompts, the rest edge mixes."""
    rng = random.Random(seed)
    out = fixed_cases()
    while len(out) < n:
        out.append(art_prompt(rng) if rng.random() < 0.45 else edge_prompt(rng))
    return out


def bench_corpus(n: int = 2000, seed: int = 1, edge_share: float = 0.1) -> list[str]:
    """~60-token prompts: long art prompts, with `edge_share` of them carrying an edge fragment."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = art_prompt(rng, phrases=11)
        if rng.random() < edge_share:
            text += ", " + rng.choice(rng.choice(EDGE_GROUPS[:6]))
        out.append(text)
    return out
