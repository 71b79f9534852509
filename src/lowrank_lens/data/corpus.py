"""Corpora as streams of documents, all read through HF `datasets.load_dataset(..., streaming=True)`.

One code path serves the three kinds of source:
- a local path (.txt, .jsonl/.json, .parquet, or a folder of them, read recursively in sorted order);
  a .txt file yields one document per blank-line separated paragraph block (`sample_by="paragraph"`),
  json/parquet yield one document per record (`data.text_field`);
- `embedded`, a cached jsonl written by `embedded.py` and then read exactly like a local file;
- `c4`, `allenai/c4` "en" from the hub, train split shuffled like the reference (`.shuffle(seed)`,
  buffer 1000) and the validation split shuffled with the reference's hard-coded seed 42.

Local corpora hold out documents for validation by a hash of their text (`is_val_document`): the
decision needs no index, so it works in streaming, does not move when `max_documents` changes, and sends
duplicate texts to the same side, so a held-out document never appears in training. Documents are
stripped of surrounding whitespace; empty ones are dropped before `max_documents` counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets import IterableDataset, concatenate_datasets, load_dataset

from ..config import DataConfig
from ..errors import LensError
from ..hashing import stable_hash
from .cache import file_sha256
from .embedded import embedded_corpus

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
C4 = ("allenai/c4", "en")
C4_VAL_SEED = 42  # the reference shuffles the validation stream with 42 whatever the training seed
LOCAL_SHUFFLE_BUFFER = 10_000

# Indirection so tests can stand in a local dataset for the hub without touching `datasets` itself.
_hub_load_dataset = load_dataset


def is_val_document(text: str, val_fraction: float) -> bool:
    """Deterministic held-out test: the text's hash, read as a number in [0, 1), is below val_fraction."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2.0**64 < val_fraction


def _clean(example: dict) -> dict:
    text = example["text"]
    if text is not None and not isinstance(text, str):
        raise LensError(f"the text column holds {type(text).__name__} values, not strings; set data.text_field")
    return {"text": (text or "").strip()}


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def local_files(source: str) -> list[Path]:
    """The usable files of a local source, sorted; LensError when there are none."""
    path = Path(source).expanduser()
    hint = "give a .txt/.jsonl/.json/.parquet file or a folder of them, or use data.source=embedded"
    if not path.exists():
        raise LensError(f"data.source {source!r} does not exist; {hint}")
    if path.is_file():
        if path.suffix.lower() not in BUILDERS:
            raise LensError(f"data.source {source!r} has an unsupported type {path.suffix!r}; {hint}")
        return [path]
    files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                   key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise LensError(f"data.source {source!r} holds no .txt/.jsonl/.json/.parquet files; {hint}")
    return files


