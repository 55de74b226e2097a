"""Config patterns: a plain pattern is matched by Python's re, every other one by the regex
package, and both give the same configs as the regex package always did."""

import random
import re
import warnings

import pytest
import regex

from app import configs
from app.errors import SlotrunError

NAMES = [
    "configs/exp-1/exp-1-1.yaml", "configs/exp-1/exp-1-2.yaml", "configs/exp-2/exp-2-1-1.yaml",
    "configs/exp-10/exp-10-2.yaml", "configs/demo/demo-1-small.yaml", "configs/a_b/b-a.yaml",
    "configs/x/y/z.yaml", "configs/(x)/a.b$c.yaml", "configs/ab/aaab.yaml", "a", "b-1", "0a0",
    "-_-", "a\nb", "",
]
# Pieces of the plain patterns: literals, . ^ $ |, groups, repeats, sets, classes, escapes.
PIECES = list("ab.-_/019^$*+?|()x") + [
    r"\d", r"\D", r"\w", r"\W", r"\b", r"\.", r"\-", r"\(", r"\$", r"\/", r"\_", "[a-c]", "[^0-9]",
    "[-a]", "[a-]", "[.-/]", "[A-Z_]", "*?", "+?", "??", "*+", "++", ")*", "(|", "||", "exp-",
    "configs/", ".yaml",
    # and what a plain pattern may not hold, so that a wider _PLAIN fails this test
    r"\B", "{2}", "{e<=1}", "(?i)", "[[:digit:]]", r"\s", "(*FAIL)",
]


def test_a_plain_pattern_finds_what_the_regex_package_finds():
    rnd = random.Random(15)
    plain = compared = 0
    for _ in range(20000):
        pattern = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(1, 8)))
        if not configs._PLAIN.match(pattern):
            continue
        plain += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ours = re.compile(pattern)
            except re.error:
                continue  # left to the regex package, whose reading it keeps
        theirs = regex.compile(pattern, regex.VERSION0)  # re accepts it: so must regex
        compared += 1
        for name in NAMES:
            assert bool(ours.search(name)) == bool(theirs.search(name)), (pattern, name)
    assert plain > 8000 and compared > 4000, (plain, compared)


@pytest.mark.parametrize("pattern, plain", [
    (r"exp-(2|3)-1-\d*", True),
    ("^configs/exp-1/", True),
    ("exp-[12]-1", True),
    (r"exp-1-1\.yaml$", True),
    ("exp-1{1,2}", False),  # counts, and regex's fuzzy matching ({e<=1}), have their own syntax
    ("(?i)EXP-1", False),
    (r"\p{Lu}", False),
    ("[[:digit:]]", False),
    (r"\Bx", False),
    (r"(a)\1", False),
])
def test_which_patterns_are_plain(pattern, plain):
    assert bool(configs._PLAIN.match(pattern)) is plain
    compiled = configs.compile_pattern(pattern, ascii_names=True)
    assert (type(compiled) is re.Pattern) is plain


def _workspace(tmp_path, names):
    for name in names:
        path = tmp_path / "configs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x: 1\n", encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize("pattern", [
    r"exp-(2|3)-1-\d*", "exp-1{e<=1}-1", r"exp-\p{Nd}", "exp-[[:digit:]]-2", "(?i)EXP-2",
    r"exp-1-\d+\.yaml$", "^configs/exp", r"caf\w",
])
def test_match_configs_finds_what_the_regex_package_finds(tmp_path, pattern):
    names = ["exp-1/exp-1-1.yaml", "exp-1/exp-1-2.yaml", "exp-2/exp-2-1-1.yaml",
             "exp-3/exp-3-1-2.yaml", "exp-1/exp-9-1.yaml", "cafe/café.yaml", "cafe/cafe\u0301.yaml"]
    ws = _workspace(tmp_path, names)
    theirs = regex.compile(pattern, regex.VERSION0)
    expected = [c for c in configs.all_configs(ws) if theirs.search(c)]
    assert configs.match_configs(ws, pattern) == expected
    assert expected or pattern == "exp-[[:digit:]]-2"  # the patterns find something


def test_a_non_ascii_name_is_matched_by_the_regex_package(tmp_path):
    # \w reads a combining accent differently in re and in the regex package: with a name
    # that is not ASCII, even a plain pattern keeps the regex package's reading.
    ws = _workspace(tmp_path, ["cafe/cafe\u0301x.yaml", "cafe/plain.yaml"])
    assert configs.match_configs(ws, r"cafe\wx") == ["configs/cafe/cafe\u0301x.yaml"]
    assert re.search(r"cafe\wx", "configs/cafe/cafe\u0301x.yaml") is None


def test_an_invalid_pattern_is_refused_with_the_regex_packages_reason(tmp_path):
    ws = _workspace(tmp_path, ["exp-1/exp-1-1.yaml"])
    with pytest.raises(SlotrunError) as e:
        configs.match_configs(ws, "exp-(1")
    assert e.value.message.startswith("invalid regular expression 'exp-(1': missing )"), \
        e.value.message
    with pytest.raises(SlotrunError, match="invalid regular expression"):
        configs.match_configs(ws, "exp-1**")
