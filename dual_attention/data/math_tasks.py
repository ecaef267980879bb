"""Local generators for a few task families of DeepMind's ``mathematics_dataset``.

Saxton et al. (2019), "Analysing Mathematical Reasoning Abilities of Neural Models", publish a
generator package whose current releases no longer import with sympy >= 1.6 and numpy >= 1.24.
This module re-creates a handful of its families in the same question/answer text style, written
from scratch; the answers of the polynomial and calculus families are computed with sympy.

Families (``FAMILIES``), one example each::

    algebra__linear_1d       Solve -12*c + 23 = -37 for c.                                -> 5
    algebra__linear_2d       Solve -w - 4*u + 17 = 0, -6*u = -8*w - 54 for u.             -> 5
    polynomials__add         Let x(t) = -t**2 + 3*t - 1. Let z(t) = t**2 - 2*t + 1.
                             What is 3*x(t) + 2*z(t)?                                     -> -t**2 + 5*t - 1
    polynomials__expand      Expand (2*y - 3)*(y + 4).                                    -> 2*y**2 + 5*y - 12
    calculus__differentiate  What is the derivative of 3*x**4 - 2*x + 7 wrt x?           -> 12*x**3 - 2
    numbers__gcd             Calculate the greatest common divisor of 132 and 36.         -> 12

Every question is at most ``MAX_QUESTION_LEN`` = 160 characters and every answer at most
``MAX_ANSWER_LEN`` = 30 characters (both limits of the original dataset); longer draws are
rejected and redrawn. Answers of the polynomial/calculus families are ``str()`` of a sympy
expression (``**`` for powers, ``*`` for products, terms in sympy's printing order).

Generation is deterministic: :func:`generate` seeds its own ``random.Random`` from
``(family, difficulty, seed)`` and never touches global random state.

The second half of the module turns pairs into tensors for a character-level seq2seq model with
teacher forcing (:class:`CharVocab`, :func:`make_tensors`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "FAMILIES",
    "DIFFICULTIES",
    "MAX_QUESTION_LEN",
    "MAX_ANSWER_LEN",
    "IGNORE_INDEX",
    "generate",
    "CharVocab",
    "MathTensors",
    "make_tensors",
]

#: the task families :func:`generate` knows, named as in ``mathematics_dataset``
FAMILIES: tuple[str, ...] = (
    "algebra__linear_1d",
    "algebra__linear_2d",
    "polynomials__add",
    "polynomials__expand",
    "calculus__differentiate",
    "numbers__gcd",
)

#: difficulty levels: larger coefficients, more terms and more steps from easy to hard
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

#: length limits of the original dataset (characters)
MAX_QUESTION_LEN = 160
MAX_ANSWER_LEN = 30

#: label value of padding positions in ``tgt_out`` (``cross_entropy(..., ignore_index=-1)``)
IGNORE_INDEX = -1

# Variable letters. Lower-case only; every letter is a plain symbol for sympy once parsed with
# an explicit local dict (the tests do that).
_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# A monomial is a tuple of exponents, one per variable of the polynomial; a polynomial is a
# dict {monomial: nonzero int coefficient}.
Monom = tuple[int, ...]
PolyDict = dict[Monom, int]


# ----------------------------------------------------------------------------------------------
# text formatting (questions)
# ----------------------------------------------------------------------------------------------


def _monomial_body(monom: Monom, names: Sequence[str]) -> str:
    """``(3, 1), ("x", "y") -> "x**3*y"``; the empty string for the constant monomial."""
    parts = []
    for exp, name in zip(monom, names):
        if exp == 1:
            parts.append(name)
        elif exp > 1:
            parts.append(f"{name}**{exp}")
    return "*".join(parts)


def _format_terms(terms: Sequence[tuple[int, str]]) -> str:
    """Join signed terms ``(coefficient, body)`` the way sympy prints a sum.

    ``[(-3, "x**2"), (1, "x"), (-7, "")] -> "-3*x**2 + x - 7"``. Zero coefficients must have been
    removed by the caller; an empty list prints as ``"0"``.
    """
    if not terms:
        return "0"
    out = []
    for i, (coef, body) in enumerate(terms):
        mag = abs(coef)
        if body == "":
            text = str(mag)
        elif mag == 1:
            text = body
        else:
            text = f"{mag}*{body}"
        if i == 0:
            out.append(f"-{text}" if coef < 0 else text)
        else:
            out.append(f" - {text}" if coef < 0 else f" + {text}")
    return "".join(out)


def _printed_len_lower_bound(poly: PolyDict, names: Sequence[str]) -> int:
    """Length of the printed polynomial, exact up to a leading minus sign (order-independent).

    Used to reject too-long answers before formatting them.
    """
    if not poly:
        return 1
    total = 3 * (len(poly) - 1)
    for monom, coef in poly.items():
        body = _monomial_body(monom, names)
        mag = abs(coef)
        if body == "":
            total += len(str(mag))
        elif mag == 1:
            total += len(body)
        else:
            total += len(str(mag)) + 1 + len(body)
    return total


# ----------------------------------------------------------------------------------------------
# sympy oracle (polynomial and calculus families)
# ----------------------------------------------------------------------------------------------


def _sympy() -> Any:
    try:
        import sympy
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the polynomial and calculus families of dual_attention.data.math_tasks need sympy: "
            "pip install 'dual_attention[math]'"
        ) from e
    return sympy


@lru_cache(maxsize=1024)
def _symbols(names: tuple[str, ...]) -> tuple[Any, ...]:
    sp = _sympy()
    return tuple(sp.Symbol(n) for n in names)


@lru_cache(maxsize=1024)
def _ring(names: tuple[str, ...]) -> tuple[Any, tuple[Any, ...]]:
    """sympy's sparse polynomial ring ``ZZ[names]`` and its generators (cached)."""
    sp = _sympy()
    from sympy.polys.rings import ring

    r, *gens = ring(",".join(names), sp.ZZ)
    return r, tuple(gens)


