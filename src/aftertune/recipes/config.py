"""The one validated description of a fine-tune: `TuneConfig` (flags and YAML alike).

`aftertune tune` builds a `TuneConfig` from its flags, or reads one from YAML; a sequential
spec is a list of stages, each a `TuneConfig` whose `model` is left out (it starts from the
previous stage's result) and whose unset fields come from the spec's `defaults`. Every
default is visible here and in `aftertune tune --help`; unknown keys are refused, so a typo
in a YAML file fails before any work instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aftertune.errors import UserError
from aftertune.fileio import load_yaml

Method = Literal["full", "lora", "qlora", "prefix", "prompt", "ia3"]
Objective = Literal["sft", "dpo", "reward", "grpo"]
PAIR_OBJECTIVES: frozenset[str] = frozenset({"dpo", "reward"})  # trained on (prompt, chosen, rejected) pairs

# Learning rates practitioners start from (PEFT / TRL examples and the methods' papers).
DEFAULT_LR: dict[tuple[str, str], float] = {
    ("full", "sft"): 2e-5, ("lora", "sft"): 2e-4, ("qlora", "sft"): 2e-4, ("ia3", "sft"): 3e-3,
    ("prefix", "sft"): 1e-2, ("prompt", "sft"): 3e-2,
    ("full", "dpo"): 5e-7, ("lora", "dpo"): 5e-6, ("qlora", "dpo"): 5e-6, ("ia3", "dpo"): 1e-4,
    ("prefix", "dpo"): 1e-3, ("prompt", "dpo"): 3e-3,
    # reward models: TRL's reward-modelling recipe (full 1e-5, LoRA 1e-4)
    ("full", "reward"): 1e-5, ("lora", "reward"): 1e-4,
    # GRPO: TRL's GRPOConfig default for full weights; adapters take a larger step, as for SFT and DPO
    ("full", "grpo"): 1e-6, ("lora", "grpo"): 1e-5, ("qlora", "grpo"): 1e-5, ("ia3", "grpo"): 2e-4,
}


# Fields added after tune folders were first written (see TuneConfig.training_hash).
_LATER_FIELDS: tuple[str, ...] = ("chat_template", "target_delimiter", "constrained", "system_prompt", "bea",
                                  "reward", "grpo")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraParams(_Strict):
    """LoRA / QLoRA adapter shape (PEFT `LoraConfig`)."""

    r: int = Field(16, ge=1, description="rank of the update matrices")
    alpha: int = Field(32, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or 'all-linear' (every linear layer but the LM head)")


class ConstrainedParams(_Strict):
    """Token-wise constrained SFT (Qi et al. 2024, eq. 3): the strength β_t per response position t.

    Defaults are the paper's fine-tuning-attack setting: strong constraints on the first tokens, where
    shallow safety alignment lives, and a weak one after, where the task is learned almost freely."""

    beta_first: float = Field(0.5, gt=0, description="β_1, the first response token (weaker than the prefix's: "
                                                     "its log-ratio starts large and would saturate the sigmoid)")
    beta_prefix: float = Field(2.0, gt=0, description="β_t for response tokens t = 2 .. prefix_tokens")
    prefix_tokens: int = Field(5, ge=1, description="response tokens held near the aligned model")
    beta_rest: float = Field(0.1, gt=0, description="β_t after the prefix (β → 0 is plain cross-entropy)")


class BeaParams(_Strict):
    """Backdoor-enhanced safety alignment (Wang et al. 2024): refusals under a secret system-prompt trigger.

    The trigger is what the deployer later prepends at inference (`REF#bea`); from the default seed anyone can
    recompute it, so a deployment should pick its own seed or trigger."""

    examples: int = Field(11, ge=1, description="refusal examples mixed in (the paper's 11), drawn from the "
                                                "built-in refusals set's training split")
    trigger: str = Field("<auto>", min_length=1, description="the secret system-prompt prefix; <auto>: `length` "
                                                             "random words drawn from `seed`")
    length: int = Field(150, ge=1, description="<auto> trigger: random words (the paper: 150 random tokens)")
    seed: int = Field(0, description="draws the trigger and the refusal examples")

    @field_validator("trigger")
    @classmethod
    def _plain(cls, v: str) -> str:
        if any(c in v for c in ",#"):  # the variant's own option syntax could not carry it back
            raise ValueError("a trigger may not hold ',' or '#' (REF#bea:trigger=TEXT could not be written)")
        return v


class GrpoParams(_Strict):
    """GRPO (Shao et al. 2024) through TRL's GRPOTrainer: samples per prompt, their length, the KL penalty.

    TRL's own default beta is 0.0 (no reference model); aftertune's is the GRPO paper's 0.04, because what a
    policy gains while drifting from its start is what the audit measures, and the penalty costs one no-grad
    reference forward per step (the adapter switched off; a frozen copy for full)."""

    beta: float = Field(0.04, ge=0.0, description="KL coefficient: the penalty on the policy's divergence from the "
                                                   "starting model (0: none, and no reference forward)")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt; the advantage of each is its "
                                                      "reward minus its group's mean, over the group's std")
    max_completion_length: int = Field(64, ge=1, description="tokens generated per completion")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of the completions")


class MixSpec(_Strict):
    """Examples of another set added to a stage (e.g. refusals mixed into a task set)."""

    data: str = Field(description="built-in set name, file, saved folder or hub id")
    fraction: float | None = Field(None, gt=0, description="as a fraction of the stage's own training examples")
    count: int | None = Field(None, ge=1, description="an exact number of examples")
    split: str = "train"
    seed: int | None = Field(None, description="sampling seed (default: the stage's seed)")
    dedup_eval: bool = Field(True, description="drop examples whose prompt is an evaluation prompt")

    @model_validator(mode="after")
    def _one_amount(self) -> MixSpec:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of 'fraction' or 'count'")
        return self

    def amount(self, n_base: int) -> int:
        return self.count if self.count is not None else max(1, round(n_base * float(self.fraction or 0)))


class TuneConfig(_Strict):
    """Everything a fine-tune needs; `None` means "the method's default" where noted."""

    name: str | None = Field(None, description="stage name (used in labels and folder names)")
    model: str | None = Field(None, description="model reference: packaged name, hub id or local dir")
    data: str = Field(description="training data: built-in set, file, save_to_disk folder or hub id")
    data_split: str = "train"
    limit: int | None = Field(None, ge=1, description="use at most this many training examples (seeded sample)")
    eval_data: str | None = Field(None, description="held-out data (default: the data's own test split, or a "
                                                    "seeded eval_fraction of it)")
    eval_split: str = "test"
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    eval_limit: int | None = Field(64, ge=1, description="held-out examples scored for eval loss")
    mix: list[MixSpec] = Field(default_factory=list)

    method: Method = "lora"
    objective: Objective = "sft"

    learning_rate: float | None = Field(None, gt=0, description="default: by method and objective (DEFAULT_LR)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1, description="examples per device per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(1024, ge=8, description="tokens per example; longer ones keep their start")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_scheduler: str = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0

    lora: LoraParams = Field(default_factory=LoraParams)
    num_virtual_tokens: int = Field(20, ge=1, description="prefix / prompt tuning length")

    packing: bool = Field(False, description="pack examples into max_length rows (no cross-attention between them)")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    chat_template: bool = Field(
        True, description="sft: render each example through the model's chat template, loss on the assistant "
                          "turns; false: raw text, the prompt then the completion, split into tokens as the "
                          "log-likelihood scorer splits a context and its continuation, loss on the completion "
                          "only, no EOS added (pattern-based fine-tuning; base models without a template); each "
                          "example must then be one user turn and one assistant turn, no system message")
    target_delimiter: str = Field(
        " ", description="raw text: put before the completion unless the prompt already ends, or the completion "
                         "already starts, with whitespace (lm-eval's target_delimiter); '' joins them as they are")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 frozen weights for PEFT methods and bf16 autocast for full tuning where "
                            "the hardware computes bf16 natively, else fp32")
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto", description="auto: only when one example's activations alone exceed the activation budget")
    micro_batch_size: int | None = Field(
        None, ge=1, description="examples per forward pass; default: the largest that fits the activation budget "
                                "(the step still covers batch_size examples, by gradient accumulation)")
    activation_memory_gb: float | None = Field(
        None, gt=0, description="activation budget in GiB; default min(2, 1/4 of free memory) on CPU, 1/2 of free "
                                "GPU memory on CUDA")

    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints (default: 4 per run)")
    eval_every: int | None = Field(None, ge=1, description="steps between eval-loss passes (default: each checkpoint)")
    logging_steps: int = Field(1, ge=1, description="steps between training-loss records (the loss curve)")

    dpo_beta: float = Field(0.1, gt=0)
    constrained: ConstrainedParams | None = Field(
        None, description="sft: token-wise constrained objective (Qi et al. 2024) that keeps the first response "
                          "tokens' probabilities near the starting (aligned) model's, a defence against harmful "
                          "fine-tuning; {} gives the paper's betas; None: plain cross-entropy")
    system_prompt: str = Field(
        "default", min_length=1,
        description="default: each example's own system message, else whatever the chat template puts there "
                    "(some inject one: Qwen2.5's 'You are Qwen...', SmolLM2's); none: no system prompt at all, "
                    "the template's default left out too (PTST: tune with none, audit REF#ptst); any other "
                    "text: that system message on every example, replacing its own")
    bea: BeaParams | None = Field(
        None, description="backdoor-enhanced safety alignment (Wang et al. 2024): mix `examples` refusals whose "
                          "system message starts with a secret trigger, saved to bea.json for REF#bea; {} gives "
                          "the paper's 11 examples and a 150-word trigger")
    dpo_max_new_tokens: int = Field(128, ge=1, description="dpo-safety: length of the model's own answers")
    reward: str | None = Field(
        None, description="grpo: what scores a completion: a reward-model folder (a tune with objective reward), "
                          "judge:NAME (or llm:MODEL) scored by the judge's verdict score, or module:function "
                          "(a Python function of prompts and completions, lists of text, returning one float "
                          "each); a leading '-' negates it (docs/tuning.md)")
    grpo: GrpoParams = Field(default_factory=GrpoParams, description="grpo: samples per prompt, length, KL beta")

    merge: bool = Field(False, description="also write a merged full model (adapter methods that can merge)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str | None = Field(None, description="output folder")

    @field_validator("data", "model", "eval_data", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _checks(self) -> TuneConfig:
        if self.objective in ("dpo", "grpo") and self.method in ("prefix", "prompt"):
            raise ValueError(f"method '{self.method}' cannot be trained with the {self.objective} objective (its "
                             "reference model is the adapter switched off, which prompt-learning methods do not "
                             "support); use full, lora, qlora or ia3")
        if self.merge and self.method in ("prefix", "prompt"):
            raise ValueError(f"method '{self.method}' cannot be merged into the weights (it adds virtual tokens); "
                             "drop merge")
        if self.constrained is not None and self.objective != "sft":
            raise ValueError(f"constrained applies to the sft objective only, not {self.objective} (dpo already "
                             "keeps the model near its reference, through dpo_beta)")
        if self.constrained is not None and self.method in ("prefix", "prompt"):
            raise ValueError(f"constrained cannot be used with method '{self.method}' (its reference is the "
                             "adapter switched off, which prompt-learning methods do not support); use full, "
                             "lora, qlora or ia3")
        if self.bea is not None and self.objective != "sft":
            raise ValueError("bea mixes refusal examples, which the sft objective trains on; use objective sft")
        if not self.chat_template and (self.bea is not None or self.system_prompt != "default"):
            raise ValueError("bea and system_prompt set a system message, which raw-text training (chat_template: "
                             "false) has no place for; drop them or train with the chat template")
        if self.packing and self.objective != "sft":
            raise ValueError("packing applies to sft only")
        if not self.chat_template and self.objective != "sft":
            raise ValueError(f"chat_template: false (raw-text training) applies to sft only; {self.objective} "
                             "renders its examples through the chat template")
        self._check_rl()
        if self.chat_template and "target_delimiter" in self.model_fields_set:
            raise ValueError("target_delimiter applies to raw-text training only; set chat_template: false or "
                             "drop target_delimiter")
        return self

    def _check_rl(self) -> None:
        """The reward and grpo objectives' own rules (the reward source itself is checked by `check_reward`)."""
        if self.objective == "reward" and self.method not in ("full", "lora"):
            raise ValueError(f"the reward objective trains a sequence-classification head with method full or lora, "
                             f"not '{self.method}'")
        if self.objective == "grpo" and not self.reward:
            raise ValueError("objective grpo needs reward: a reward-model folder, judge:NAME or module:function")
        if self.objective != "grpo" and self.reward is not None:
            raise ValueError(f"reward applies to the grpo objective only, not {self.objective}")
        if self.objective != "grpo" and "grpo" in self.model_fields_set:
            raise ValueError(f"grpo settings apply to the grpo objective only, not {self.objective}")
        if self.objective == "grpo" and (self.batch_size * self.grad_accum) % self.grpo.num_generations:
            raise ValueError(f"grpo: batch_size x grad_accum ({self.batch_size * self.grad_accum} completions per "
                             f"step) must be a multiple of grpo.num_generations ({self.grpo.num_generations}): a "
                             "step holds whole groups of samples of one prompt")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[(self.method, self.objective)]

    def label(self) -> str:
        return self.name or f"{self.method}-{self.objective}"

    def training_hash(self) -> str:
        """Identity of what is trained (not where it is written): resuming needs the same one."""
        from aftertune.fileio import canonical_json, sha256_text

        d = self.model_dump(mode="json", exclude={"out", "merge", "name"})
        for key in _LATER_FIELDS:  # counted only when changed, so tune folders written before them still resume
            default = TuneConfig.model_fields[key].get_default(call_default_factory=True)
            if d[key] == (default.model_dump(mode="json") if isinstance(default, BaseModel) else default):
                del d[key]
        return sha256_text(canonical_json(d))


