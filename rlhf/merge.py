"""Fold a trained LoRA adapter into its base model: a standalone HF directory that `from_pretrained` loads.

python -m rlhf.merge --adapter runs/demo/adapter --out runs/demo/merged [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rlhf.models import DTYPES, load_tokenizer, resolve_model_path


def merge_adapter(adapter: str, out: str, model: str | None = None, dtype: str = "float32") -> Path:
    """Merge in float32 (exact sum), then cast to `dtype`; the base model defaults to the adapter's own record."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    base_path = model or json.loads(config_file.read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(base_path), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged = merged.to(DTYPES[dtype])
    merged.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_path).save_pretrained(out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="PEFT adapter directory (e.g. <output_dir>/adapter)")
    p.add_argument("--out", required=True, help="where to write the merged model")
    p.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    try:
        path = merge_adapter(args.adapter, args.out, args.model, args.dtype)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged model written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