def _to_sympy_poly(poly: PolyDict, names: tuple[str, ...]) -> Any:
    """Direct construction of a polynomial in sympy's ring ``ZZ[names]`` from a coefficient dict.

    ``sympy.polys.rings.PolyElement`` is the engine behind ``sympy.Poly`` without its option
    processing (~2 us per construction instead of ~20-60 us); +, *, ``mul_ground`` and ``diff``
    are sympy's exact integer polynomial arithmetic.
    """
    r, _ = _ring(names)
    return r(dict(poly))


@lru_cache(maxsize=1 << 15)
def _sympy_monomial_str(monom: Monom, names: tuple[str, ...]) -> str:
    """sympy's ``str`` of a monic monomial, e.g. ``"b*x**2"`` (symbols in sympy's order)."""
    sp = _sympy()
    return str(sp.Mul(*[s**e for s, e in zip(_symbols(names), monom)]))


def _poly_str(poly: PolyDict, names: tuple[str, ...]) -> str:
    """``str()`` of the sympy expression of an integer polynomial, without building that expression.

    ``str(Poly(...).as_expr())`` costs ~1 ms (expression construction plus printing), which would
    dominate generation, so this reproduces sympy's ``StrPrinter._print_Add`` for integer
    polynomials; the tests compare it with ``str(sympy.Poly(...).as_expr())`` on thousands of
    random polynomials in 1-3 variables. Rules (from ``Expr.as_ordered_terms(order=None)``):

    * terms in descending lexicographic order of their exponents, the variables sorted by name;
    * special case: two terms, a positive constant :math:`c` and a term :math:`-k m` with one
      variable in :math:`m`, print constant first: ``"1 - x**2"``, ``"3 - 2*y"``;
    * each term is ``coefficient*monomial`` (coefficient ±1 dropped), its sign pulled out as
      ``" + "`` / ``" - "``, a leading ``"-"`` on the first term.
    """
    if not poly:
        return "0"
    order = sorted(range(len(names)), key=lambda i: names[i])
    items = sorted(poly.items(), key=lambda mc: tuple(mc[0][i] for i in order), reverse=True)
    if len(items) == 2:
        (m_hi, c_hi), (m_lo, c_lo) = items
        if not any(m_lo) and c_lo > 0 and c_hi < 0 and sum(e > 0 for e in m_hi) == 1:
            items = [items[1], items[0]]
    return _format_terms([(c, "" if not any(m) else _sympy_monomial_str(m, names)) for m, c in items])