@dataclass
class Corpus:
    """A document source plus its provenance. `stream(split)` gives an iterable of stripped texts."""

    id: str
    """'embedded', 'c4' or the resolved path."""
    hub: bool
    fingerprint: dict
    """JSON-serialisable provenance; `fingerprint['hash']` keys every downstream cache."""
    files: list[Path] = field(default_factory=list)
    text_field: str = "text"
    max_documents: int = 0
    val_fraction: float = 0.02
    hf_cache: str | None = None

    @property
    def hash(self) -> str:
        return self.fingerprint["hash"]

    def _local(self) -> IterableDataset:
        parts = []
        i = 0
        while i < len(self.files):  # one load_dataset per run of files of the same type keeps file order
            builder = BUILDERS[self.files[i].suffix.lower()]
            j = i
            while j < len(self.files) and BUILDERS[self.files[j].suffix.lower()] == builder:
                j += 1
            group = [str(p) for p in self.files[i:j]]
            kw = {"sample_by": "paragraph"} if builder == "text" else {}
            try:
                ds = load_dataset(builder, data_files=group, split="train", streaming=True,
                                  cache_dir=self.hf_cache, **kw)
            except Exception as e:  # datasets raises many types for unreadable files
                raise LensError(f"could not read {group[0]}: {_one_line(e)}") from None
            col = "text" if builder == "text" else self.text_field
            if ds.column_names is not None and col not in ds.column_names:
                raise LensError(f"{group[0]} has no column {col!r} (columns: {', '.join(ds.column_names)}); "
                                f"set data.text_field")
            ds = ds.select_columns([col])
            parts.append(ds if col == "text" else ds.rename_column(col, "text"))
            i = j
        ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        ds = ds.map(_clean).filter(lambda ex: bool(ex["text"]))
        return ds.take(self.max_documents) if self.max_documents else ds

    def _hub(self, split: str, seed: int) -> IterableDataset:
        hf_split = "train" if split == "train" else "validation"
        try:
            ds = _hub_load_dataset(C4[0], C4[1], split=hf_split, streaming=True)
        except (ConnectionError, OSError, FileNotFoundError) as e:
            raise LensError(f"data.source=c4 needs the Hugging Face hub ({C4[0]}), which is unreachable "
                            f"({_one_line(e)}); use a local corpus instead: --set data.source=/path/to/"
                            f"texts.jsonl (or .txt/.parquet/a folder), or data.source=embedded") from None
        ds = ds.select_columns(["text"]).shuffle(seed=seed)
        ds = ds.map(_clean).filter(lambda ex: bool(ex["text"]))
        return ds.take(self.max_documents) if self.max_documents and split == "train" else ds

    def check(self) -> None:
        """Fail now, with the hub message, if a hub corpus cannot even be opened (before any other work)."""
        if self.hub:
            self._hub("train", C4_VAL_SEED)

    def stream(self, split: str, shuffle_seed: int | None = None, epoch: int = 0) -> IterableDataset:
        """Documents of `split` ('train' or 'val') as a streaming dataset with one 'text' column.

        `shuffle_seed`: None keeps corpus order (local) or the reference order (c4 train uses seed 42 then);
        otherwise a buffered shuffle whose order also depends on `epoch` (datasets' set_epoch).
        """
        if self.hub:
            seed = C4_VAL_SEED if split == "val" else (C4_VAL_SEED if shuffle_seed is None else shuffle_seed)
            ds = self._hub(split, seed)
        else:
            want_val = split == "val"
            frac = self.val_fraction
            ds = self._local().filter(lambda ex: is_val_document(ex["text"], frac) == want_val)
            if shuffle_seed is not None:
                ds = ds.shuffle(seed=shuffle_seed, buffer_size=LOCAL_SHUFFLE_BUFFER)
        ds.set_epoch(epoch)
        return ds

    def texts(self, split: str, shuffle_seed: int | None = None, epoch: int = 0) -> Iterator[str]:
        """Iterate the texts of `split`, turning read errors into one-line LensErrors."""
        it = iter(self.stream(split, shuffle_seed, epoch))
        while True:
            try:
                ex = next(it)
            except StopIteration:
                return
            except LensError:
                raise
            except Exception as e:  # a bad record or a dropped connection surfaces here, mid-stream
                raise LensError(f"reading data.source {self.id!r} failed: {_one_line(e)}") from None
            yield ex["text"]


def open_corpus(cfg: DataConfig, cache_dir: Path, log: Callable[[str], None] = print) -> Corpus:
    """Resolve cfg.source into a Corpus (building the embedded corpus on first use)."""
    common = dict(max_documents=cfg.max_documents, val_fraction=cfg.val_fraction,
                  hf_cache=str(cache_dir / "hf_datasets"))
    if cfg.source == "c4":
        fp = {"corpus": f"{C4[0]}:{C4[1]}", "datasets_version": datasets.__version__,
              "train_shuffle": "datasets buffered shuffle (1000), seed data.shuffle_seed",
              "val_shuffle_seed": C4_VAL_SEED, "max_documents": cfg.max_documents}
        # The stream order depends on the datasets version, so it is part of the identity.
        return Corpus(id="c4", hub=True, fingerprint={**fp, "hash": stable_hash(fp)}, **common)
    if cfg.source == "embedded":
        files, ident, field_name = [embedded_corpus(cache_dir, log)], "embedded", "text"
    else:
        files, ident, field_name = local_files(cfg.source), str(Path(cfg.source).expanduser().resolve()), cfg.text_field
    root = Path(ident) if Path(ident).is_dir() else files[0].parent
    listing = [[p.relative_to(root).as_posix(), p.stat().st_size, file_sha256(p, cache_dir)] for p in files]
    fp = {"corpus": ident, "files": len(files), "bytes": sum(x[1] for x in listing),
          "text_field": field_name, "max_documents": cfg.max_documents, "val_fraction": cfg.val_fraction,
          "split": "blake2b(text) < val_fraction"}
    # The hash covers content only (not the folder's location), so a moved corpus keeps its caches.
    fp["hash"] = stable_hash({"files": listing, "field": field_name, "max": cfg.max_documents,
                              "val": cfg.val_fraction})
    return Corpus(id=ident, hub=False, fingerprint=fp, files=files, text_field=field_name, **common)
