"""Render docs/CONFIG.md from the config dataclasses, so the reference cannot drift from the code.

python -m rlhf.config_reference > docs/CONFIG.md
"""

from __future__ import annotations

import dataclasses
import typing

from rlhf.config import Config, RewardSpec


def _type(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "(section)" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def _section(cls, prefix: str, out: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    rows, subsections = [], []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            subsections.append((tp, f"{prefix}{f.name}."))
            continue
        rows.append(f"| `{prefix}{f.name}` | {_type(tp)} | {_default(f)} | {f.metadata.get('doc', '')} |")
    title = prefix.rstrip(".") or "top level"
    out += [f"## {title}", "", (cls.__doc__ or "").strip(), ""]
    if rows:
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for tp, sub in subsections:
        _section(tp, sub, out)


def _algorithm_table() -> list[str]:
    """The rows of rlhf.algorithms.ALGORITHMS: what each algorithm does and which keys only it (and its kin) read."""
    from rlhf.algorithms import ALGORITHMS, KLPlace

    out = [
        "## algorithms",
        "",
        "The rows of `rlhf/algorithms.py`. Keys listed under an algorithm are read by it; setting one of them away",
        "from its default for an algorithm that does not read it is an error. Keys not listed anywhere apply to all.",
        "",
        "| algorithm.name | estimator | policy loss | value model | KL to reference | update | keys it reads |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in ALGORITHMS.items():
        keys = ", ".join(f"`{k}`" for k in row.knobs) or "-"
        kl = "loss term" if row.kl is KLPlace.LOSS else "per-token reward"
        out.append(
            f"| `{name}` | `{row.estimator.__name__}` | `{row.policy_loss.__name__}` | "
            f"{'yes' if row.value_model else 'no'} | {kl} | {row.update.value} | {keys} |"
        )
    out += ["", *[f"- `{n}`: {row.summary}" for n, row in ALGORITHMS.items()], ""]
    return out


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `rlhf/config_schema.py` by `python -m rlhf.config_reference`; a test fails when it is stale.",
        "Every key can be set in a recipe YAML or on the command line as `key.sub=value`.",
        "",
    ]
    _section(Config, "", out)
    _section(RewardSpec, "rewards[].", out)
    out += _algorithm_table()
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
