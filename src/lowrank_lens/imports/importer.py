"""`lowrank-lens import`: a checkpoint series made elsewhere becomes a run directory every reader opens.

    runs/NAME/config.json        run config (method = the plugin that loads it) + "imported" record (label,
                                 source, layout, weights) + provenance + data fingerprint
             hf_config/           the HF config.json (and tokenizer files) every checkpoint shares
             val_tokens.npy       the evaluation rows (int32 [N, T], -1 = masked)
             ckpt/step_N/         model.safetensors, meta.json (step, both validation perplexities,
                                  model_sha256, where the weights came from), state.pt (a marker: no optimizer)

Weights: a local single-file model.safetensors whose tensor names are what the loader expects is
hard-linked (same file system; a symbolic link to it otherwise), never copied; a sharded or .bin
checkpoint, and the factor layouts of the official scripts (their names differ), are converted into a new
model.safetensors (a copy), and meta.json says which. The content hash (model_sha256) identifies the
weights for the analysis cache either way. The run is built in a temporary folder beside --out and renamed
into place at the end, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from ..atomic import write_atomic, write_json_atomic
from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..distributed import DistEnv
from ..errors import LensError
from ..evaluation import evaluate
from ..machine import check_loadable
from ..methods import get_method, method_names
from ..methods.pretrained import HF_CONFIG_DIR
from ..provenance import provenance
from ..runfolder.checkpoint import file_sha256, step_dir_name
from ..runfolder.files import run_config_from_dict
from ..runfolder.folder import MARKER
from ..runfolder.loading import load_checkpoint
from ..tempdirs import finish_temp_dir, make_temp_dir, sweep_stale
from .checks import check_checkpoint, descriptive_shape, parameter_count, reading
from .layouts import convert, detect_layout, layouts, llama_shape, read_state, weight_keys
from .sources import Snapshot, hub_series, local_series, looks_like_repo_id
from .tokens import TOKENIZER_FILES, evaluation_rows

log = logging.getLogger("lowrank_lens")
_VOLATILE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")


@dataclass
class ImportOptions:
    label: str = ""
    """The method the runs were trained with, as tables show it (default: the layout's plugin, 'imported')."""
    scale: str = "imported"
    seed: int = 0
    tokens: str = ""
    """A .npy of token rows, or a text file tokenized with the checkpoint's tokenizer; default: rows of the
    embedded corpus's validation split."""
    revisions: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    layout: str = "auto"
    seq_len: int = 256
    rows: int = 256
    batch_size: int = 8
    hub_cache: str = ""
    """huggingface_hub's cache folder (default: its own, HF_HUB_CACHE)."""
    baseline: bool = False
    """The series is the baseline other runs are compared with (activation similarity's reference)."""

    def __post_init__(self) -> None:
        for flag, value in (("--seq-len", self.seq_len), ("--rows", self.rows)):
            if value < 1:
                raise LensError(f"{flag} {value} is out of range; it must be at least 1")


def _series(source: str, opts: ImportOptions) -> tuple[list[Snapshot], Path]:
    """The checkpoints, and the folder their files may link into: the folder the user named, or for the hub
    the repo's cache folder (a snapshot's files are links into its blobs/)."""
    if opts.revisions or looks_like_repo_id(source):
        series = hub_series(source, list(opts.revisions), opts.hub_cache or None)
        return series, series[0].folder.parents[1]
    return local_series(Path(source)), Path(source)


def _checked_config(series: list[Snapshot], root: Path) -> dict[str, Any]:
    """The series' one model config, after every checkpoint folder passed imports/checks.py."""
    def load(s: Snapshot) -> dict[str, Any]:
        return {k: v for k, v in check_checkpoint(s.folder, root).items() if k not in _VOLATILE}

    first = load(series[0])
    check_loadable(parameter_count(first), f"{series[0].folder / 'config.json'}")
    for s in series[1:]:
        if load(s) != first:
            raise LensError(f"{s.origin} has another model config than {series[0].origin}; a run is one model's "
                            f"checkpoints: import the series separately")
    return first


def _run_config(layout: str, hf: dict[str, Any], series: list[Snapshot], opts: ImportOptions,
                fields: dict[str, Any]) -> RunConfig:
    plugin = "pretrained" if layout == "hf" else layout
    cls = get_method(plugin)
    if layout == "hf":
        model = descriptive_shape(hf)
        method_cfg = cls.Config(model_type=str(hf.get("model_type", "")), targets=tuple(opts.targets), **fields)
    else:
        model = llama_shape(hf, series[0].folder)
        method_cfg = cls.Config(**fields)
    steps = max(1, series[-1].step)
    cfg = RunConfig(scale=opts.scale, method=plugin, model=model,
                    data=DataConfig(seq_len=opts.seq_len), train=TrainConfig(steps=steps, seed=opts.seed),
                    method_cfg=method_cfg,
                    notes=[f"imported ({layout} layout): trained elsewhere; train/optim sections are placeholders"])
    d = cfg.to_dict()
    d["method_cfg"].update(cls.resolve(cfg))
    return run_config_from_dict(d)  # validates as every reader will


_OLD_BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")
"""Saved buffers of older transformers versions that today's models derive instead (dropped when read)."""


def _hf_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors as transformers itself loads the folder (its own renames of old checkpoints applied)."""

    return AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


def name_changes(folder: Path, expected: dict[str, tuple[int, ...]]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(renames 'saved=model', dropped) that make the folder's single safetensors file load as it is, or None
    when it cannot be linked (sharded, .bin, or names not matched one to one by content)."""
    if not (folder / "model.safetensors").is_file():
        return None
    keys = set(weight_keys(folder))
    missing, extra = [k for k in expected if k not in keys], sorted(k for k in keys if k not in expected)
    if not missing and not extra:
        return (), ()
    reference, saved = _hf_state(folder), load_file(str(folder / "model.safetensors"))
    renames = []
    for m in missing:
        match = [e for e in extra if m in reference and saved[e].shape == reference[m].shape
                 and torch.equal(saved[e], reference[m])]
        if len(match) != 1:
            return None
        renames.append(f"{match[0]}={m}")
        extra.remove(match[0])
    if any(not e.endswith(_OLD_BUFFERS) for e in extra):
        return None
    return tuple(renames), tuple(extra)


def _expected(cfg: RunConfig, run_dir: Path) -> dict[str, tuple[int, ...]]:
    """The tensors the run's plugin loads (names and shapes), from the model it builds for the run."""
    plugin = get_method(cfg.method)(cfg.method_cfg, cfg)
    with torch.random.fork_rng(devices=[]):
        return plugin.reader.state_shapes(plugin.prepare_model(plugin.reader.base_model(run_dir)))


def _name_changes_of(series: list[Snapshot], expected: dict[str, tuple[int, ...]]) -> dict[int, Any]:
    """name_changes per checkpoint, worked out once per distinct set of saved names: checkpoints of one series
    save the same names, and matching them by content loads the model through transformers each time."""
    found: dict[tuple[str, ...], Any] = {}
    out = {}
    for snap in series:
        keys = tuple(weight_keys(snap.folder)) if (snap.folder / "model.safetensors").is_file() else ()
        if not keys:
            out[snap.step] = None
            continue
        if keys not in found:
            found[keys] = name_changes(snap.folder, expected)
        out[snap.step] = found[keys]
    return out


def _place_weights(snap: Snapshot, layout: str, dest: Path, expected: dict[str, tuple[int, ...]],
                   link: bool) -> str:
    """Put the snapshot's weights at dest/model.safetensors; returns how (for meta.json)."""
    src = snap.folder / "model.safetensors"
    if link:
        real = src.resolve()  # hub snapshots are symlinks into blobs/
        try:
            os.link(real, dest / "model.safetensors")
            return f"hard link to {real}"
        except OSError:
            os.symlink(real, dest / "model.safetensors")
            return f"symbolic link to {real} (another file system)"
    if layout == "hf":
        state = {k: v for k, v in _hf_state(snap.folder).items() if k in expected}
    else:
        state = convert(layout, snap.folder, read_state(snap.folder))[0]
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest / "model.safetensors"),
              metadata={"format": "lowrank-lens", "imported": snap.origin})
    return f"converted from {snap.origin} ({layout} layout; a copy)"