def _poly_answer(result: Any, names: tuple[str, ...]) -> tuple[str | None, PolyDict]:
    """Answer text of a sympy ring polynomial, or ``None`` when it is zero or too long."""
    poly = {m: int(c) for m, c in result.terms() if c != 0}  # sympy ZZ coefficients -> int
    if not poly or _printed_len_lower_bound(poly, names) > MAX_ANSWER_LEN:
        return None, poly
    text = _poly_str(poly, names)
    if len(text) > MAX_ANSWER_LEN:
        return None, poly
    return text, poly


# ----------------------------------------------------------------------------------------------
# random helpers
# ----------------------------------------------------------------------------------------------


def _nonzero(rng: random.Random, bound: int) -> int:
    """Uniform on ``{-bound, ..., -1, 1, ..., bound}``."""
    v = rng.randint(1, bound)
    return v if rng.random() < 0.5 else -v


def _letters(rng: random.Random, k: int) -> list[str]:
    return rng.sample(_LETTERS, k)


def _split(rng: random.Random, total: int, parts: int, bound: int) -> list[int]:
    """Write ``total`` as a sum of ``parts`` nonzero integers (the last one may exceed ``bound``).

    With ``parts == 1`` this is ``[total]``. Zero entries are dropped, so a zero total may come
    back as an empty list or as e.g. ``[4, -4]``.
    """
    out = [_nonzero(rng, bound) for _ in range(parts - 1)]
    last = total - sum(out)
    out.append(last)
    return [v for v in out if v != 0]


def _place(rng: random.Random, terms: list[tuple[int, str]], p_var_first: float = 0.7) -> str:
    """Scatter the terms of ``sum(terms) = 0`` over both sides of an equation.

    A term moved to the right-hand side changes sign, so ``lhs - rhs`` stays equal to the sum.
    Within a side, variable terms usually come before constants; an empty side prints as ``0``.
    """
    lhs: list[tuple[int, str]] = []
    rhs: list[tuple[int, str]] = []
    for coef, body in terms:
        if rng.random() < 0.5:
            lhs.append((coef, body))
        else:
            rhs.append((-coef, body))
    for side in (lhs, rhs):
        rng.shuffle(side)
        if rng.random() < p_var_first:
            side.sort(key=lambda t: t[1] == "")  # stable: variable terms first
    if rng.random() < 0.5:  # "0 = ..." as often as "... = 0"
        lhs, rhs = rhs, lhs
    return f"{_format_terms(lhs)} = {_format_terms(rhs)}"


_ORDINALS = {1: "first", 2: "second", 3: "third"}


# ----------------------------------------------------------------------------------------------
# family generators: each returns one (question, answer) or None to ask for a redraw
# ----------------------------------------------------------------------------------------------

Sample = tuple[str, str] | None


def _linear_1d(rng: random.Random, level: int) -> Sample:
    r"""``a x + b = 0`` with integer root, terms split and scattered over both sides.

    Math: choose the root :math:`x_0` and the slope :math:`a \ne 0` (as a sum of 1-3 parts),
    then the constants sum to :math:`-a x_0`, so the equation is :math:`a (x - x_0) = 0`.
    """
    coef_max = (9, 15, 25)[level]
    sol_max = (10, 20, 40)[level]
    x_parts = rng.randint(1, (1, 2, 3)[level])
    c_parts = rng.randint(1, (2, 2, 3)[level])
    (var,) = _letters(rng, 1)
    x0 = rng.randint(-sol_max, sol_max)
    slopes = [_nonzero(rng, coef_max) for _ in range(x_parts)]
    a = sum(slopes)
    if a == 0:
        return None
    consts = _split(rng, -a * x0, c_parts, coef_max * 3)
    terms = [(s, var) for s in slopes] + [(c, "") for c in consts]
    eq = _place(rng, terms)
    template = rng.choices(
        ("Solve {eq} for {v}.", "Find {v} such that {eq}.", "What is {v} if {eq}?"),
        weights=(6, 1, 1),
    )[0]
    return template.format(eq=eq, v=var), str(x0)


