#!/usr/bin/env python3
"""Writes hard_strings.txt (committed): text that stresses each part of GPT-2's pre-tokenizer.
    python3 dev/gpt2_tokenizer/make_hard_strings.py > dev/gpt2_tokenizer/hard_strings.txt
Only characters assigned by Unicode 15.0 (the tables' version), so the reference client's newer
Unicode cannot disagree."""
import sys

lines = [
    # contractions: lower case only, anywhere, and their near misses
    "don't I'LL 's it's we're they've I'm you'll he'd DON'T 'S ''s '' rock'n'roll 'tis 'twas o'clock",
    "can't won't she's 're 've 'm 'll 'd 'x 'ss 'lll 're' ' s ' t Mary's James' 'Tis",
    # numbers: runs of \p{N}, including non-ASCII digits and other numbers
    "12345 3.14 1,000,000 007 x2 2x 0x1F 1e-9 -42 +7 ½ ¼¾ ٣٤٥ ²³ Ⅻ ① ፳ 𝟙𝟚 १२३ ١٢٣٤",
    # letters beyond ASCII, combining marks (class other), scripts without spaces
    "naïve café 東京 Ελληνικά Кириллица עברית العربية हिन्दी ภาษาไทย 한국어 日本語のテキスト",
    "cafe\u0301 e\u0301\u0301 \u0301a n\u0303o Zürich Straße ÆØÅ ǅungla ʰʲ ﬁne ｆｕｌｌ",
    # emoji and symbols (class other), joiners and flags
    "😀 👍🏽 👨\u200d👩\u200d👧 🇫🇷🇩🇪 ❤️ ✓ © ® ™ € £ ¥ § ¶ † ‡ • … — – « » „ “ ” ‘ ’",
    "a😀b 😀😀 word😀 😀word 1😀2",
    # whitespace runs: \s+(?!\S) and \s+ and the optional leading space
    "a  \n\n  b   c\t\td \t e\n \n f",
    "    indented line",
    "\ttab start",
    "x \n y",
    "trailing spaces   ",
    "\r\nwindows\r\nline\r\n",
    "nbsp\u00a0here \u00a0x\u00a0 y ideographic\u3000space em\u2003space",
    "line\u2028sep para\u2029sep bom\ufeffmid nel\u0085x",
    "controls\x01\x02\x1f\x7f end",
    " " * 50 + "fifty spaces",
    # punctuation and mixed
    "x=1;y+=2.5e-3 hello,world!! ... ?! (a) [b] {c} <d> http://example.com/a?b=c&d=e#f",
    "$100 #hashtag @user ~/path/to/file.txt C:\\dir\\file ==> <== !== ~~~ ___ ---",
    "a" * 300,
    "éé" * 60,
    "MiXeD CaSe 123abc abc123 a1b2c3 _under_score camelCase snake_case",
    "'s's's 'S'S",
    "end with whitespace \t \n\n   ",
]
sys.stdout.write("\n".join(lines))
