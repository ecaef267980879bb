"""Tests for dual_attention.data.math_tasks.

Every answer is checked independently of the generator: the question is parsed back with regular
expressions, its mathematical content is rebuilt with sympy's parser, and the answer is compared
with sympy's own result (equation residuals, ``sympy.solve``, ``sympy.expand``, ``sympy.diff``,
``sympy.gcd``), including the exact ``str()`` printing style.
"""

from __future__ import annotations

import math
import random
import re
import string
import time

import numpy as np
import pytest
import torch

from dual_attention.data import math_tasks as mt
from dual_attention.data.math_tasks import (
    DIFFICULTIES,
    FAMILIES,
    IGNORE_INDEX,
    CharVocab,
    generate,
    make_tensors,
)

sp = pytest.importorskip("sympy")
from sympy.parsing.sympy_parser import parse_expr  # noqa: E402

N_CHECK = 80  # pairs per (family, difficulty) whose answers are verified with sympy

_SYMS = {c: sp.Symbol(c) for c in string.ascii_lowercase}


def _parse(text: str, extra: dict | None = None):
    """Parse an expression written in the dataset's syntax; every lower-case letter is a Symbol."""
    local = dict(_SYMS)
    if extra:
        local.update(extra)
    return parse_expr(text, local_dict=local)


def _match_one(patterns: list[re.Pattern], question: str) -> re.Match:
    matches = [m for p in patterns if (m := p.match(question))]
    assert matches, f"no template matches {question!r}"
    return matches[0]


def _equation(text: str):
    lhs, rhs = text.split(" = ")
    return _parse(lhs) - _parse(rhs)


# --------------------------------------------------------------------------- answer checkers


LIN1 = [
    re.compile(r"^Solve (?P<eq>[^=]+ = [^=]+) for (?P<v>[a-z])\.$"),
    re.compile(r"^Find (?P<v>[a-z]) such that (?P<eq>[^=]+ = [^=]+)\.$"),
    re.compile(r"^What is (?P<v>[a-z]) if (?P<eq>[^=]+ = [^=]+)\?$"),
]


def check_linear_1d(q: str, a: str) -> None:
    m = _match_one(LIN1, q)
    v = _SYMS[m["v"]]
    residual = _equation(m["eq"])
    assert residual.free_symbols == {v}, q
    poly = sp.Poly(residual, v)
    assert poly.degree() == 1, q  # linear, hence exactly one root
    (root,) = sp.solve(residual, v)
    assert root.is_integer, q
    assert a == str(root), (q, a, root)


LIN2 = [
    re.compile(r"^Solve (?P<e1>[^,]+), (?P<e2>[^,]+) for (?P<v>[a-z])\.$"),
    re.compile(r"^Suppose (?P<e1>[^,]+), (?P<e2>[^,]+)\. What is (?P<v>[a-z])\?$"),
    re.compile(r"^Suppose (?P<e1>[^,]+) and (?P<e2>[^,]+)\. Solve for (?P<v>[a-z])\.$"),
]


def check_linear_2d(q: str, a: str) -> None:
    m = _match_one(LIN2, q)
    r1, r2 = _equation(m["e1"]), _equation(m["e2"])
    unknowns = sorted(r1.free_symbols | r2.free_symbols, key=str)
    assert len(unknowns) == 2 and _SYMS[m["v"]] in unknowns, q
    for r in (r1, r2):
        assert sp.Poly(r, *unknowns).total_degree() == 1, q
    sol = sp.solve([r1, r2], unknowns, dict=True)
    assert len(sol) == 1 and len(sol[0]) == 2, (q, sol)  # unique solution
    assert all(val.is_integer for val in sol[0].values()), (q, sol)
    assert a == str(sol[0][_SYMS[m["v"]]]), (q, a, sol)


ADD = re.compile(
    r"^(?P<defs>(?:Let [a-z]\([a-z]\) = [^.]+\. )+)"
    r"(?:What is (?P<c1>[^?]+)\?|(?:Calculate|Determine|Give|Find) (?P<c2>[^.]+)\.)$"
)
ADD_DEF = re.compile(r"Let ([a-z])\(([a-z])\) = ([^.]+)\.")