def _linear_2d(rng: random.Random, level: int) -> Sample:
    r"""Two linear equations in two unknowns with an integer solution; ask for one unknown.

    Math: rows :math:`(a_i, b_i)` with :math:`a_1 b_2 - a_2 b_1 \ne 0`, right-hand sides
    :math:`a_i x_0 + b_i y_0`; each equation is :math:`a_i (x - x_0) + b_i (y - y_0) = 0`.
    """
    coef_max = (5, 9, 15)[level]
    sol_max = (5, 10, 20)[level]
    max_parts = (1, 1, 2)[level]
    x, y = _letters(rng, 2)
    x0 = rng.randint(-sol_max, sol_max)
    y0 = rng.randint(-sol_max, sol_max)
    rows = [(rng.randint(-coef_max, coef_max), rng.randint(-coef_max, coef_max)) for _ in range(2)]
    (a1, b1), (a2, b2) = rows
    if a1 * b2 - a2 * b1 == 0:
        return None
    eqs = []
    for a, b in rows:
        terms: list[tuple[int, str]] = []
        for coef, name in ((a, x), (b, y)):
            if coef != 0:
                terms += [(c, name) for c in _split(rng, coef, rng.randint(1, max_parts), coef_max)]
        terms += [(c, "") for c in _split(rng, -(a * x0 + b * y0), rng.randint(1, max_parts), coef_max)]
        eqs.append(_place(rng, terms))
    ask_x = rng.random() < 0.5
    var, ans = (x, x0) if ask_x else (y, y0)
    template = rng.choices(
        (
            "Solve {e1}, {e2} for {v}.",
            "Suppose {e1}, {e2}. What is {v}?",
            "Suppose {e1} and {e2}. Solve for {v}.",
        ),
        weights=(6, 1, 1),
    )[0]
    return template.format(e1=eqs[0], e2=eqs[1], v=var), str(ans)


def _random_poly(rng: random.Random, degree: int, coef_max: int, p_zero: float) -> PolyDict:
    """A univariate polynomial of exact ``degree``; each lower coefficient is zero with probability
    ``p_zero``."""
    poly: PolyDict = {(degree,): _nonzero(rng, coef_max)}
    for k in range(degree):
        if rng.random() >= p_zero:
            poly[(k,)] = _nonzero(rng, coef_max)
    return poly


def _polynomials_add(rng: random.Random, level: int) -> Sample:
    r"""``Let f(x) = p(x). Let g(y) = q(y). What is a*f(t) + b*g(t)?``

    Math: the answer is the expanded :math:`a\,p(t) + b\,q(t)` (+ :math:`c\,r(t)` with three
    definitions), computed with sympy's integer polynomial ring arithmetic.
    """
    _sympy()  # fail early with the install hint if sympy is missing
    n_funcs = 2 if level < 2 else rng.choice((2, 2, 3))
    deg_max = (2, 3, 3)[level]
    coef_max = (5, 9, 12)[level]
    mult_max = (4, 6, 9)[level]
    letters = _letters(rng, 2 * n_funcs + 1)
    funcs = letters[:n_funcs]
    args = letters[n_funcs : 2 * n_funcs]
    target = letters[-1]
    if rng.random() < 0.5:  # the same dummy variable everywhere, e.g. "x(t)", "z(t)", "3*x(t)"
        args = [target] * n_funcs
    polys = [_random_poly(rng, rng.randint(1, deg_max), coef_max, 0.3) for _ in range(n_funcs)]
    mults = [_nonzero(rng, mult_max) for _ in range(n_funcs)]
    result = None
    for poly, mult in zip(polys, mults):
        term = _to_sympy_poly(poly, (target,)).mul_ground(mult)
        result = term if result is None else result + term
    answer, poly = _poly_answer(result, (target,))
    if answer is None or not any(any(m) for m in poly):  # zero, too long, or a bare constant
        return None
    defs = " ".join(f"Let {f}({v}) = {_poly_str(p, (v,))}." for f, v, p in zip(funcs, args, polys))
    combo = _format_terms([(m, f"{f}({target})") for m, f in zip(mults, funcs)])
    template = rng.choices(
        ("What is {c}?", "Calculate {c}.", "Determine {c}.", "Give {c}.", "Find {c}."),
        weights=(3, 2, 1, 1, 1),
    )[0]
    return f"{defs} {template.format(c=combo)}", answer


