"""README.md for a trained adapter: what it is, how it was made, how well it did, how to load and reproduce it.

An adapter directory travels alone (copied, uploaded to a hub); without a card nobody can tell its base model, its
data or its reward from the weights. peft writes a placeholder README.md on save; this replaces it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from rlhf.algorithms import DEFAULT_ALGORITHM

# short names the trainer resolves locally -> their public hub ids (for loading snippets and the hub metadata)
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_id(base_model: str) -> str | None:
    """The hub id of the base model, or None for a local directory (hub metadata must not name a private path)."""
    if base_model in HUB_IDS:
        return HUB_IDS[base_model]
    if _HUB_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _get(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _metrics_table(final_metrics: dict) -> list[str]:
    if not final_metrics:
        return ["No metrics were recorded."]
    lines = ["| metric | value |", "| --- | --- |"]
    # the numbers a reader looks for first, then the rest in name order
    first = [
        k for k in ("eval/accuracy", "reward/mean", "policy/approx_kl", "completion/mean_len") if k in final_metrics
    ]
    for key in first + sorted(k for k in final_metrics if k not in first):
        lines.append(f"| `{key}` | {_cell(final_metrics[key])} |")
    return lines


def render_model_card(
    base_model: str,
    recipe_path_or_name: str,
    config_dict: dict,
    final_metrics: dict,
    command: str,
    data_desc: str,
    reward_names: list[str],
    steps: int,
    adapter_dir: str = "path/to/adapter",
) -> str:
    """The card's markdown (front matter for the hub, then prose); `write_model_card` saves it."""
    hub_id = _hub_id(base_model)
    algorithm = str(_get(config_dict, "algorithm.name") or DEFAULT_ALGORITHM).upper()
    front = {"library_name": "peft", "tags": ["rlhf", algorithm.lower(), "lora", "peft"]}
    if hub_id:
        front["base_model"] = hub_id
    load_id = hub_id or base_model
    lora = _get(config_dict, "model.lora") or {}
    details = [
        ("Base model", f"`{base_model}`" + (f" ([{hub_id}](https://huggingface.co/{hub_id}))" if hub_id else "")),
        ("Method", f"{algorithm} with LoRA adapters"),
        ("Recipe", f"`{recipe_path_or_name}`"),
        ("Data", data_desc),
        ("Reward functions", ", ".join(f"`{n}`" for n in reward_names) or "n/a"),
        ("Training steps", str(steps)),
    ]
    if lora:
        details.append(
            ("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, target modules: {lora.get('target_modules')}")
        )
    knobs = [
        ("rollout.num_generations", "Completions per prompt"),
        ("train.prompts_per_step", "Prompts per step"),
        ("optim.lr", "Learning rate"),
        ("algorithm.beta", "KL coefficient (beta)"),
        ("model.dtype", "Base weights dtype"),
        ("seed", "Seed"),
    ]
    for key, label in knobs:
        value = _get(config_dict, key)
        if value is not None:
            details.append((label, f"`{_cell(value)}`"))

    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [
        f"# {Path(str(recipe_path_or_name)).stem}: {algorithm} LoRA adapter for {base_model}",
        "",
        f"A LoRA adapter for `{base_model}`, trained for {steps} steps with {algorithm} (reinforcement learning from",
        "rule-based or learned rewards) by the `rlhf` framework. Only the adapter weights are here; load them on top",
        "of the base model.",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in details]
    lines += ["", "## Final metrics", ""] + _metrics_table(final_metrics)
    lines += [
        "",
        "`eval/accuracy` is greedy accuracy on held-out prompts (a completion counts when its reward reaches the",
        "success threshold); `reward/*` are over the last step's sampled completions.",
        "",
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Load with peft",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{load_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{adapter_dir}")',
        f'model = PeftModel.from_pretrained(base, "{adapter_dir}")',
        "model = model.merge_and_unload()  # optional: a plain transformers model, faster to generate with",
        "```",
        "",
        "Evaluate it, or fold it into a standalone model:",
        "",
        "```bash",
        f"python -m rlhf.evaluate --model {base_model} --adapter {adapter_dir} --dataset arithmetic  # or gsm8k, FILE",
        f"python -m rlhf.merge --adapter {adapter_dir} --out {adapter_dir}-merged",
        "```",
        "",
    ]
    if config_dict:
        lines += [
            "<details><summary>Full configuration</summary>",
            "",
            "```yaml",
            yaml.safe_dump(config_dict, sort_keys=False).strip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def write_model_card(
    adapter_dir: str | Path,
    base_model: str,
    recipe_path_or_name: str,
    config_dict: dict,
    final_metrics: dict,
    command: str,
    data_desc: str,
    reward_names: list[str],
    steps: int,
) -> Path:
    """Write `<adapter_dir>/README.md` (replacing peft's placeholder) and return its path."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    text = render_model_card(
        base_model,
        recipe_path_or_name,
        config_dict,
        final_metrics,
        command,
        data_desc,
        reward_names,
        steps,
        adapter_dir=str(adapter_dir),
    )
    path = adapter_dir / "README.md"
    path.write_text(text)
    return path