def check_polynomials_add(q: str, a: str) -> None:
    m = ADD.match(q)
    assert m, f"no template matches {q!r}"
    funcs = {}
    for name, arg, body in ADD_DEF.findall(m["defs"]):
        assert name != arg and name not in funcs, q
        funcs[name] = sp.Lambda(_SYMS[arg], _parse(body))
    combo = m["c1"] or m["c2"]
    calls = re.findall(r"([a-z])\(([a-z])\)", combo)
    assert {f for f, _ in calls} == set(funcs), q  # every defined function is used once
    (target,) = {t for _, t in calls}
    assert target not in funcs, q
    expected = sp.expand(_parse(combo, extra=funcs))
    assert expected.free_symbols == {_SYMS[target]}, q
    assert sp.expand(expected - _parse(a)) == 0, (q, a)
    assert a == str(expected), (q, a, expected)  # sympy's printing style, exactly


EXPAND = [
    re.compile(r"^Expand (?P<e>.+)\.$"),
    re.compile(r"^Multiply out (?P<e>.+)\.$"),
    re.compile(r"^Write (?P<e>.+) in expanded form\.$"),
]


def check_polynomials_expand(q: str, a: str) -> None:
    m = _match_one(EXPAND, q)
    assert "(" in m["e"], q  # there is something to expand
    expr = _parse(m["e"])
    expected = sp.expand(expr)
    assert len(expr.free_symbols) == 1, q
    assert sp.expand(expr - _parse(a)) == 0, (q, a)
    assert a == str(expected), (q, a, expected)


_NTH = r"(?P<nth>first|second|third)"
DIFF = [
    re.compile(
        r"^Let (?P<g>[a-z])\((?P<args>[a-z](?:, [a-z])?)\) = (?P<f>[^.]+)\. "
        rf"What is the {_NTH} derivative of (?P=g)\((?P=args)\) wrt (?P<x>[a-z])\?$"
    ),
    re.compile(rf"^What is the (?:{_NTH} )?derivative of (?P<f>.+?)(?: wrt (?P<x>[a-z]))?\?$"),
    re.compile(rf"^Find the {_NTH} derivative of (?P<f>.+?)(?: wrt (?P<x>[a-z]))?\.$"),
    re.compile(r"^Differentiate (?P<f>.+) (?:with respect to|wrt) (?P<x>[a-z])\.$"),
]


def check_calculus_differentiate(q: str, a: str) -> None:
    m = _match_one(DIFF, q)
    f = _parse(m["f"])
    groups = m.groupdict()
    if groups.get("args"):
        assert {_SYMS[s] for s in groups["args"].split(", ")} == f.free_symbols, q
    if groups.get("x"):
        x = _SYMS[groups["x"]]
        assert x in f.free_symbols, q
    else:  # "What is the second derivative of 2*x**3 - x?" only for one variable
        assert len(f.free_symbols) == 1, q
        (x,) = f.free_symbols
    order = {None: 1, "first": 1, "second": 2, "third": 3}[groups.get("nth")]
    expected = sp.expand(sp.diff(f, x, order))
    assert expected != 0, q
    assert sp.expand(expected - _parse(a)) == 0, (q, a)
    assert a == str(expected), (q, a, expected)


GCD = re.compile(
    r"^(?:Calculate|What is) the (?:greatest common divisor|highest common factor|greatest common factor) "
    r"of (?P<p>[1-9]\d*) and (?P<q>[1-9]\d*)[.?]$"
)


def check_numbers_gcd(q: str, a: str) -> None:
    m = GCD.match(q)
    assert m, f"no template matches {q!r}"
    if q.startswith("What"):
        assert q.endswith("?"), q
    p_, q_ = int(m["p"]), int(m["q"])
    assert p_ != q_
    assert a == str(sp.gcd(sp.Integer(p_), sp.Integer(q_)))


CHECKERS = {
    "algebra__linear_1d": check_linear_1d,
    "algebra__linear_2d": check_linear_2d,
    "polynomials__add": check_polynomials_add,
    "polynomials__expand": check_polynomials_expand,
    "calculus__differentiate": check_calculus_differentiate,
    "numbers__gcd": check_numbers_gcd,
}


