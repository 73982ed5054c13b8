"""The math answer verifier: extraction, equivalence (both verdicts per category), junk, timeouts, data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from reward_models.math import (
    extract_answer,
    format_reward,
    gold_answer,
    is_equivalent,
    math_correctness,
    timeout_count,
    verifier_stats,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

# (gold, pred, expected) by category; every category has equal and not-equal pairs
EQUIVALENCE = {
    "thousands": [
        ("1,000", "1000", True),
        ("7425000", "7,425,000", True),
        ("10,\\!080", "10080", True),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
        ("1000", "1 000", True),
        ("1,000", "100", False),
        ("32349", "32, 349", False),
    ],
    "decimals_fractions": [
        ("0.5", "1/2", True),
        ("0.5", "\\frac{1}{2}", True),
        ("0.5", "\\dfrac12", True),
        ("\\tfrac83", "\\frac{8}{3}", True),
        ("\\frac{1}{2}", "\\frac{2}{4}", True),
        ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
        ("0.4", ".4", True),
        ("1000", "1000.0", True),
        ("2\\frac{1}{2}", "2.5", True),
        ("137 \\frac{1}{2}", "137.5", True),
        ("0.\\overline{3}", "\\frac13", True),
        ("0.5", "0.6", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        ("-5", "5", False),
        ("\\dfrac{3}{4}", "0.74", False),
    ],
    "percent": [
        ("50\\%", "50", True),
        ("50\\%", "0.5", True),  # documented: x% equals x and x/100
        ("0.5", "50\\%", True),
        ("28\\%", "28 percent", True),
        ("50\\%", "5", False),
        ("0.5", "50", False),  # no % sign anywhere: 0.5 is not 50
        ("28", "28/100", False),
    ],
    "units_currency": [
        ("5", "\\$5", True),
        ("5", "5 dollars", True),
        ("5", "5 cm", True),
        ("5", "5\\text{ cm}", True),
        ("5", "\\$5.00", True),
        ("864 \\mbox{ inches}^2", "864", True),
        ("\\frac{270}7\\text{ degrees}", "270/7", True),
        ("10\\text{ units}", "100", False),
        ("5\\text{ cm}", "6", False),
        ("4 m", "4", False),  # a plain spaced letter may be algebra (4m); only \text{ m} is a unit
    ],
    "sqrt": [
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\sqrt3", "\\sqrt{3}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
        ("\\sqrt[3]{-8}", "-2", True),
        ("\\sqrt{12}", "3\\sqrt{2}", False),
        ("4", "4\\sqrt{2}", False),
    ],
    "pi": [
        ("\\pi", "3.14159265", True),
        ("\\frac{9}{4}\\pi", "\\frac94\\pi", True),
        ("2\\pi r", "2r\\pi", True),
        ("\\pi", "3.14", False),
        ("2\\pi", "\\pi", False),
    ],
    "scientific": [
        ("1000", "1e3", True),
        ("1000", "1\\times10^3", True),
        ("0.0015", "1.5 \\times 10^{-3}", True),
        ("3000000", "3 million", True),
        ("1000", "1e4", False),
        ("0.0015", "1.5\\times10^{-4}", False),
    ],
    "latex_spacing": [
        ("\\left(x-2\\right)\\left(x+2\\right)", "(x-2)(x+2)", True),
        ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\dfrac{1}{2} +\\frac{1}{72}", True),
        ("1\\,000", "1000", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)", True),
        ("x\\ +\\ 1", "x+1", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi)", False),
    ],
    "text": [
        ("\\text{Evelyn}", "Evelyn", True),
        ("\\text{13}", "13", True),
        ("\\textbf{even}", "\\text{even}", True),
        ("\\text{Evelyn}", "Navin", False),
    ],
    "degrees": [
        ("30^\\circ", "30", True),
        ("90^{\\circ}", "90", True),
        ("30^\\circ", "\\frac{\\pi}{6}", True),
        ("30^\\circ", "60", False),
        ("\\frac{\\pi}{6}", "30", False),
    ],
    "algebra": [
        ("2x+2", "2(x+1)", True),
        ("x^2-1", "(x-1)(x+1)", True),
        ("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}", True),
        ("\\tan^2(y)+1", "\\sec^2(y)", True),
        ("\\sin^2 x + \\cos^2 x", "1", True),
        ("3+4i", "4i+3", True),
        ("2x+2", "2x+1", False),
        ("x^2-1", "(x-1)^2", False),
        ("\\sqrt{x^2}", "x", False),
        ("x+2n+1", "x+1", False),
        ("3+4i", "3-4i", False),
    ],
    "equations": [
        ("3", "x = 3", True),
        ("x = 3", "3", True),
        ("y = 2x+1", "2x+1", True),
        ("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}", True),
        ("x = 11", "x = 5+5+1 = 7 = 11", True),
        ("11", "x \\approx 11", True),
        ("x = 3", "x = 4", False),
        ("y = 2x+1", "y = 2x+2", False),
        ("7 = 11a+c", "11a+c", False),
        ("5x - 7y + 11z + 4 = 0", "x + y - z + 2 = 0", False),
    ],
    "intervals": [
        ("(1, 2]", "(1,2]", True),
        ("[-2, 7]", "x \\in [-2,7]", True),
        ("[-2, 7]", "-2 \\le x \\le 7", True),
        ("(3, \\infty)", "x > 3", True),
        ("x < 1", "-x > -1", True),
        ("(0,9) \\cup (9,36)", "(9,36) \\cup (0,9)", True),
        ("(1, 2]", "(1, 2)", False),
        ("(1, 2]", "[1, 2]", False),
        ("[3, \\infty)", "x > 3", False),
        ("(-\\infty, 0) \\cup (0, \\infty)", "(-\\infty, 0] \\cup (0, \\infty)", False),
    ],
    "sets_lists": [
        ("\\{1,2\\}", "\\{2,1\\}", True),
        ("\\{1,2\\}", "\\{1,1,2\\}", True),
        ("1,-2", "-2, 1", True),
        ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", True),
        ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5", True),
        ("\\emptyset", "\\{\\}", True),
        ("\\{1,2,3\\}", "\\{1,2\\}", False),
        ("1, 2", "1, 2, 2", False),
        ("1, 2, 3", "1, 2, 3, ...", False),
    ],
    "tuples": [
        ("(1,2)", "(1, 2)", True),
        ("(1,\\frac{9}{2})", "(1,4.5)", True),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(1,2)", True),
        ("(1,2)", "(2,1)", False),
        ("(6,31,-1)", "(6,31,1)", False),
        ("(1,2)", "[1,2]", False),
    ],
    "multiple_choice": [
        ("(B)", "B", True),
        ("B", "\\text{(B)}", True),
        ("\\text{C}", "\\text{(C)}", True),
        ("A", "(A) 42", True),
        ("B", "C", False),
        ("\\text{(B)}", "(C)", False),
    ],
    "tolerance": [  # relative 1e-6, exact when one side is an integer
        ("\\frac{1}{3}", "0.3333333", True),
        ("\\sqrt{2}", "1.414214", True),
        ("2.5", "2.5000001", True),
        ("\\frac{1}{3}", "0.333", False),
        ("2", "2.0000001", False),
        ("1000000", "1000001", False),
    ],
    "matrices": [
        (
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
            "\\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right]",
            True,
        ),
        (
            "\\begin{bmatrix}0 & 0 \\\\ 0 & 0\\end{bmatrix}",
            "\\begin{pmatrix}0 & 0 \\\\ 0 & 0\\end{pmatrix}",
            True,
        ),
        (
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}",
            False,
        ),
    ],
    "bases": [
        ("52_8", "52_{8}", True),
        ("52_8", "52", True),  # the question names the base
        ("36", "40_9", True),  # the same number, written in base 9
        ("1112112_3", "1112122_3", False),
        ("40", "40_9", False),
    ],
    "decimal_comma": [  # a lone comma that cannot separate thousands is a decimal point
        ("1,22", "1.22", True),
        ("1.22", "1,22", True),
        ("0,111", "0.111", True),
        ("1000,99", "1000.99", True),
        ("-2,5", "-2.5", True),
        ("1,000", "1000", True),  # three digits after one comma: one thousand
        ("1,000", "1", False),
        ("1,22", "122", False),
        ("1,22", "1.23", False),
        ("1, 22", "1.22", False),  # a spaced comma separates two answers
        ("(1,2)", "(1.2)", False),  # a pair, not a decimal
        ("1,2,3", "1.2,3", False),
    ],
    "latex_thousands": [
        ("14{,}916", "14916", True),
        ("14 {, }916", "14916", True),
        ("32,\\! 349", "32349", True),
        ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
        ("\\$16,\\!386.20", "16386.2", True),
        ("14{,}916", "14917", False),
        ("32,\\! 349", "32.349", False),
    ],
    "interval_inequality": [
        ("x \\in [-2,7]", "-2 \\le x \\le 7", True),
        ("-2 \\le x \\le 7", "x \\in [-2,7]", True),
        ("x \\in [-2,7]", "-2 \\\\le x \\\\le 7", True),  # JSON-escaped \\le
        ("(-2,7)", "-2 < x < 7", True),
        ("(-2,7]", "-2 < x \\leq 7", True),
        ("[-2,7)", "7 > x \\geq -2", True),
        ("(-\\infty, 3)", "x < 3", True),
        ("(0,1)", "0 < f(x) < 1", True),
        ("|x| < 3", "(-3, 3)", True),
        ("|x| \\ge 2", "(-\\infty,-2] \\cup [2,\\infty)", True),
        ("1 \\le |z| \\le \\frac{3}{2}", "z \\in [-\\frac32,-1] \\cup [1,\\frac32]", True),
        ("[-2,7]", "-2 < x < 7", False),
        ("(-2,7]", "-2 \\le x < 7", False),
        ("(3,\\infty)", "x < 3", False),
        ("|x| < 3", "[-3, 3]", False),
        ("|x| > 2", "(-\\infty,-2] \\cup [2,\\infty)", False),
        ("1 \\le |z| \\le 2", "[1, 2]", False),
    ],
    "rounding": [  # a decimal with >= 4 significant digits equals the value it correctly rounds
        ("\\frac{1}{3}", "0.3333", True),
        ("(\\frac{3}{5},\\frac{8}{3}]", "(0.6,2.6667]", True),
        ("\\frac{2}{3}", "0.6667", True),
        ("\\sqrt{2}", "1.414", True),
        ("\\pi", "3.142", True),
        ("\\frac{100}{3}", "33.33", True),
        ("2.666666667", "2.6667", True),
        ("0.3333", "\\frac{1}{3}", True),
        ("\\frac{1}{3}", "0.3", False),  # too few digits to be clearly a rounding
        ("\\frac{1}{3}", "0.33", False),
        ("\\pi", "3.14", False),
        ("\\frac{1}{3}", "0.3334", False),  # not the rounding
        ("\\frac{2}{3}", "0.6666", False),  # a truncation
        ("(\\frac{3}{5},\\frac{8}{3}]", "(0.6,2.6666]", False),
        ("\\frac{100}{3}", "33.3", False),
        ("12", "12.0001", False),
        ("0.1234", "0.1235", False),  # two decimals of the same length: neither rounds the other
    ],
    "named_answers": [
        ("(p,q)=(3,2)", "(3,2)", True),
        ("(3,2)", "(p,q)=(3,2)", True),
        ("(p,q,r)=(3,2,7)", "(3, 2, 7)", True),
        ("AB=4,CD=5", "4, 5", True),
        ("V_1:V_2=11:21", "11:21", True),
        ("S_{MBCN}:S=7:32", "7:32", True),
        ("x=5", "5", True),
        ("|AB|=1", "1", True),
        ("f(x)=1", "1", True),
        ("\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}", "\\frac{\\sqrt6}{6}", True),
        ("k = 2+3 = 5", "5", True),  # a chain: the named side equals the last
        (
            "x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}",
            "\\frac{-1+\\sqrt{13}}{4}, \\frac12, \\frac{-1-\\sqrt{13}}{4}",
            True,
        ),
        ("(x, y) = (5, 8) \\text{ and } (8, 5)", "(8,5),(5,8)", True),
        ("a_3 = 2, a_{37} = 19", "a_{37} = 19, a_3 = 2", True),
        ("(p,q)=(3,2)", "(2,3)", False),
        ("AB=4,CD=5", "4, 6", False),
        ("V_{1}:V_{2}=11:21", "11:20", False),
        ("x=5", "6", False),
        ("2x+z=1", "1", False),  # an expression, not a name
        ("a^2+b=0", "0", False),
        ("a_3 = 2, a_{37} = 19", "a_3 = 19, a_{37} = 2", False),
    ],
    "text_wrappers": [
        ("\\text{E}", "E", True),
        ("\\textbf{(C)}", "C", True),
        ("\\mathrm{(A)}", "A", True),
        ("\\mathbf{B}", "\\text{(B)}", True),
        ("\\text{odd}", "odd", True),
        ("\\text{Even}", "\\textbf{even}", True),
        ("1 - \\frac{1}{\\mathrm{e}}", "1 - e^{-1}", True),
        ("\\text{E}", "D", False),
        ("\\textbf{(C)}", "(B)", False),
        ("\\text{odd}", "even", False),
        ("1 - \\frac{1}{\\mathrm{e}}", "1 + \\frac{1}{\\mathrm{e}}", False),
    ],
    "semicolons": [
        ("\\{1;2;3\\}", "\\{1,2,3\\}", True),
        ("\\{1;2;3\\}", "\\{3,2,1\\}", True),
        ("-12;-11;-10", "\\{-10,-11,-12\\}", True),
        ("(0;-2;6)", "(0,-2,6)", True),
        ("(0;0;0),(4;-2;6)", "(4, -2, 6), (0, 0, 0)", True),
        ("p=5,q=2;p=7,q=2", "(5,2),(7,2)", True),
        ("\\{1;2;3\\}", "\\{1,2\\}", False),
        ("(0;-2;6)", "(0,2,6)", False),
        ("p=5,q=2;p=7,q=2", "(2,5),(2,7)", False),
    ],
    "solution_lists": [  # lists of tuples are sets: a solution written twice is one solution
        ("(1,2),(3,4)", "(3,4),(1,2),(3,4)", True),
        ("(11,7)or(7,11)", "(7,11),\\ (11,7)", True),
        ("21,16 \\text{ or } 11", "21, 16, 11", True),
        ("(1,2),(3,4)", "(1,2)", False),
        ("(1,2),(3,4)", "(1,2),(4,3)", False),
        ("1, 2", "1, 2, 2", False),  # values keep their multiplicity
    ],
    "matrix_arithmetic": [
        (
            "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
            True,
        ),
        (
            "\\begin{pmatrix}19 & 22 \\\\ 43 & 50\\end{pmatrix}",
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
            True,
        ),
        (
            "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
            "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} - \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}",
            False,
        ),
        (
            "\\begin{pmatrix}19 & 22 \\\\ 43 & 50\\end{pmatrix}",
            "\\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix} \\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
            False,  # matrix products do not commute
        ),
    ],
    "swallowed_escapes": [  # "\f", "\t" in a non-raw string literal became a form feed, a tab
        ("\frac{\\sqrt{17}}{17}", "\\frac{\\sqrt{17}}{17}", True),
        ("\text{13}", "13", True),
        ("1+3\\\\sqrt{2}", "1+3\\sqrt{2}", True),
        ("\frac{\\sqrt{17}}{17}", "\\frac{\\sqrt{17}}{16}", False),
        ("\text{13}", "12", False),
    ],
}
CASES = [(category, *case) for category, cases in EQUIVALENCE.items() for case in cases]


@pytest.mark.parametrize("category, gold, pred, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equivalence(category, gold, pred, expected):
    assert is_equivalent(gold, pred) is expected


def test_every_category_has_both_verdicts():
    for category, cases in EQUIVALENCE.items():
        assert {expected for _, _, expected in cases} == {True, False}, category


JUNK = [
    None,
    "",
    "   ",
    "\\frac{",
    "}{",
    "\\boxed{",
    "$$$",
    "((((((",
    "\\sqrt",
    "1/0",
    "0/0",
    "\\frac{1}{0}",
    "^",
    "\\left(",
    "\\begin{pmatrix}",
    "a" * 5000,
    "1" * 5000,
    "1e999999",
    "\x00\xff",
    "{" * 300 + "1" + "}" * 299,
    "(" * 500 + "1",
    "\\infty-\\infty",
    "x==3",
    ",,,",
    "\\text{",
    "2^-",
    "|x",
    "\\log_",
    12,
    3.5,
    [1],
]


def test_junk_is_false_and_never_raises():
    start = time.perf_counter()
    for junk in JUNK:
        for other in ("1", "x+1", "\\frac{1}{2}", "(1,2)"):
            assert is_equivalent(junk, other, timeout=1.0) is False
            assert is_equivalent(other, junk, timeout=1.0) is False
        assert extract_answer(junk) is None or isinstance(extract_answer(junk), str)
    assert is_equivalent("1/0", "1/0 + 1") is False and is_equivalent("\\frac{1}{0}", "2") is False
    assert time.perf_counter() - start < 10


def test_symbolic_check_in_the_worker_process():
    # the probes overflow at most points (x^2000), so sympy in the worker decides
    calls = verifier_stats()["sympy_calls"]
    assert is_equivalent("\\frac{x^{2000}}{x^{1999}}", "x", timeout=10.0) is True
    assert verifier_stats()["sympy_calls"] == calls + 1


PATHOLOGICAL = [("9^{9^{9^{9^9}}}", "9^{9^{9^{9^9}}}+1"), ("(10^{6})!", "(10^{6})! + 1")]


@pytest.mark.parametrize("gold, pred", PATHOLOGICAL)
def test_pathological_input_times_out_on_main_and_background_threads(gold, pred):
    is_equivalent("\\frac{x^{2000}}{x^{1999}}", "x", timeout=30.0)  # the worker is up (its start is not timed)
    before = timeout_count()
    start = time.perf_counter()
    assert is_equivalent(gold, pred, timeout=1.0) is False
    assert time.perf_counter() - start < 3.0  # 1 s limit + slack for a loaded machine
    result: dict = {}

    def run():
        t = time.perf_counter()
        result["value"] = is_equivalent(pred, gold, timeout=1.0)
        result["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert result["value"] is False and result["seconds"] < 5.0  # + the replacement worker's start, loaded machine
    assert timeout_count() >= before + 2
    stats = verifier_stats()
    assert {"timeouts", "errors"} <= set(stats) and stats["timeouts"] == timeout_count()


def test_time_bound_holds_in_separate_processes_like_ranks():
    code = textwrap.dedent(
        """
        import threading, time
        from reward_models.math import is_equivalent
        out = {}
        def run():
            out["ok"] = is_equivalent("2x+2", "2(x+1)") and is_equivalent("1,000", "1000")
            is_equivalent("\\\\frac{x^{2000}}{x^{1999}}", "x", timeout=30.0)
            t = time.perf_counter()
            out["patho"] = is_equivalent("9^{9^{9^{9^9}}}", "9^{9^{9^{9^9}}}+1", timeout=1.0)
            out["seconds"] = time.perf_counter() - t
        th = threading.Thread(target=run); th.start(); th.join(60)
        assert out["ok"] and out["patho"] is False and out["seconds"] < 2.0, out
        print("RANK-OK")
        """
    )
    ranks = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    for rank in ranks:
        stdout, _ = rank.communicate(timeout=120)
        assert rank.returncode == 0 and "RANK-OK" in stdout


# ---------------------------------------------------------------- extraction

EXTRACTION = [
    ("so the answer is \\boxed{42}.", "lenient", "42"),
    ("first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "strict", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} done", "strict", "\\frac{\\sqrt{3}}{2}"),
    ("set \\boxed{\\{1, 2\\}}", "strict", "\\{1, 2\\}"),
    ("\\fbox{7}", "strict", "7"),
    ("thus $\\boxed 5$.", "strict", "5"),
    ("The integers are \\boxed{-2} and \\boxed{1}.", "strict", "-2, 1"),
    ("\\boxed{5} \\boxed{5}", "strict", "5"),
    ("truncated \\boxed{3} then \\boxed{\\frac{1}{2}", "strict", "3"),
    ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 18", "strict", "18"),
    ("#### Adding up\n3 + 4 = 7\n#### Checking\nit holds", "lenient", "7"),
    ("<think>maybe \\boxed{3}</think> <answer>5</answer>", "strict", "5"),
    ("<answer>The answer is \\boxed{7}</answer>", "strict", "7"),
    ("So the answer is 3.5 meters.", "strict", "3.5"),
    ("The final answer is $\\frac{1}{3}$. I hope it is correct.", "strict", "\\frac{1}{3}"),
    ("Final Answer: The largest $n$ is 34.", "strict", "34"),
    ("**Answer:** 17", "strict", "17"),
    ("The total is 1,234 dollars", "lenient", "1,234"),
    ("it went from 5 to -3.5 degrees", "lenient", "-3.5"),
    ("the probability is 3/4", "lenient", "3/4"),
    ("so we get \\frac{3}{4} of it", "lenient", "\\frac{3}{4}"),
    ("the ordered pair is $(7, 6)$.", "lenient", "(7, 6)"),
    ("10 - 3 = 7", "lenient", "7"),
    ("She pays $20 for food and $5 for tips.", "lenient", "5"),
    ("The total is 1,234 dollars", "strict", None),
    ("no answer here", "lenient", None),
    ("", "lenient", None),
    # a final-answer sentence after the last box is the answer; a box after it still wins
    (
        "first $\\boxed{200}$, then $\\boxed{255}$; in all $10,200 + 255 = 10,455$.\n"
        "Final Answer: The final answer is $10,455$. I hope it is correct.",
        "strict",
        "10,455",
    ),
    ("so \\boxed{3}. The final answer is $5$. I hope it is correct.", "strict", "5"),
    ("Final Answer: The final answer is $5$. On reflection, \\boxed{6}", "strict", "6"),
    ("\\boxed{3}. Final answer: see the working above.", "strict", "3"),
    (
        'so \\boxed{12 $ and $13}. Final Answer: The final answer is "$12$ and $13$". I hope it is correct.',
        "strict",
        "12, 13",
    ),
    # boxes joined by a short phrase with "and", or by symbols only, are one answer
    ("\\boxed{1} papers and \\boxed{2} bins", "strict", "1, 2"),
    ("\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}", "strict", "(3, 3), (1, 1)"),
    ("\\boxed{35} ++ \\boxed{4}", "strict", "35, 4"),
    ("\\boxed{1} no no no no no \\boxed{2}", "strict", "2"),
    # math spans joined by connectives are one answer
    ("$1$ and $2$ and $3$", "lenient", "1, 2, 3"),
    ("$21,16$ or $11$", "lenient", "21,16, 11"),
    # numbers written with decimal commas and thousands separators are one number
    ("Soucis : 2,74 $ a..", "lenient", "2,74"),
    ("1000,99", "lenient", "1000,99"),
    ("1 000", "lenient", "1 000"),
    ("so 14{,}916 in all", "lenient", "14{,}916"),
    ("the list 1,2,3", "lenient", "3"),
    ("at the point (1,2)", "lenient", "2"),
    # a matrix is not prose
    (
        "the sum is $\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}$",
        "lenient",
        "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}",
    ),
    ("thus $S_{MBCN}:S=7:32$", "lenient", "S_{MBCN}:S=7:32"),
    ("so \\(\\boxed{\frac{1}{2}}\\)", "strict", "\\frac{1}{2}"),  # "\f" swallowed by a string literal
]


@pytest.mark.parametrize("text, mode, expected", EXTRACTION)
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode=mode) == expected


# ---------------------------------------------------------------- grader-style cases

# Pairs in the style of the unit tests of public math graders (MATH's is_equiv, PRM800K, Qwen2.5-Math,
# Math-Verify): each side's final answer is extracted where one can be (else the side is the answer), then
# compared. The verdicts are the mathematical truth, not any one library's output; known differences from
# those libraries: comma lists compare unordered (`10, 4, -2` == `4, 10, -2`), `1 + 1/e` != `1 - 1/e`, and a
# decimal needs 4 significant digits to count as a rounding (`0.33` != 1/3).
GRADER_CASES = [
    # numbers, separators, decimal commas
    ("7425000", "7,425,000", True),
    ("1000", "1 000", True),
    ("1000.0", "1,000.0", True),
    ("1000.99", "1000,99", True),
    ("1,22", "1.22", True),
    ("2.74", "Le total : 2,74 $ environ.", True),
    ("0,111", "0.111", True),
    ("1000.99", "we pay $1,000.99 in total", True),
    ("0.4", ".4", True),
    ("2", "AZYUK2A", False),
    ("1,000", "It costs 1.000 dollars", False),
    ("$14{,}916$", "so the smallest such number is $\\boxed{14{,}916}$.", True),
    ("$14{,}916$", "Final Answer: The final answer is $14 {, }916$. I hope it is correct.", True),
    ("$14{,}916$", "Final Answer: The final answer is $14 {, }912$. I hope it is correct.", False),
    ("\\boxed{32349}", "the count is $\\boxed{32,\\! 349}$", True),
    ("\\boxed{11111111100}", "which is $\\boxed{11,\\! 111,\\! 111,\\! 100}$", True),
    ("\\boxed{11111111100}", "which is $\\boxed{11,\\! 111,\\! 111,\\! 000}$", False),
    ("$16386.20$", "worth $\\boxed{\\$16,\\!386.20}$ after five years", True),
    # final-answer sentences after a box
    (
        "$10455$",
        "interest $\\boxed{200}$, then $\\boxed{255}$. "
        "Final Answer: The final answer is $10,455$. I hope it is correct.",
        True,
    ),
    (
        "$255$",
        "interest $\\boxed{200}$, then $\\boxed{255}$. "
        "Final Answer: The final answer is $10,455$. I hope it is correct.",
        False,
    ),
    (
        "$[-3,2]$",
        "the domain is $\\boxed{[-3, 2]}$. Final Answer: The final answer is $[-3, 2]$. I hope it is correct.",
        True,
    ),
    (
        "$[-3,2]$",
        "First $\\boxed{[-3, 2]}$. Let me redo it: the domain is $\\boxed{(-\\infty, -3] \\cup [2, \\infty)}$. "
        "Final Answer: The final answer is $(-\\infty, -3] \\cup [2, \\infty)$. I hope it is correct.",
        False,
    ),
    ("$[0,1)$", "so x is in (0, 1). Final Answer: The final answer is $(0, 1)$. I hope it is correct.", False),
    (
        "$(-6, 10)$",
        "so $x \\in (-6, 10)$. Final Answer: The final answer is \\((-6, 10)\\). I hope it is correct.",
        True,
    ),
    ("$28\\%$", "so it keeps 72%. Final Answer: The final answer is $28 \\%$. I hope it is correct.", True),
    ("$\\frac{1}{3}$", "The final answer is $\\frac{1}{3}$. I hope it is correct.", True),
    # intervals and inequalities
    ("$x \\in [-2,7]$", "so $-2 \\le x \\le 7$", True),
    ("$-2 \\le x \\le 7$", "the solution set is $x \\in [-2,7]$", True),
    ("$(-2,7]$", "so $-2 < x \\le 7$", True),
    ("$(-2,7]$", "so $-2 \\le x \\le 7$", False),
    ("$[3,\\infty)$", "hence $x \\geq 3$", True),
    ("$[3,\\infty)$", "hence $x > 3$", False),
    ("$x < 1$", "so $-x > -1$", True),
    ("$x < 1$", "so $x > -1$", False),
    ("$x \\leq 5$", "$5 \\geq x$", True),
    ("$-793 < a < 10$", "$(-793, 10)$", True),
    ("$0<f(x)<1$", "the range is $(0,1)$", True),
    (
        "$1\\leq|z|\\leq \\frac{3}{2}$",
        "$z \\in \\left[-\\frac{3}{2}, -1\\right] \\cup \\left[1, \\frac{3}{2}\\right]$",
        True,
    ),
    ("$1\\leq|z|\\leq \\frac{3}{2}$", "$z \\in \\left[1, \\frac{3}{2}\\right]$", False),
    # rounding
    ("$\\frac{1}{3}$", "about 0.3333", True),
    ("$\\frac{1}{3}$", "about 0.3", False),
    ("$(\\frac{3}{5},\\frac{8}{3}]$", "$(0.6,2.6667]$", True),
    ("$(\\frac{3}{5},\\frac{8}{3}]$", "$(0.6,2.7]$", False),
    ("$\\frac{1}{12}$", "$0.0833333333333333$", True),
    ("$(1,\\frac{9}{2})$", "$(1,4.5)$", True),
    ("$\\sqrt{17}$", "4.123105625617661", True),
    ("$4$", "$4\\sqrt{2}$", False),
    # named answers
    ("$(p,q)=(3,2)$", "so $(p, q) = \\boxed{(3, 2)}$", True),
    ("$(p,q)=(3,2)$", "so $\\boxed{(2, 3)}$", False),
    ("$(p,q,r)=(3,2,7)$", "$(3,2,7)$", True),
    ("$AB=4,CD=5$", "$\\boxed{4, 5}$", True),
    ("$AB=4,CD=5$", "$\\boxed{5, 5}$", False),
    ("$V_{1}:V_{2}=11:21$", "$11:21$", True),
    ("$S_{MBCN}:S=7:32$", "$\\boxed{7:32}$", True),
    ("$S_{MBCN}:S=7:32$", "$\\boxed{7:31}$", False),
    ("$\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}$", "$\\frac{1}{\\sqrt{6}}$", True),
    ("$|AB|=1$", "$$1$$", True),
    ("$f(x)=1$", "$$1$$", True),
    ("$k=1$", "$1$", True),
    ("$x = 11$", "$x = 5+5+1 = 7 = 11$", True),
    ("$11$", "$x\\approx11$", True),
    ("$a +3z = 0$", "$0$", False),
    ("$2x + z = 1$", "$1$", False),
    ("$7 = 11a+c$", "$11a+c$", False),
    ("$x^2/4 + y^2/3 = 1$", "$x^2/16 + y^2/12 = 1/4$", True),
    ("$34x+45y-20z+100=0$", "$-34x-45y+20z-100=0$", True),
    ("\\boxed{x = -5,\\ p = \\frac{14}{3}}", "$\\boxed{-5, \\frac{14}{3}}$", True),
    ("\\boxed{a=4,\\,-8,\\,-10}", "$\\boxed{-10,-8,4}$", True),
    ("$p=5,q=2;p=7,q=2$", "$(5,2),(7,2)$", True),
    ("$$a_3 = 2, a_{37} = 19$$", "$$\\boxed{a_{37} = 19, \\quad a_3 = 2}$$", True),
    ("$$(5, 8), (8, 5)$$", "$$\\boxed{(x, y) = (5, 8) \\quad \\text{and} \\quad (8, 5)}$$", True),
    ("$D = (0, 1)$", "$D = (0, 1.5)$", False),
    # text wrappers and choices
    ("$\\text{E}$", "$E$", True),
    ("$d$", "$\\text{E}$", False),
    ("$\\text{odd}$", "$odd$", True),
    ("$\\text{Even}$", "$Even$", True),
    ("$\\text{Evelyn}$", "Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", True),
    ("\\textbf{(C)}", "The answer is (C).", True),
    ("\\textbf{(C)}", "The answer is (D).", False),
    ("$125$ miles", "The distance is $\\boxed{125\\textnormal{ miles}}.$", True),
    # sets, semicolons and solution lists
    ("$-12;-11;-10;-8;-7;-6$", "$\\boxed{\\{-12, -11, -10, -8, -7, -6\\}}$", True),
    ("$-12;-11;-10;-8;-7;-6$", "$\\boxed{\\{-12, -11, -10, -8, -7\\}}$", False),
    (
        "$(0;0;0),(0;-2;0),(4;0;6),(4;-2;6)$",
        "\\boxed{(4, 0, 6), (4, -2, 6), (0, 0, 0), (0, -2, 0)}",
        True,
    ),
    ("$(11,7)or(7,11)$", "$\\boxed{(7,11),\\ (11,7)}$", True),
    (
        "$(37,3,3,13),(17,3,3,7),(3,3,2,3)$",
        "$\\boxed{(3, 3, 2, 3), (17,3,3,7), (37,3,3,13), (17, 3, 3, 7)}$",
        True,
    ),
    ("$(37,3,3),(17,3,3,7)$", "$\\boxed{(37,3,3,13), (17,3,3,7)}$", False),
    ("$(2,1),(1,2)$", "the solutions are \\[ \\boxed{(1, 2)}, \\boxed{(2, 1)} \\]", True),
    ("$1$ and $2$ and $3$", "$\\boxed{1,2,3}$", True),
    ("$21,16$ or $11$", "$21,16,11$", True),
    ("$-2,1$", "the integer roots are $\\boxed{-2,1}.$", True),
    ("$\\pm 2021$", "${-2021, 2021}$", True),
    ("$\\pm 2021$", "$2021$", False),
    ("\\boxed{1} papers and \\boxed{2} bins", "$\\boxed{1,2}$", True),
    ("\\boxed{1} no no no no no \\boxed{2}", "$\\boxed{1,2}$", False),
    ("$n=2, 3, 4$", "$n=1, 2, 3$", False),
    ("$19, 46, and 82$", "$19, 46, \\text{ and } 82$", True),
    ("$19, 46, and 82$", "$21, 36, and 82$", False),
    ("$$k = 45, n = 2$$", "$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$", True),
    # matrices
    (
        "$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$",
        "The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.",
        True,
    ),
    (
        "$\\begin{bmatrix}0 & 0 \\\\0 & 0\\end{bmatrix}$",
        "Here: $ \\begin{pmatrix}0 & 0 \\\\0 & 0\\end{pmatrix} $",
        True,
    ),
    (
        "$\\begin{pmatrix}1 & 2 \\\\3 & 4\\end{pmatrix}$",
        "It is $ \\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right] $",
        True,
    ),
    (
        "$\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}$",
        "The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$",
        True,
    ),
    (
        "$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$",
        "The matrix is $\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}$",
        False,
    ),
    # expressions and the rest
    ("$2-2p$", "Thus $x-p=\\boxed{2-2p}$.", True),
    ("$\\frac{\\pi r}{h+r}$", "The answer is $\\boxed{\\frac{\\pi r}{h+r}}$", True),
    ("$2 \\sin b \\cos a$", "\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]", True),
    ("$3 \\pm 2 \\sqrt{2}$", "the roots are $x = \\boxed{3 \\pm 2 \\sqrt{2}}.$", True),
    ("$204_5$", "for a quotient of $\\boxed{204_5}$.", True),
    ("$90^\\circ$", "the angle is $\\boxed{90^\\circ}.$", True),
    ("$\\frac{x+2}{7}$", "$\\frac{x}{7}+\\frac{2}{7}$", True),
    ("$\\tan^2(y)+1$", "$\\sec^2(y)$", True),
    ("$(a+5)(b+2)$", "$(+5)(b+2)$", False),
    ("$2$", "$\\frac{1+\\sqrt{5}}{2}$", False),
    ("$x+2n+1$", "$x+1$", False),
    ("$12:00$", "$1:00$", False),
    ("$1 - \\frac{1}{\\mathrm{e}}$", "$1 + \\frac{1}{\\mathrm{e}}$", False),
    ("$2/3$", "So P(A) = (1/2) / (3/4) = 2/3. Therefore, the probability that Alice wins is 2/3.", True),
    ("$\\frac{14}{3}$", "$=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$", True),
    # hendrycks-style bare answers
    ("\\tfrac{1}{2} + \\frac1{72}", "\\\\frac{1}{2} + 2/3", False),
    ("10, 4, 2", "4, 12, 2", False),
    ("\\tfrac{1}{2} +\\! \\frac1{72}", "\\\\dfrac{1}{2} +\\frac{1}{72}", True),
    ("10\\text{ units}", "100 ", False),
    ("58 square units", "58", True),
    ("11z^{17}(5+11z^{17})", "11z^17(11z^17+5)", True),
    ("$\frac{4\\sqrt{5}}{5}$", "$\\frac{4\\sqrt{5}}{5}$", True),
    ("$1+3\\sqrt{2}$", "$1+3\\\\sqrt{2}$", True),
    # more wrong answers, one per kind
    ("1,000", "the total is 1,001", False),
    ("$x \\in [-2,7]$", "so $-2 < x \\le 7$", False),
    ("$\\frac{2}{3}$", "about 0.6666", False),
    ("$(p,q)=(3,2)$", "$(p,q)=(3,3)$", False),
    ("$\\{1;2;3\\}$", "$\\{1,2,4\\}$", False),
    ("$\\text{E}$", "the choice is $\\text{(B)}$", False),
]


def _final(text: str) -> str:
    return extract_answer(text) or text


@pytest.mark.parametrize("gold, completion, expected", GRADER_CASES)
def test_grader_style_cases(gold, completion, expected):
    assert is_equivalent(_final(gold), _final(completion)) is expected


def test_grader_style_table_has_both_verdicts():
    verdicts = [expected for _, _, expected in GRADER_CASES]
    assert len(GRADER_CASES) >= 120 and verdicts.count(False) >= 40 and verdicts.count(True) >= 80


def test_gold_answer():
    assert gold_answer("Janet sells 9 eggs.\n#### 1,000") == "1,000"
    assert gold_answer("so $x = \\boxed{\\frac{3}{56}}$.") == "\\frac{3}{56}"
    assert gold_answer("  72 ") == "72" and gold_answer("3.5") == "3.5" and gold_answer(72) == "72"


# ---------------------------------------------------------------- rewards


def test_math_correctness_reward():
    gold = [
        "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
        "so the answer is $\\boxed{\\frac{1}{2}}$.",
        "42",
        "42",
    ]
    completions = ["Thus she makes \\boxed{18} dollars.", "It is 0.5", "I think 41", "The result: 42"]
    assert math_correctness(["p"] * 4, completions, answer=gold) == [1.0, 1.0, 0.0, 1.0]
    assert math_correctness(["p"] * 4, completions, answer=gold, mode="strict") == [1.0, 0.0, 0.0, 0.0]
    assert math_correctness(["p"], ["nothing"], answer=["1"]) == [0.0]


def test_reward_functions_expose_the_verifier_timeouts_as_metrics(monkeypatch):
    from reward_models import math_sympy

    for reward in (math_correctness, format_reward):
        metrics = reward.metrics()
        assert metrics == {"verifier_timeouts": float(verifier_stats()["timeouts"])}
        assert all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())
    monkeypatch.setitem(math_sympy.stats, "timeouts", 7)
    assert math_correctness.metrics() == {"verifier_timeouts": 7.0} and verifier_stats()["timeouts"] == 7


def test_format_reward():
    completions = ["reasoning... \\boxed{3}", "<think>x</think><answer>3</answer>", "the answer is 3", ""]
    assert format_reward([""] * 4, completions) == [1.0, 1.0, 0.0, 0.0]
    strict = r"^<think>.+</think>\s*<answer>.+</answer>\s*$"
    assert format_reward([""] * 2, completions[:2], pattern=strict) == [0.0, 1.0]


# ---------------------------------------------------------------- real data


def _rows(name: str) -> list[dict]:
    path = DATA / name / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present (the shared data directory is not mounted here)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_gsm8k_solutions_match_their_final_number():
    rows = _rows("gsm8k")
    misses = [
        r["answer"][-40:]
        for r in rows
        if not is_equivalent(r["answer"].split("####")[-1].strip(), extract_answer(r["answer"]))
    ]
    print(f"gsm8k: {len(rows) - len(misses)}/{len(rows)}; misses: {misses}")
    assert len(rows) == 1319 and not misses


def test_math500_boxed_solution_matches_answer_field():
    rows = _rows("math500")
    misses = [
        (r["answer"], gold_answer(r["solution"]))
        for r in rows
        if not is_equivalent(r["answer"], gold_answer(r["solution"]))
    ]
    print(f"math500: {len(rows) - len(misses)}/{len(rows)}; misses: {misses}")
    assert (len(rows) - len(misses)) / len(rows) >= 0.99


def test_math500_answers_survive_reformatting_and_reject_perturbations():
    rows = _rows("math500")
    failures = []
    for r in rows:
        a = r["answer"]
        for variant in (
            f"$\\boxed{{{a}}}$",
            a.replace("\\frac", "\\dfrac"),
            a + ".",
            a.replace(" ", ""),
            f"\\[ {a} \\]",
        ):
            if not is_equivalent(a, variant):
                failures.append((a, variant))
        if not is_equivalent(a, "0"):
            for wrong in (f"{a}+1", f"2({a})"):
                if "=" not in a and "," not in a and is_equivalent(a, wrong):
                    failures.append((a, wrong))
    assert not failures, failures[:10]
