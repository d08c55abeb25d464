"""What the vLLM tests and benchmark share: vLLM's own virtualenv (scripts/install makes it) and a
tiny random Llama made here with transformers (no hub, no network), cached between runs.

The model: hidden 128, 2 heads of 64, 2 layers, a character-level tokenizer (printable ASCII and a
newline; a BPE with no merges, decoded by joining) and a plain chat template. Its weights are
random but fixed (seeded), and drawn wide, so greedy answers wander over many characters instead
of repeating one (a continuation that lost or repeated a token would show).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MODEL_VERSION = "tiny-llama-v1"     # bump when the script below changes: a new cached copy is made

MAKE_MODEL = r'''
import sys, torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
specials = ["<unk>", "<s>", "</s>"]
vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
core.decoder = decoders.Fuse()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant: {% endif %}")
torch.manual_seed(1234)
config = LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2,
                     torch_dtype="float32")
model = LlamaForCausalLM(config)
model.save_pretrained(out, safe_serialization=True)
tokenizer.save_pretrained(out)
print("saved", out)
'''


def vllm_python() -> Path:
    return Path(os.environ.get("COGKIT_VLLM_PYTHON") or Path.home() / ".cache/cogkit/vllm-venv/bin/python")


def vllm_missing() -> str:
    """'' when vLLM's virtualenv is there, else what is missing (for a skip that names it)."""
    python = vllm_python()
    if not python.exists():
        return f"vLLM's virtualenv ({python}; scripts/install makes it, COGKIT_VLLM_PYTHON names another)"
    probe = subprocess.run([str(python), "-c", "import vllm, transformers"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return f"vllm in {python}: {probe.stderr.strip().splitlines()[-1:]}"
    return ""


def tiny_llama(cache: Path | None = None) -> Path:
    """The tiny model's directory, made once (by vLLM's python, which has torch and transformers)."""
    root = cache or Path(os.environ.get("COGKIT_TEST_MODELS") or Path.home() / ".cache/cogkit/test-models")
    out = root / MODEL_VERSION
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tmp = root / f".{MODEL_VERSION}.{os.getpid()}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(vllm_python()), "-c", MAKE_MODEL, str(tmp)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"making the tiny model failed:\n{done.stderr[-3000:]}")
    try:
        tmp.rename(out)
    except OSError:          # another process made it first
        pass
    return out


def vllm_server_argv(model: Path, port: int, *extra: str) -> list[str]:
    """vLLM's OpenAI server for the tiny model on CPU, as the tests and the benchmark run it directly."""
    return [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), *VLLM_ARGS_CLI, *extra]


VLLM_ARGS = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True, "enable_prefix_caching": True,
             "max_num_seqs": 16}
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "OMP_NUM_THREADS": "1"}
# The pacing plugin (tests/vllm_plugins/cogkit_pace.py), for the deployments of the mid-stream tests:
# loaded by vLLM from this folder; only requests that ask for it (vllm_xargs.pace_ms) are paced.
PACE_ARGS = {"logits_processors": "cogkit_pace:PaceSteps"}
PACE_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent / "vllm_plugins")}
VLLM_ARGS_CLI = [arg for k, v in VLLM_ARGS.items()
                 for arg in ([f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)])]


if __name__ == "__main__":       # python tests/vllm_support.py: make the model, print its path
    missing = vllm_missing()
    if missing:
        sys.exit(f"missing: {missing}")
    print(json.dumps({"model": str(tiny_llama())}))