def test_every_family_has_a_checker():
    assert set(CHECKERS) == set(FAMILIES)
    assert len(FAMILIES) == 6 and DIFFICULTIES == ("easy", "medium", "hard")


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("family", FAMILIES)
def test_answers_are_correct(family, difficulty):
    pairs = generate(family, N_CHECK, seed=1234, difficulty=difficulty)
    assert len(pairs) == N_CHECK
    for q, a in pairs:
        CHECKERS[family](q, a)


def test_checkers_catch_a_wrong_answer():
    """The checkers can fail: a perturbed answer is rejected for every family."""
    for family in FAMILIES:
        q, a = generate(family, 1, seed=5)[0]
        wrong = str(int(a) + 1) if family.startswith(("algebra", "numbers")) else a + " + 1"
        with pytest.raises(AssertionError):
            CHECKERS[family](q, wrong)


def test_known_examples_in_the_dataset_style():
    """Hand-written questions in the generator's templates pass the same checkers."""
    check_linear_1d("Solve -12*c + 23 = -37 for c.", "5")
    check_linear_2d("Solve -w - 4*u + 17 = 0, -6*u = -8*w - 54 for u.", "5")
    check_polynomials_add(
        "Let x(t) = -t**2 + 3*t - 1. Let z(t) = t**2 - 2*t + 1. What is 3*x(t) + 2*z(t)?", "-t**2 + 5*t - 1"
    )
    check_polynomials_expand("Expand (2*y - 3)*(y + 4).", "2*y**2 + 5*y - 12")
    check_calculus_differentiate("What is the derivative of 3*x**4 - 2*x + 7 wrt x?", "12*x**3 - 2")
    check_numbers_gcd("Calculate the greatest common divisor of 132 and 36.", "12")


# --------------------------------------------------------------------------- sympy printing style


def test_poly_str_matches_sympy_printer():
    """The fast printer equals str(sympy expression) on random integer polynomials in 1-3 variables."""
    rng = random.Random(0)
    special = 0
    for _ in range(1500):
        nv = rng.choice((1, 1, 2, 3))
        names = tuple(rng.sample(string.ascii_lowercase, nv))
        poly = {}
        for _ in range(rng.randint(1, 5)):
            coef = rng.choice((-1, 1, rng.randint(-40, 40)))
            if coef:
                poly[tuple(rng.randint(0, 4) for _ in range(nv))] = coef
        if not poly:
            continue
        syms = [sp.Symbol(n) for n in names]
        expected = str(sp.Poly.from_dict(poly, *syms, domain="ZZ").as_expr())
        assert mt._poly_str(poly, names) == expected, (names, poly)
        special += expected[0].isdigit() and " - " in expected and len(poly) == 2
    assert special > 10  # the "1 - x**2" special case of sympy's printer was exercised


@pytest.mark.parametrize(
    "poly, names, text",
    [
        ({(2,): -1, (0,): 1}, ("x",), "1 - x**2"),
        ({(1,): -3, (0,): 7}, ("y",), "7 - 3*y"),
        ({(1,): 3, (0,): -7}, ("y",), "3*y - 7"),
        ({(1, 1): -3, (0, 0): 5}, ("x", "y"), "-3*x*y + 5"),
        ({(0, 1): -2, (0, 0): 5}, ("x", "y"), "5 - 2*y"),
        ({(3, 1): 2, (1, 1): -3, (0, 1): 5}, ("x", "b"), "2*b*x**3 - 3*b*x + 5*b"),
        ({(1, 3): 1, (2, 0): -1}, ("x", "b"), "b**3*x - x**2"),
    ],
)
def test_poly_str_cases(poly, names, text):
    assert mt._poly_str(poly, names) == text
    assert str(sp.Poly.from_dict(poly, *[sp.Symbol(n) for n in names]).as_expr()) == text


# --------------------------------------------------------------------------- determinism, limits, variety


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_and_seed_dependent(family):
    a = generate(family, 50, seed=7)
    assert a == generate(family, 50, seed=7)
    assert generate(family, 20, seed=7) == a[:20]  # a prefix of the same stream
    b = generate(family, 50, seed=8)
    assert sum(x != y for x, y in zip(a, b)) > 40
    assert generate(family, 50, seed=7, difficulty="hard") != a