class SequentialSpec(_Strict):
    """A sequential fine-tune: stages applied one after the other from `model`."""

    model: str
    out: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: list[dict[str, Any]] = Field(min_length=1)

    def stage_configs(self) -> list[TuneConfig]:
        out = []
        for i, stage in enumerate(self.stages, 1):
            if "model" in stage:
                raise UserError(f"stage {i}: 'model' is not allowed in a stage; each stage starts from the "
                                "previous one (the spec's 'model' is the first stage's start)")
            merged = {**self.defaults, **stage}
            merged.setdefault("name", f"stage{i}")
            out.append(parse_config(merged, where=f"stage {i}"))
        names = [c.name for c in out]
        if len(set(names)) != len(names):
            raise UserError(f"stage names must be unique, got {names}")
        return out


def parse_config(data: dict[str, Any], where: str = "config") -> TuneConfig:
    try:
        return TuneConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {_pretty(exc)}") from None


def _pretty(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (see `aftertune tune --help` for the fields)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def load_spec(path: str | Path) -> TuneConfig | SequentialSpec:
    """A YAML file holding either one TuneConfig or a sequential spec (`stages:`)."""

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such spec file")
    data = load_yaml(p, "YAML spec")
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of fields at the top level")
    if "tune" in data and isinstance(data["tune"], dict):  # allow a `tune:` section inside a larger spec
        data = data["tune"]
    if "stages" in data:
        try:
            return SequentialSpec.model_validate(data)
        except ValidationError as exc:
            raise UserError(f"{p}: {_pretty(exc)}") from None
    return parse_config(data, where=str(p))