def _meta_extra(folder: Path) -> dict[str, Any]:
    """Tokens seen, where the source recorded them (the official scripts' training_state.json)."""
    for name in ("training_state.json", "trainer_state.json"):
        f = folder / name
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except ValueError:
                continue
            if isinstance(d.get("tokens_seen"), int):
                return {"tokens": d["tokens_seen"]}
    return {}


NO_TOKENS_NOTE = ("imported without evaluation rows (no tokenizer files and no --tokens): the metrics that read "
                  "only weights run; the others need --token-file ROWS.npy, or a re-import with --tokens")


def _evaluation_rows(opts: ImportOptions, hf_dir: Path, model: ModelConfig) -> tuple[np.ndarray | None, dict]:
    """The run's evaluation rows and data fingerprint; (None, a fingerprint saying so) for a checkpoint with
    no tokenizer and no --tokens: its weights import all the same (spectra need no tokens)."""
    if not opts.tokens and not any((hf_dir / f).is_file() for f in TOKENIZER_FILES):
        log.info(f"import: {NO_TOKENS_NOTE}")
        return None, {"imported": True, "tokenizer": None, "pad_id": 0, "rows": 0, "note": NO_TOKENS_NOTE}
    given = bool(opts.tokens) and Path(opts.tokens).suffix == ".npy"
    cut = not given and opts.seq_len > model.max_seq_len  # rows no longer than the model's positions
    rows, fingerprint = evaluation_rows(dataclasses.replace(opts, seq_len=model.max_seq_len) if cut else opts, hf_dir,
                                        model.vocab_size)
    if rows.shape[1] > model.max_seq_len:
        raise LensError(f"--tokens rows have {rows.shape[1]} tokens, more than the model's {model.max_seq_len} "
                        f"positions; cut them")
    why = (f"as given in {opts.tokens}" if given else
           f"--seq-len {opts.seq_len} cut to the model's {model.max_seq_len} positions" if cut else "packed")
    log.info(f"import: evaluation rows: {rows.shape[0]} of {rows.shape[1]} tokens ({why})")
    return rows, fingerprint


