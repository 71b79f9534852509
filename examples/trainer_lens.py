# %% [markdown]
# # The lens in a Hugging Face Trainer run
#
# A tiny GPT-2 trained with `transformers.Trainer` on token rows, with `lowrank_lens.LensCallback` computing
# weight and update spectra and a small random loss landscape every few steps. Then the series is read back,
# the final model is compared with its initial weights, and the series is plotted, all from Python. It runs in
# well under a minute on a laptop CPU; `python examples/trainer_lens.py OUT_DIR` (or run the cells in an editor
# that knows `# %%`). The test suite runs it (tests/api/test_example.py).

# %%
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the example also runs without a display
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import lowrank_lens as ll

out = Path(sys.argv[1] if len(sys.argv) > 1 else "lens-example")
out.mkdir(parents=True, exist_ok=True)
steps = 20

# %% [markdown]
# Random token rows stand in for a tokenized corpus; the first eight are the rows the lens evaluates on.

# %%
rows = np.random.default_rng(0).integers(0, 128, size=(256, 32)).astype(np.int64)


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return len(rows)

    def __getitem__(self, i):
        ids = torch.as_tensor(rows[i])
        return {"input_ids": ids, "labels": ids.clone()}


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=2, n_positions=32,
                                   attn_implementation="eager"))
initial = copy.deepcopy(model)

# %% [markdown]
# The callback: every 5 optimizer steps, the spectra of the weights and of their update since the last
# observation, and a 2-direction random landscape. Results go to `lens.jsonl` and into the Trainer's log.

# %%
lens = ll.LensCallback(("spectra", "update_spectra", "landscape_random"), every=5, tokens=rows[:8],
                       out=out / "lens.jsonl", device="cpu", sequences=8, batch_size=8)
args = TrainingArguments(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=8,
                         learning_rate=3e-3, logging_steps=5, report_to=[], use_cpu=True, seed=0,
                         save_strategy="no", disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[lens]).train()

# %% [markdown]
# The series, as `ll.analyze` would give each step's rows.

# %%
series = ll.read_lens(out / "lens.jsonl")
spectra = series[series.metric == "spectra"][["step", "effective_rank", "stable_rank"]]
updates = series[series.metric == "update_spectra"][["step", "update_stable_rank", "update_relative_mean"]]
print(spectra.to_string(index=False))
print(updates.to_string(index=False))

# %% [markdown]
# After training: the final model against its initial weights (interpolation barrier, IMIB, activation
# similarity, update spectra), computed on the models in memory.

# %%
pair = ll.compare(initial, model, tokens=rows[:8], names=("init", "final"), device="cpu", sequences=8,
                  batch_size=8, interpolation={"points": 7}, imib={"points": 7})
print(pair[["metric", "barrier", "imib", "cka_mean", "update_stable_rank"]].to_string(index=False))

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(spectra["step"], spectra["effective_rank"], marker="o")
axes[0].set(xlabel="step", ylabel="effective rank (mean over matrices)")
axes[1].plot(updates["step"], updates["update_stable_rank"], marker="o", color="tab:red")
axes[1].set(xlabel="step", ylabel="stable rank of the update")
fig.tight_layout()
fig.savefig(out / "lens_series.png", dpi=100)
print(f"figure: {out / 'lens_series.png'}")