def test_global_random_state_untouched():
    random.seed(99)
    np.random.seed(99)
    py_state, np_state = random.getstate(), np.random.get_state()
    for family in FAMILIES:
        generate(family, 20, seed=3)
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state()[1:2], np_state[1:2]))
    assert np.random.get_state()[2] == np_state[2]


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_lengths_charset_and_variety(difficulty):
    allowed = set(CharVocab.ALPHABET)
    for family in FAMILIES:
        pairs = generate(family, 400, seed=11, difficulty=difficulty)
        qs = [q for q, _ in pairs]
        ans = [a for _, a in pairs]
        assert max(map(len, qs)) <= 160 and max(map(len, ans)) <= 30
        assert min(map(len, ans)) >= 1
        assert all(set(q) <= allowed and set(a) <= allowed for q, a in pairs)
        assert len(set(qs)) >= 350, family  # mostly distinct questions
        assert len(set(ans)) >= 10, family  # easy linear_2d has 11 possible answers
        openings = {" ".join(q.split()[:2]) for q in qs}
        assert len(openings) >= 2, (family, openings)  # several templates
        if family != "numbers__gcd":
            letters = set("".join(re.findall(r"\b[a-z]\b", " ".join(qs))))
            assert len(letters) >= 20, (family, letters)  # random variable letters


def test_zero_and_unique():
    assert generate("numbers__gcd", 0, seed=0) == []
    pairs = generate("algebra__linear_1d", 2000, seed=0, difficulty="easy", unique=True)
    assert len({q for q, _ in pairs}) == 2000


def test_unique_raises_when_space_is_exhausted(monkeypatch):
    monkeypatch.setitem(mt._GENERATORS, "numbers__gcd", lambda rng, level: ("Q?", str(rng.randint(0, 1))))
    assert len(generate("numbers__gcd", 5, seed=0)) == 5
    with pytest.raises(ValueError, match="could only generate 1 of n=5 unique"):
        generate("numbers__gcd", 5, seed=0, unique=True)