def import_series(source: str, out: Path, opts: ImportOptions | None = None) -> Path:
    """Import the checkpoint series at `source` into the new run directory `out` (see the module docstring)."""

    opts = opts or ImportOptions()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LensError(f"--out {out} already exists and is not empty; pass a new folder (imports never overwrite)")
    if opts.layout not in ("auto", *layouts()):
        raise LensError(f"--layout {opts.layout!r} is not one of auto, {', '.join(layouts())}")
    series, root = _series(source, opts)
    hf = _checked_config(series, root)
    with reading(series[0].folder):
        keys = weight_keys(series[0].folder)
        layout = detect_layout(series[0].folder, keys) if opts.layout == "auto" else opts.layout
        fields = convert(layout, series[0].folder, read_state(series[0].folder))[1] if layout != "hf" else {}
    label = opts.label or (layout if layout != "hf" else "imported")
    # the baseline: asked for, or the label is the registered baseline method (full-rank)
    baseline = opts.baseline or (label in method_names() and get_method(label).is_baseline)
    log.info(f"import: {len(series)} checkpoint(s) of {source} ({layout} layout, {hf.get('model_type')}), "
             f"steps {series[0].step}..{series[-1].step}, as method {label!r}")

    for done in sweep_stale(out.parent):
        log.info(f"import: {done}")
    tmp = make_temp_dir(out.parent, out.name)
    try:
        (tmp / MARKER).write_text("This folder is a lowrank-lens run directory (imported).\n")
        hf_dir = tmp / HF_CONFIG_DIR
        hf_dir.mkdir()
        for f in series[0].folder.iterdir():
            if f.suffix in (".json", ".model", ".txt", ".tiktoken") and f.is_file() and "index" not in f.name \
                    and f.name not in ("trainer_state.json", "training_state.json"):
                shutil.copyfile(f, hf_dir / f.name)
        cfg = _run_config(layout, hf, series, opts, fields)
        expected = _expected(cfg, tmp)
        changes = _name_changes_of(series, expected) if layout == "hf" else {s.step: None for s in series}
        names = next((c for c in changes.values() if c is not None), ((), ()))
        if names != ((), ()):  # the files keep their names: the plugin renames when it reads them
            cfg = _run_config(layout, hf, series, opts, {"renames": names[0], "dropped": names[1]})
        rows, fingerprint = _evaluation_rows(opts, hf_dir, cfg.model)
        record = {"label": label, "source": str(source), "layout": layout, "model_type": hf.get("model_type"),
                  "baseline": bool(baseline), "revisions": list(opts.revisions),
                  "checkpoints": [s.origin for s in series]}
        write_json_atomic(tmp / "config.json", {**cfg.to_dict(), "format_version": 1, "imported": record,
                                                "provenance": provenance(1, torch.device("cpu")),
                                                "data_fingerprint": fingerprint})
        if rows is not None:
            write_atomic(tmp / "val_tokens.npy", lambda p: np.save(p, rows))
        for snap in series:
            ck = tmp / "ckpt" / step_dir_name(snap.step)
            ck.mkdir(parents=True)
            with reading(snap.folder):
                how = _place_weights(snap, layout, ck, expected, link=changes[snap.step] == names)
            meta = {"step": snap.step, **_meta_extra(snap.folder), "method": cfg.method, "seed": opts.seed,
                    "imported_from": snap.origin, "weights": how, "format_version": 1,
                    "model_sha256": file_sha256(ck / "model.safetensors")}
            write_json_atomic(ck / "meta.json", meta)
            torch.save({"imported_from": snap.origin, "note": "no optimizer state: trained elsewhere"}, ck / "state.pt")
            with reading(snap.folder):
                loaded = load_checkpoint(ck)  # the real reader: what fails here would fail in every metric
            if rows is None:
                log.info(f"import: step {snap.step}: {how.split(' (')[0]}; no evaluation rows, no val_ppl")
                continue
            val = evaluate(loaded.model, rows, int(fingerprint["pad_id"]), opts.batch_size, DistEnv())
            write_json_atomic(ck / "meta.json", {**meta, "val": val})
            log.info(f"import: step {snap.step}: {how.split(' (')[0]}; val_ppl {val['val_ppl']:.2f}")
        finish_temp_dir(tmp)
        tmp.rename(out)
    except LensError as e:  # name the user's folders, not the temporary one removed below
        shutil.rmtree(tmp, ignore_errors=True)
        raise LensError(str(e).replace(str(tmp), str(out))) from None
    except BaseException:  # SIGTERM too (cli.py turns it into Terminated)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