def _factor(rng: random.Random, level: int, coef_max: int) -> list[tuple[int, int]]:
    """One factor of a product as a list of (coefficient, degree) terms, possibly unsimplified."""
    weights = (6, (0, 2, 3)[level], (0, 1, 2)[level])
    kind = rng.choices(("binomial", "trinomial", "unsimplified"), weights=weights)[0]
    if kind == "binomial":
        degrees = [1 if level == 0 else rng.choice((1, 1, 2)), 0]
    elif kind == "trinomial":
        degrees = [2, 1, 0]
    else:  # e.g. (3*y - 5*y + 4): a like term written twice
        deg = rng.choice((1, 1, 2))
        degrees = [deg, deg, 0]
    terms = [(_nonzero(rng, coef_max), d) for d in degrees]
    if rng.random() < 0.25:
        rng.shuffle(terms)  # e.g. (4 - 2*y) as well as (-2*y + 4)
    return terms


def _polynomials_expand(rng: random.Random, level: int) -> Sample:
    r"""``Expand (2*y - 3)*(y + 4).`` (products of 2-3 small factors, or a sum of two products).

    Math: the answer is sympy's expanded :math:`\sum_j c_j y^{k_j} \prod_i f_{ij}(y)`, computed by
    sympy's ring addition of the terms exactly as written and ring multiplication of the factors.
    """
    _sympy()
    coef_max = (5, 7, 9)[level]
    (var,) = _letters(rng, 1)
    names = (var,)
    n_products = 2 if (level == 2 and rng.random() < 0.3) else 1
    pieces: list[str] = []
    result = None
    for _ in range(n_products):
        n_factors = 2 if level < 2 or n_products == 2 else rng.choice((2, 2, 3))
        factors = [_factor(rng, level, coef_max) for _ in range(n_factors)]
        prod = None
        for f in factors:
            p = _to_sympy_poly({}, names)
            for coef, deg in f:
                p = p + _to_sympy_poly({(deg,): coef}, names)
            if not p:  # the factor as written sums to zero
                return None
            prod = p if prod is None else prod * p
        piece = "*".join(
            "(" + _format_terms([(c, _monomial_body((d,), names)) for c, d in f]) + ")" for f in factors
        )
        if level > 0 and rng.random() < 0.2:  # a monomial in front: -2*y*(...)*(...), 3*(...)*(...)
            d = rng.choice((0, 1))
            c = _nonzero(rng, 3) if d else rng.choice((-3, -2, 2, 3))
            piece = f"{_format_terms([(c, _monomial_body((d,), names))])}*{piece}"
            prod = prod * _to_sympy_poly({(d,): c}, names)
        result = prod if result is None else result + prod
        pieces.append(piece)
    answer, poly = _poly_answer(result, names)
    if answer is None or len(poly) < 2:  # skip answers that are a lone monomial
        return None
    expr = pieces[0] + "".join(f" - {t[1:]}" if t.startswith("-") else f" + {t}" for t in pieces[1:])
    template = rng.choices(
        ("Expand {e}.", "Multiply out {e}.", "Write {e} in expanded form."),
        weights=(6, 1, 1),
    )[0]
    return template.format(e=expr), answer


