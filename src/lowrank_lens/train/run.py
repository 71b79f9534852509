"""Set up a run directory (fresh or resumed), build data / model / method / optimizer, and train.

    runs/<run-id>/config.json     resolved config + provenance + data fingerprint
                 /log.jsonl       one object per logged step and per validation
                 /val_tokens.npy  the fixed validation rows (int32 [N, T], -1 = masked)
                 /ckpt/step_*/    see checkpoint.py
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..analysis.frames import chosen_metrics
from ..atomic import write_atomic, write_json_atomic
from ..callback import LensCallback
from ..config import RunConfig
from ..data import DataBundle, build_data
from ..distributed import DistEnv, init_distributed, shutdown
from ..errors import LensError
from ..hashing import flatten
from ..methods import get_method
from ..methods.base import Method
from ..methods.surgery import check_param_groups
from ..model import build_model
from ..provenance import provenance
from ..runfolder.checkpoint import (
    checkpoint_steps,
    complete_checkpoints,
    load_model_state,
    load_resume_state,
    recover_interrupted_saves,
)
from ..runfolder.files import load_run_config, run_name
from ..runfolder.folder import RunLock, check_restartable, check_run_name, claim_run_dir, forget_unused_run_dir
from ..runfolder.log import LENS_FILE
from .fits import check_fits
from .logs import RunLogger, saved_trackers
from .loop import Trainer
from .parallel import Replicated, make_parallel

log = logging.getLogger("lowrank_lens")

# Keys that may differ between a run and its resumption: they change where and how we log, not the maths.
# train.parallel too: checkpoints are whole tensors in one format, so a run resumes under DDP or FSDP2.
RESUME_MAY_DIFFER = ("train.device", "train.sinks", "train.log_every", "data.cache_dir", "train.parallel")


def default_run_name(cfg: RunConfig) -> str:

    return run_name(cfg.scale, cfg.method, cfg.train.seed)


def config_differences(saved: RunConfig, now: RunConfig) -> list[str]:
    a, b = flatten(saved.to_dict()), flatten(now.to_dict())
    keys = sorted((set(a) | set(b)) - {"notes"})
    return [f"{k} (saved {a.get(k)!r}, now {b.get(k)!r})" for k in keys
            if a.get(k) != b.get(k) and not k.startswith(RESUME_MAY_DIFFER)]


def _load_init_from(model: torch.nn.Module, path: str) -> None:
    """Warm start (e.g. ReLoRA from a full-rank checkpoint): a run dir means its latest checkpoint."""
    p = Path(path)
    ckpts = complete_checkpoints(p)
    ckpt = ckpts[-1][1] if ckpts else p
    state = load_model_state(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LensError(f"train.init_from {path} does not fit this model (missing {missing[:2]}, unexpected "
                        f"{unexpected[:2]}); warm starts need a full-rank checkpoint of the same preset")


def build_components(cfg: RunConfig, device: torch.device, parallel: Replicated | None = None
                     ) -> tuple[torch.nn.Module, Method, torch.optim.Optimizer]:
    """Model (seeded init, optional warm start, the method's surgery, precision, device, and the shards of
    train.parallel=fsdp), method, optimizer (built on the parameters as they are sharded)."""
    t = cfg.train
    model = build_model(cfg.model, seed=t.seed)
    if t.init_from:
        _load_init_from(model, t.init_from)
    method = get_method(cfg.method)(cfg.method_cfg, cfg)
    torch.manual_seed(t.seed)  # any randomness of the surgery is a function of the seed (same on all ranks)
    model = method.prepare_model(model)
    if t.precision == "bf16-pure":
        model = model.to(torch.bfloat16)
    model = model.to(device)
    if parallel is not None:
        model = parallel.shard(model, method)
    optimizer = method.build_optimizer(model, cfg.optim)
    check_param_groups(model, optimizer)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    return model, method, optimizer


def train(cfg: RunConfig, out: str | Path, run_name: str | None = None, resume: bool = False) -> Path:
    """Train (or resume) one run; returns its directory. Works alone and under torchrun (DDP or FSDP2)."""
    run_dir = Path(out) / check_run_name(run_name or default_run_name(cfg))
    if cfg.train.lens:
        chosen_metrics(cfg.train.lens, {})  # an unknown lens metric: one line, before the run folder exists
    env = init_distributed(cfg.train.device)
    lock, created = None, False
    try:
        if env.is_main:  # only rank 0 writes in the run folder
            created = claim_run_dir(run_dir)
            lock = RunLock(run_dir)
            for action in recover_interrupted_saves(run_dir):
                log.info(f"{run_dir.name}: a save was interrupted earlier: {action}")
        env.barrier()
        return _train(cfg, run_dir, resume, env)
    finally:
        if lock is not None:
            lock.release()
            if created:
                forget_unused_run_dir(run_dir)
        shutdown(env)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, env: DistEnv) -> Path:
    t = cfg.train
    if t.total_batch_size % (t.micro_batch_size * env.world):
        raise LensError(f"train.total_batch_size {t.total_batch_size} is not divisible by micro_batch_size "
                        f"{t.micro_batch_size} x {env.world} processes; change --set train.micro_batch_size")
    existing = complete_checkpoints(run_dir)
    if existing and not resume:
        raise LensError(f"{run_dir} already holds a run; add --resume to continue it, or pass a new --run-name")
    if not existing:
        check_restartable(run_dir)
    if existing:
        diffs = config_differences(load_run_config(run_dir), cfg)
        if diffs:
            raise LensError(f"cannot resume {run_dir}: the config differs from the saved one in "
                            f"{'; '.join(diffs)}. Rerun with the saved settings or start a new --run-name")
        if existing[-1][0] >= t.steps:
            log.info(f"{run_dir} is already complete ({t.steps} steps)")
            return run_dir

    check_fits(cfg, env.device, env.world)  # before a tokenizer, a batch or a weight is allocated
    data = build_data(cfg.data, cfg.model.vocab_size, is_main=env.is_main, barrier=env.barrier, log=log.info)
    parallel = make_parallel(t.parallel, env)
    model, method, optimizer = build_components(cfg, env.device, parallel)

    if env.is_main and not existing:
        # A fresh run, or one that died before its step-0 checkpoint: (over)write its files one by one.
        (run_dir / "log.jsonl").unlink(missing_ok=True)
        write_json_atomic(run_dir / "config.json", {**cfg.to_dict(), "format_version": 1,
                                                    "provenance": provenance(env.world, env.device),
                                                    "data_fingerprint": data.fingerprint})
        write_atomic(run_dir / "val_tokens.npy", lambda p: np.save(p, data.val_rows))
    env.barrier()

    resume_from = existing[-1] if existing else None
    resume_state = load_resume_state(resume_from[1]) if resume_from else None
    # The tracker runs continue: the sinks reopen the runs the checkpoint recorded, from its step on.
    logger = RunLogger(run_dir, env.is_main, t.sinks, cfg.to_dict(), resumed_at=resume_from[0] if resume_from else None,
                       trackers=saved_trackers(resume_state))
    trainer = Trainer(cfg=cfg, run_dir=run_dir, env=env, method=method, model=model, optimizer=optimizer,
                      data=data, logger=logger, ckpt_steps=checkpoint_steps(t.steps, t.checkpoints),
                      parallel=parallel, lens=_lens(cfg, run_dir, data, env))
    if resume_from is not None and resume_state is not None:
        step, path = resume_from
        parallel.load_model_state(model, load_model_state(path))
        trainer.restore(resume_state)
        if env.is_main:
            logger.truncate_after(step)
            log.info(f"resuming {run_dir.name} from step {step}")
        if trainer.lens is not None:  # the killed run's later rows go; these weights are the next 'before'
            trainer.lens.truncate_after(step)
            if step % t.lens_every == 0:  # observed again if it died between this checkpoint and its rows
                trainer.observe_lens(step, remember=trainer.lens.observed(step))
    else:
        trainer.save(trainer.validate())
        if trainer.lens is not None:
            trainer.observe_lens(0)

    n_params = sum(p.numel() for p in model.parameters())
    if env.is_main:
        log.info(f"{run_dir.name}: {cfg.method} at {cfg.scale}, {n_params / 1e6:.2f}M parameters, {t.steps} steps "
                 f"of {t.total_batch_size} x {cfg.data.seq_len} tokens, {env.world} process(es) on {env.device}"
                 f"{' (FSDP2 shards)' if parallel.lockstep else ''}")
    try:
        trainer.fit()
    finally:
        logger.close()
    if env.is_main:
        log.info(f"done: {run_dir}")
    return run_dir


def _lens(cfg: RunConfig, run_dir: Path, data: DataBundle, env: DistEnv) -> LensCallback | None:
    """The in-training lens of train.lens: the run's validation rows, into <run>/lens.jsonl."""
    t = cfg.train
    if not t.lens:
        return None
    return LensCallback(t.lens, t.lens_every, tokens=data.val_rows, pad_id=data.pad_id, out=run_dir / LENS_FILE,
                        device=str(env.device), batch_size=t.eval_batch_size or t.micro_batch_size, name=run_dir.name)
