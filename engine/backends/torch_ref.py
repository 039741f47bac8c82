"""The reference: transformers' ``AutoModelForSequenceClassification`` in float32.

Every other format is checked against this one. torch is imported here, when a
model of this format is opened, never when ``engine`` is imported. Only safetensors
weights are loaded (a pickle can run code).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from engine.devices import DEFAULT_DEVICE, TORCH_DEVICES, check_device, fall_back_to_cpu
from engine.encoding import Encoder, TokenizerFiles
from engine.errors import ModelError
from engine.files import folder_files
from engine.modelmeta import DECODER_POOLING, ENCODER_POOLING, architecture_of, read_meta
from engine.scorer import Batch, Scorer
from engine.types import ModelInfo


def torch_device(device: str, torch: ModuleType) -> str:
    """The torch device type for a vocabulary name: the first of TORCH_DEVICES this install
    can use, else ``cpu``, with the loud warning unless the name was ``cpu`` or ``auto``."""
    device = check_device(device)
    usable = {"cpu": True, "cuda": torch.cuda.is_available(),
              "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    for kind in TORCH_DEVICES[device]:
        if usable[kind]:
            return kind
    if device != "auto":
        has = [k for k, ok in usable.items() if ok]
        why = (f"has no torch device for it (it has {', '.join(has)})" if not TORCH_DEVICES[device]
               else f"finds no {' or '.join(TORCH_DEVICES[device])} device (torch {torch.__version__})")
        fall_back_to_cpu("torch", device, why,
                         "Install a torch build for your GPU, or use the ONNX or GGUF export of the model.")
    return "cpu"


class TorchScorer(Scorer):
    def __init__(self, path: Path, *, device: str = DEFAULT_DEVICE, threads: int | None = None,
                 max_length: int | None = None, batch_size: int = 8, name: str | None = None,
                 dtype: str = "float32") -> None:
        device = check_device(device)  # before the slow imports: a typo fails fast
        folder = Path(path)
        if not any(folder.glob("*.safetensors")):
            raise ModelError(f"{folder}: no .safetensors weights. Arbiter never loads pickled "
                             "weights (.bin/.pt can run code); convert them to safetensors first.")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification
        except ImportError as e:
            raise ModelError("the torch backend needs `pip install arbiter[train]`") from e
        if threads:
            torch.set_num_threads(threads)
        meta = read_meta(folder)
        encoder = Encoder(TokenizerFiles.from_folder(folder, meta), max_length)
        self._torch = torch
        self.device = torch_device(device, torch)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, use_safetensors=True, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as e:
            raise ModelError(f"{folder}: transformers cannot load this model ({e})") from e
        if model.config.num_labels != 1:
            raise ModelError(f"{folder}: {model.config.num_labels} labels; a reward model has one")
        if model.config.pad_token_id is None:
            # HF finds the scored (last real) token through pad_token_id
            model.config.pad_token_id = encoder.pad_token_id
        self.model = model.eval().to(self.device)
        info = ModelInfo(
            name=name or folder.name,
            format="torch",
            architecture=architecture_of(folder, meta),
            pooling=DECODER_POOLING if encoder.kind == "chat" else ENCODER_POOLING,
            max_length=encoder.max_length,
            chat_template=encoder.files.chat_template,
            dtype=dtype.replace("float", "fp"),
            files=folder_files(folder, (".safetensors", ".json", ".jinja")),
            provider=self.device,
            length_correction=float(meta.get("length_correction") or 0.0),
        )
        super().__init__(info, encoder, batch_size=batch_size)

    def _forward(self, batch: Batch) -> np.ndarray:
        torch = self._torch
        kwargs = {
            "input_ids": torch.from_numpy(batch.input_ids).to(self.device),
            "attention_mask": torch.from_numpy(batch.attention_mask).to(self.device),
        }
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = torch.from_numpy(batch.token_type_ids).to(self.device)
        with torch.inference_mode():
            logits = self.model(**kwargs).logits
        return logits[:, 0].float().cpu().numpy().astype(np.float64)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