def test_bad_arguments():
    with pytest.raises(ValueError) as e:
        generate("algebra__linear_3d", 5, seed=0)
    msg = str(e.value)
    assert "algebra__linear_3d" in msg and "family" in msg
    assert all(f in msg for f in FAMILIES)
    with pytest.raises(ValueError, match="difficulty.*'easy', 'medium', 'hard'.*'extreme'"):
        generate("numbers__gcd", 5, seed=0, difficulty="extreme")
    with pytest.raises(ValueError, match="n must be >= 0"):
        generate("numbers__gcd", -1, seed=0)
    with pytest.raises(TypeError, match="n must be an int"):
        generate("numbers__gcd", 2.0, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        generate("numbers__gcd", 2, seed="0")


def test_generation_speed():
    """~0.1-0.2 ms a pair on a laptop core; the bound leaves a wide margin for slow CI machines."""
    generate("polynomials__add", 10, seed=0)  # sympy import and caches
    t0 = time.perf_counter()
    for family in FAMILIES:
        generate(family, 1000, seed=0)
    per_pair = (time.perf_counter() - t0) / (1000 * len(FAMILIES))
    assert per_pair < 3e-3, f"{per_pair * 1e3:.2f} ms per pair"


# --------------------------------------------------------------------------- vocabulary


def test_char_vocab_layout_and_round_trip():
    v = CharVocab()
    assert len(v) == v.size == 98
    assert (v.PAD, v.BOS, v.EOS) == (0, 1, 2) == (v.pad_id, v.bos_id, v.eos_id)
    assert v.encode(" 0a~") == [3, 19, 68, 97]
    ids = v.encode(v.ALPHABET)
    assert ids == list(range(3, 98))
    assert v.decode(ids) == v.ALPHABET
    for q, a in generate("calculus__differentiate", 50, seed=2) + generate("algebra__linear_2d", 50, seed=2):
        assert v.decode(v.encode(q)) == q and v.decode(v.encode(a)) == a
    framed = v.encode("12", add_bos=True, add_eos=True)
    assert framed == [1, 20, 21, 2]
    assert v.decode(framed + [20, 20]) == "12"  # stops at EOS
    assert v.decode([0, 1, 20, -1, 21, 0]) == "12"  # PAD, BOS and ignore_index skipped
    assert v.decode(torch.tensor([20, 21, 2, 0])) == "12"


def test_char_vocab_errors():
    v = CharVocab()
    with pytest.raises(ValueError, match="'é'"):
        v.encode("café")
    with pytest.raises(ValueError, match="'\\\\n'"):
        v.encode("a\nb")
    with pytest.raises(ValueError, match="id 98"):
        v.decode([5, 98])
    with pytest.raises(ValueError, match="id -2"):
        v.decode([-2])
    with pytest.raises(TypeError, match="text must be a str"):
        v.encode(5)


# --------------------------------------------------------------------------- tensors


def test_make_tensors_shapes_and_padding():
    v = CharVocab()
    pairs = [("Solve 2*x = 4 for x.", "2"), ("Expand (y + 1)*(y - 1).", "y**2 - 1")]
    pairs += generate("polynomials__add", 30, seed=4, difficulty="hard")
    n = len(pairs)
    src, tgt_in, tgt_out, src_mask = out = make_tensors(pairs, v)
    assert out.src is src and out.src_mask is src_mask
    assert src.shape == (n, 160) and src_mask.shape == (n, 160)
    assert tgt_in.shape == (n, 32) and tgt_out.shape == (n, 32)
    assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long and src_mask.dtype == torch.bool
    for i, (q, a) in enumerate(pairs):
        lq, la = len(q), len(a)
        assert src[i, :lq].tolist() == v.encode(q)
        assert (src[i, lq:] == v.PAD).all()
        assert src_mask[i, :lq].all() and not src_mask[i, lq:].any()
        assert tgt_in[i, : la + 1].tolist() == [v.BOS] + v.encode(a)
        assert (tgt_in[i, la + 1 :] == v.PAD).all()
        assert tgt_out[i, : la + 1].tolist() == v.encode(a) + [v.EOS]
        assert (tgt_out[i, la + 1 :] == IGNORE_INDEX).all()
        assert v.decode(src[i]) == q and v.decode(tgt_in[i]) == a and v.decode(tgt_out[i]) == a
    # teacher forcing: the label at step t is the input at step t + 1 wherever both are real
    real = tgt_out[:, :-1] >= 3
    assert torch.equal(tgt_out[:, :-1][real], tgt_in[:, 1:][real])
    assert src_mask.sum().item() == sum(len(q) for q, _ in pairs)


def test_make_tensors_cross_entropy_counts_only_real_steps():
    """With uniform logits the summed CE is (#answer chars + #EOS) * log(V): padding is ignored."""
    v = CharVocab()
    pairs = generate("polynomials__expand", 16, seed=9)
    _, tgt_in, tgt_out, _ = make_tensors(pairs, v, max_q_len=120, max_a_len=31)
    logits = torch.zeros(*tgt_out.shape, len(v))
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1, reduction="sum"
    )
    n_real = sum(len(a) + 1 for _, a in pairs)
    assert loss.item() == pytest.approx(n_real * math.log(98), rel=1e-6)
    assert tgt_in.shape == (16, 31)


def test_make_tensors_errors():
    v = CharVocab()
    with pytest.raises(ValueError, match="text #1 has 12 characters, more than length=10"):
        make_tensors([("short", "1"), ("a" * 12, "2")], v, max_q_len=10)
    with pytest.raises(ValueError, match="answer #0 has 5 characters.*max_a_len >= 6"):
        make_tensors([("q", "12345")], v, max_a_len=5)
    assert make_tensors([("q", "12345")], v, max_a_len=6).tgt_out[0].tolist() == v.encode("12345") + [2]
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        make_tensors([("q", 5)], v)
    with pytest.raises(TypeError, match="vocab must be a CharVocab"):
        make_tensors([("q", "a")], "vocab")
    with pytest.raises(ValueError, match="max_q_len must be a positive int"):
        make_tensors([("q", "a")], v, max_q_len=0)
    with pytest.raises(ValueError, match="'é'"):
        make_tensors([("café", "a")], v)