def _calculus_differentiate(rng: random.Random, level: int) -> Sample:
    r"""n-th derivative (n = 1..3) of a polynomial in one or two variables, wrt one of them.

    Math: for :math:`f = \sum c_{ij} x^i y^j`, the answer is sympy's
    :math:`\partial^n f / \partial x^n` (``PolyElement.diff`` applied n times).
    """
    _sympy()
    order_weights = ((1, 0, 0), (7, 3, 0), (5, 3, 2))[level]  # P(first, second, third derivative)
    order = rng.choices((1, 2, 3), weights=order_weights)[0]
    coef_max = (9, 12, 15)[level]
    deg_max = (4, 5, 6)[level]
    bivariate = level == 2 and rng.random() < 0.3
    names = tuple(_letters(rng, 2 if bivariate else 1))
    n_terms = rng.randint(2, (3, 4, 4)[level])
    poly: PolyDict = {}
    while len(poly) < n_terms:
        if bivariate:
            monom: Monom = (rng.randint(0, deg_max), rng.randint(0, 3))
        else:
            monom = (rng.randint(0, deg_max),)
        poly[monom] = _nonzero(rng, coef_max)
    if max(m[0] for m in poly) < order:  # the derivative would vanish
        return None
    if bivariate and not any(m[1] for m in poly):  # the second variable must appear
        return None
    result = _to_sympy_poly(poly, names)
    x_gen = _ring(names)[1][0]
    for _ in range(order):
        result = result.diff(x_gen)
    answer, _ = _poly_answer(result, names)
    if answer is None:
        return None
    f = _poly_str(poly, names)
    x = names[0]
    nth = _ORDINALS[order]
    templates = [
        "What is the {nth} derivative of {f} wrt {x}?",
        "Find the {nth} derivative of {f} wrt {x}.",
        "Let {g}({args}) = {f}. What is the {nth} derivative of {g}({args}) wrt {x}?",
    ]
    if order == 1:
        templates += [
            "Differentiate {f} with respect to {x}.",
            "Differentiate {f} wrt {x}.",
            "What is the derivative of {f} wrt {x}?",
        ]
    if not bivariate:
        templates += ["What is the {nth} derivative of {f}?", "Find the {nth} derivative of {f}."]
    (g,) = rng.sample([c for c in _LETTERS if c not in names], 1)
    question = rng.choice(templates).format(nth=nth, f=f, x=x, g=g, args=", ".join(names))
    return question, answer


def _numbers_gcd(rng: random.Random, level: int) -> Sample:
    r"""Greatest common divisor of two positive integers :math:`p = g a`, :math:`q = g b`.

    Math: the answer is :math:`\gcd(p, q)` (a multiple of the planted factor :math:`g`).
    """
    g = rng.randint(1, (20, 100, 1000)[level])
    mult = (20, 50, 200)[level]
    p, q = g * rng.randint(1, mult), g * rng.randint(1, mult)
    if p == q:
        return None
    template = rng.choice(
        (
            "Calculate the greatest common divisor of {p} and {q}.",
            "What is the greatest common divisor of {p} and {q}?",
            "Calculate the highest common factor of {p} and {q}.",
            "What is the highest common factor of {p} and {q}?",
            "What is the greatest common factor of {p} and {q}?",
            "Calculate the greatest common factor of {p} and {q}.",
        )
    )
    return template.format(p=p, q=q), str(math.gcd(p, q))


_GENERATORS: dict[str, Callable[[random.Random, int], Sample]] = {
    "algebra__linear_1d": _linear_1d,
    "algebra__linear_2d": _linear_2d,
    "polynomials__add": _polynomials_add,
    "polynomials__expand": _polynomials_expand,
    "calculus__differentiate": _calculus_differentiate,
    "numbers__gcd": _numbers_gcd,
}


