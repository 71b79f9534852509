"""What `import` checks in every checkpoint folder before it reads a tensor, so that anything wrong with a
folder made elsewhere is one line naming the file and the problem, never a traceback from a library.

- config.json: readable JSON, an object, sizes that are whole numbers within what any model has (the
  bounds of config.MODEL_LIMITS), and a parameter count this machine can load (train/fits.py);
- weights: a safetensors file whose header is complete and whose data the file holds (a truncated copy is
  caught here, not inside the loader); an index whose weight_map names plain files of the folder;
- links: a file that is a symbolic link must point inside the folder the user named (a hub snapshot's
  links point into the hub cache's blobs/, which is allowed): a link elsewhere is refused, not followed.

`reading(...)` turns the errors of the readers themselves (a .bin that a weights-only load refuses, a
damaged file that passed the checks) into the same kind of line.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import MODEL_LIMITS, ModelConfig
from ..errors import LensError, first_line

SIZE_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "n_embd": "hidden_size",
             "d_model": "hidden_size", "intermediate_size": "intermediate_size", "n_inner": "intermediate_size",
             "num_hidden_layers": "num_layers", "n_layer": "num_layers", "num_attention_heads": "num_heads",
             "n_head": "num_heads", "max_position_embeddings": "max_seq_len", "n_positions": "max_seq_len"}
"""The size fields of the config.json of the architectures we read, and the model field each bounds."""


def read_config(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's config.json as a dict; one line when it is not a JSON object of sane sizes."""
    path = folder / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LensError(f"{path} is not readable JSON ({type(e).__name__}: {first_line(e)[:100]}); re-copy it from "
                        f"where the model was saved") from None
    if not isinstance(hf, dict):
        raise LensError(f"{path} is a JSON {type(hf).__name__}, not the object of a model config; is it the "
                        f"model's config.json?")
    for key, field in SIZE_KEYS.items():
        value = hf.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value != int(value) or not 0 < value <= MODEL_LIMITS[field]:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise LensError(f"{path}: {key} {shown} is not a size any model has (a whole number in [1, "
                            f"{MODEL_LIMITS[field]}]); is this the model's config.json?")
    return hf


def hf_sizes(hf: dict[str, Any]) -> dict[str, int]:
    """An HF config.json's sizes under the model config's field names (GPT-2's n_embd, n_layer, ... too)."""
    get = lambda *names, default=0: next((int(hf[n]) for n in names if hf.get(n)), default)  # noqa: E731
    h = get("hidden_size", "n_embd", "d_model")
    return dict(hidden_size=h, intermediate_size=get("intermediate_size", "n_inner", default=4 * h),
                num_layers=get("num_hidden_layers", "n_layer"), num_heads=get("num_attention_heads", "n_head"),
                vocab_size=get("vocab_size"), max_seq_len=get("max_position_embeddings", "n_positions", default=1024))


def descriptive_shape(hf: dict[str, Any]) -> ModelConfig:
    """The run config's model section for an HF architecture (the model itself is built from its own config):
    an import's and a model in memory's."""
    kw = hf_sizes(hf)
    try:
        return ModelConfig(**kw)
    except LensError:  # a head size this LLaMA-shaped record rejects (odd): record one head, the rest holds
        return ModelConfig(**{**kw, "num_heads": 1})


def parameter_count(hf: dict[str, Any]) -> int:
    """Roughly the parameters a config describes (embedding, LM head, attention and MLP matrices)."""
    s = hf_sizes(hf)
    h, i = s["hidden_size"], s["intermediate_size"]
    return 2 * s["vocab_size"] * h + s["num_layers"] * (4 * h * h + 3 * h * i)


def check_links(folder: Path, root: Path) -> None:
    """Refuse a file of the checkpoint folder that is a symbolic link to somewhere outside `root`."""
    root = root.resolve()
    for f in sorted(folder.iterdir()):
        if f.is_symlink():
            target = f.resolve()
            if not target.is_relative_to(root):
                raise LensError(f"{f} is a symbolic link to {target}, outside {root}; imports read only the files "
                                f"of the folder you name: copy the file in, or import the folder it points to")


def check_safetensors(path: Path) -> None:
    """The file's 8-byte header length, JSON header and data offsets fit the file (else one line)."""
    size = path.stat().st_size
    bad = f"{path} is not a complete safetensors file"
    fix = "re-copy it from where the model was saved"
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise LensError(f"{bad} ({size} bytes, shorter than its header); {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise LensError(f"{bad} (its header says {n} bytes of metadata, the file has {size - 8}); {fix}")
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LensError(f"{bad} ({type(e).__name__}: {first_line(e)[:80]}); {fix}") from None
    if not isinstance(header, dict):
        raise LensError(f"{bad} (its header is not a JSON object); {fix}")
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    if ends and max(ends) > size - 8 - n:
        raise LensError(f"{bad} (it is {size} bytes; its tensors end at byte {8 + n + max(ends)}): truncated? {fix}")


def weight_files(folder: Path) -> list[Path]:
    """The weight files a checkpoint folder's loader will read (the shards an index names, each checked to be
    a plain file name of the folder)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = folder / index
        if path.is_file():
            try:
                index = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise LensError(f"{path} is not readable JSON ({first_line(e)[:80]})") from None
            wmap = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
                raise LensError(f"{path} has no weight_map of tensor names to shard files")
            if not isinstance(index.get("metadata"), dict):  # transformers reads it to load the shards
                raise LensError(f"{path} has no metadata object, which a save_pretrained index has; re-copy it")
            shards = sorted(set(wmap.values()))
            for s in shards:
                if Path(s).name != s or not (folder / s).is_file():
                    raise LensError(f"{path} names shard {s!r}, which is not a file of {folder}")
            return [folder / s for s in shards]
    return [folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()][:1]


def check_checkpoint(folder: Path, root: Path) -> dict[str, Any]:
    """Every check above for one checkpoint folder; returns its config.json."""
    check_links(folder, root)
    hf = read_config(folder)
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            check_safetensors(f)
    return hf


@contextlib.contextmanager
def reading(where: Path | str) -> Iterator[None]:
    """The errors a reader raises on a damaged or refused file, as one LensError naming `where`."""
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol, before it refuses the file anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    except LensError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, RuntimeError, KeyError) as e:
        what = ("holds objects other than tensors, which a weights-only load refuses (nothing in it was run)"
                if isinstance(e, pickle.UnpicklingError) else f"cannot be read ({type(e).__name__}: "
                                                                 f"{first_line(e)[:120]})")
        raise LensError(f"{where} {what}; re-save it with save_pretrained(safe_serialization=True) where it was "
                        f"made") from None
    except Exception as e:  # safetensors' own SafetensorError derives from Exception only
        if type(e).__name__ != "SafetensorError":
            raise
        raise LensError(f"{where} has a damaged safetensors file ({first_line(e)[:120]}); re-copy it") from None
