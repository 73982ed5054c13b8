"""The bounded numeric evaluator of `math_expr`'s trees: exact rationals where the arithmetic allows, complex floats
otherwise, every step size-bounded (`MAX_BITS`) so no input can make it hang; and `is_huge`, which tells a constant
that certainly exceeds any float without computing it. Node shapes are listed in `reward_models.math_expr`.
"""

from __future__ import annotations

import cmath
import math
from fractions import Fraction

__all__ = ["MAX_BITS", "EvalError", "Number", "Undefined", "as_complex", "evaluate", "is_huge"]

MAX_BITS = 20_000  # exact rationals larger than this are not computed in-process (sympy or nothing decides)


class EvalError(ArithmeticError):
    """No finite value here: division by zero, a domain error, overflow, an unknown symbol."""


class Undefined(EvalError):
    """Division by zero, 0 to a negative power: no value at all (a constant like 1/0 equals nothing)."""


Number = Fraction | complex


def _exact(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise EvalError("number too large")
    return value


def as_complex(value: Number) -> complex:
    try:
        z = complex(value)
    except OverflowError:
        raise EvalError("overflow") from None
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        raise EvalError("not finite")
    return z


def _int_root(k: int, n: int) -> int | None:
    """The exact integer n-th root of k >= 0, or None."""
    if k < 2:
        return k
    if k.bit_length() > 1000:
        return None
    r = math.isqrt(k) if n == 2 else round(k ** (1.0 / n))
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**n == k:
            return c
    return None


def _root(x: Number, n: int) -> Number:
    if isinstance(x, Fraction):
        if x >= 0:
            num, den = _int_root(x.numerator, n), _int_root(x.denominator, n)
            if num is not None and den is not None:
                return Fraction(num, den)
            return as_complex(float(x) ** (1.0 / n)) if x.numerator.bit_length() < 1000 else as_complex(x) ** (1.0 / n)
        if n % 2 == 1:  # the real cube root of a negative number, as written \sqrt[3]{-8} = -2
            r = _root(-x, n)
            return -r
    return as_complex(x) ** (1.0 / n)


def _pow(a: Number, b: Number) -> Number:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if b.denominator == 1:
            e = b.numerator
            if a == 0 and e < 0:
                raise Undefined("division by zero")
            bits = max(a.numerator.bit_length(), a.denominator.bit_length(), 1)
            if a in (1, -1):
                return a ** (e % 2)
            if abs(e) * bits <= MAX_BITS:
                return _exact(a**e)
        elif a > 0 and b.denominator <= 12:
            r = _root(a, b.denominator)
            if isinstance(r, Fraction):
                return _pow(r, Fraction(b.numerator))
    za, zb = as_complex(a), as_complex(b)
    if za == 0:
        if zb.real > 0:
            return Fraction(0)
        raise Undefined("0 to a non-positive power")
    try:
        if za.imag == 0 and zb.imag == 0 and za.real > 0:
            return as_complex(za.real**zb.real)
        return as_complex(za**zb)
    except (OverflowError, ZeroDivisionError, ValueError):
        raise EvalError("overflow") from None


def _fn(name: str, x: Number) -> Number:
    if name == "sqrt":
        return _root(x, 2)
    if name == "abs":
        return abs(x) if isinstance(x, Fraction) else as_complex(abs(as_complex(x)))
    if name in ("floor", "ceil"):
        if not isinstance(x, Fraction):
            z = as_complex(x)
            if abs(z.imag) > 1e-12:
                raise EvalError("floor of a complex number")
            x = z.real
        return Fraction(math.floor(x) if name == "floor" else math.ceil(x))
    if isinstance(x, Fraction) and x == 0 and name in ("sin", "tan", "arcsin", "arctan", "sinh", "tanh"):
        return Fraction(0)
    if isinstance(x, Fraction) and x == 1 and name in ("ln", "log"):
        return Fraction(0)
    z = as_complex(x)
    try:
        if name == "cot":
            return as_complex(1 / cmath.tan(z))
        if name == "sec":
            return as_complex(1 / cmath.cos(z))
        if name == "csc":
            return as_complex(1 / cmath.sin(z))
        if name in ("ln", "log"):
            return as_complex(cmath.log(z))
        func = {"arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan}.get(name) or getattr(cmath, name)
        return as_complex(func(z))
    except (OverflowError, ZeroDivisionError, ValueError):
        raise EvalError(f"{name} undefined here") from None


def _factorial(x: Number) -> Number:
    if isinstance(x, Fraction) and x.denominator == 1:
        if x < 0:
            raise EvalError("factorial of a negative integer")
        if x > 1500:
            raise EvalError("factorial too large")
        return Fraction(math.factorial(int(x)))
    z = as_complex(x)
    if z.imag != 0 or z.real > 170:
        raise EvalError("factorial out of range")
    try:
        return as_complex(math.gamma(z.real + 1))
    except (ValueError, OverflowError):
        raise EvalError("factorial undefined") from None


def evaluate(node: tuple, env: dict[str, complex] | None = None) -> Number:
    """The value of the tree, exact (Fraction) where the arithmetic allows, else a complex float.

    Raises EvalError when there is no finite value (and never runs long: exact powers are size-capped)."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "sym":
        if env is None or node[1] not in env:
            raise EvalError(f"free symbol {node[1]}")
        return env[node[1]]
    if kind == "const":
        if node[1] == "oo":  # a bare +-infinity is compared structurally; inside arithmetic it is no number
            raise Undefined("infinity")
        return {"pi": complex(math.pi), "e": complex(math.e), "i": 1j}[node[1]]
    if kind == "neg":
        return -evaluate(node[1], env)
    if kind in ("add", "sub", "mul", "div"):
        a, b = evaluate(node[1], env), evaluate(node[2], env)
        if kind == "div" and b == 0:
            raise Undefined("division by zero")
        if isinstance(a, Fraction) and isinstance(b, Fraction):
            return _exact({"add": a + b, "sub": a - b, "mul": a * b, "div": a / b if kind == "div" else 0}[kind])
        za, zb = as_complex(a), as_complex(b)
        return as_complex(
            {"add": za + zb, "sub": za - zb, "mul": za * zb, "div": za / zb if kind == "div" else 0}[kind]
        )
    if kind == "pow":
        return _pow(evaluate(node[1], env), evaluate(node[2], env))
    if kind == "fn":
        return _fn(node[1], evaluate(node[2], env))
    if kind == "root":
        n = evaluate(node[2], env)
        if not (isinstance(n, Fraction) and n.denominator == 1 and 1 <= n <= 1000):
            return _pow(evaluate(node[1], env), 1 / as_complex(n) if n != 0 else as_complex(0))
        return _root(evaluate(node[1], env), int(n))
    if kind == "log":
        x, base = _fn("ln", evaluate(node[1], env)), _fn("ln", evaluate(node[2], env))
        if base == 0:
            raise EvalError("log base 1")
        if isinstance(x, Fraction) and x == 0:
            return Fraction(0)
        return as_complex(as_complex(x) / as_complex(base))
    if kind == "fact":
        return _factorial(evaluate(node[1], env))
    if kind == "binom":
        n, k = evaluate(node[1], env), evaluate(node[2], env)
        if isinstance(n, Fraction) and isinstance(k, Fraction) and n.denominator == k.denominator == 1 and n <= 5000:
            return Fraction(math.comb(int(n), int(k))) if 0 <= k and n >= 0 else Fraction(0)
        return _factorial(n) / as_complex(_factorial(k)) / as_complex(_factorial(as_complex(n) - as_complex(k)))
    raise EvalError(f"unknown node {kind}")


def _real(node: tuple) -> float | None:
    try:
        z = as_complex(evaluate(node))
    except (ArithmeticError, ValueError, TypeError):
        return None
    return z.real if abs(z.imag) <= 1e-12 * max(1.0, abs(z.real)) else None


def is_huge(node: tuple, positive: bool = False) -> bool:
    """True when the constant certainly has |value| > 1e300 (with positive=True: value > 1e300).

    Why: `9^{9^{9^9}}` or `100000!` cannot be computed in-process, and sympy would run out its timeout, yet
    such a value certainly differs from anything that evaluates to a float. Only the outermost operation is
    trusted (`2^{10^5} - 2^{10^5}` is 0, not huge)."""
    kind = node[0]
    if kind == "neg":
        return not positive and is_huge(node[1])
    if kind == "num":
        return node[1] > 10**300 or (not positive and node[1] < -(10**300))
    if kind == "pow" or (kind == "fn" and node[1] == "exp"):
        base = _real(node[1]) if kind == "pow" else math.e
        if base is None or abs(base) <= 1.000001 or (positive and base < 0):
            return False
        exponent_node = node[2]
        exponent = _real(exponent_node)
        if exponent is not None:
            return exponent * math.log(abs(base)) > 700 and (base > 0 or not positive)
        return is_huge(exponent_node, positive=True)
    if kind == "fact":
        n = _real(node[1])
        return (n is not None and n > 171) or is_huge(node[1], positive=True)
    return False