def generate(
    family: str, n: int, seed: int, difficulty: str = "medium", unique: bool = False
) -> list[tuple[str, str]]:
    """Generate ``n`` (question, answer) pairs of one family, deterministically from ``seed``.

    Args:
        family: one of :data:`FAMILIES`.
        n: number of pairs (>= 0).
        seed: integer seed; the random stream is ``random.Random(f"{family}|{difficulty}|{seed}")``,
            so families and difficulties never share a stream and global random state is untouched.
        difficulty: one of :data:`DIFFICULTIES`.
        unique: if True, no question repeats within the returned list (raises ``ValueError`` when
            the family cannot produce that many distinct questions quickly).

    Returns:
        A list of ``n`` pairs with ``len(question) <= 160`` and ``len(answer) <= 30``.
    """
    if not isinstance(family, str) or family not in _GENERATORS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__} ({n!r})")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    level = DIFFICULTIES.index(difficulty)
    gen = _GENERATORS[family]
    rng = random.Random(f"{family}|{difficulty}|{seed}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 100 * n + 1000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could only generate {len(out)} of n={n} {'unique ' if unique else ''}pairs for "
                f"family={family!r}, difficulty={difficulty!r}; ask for fewer"
            )
        sample = gen(rng, level)
        if sample is None:
            continue
        question, answer = sample
        if len(question) > MAX_QUESTION_LEN or len(answer) > MAX_ANSWER_LEN:
            continue
        if unique:
            if question in seen:
                continue
            seen.add(question)
        out.append((question, answer))
    return out


# ----------------------------------------------------------------------------------------------
# character vocabulary and tensors for a seq2seq model
# ----------------------------------------------------------------------------------------------


class CharVocab:
    """Character vocabulary: PAD=0, BOS=1, EOS=2, then the 95 printable ASCII characters.

    The alphabet is fixed (``chr(32)`` ... ``chr(126)``), so ids never depend on the data:
    ``' '`` is 3, ``'0'`` is 19, ``'a'`` is 68; ``len(vocab) == 98``.
    """

    PAD = 0
    BOS = 1
    EOS = 2
    SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
    ALPHABET: str = "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self.pad_id, self.bos_id, self.eos_id = self.PAD, self.BOS, self.EOS
        offset = len(self.SPECIALS)
        self.stoi: dict[str, int] = {ch: i + offset for i, ch in enumerate(self.ALPHABET)}
        self.itos: list[str] = list(self.SPECIALS) + list(self.ALPHABET)
        # byte -> id lookup table for bulk encoding; -1 marks bytes outside the alphabet
        self._table = np.full(256, -1, dtype=np.int64)
        for ch, i in self.stoi.items():
            self._table[ord(ch)] = i

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def size(self) -> int:
        """Number of ids (``vocab_size`` of an embedding): 98."""
        return len(self.itos)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Characters to ids, optionally framed by BOS/EOS. Raises ``ValueError`` on characters
        outside printable ASCII."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            ids = [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise ValueError(
                f"text contains character {e.args[0]!r}, which is not printable ASCII (chr(32)..chr(126))"
            ) from None
        return ([self.BOS] if add_bos else []) + ids + ([self.EOS] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text: PAD, BOS and ``IGNORE_INDEX`` (-1) are skipped, decoding stops at the first EOS.

        Accepts a list of ints or a 1-D tensor. Other out-of-range ids raise ``ValueError``.
        """
        chars = []
        for raw in ids:
            i = int(raw)
            if i == self.EOS:
                break
            if i in (self.PAD, self.BOS, IGNORE_INDEX):
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(
                    f"id {i} is outside the vocabulary [0, {len(self.itos)}) and is not {IGNORE_INDEX}"
                )
            chars.append(self.itos[i])
        return "".join(chars)

    def encode_batch(self, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and right-pad with PAD: ``(ids [n, length] long, lengths [n] long)``.

        Raises ``ValueError`` if a text is longer than ``length`` or has a character outside the
        alphabet (the message names the text's index and the character).
        """
        n = len(texts)
        buf = np.zeros((n, length), dtype=np.uint8)  # (n, L) raw bytes
        lengths = np.zeros(n, dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text #{row} must be a str, got {type(text).__name__}")
            if len(text) > length:
                raise ValueError(
                    f"text #{row} has {len(text)} characters, more than length={length}: {text!r}"
                )
            try:
                raw = text.encode("ascii")
            except UnicodeEncodeError:
                raw = b"\x00"  # rejected below
            buf[row, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            lengths[row] = len(text)
        real = np.arange(length)[None, :] < lengths[:, None]  # (n, L) True at characters
        ids = np.where(real, self._table[buf], self.PAD)  # (n, L)
        bad_rows = np.flatnonzero((ids < 0).any(axis=1))
        if bad_rows.size:
            row = int(bad_rows[0])
            try:
                self.encode(texts[row])  # raises ValueError naming the character
            except ValueError as e:
                raise ValueError(f"text #{row}: {e}") from None
        return torch.from_numpy(ids), torch.from_numpy(lengths)


class MathTensors(NamedTuple):
    """Teacher-forcing tensors for a character-level seq2seq model.

    ``src``      [n, Lq] long: question ids, right-padded with PAD (0).
    ``tgt_in``   [n, La] long: BOS + answer ids, right-padded with PAD (decoder input).
    ``tgt_out``  [n, La] long: answer ids + EOS, right-padded with ``IGNORE_INDEX`` (-1) (labels).
    ``src_mask`` [n, Lq] bool: True at real question characters, False at padding.
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    src_mask: torch.Tensor


def make_tensors(
    pairs: Sequence[tuple[str, str]],
    vocab: CharVocab,
    max_q_len: int = MAX_QUESTION_LEN,
    max_a_len: int = MAX_ANSWER_LEN + 2,
) -> MathTensors:
    """Pad (question, answer) pairs into fixed-shape tensors with Lq = ``max_q_len``, La = ``max_a_len``.

    For an answer :math:`a_1 \\dots a_m`: ``tgt_in = [BOS, a_1, ..., a_m, PAD...]`` and
    ``tgt_out = [a_1, ..., a_m, EOS, -1...]``, so ``tgt_out[:, t]`` is the label of the decoder step
    that reads ``tgt_in[:, t]``, and ``cross_entropy(logits.flatten(0, 1), tgt_out.flatten(),
    ignore_index=-1)`` scores exactly the m + 1 real steps. Needs ``m + 1 <= max_a_len``.

    Returns:
        :class:`MathTensors` ``(src, tgt_in, tgt_out, src_mask)``; unpack as a 4-tuple.
    """
    if not isinstance(vocab, CharVocab):
        raise TypeError(f"vocab must be a CharVocab, got {type(vocab).__name__}")
    for name, value in (("max_q_len", max_q_len), ("max_a_len", max_a_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    questions, answers = [], []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"pairs[{i}] must be a (question, answer) pair of str, got {pair!r}")
        questions.append(pair[0])
        answers.append(pair[1])
    for i, a in enumerate(answers):
        if len(a) + 1 > max_a_len:
            raise ValueError(
                f"answer #{i} has {len(a)} characters; with BOS/EOS it needs max_a_len >= {len(a) + 1}, "
                f"got max_a_len={max_a_len}"
            )
    src, q_lens = vocab.encode_batch(questions, max_q_len)  # (n, Lq), (n,)
    body, a_lens = vocab.encode_batch(answers, max_a_len - 1)  # (n, La - 1), (n,)
    n = len(answers)
    tgt_in = torch.full((n, max_a_len), vocab.PAD, dtype=torch.long)
    tgt_in[:, 0] = vocab.BOS
    tgt_in[:, 1:] = body  # PAD after the answer already
    tgt_out = torch.full((n, max_a_len), IGNORE_INDEX, dtype=torch.long)
    pos = torch.arange(max_a_len - 1).unsqueeze(0)  # (1, La - 1)
    tgt_out[:, :-1] = torch.where(pos < a_lens.unsqueeze(1), body, torch.tensor(IGNORE_INDEX))
    tgt_out[torch.arange(n), a_lens] = vocab.EOS
    src_mask = torch.arange(max_q_len).unsqueeze(0) < q_lens.unsqueeze(1)  # (n, Lq)
    return MathTensors(src, tgt_in, tgt_out, src_mask)
