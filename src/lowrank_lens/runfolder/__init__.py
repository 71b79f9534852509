"""The run folder: its layout and every reader and writer of its files, for training and for every reader.

    runs/<run-id>/.lowrank-lens        marker (folder.py): the folder is a run lowrank-lens may write in
                 /.lock                the trainer's lock (folder.py RunLock)
                 /config.json          resolved config + provenance + data fingerprint (files.py)
                 /log.jsonl            one record per logged step and per validation (log.py reads it)
                 /val_tokens.npy       the fixed validation rows
                 /ckpt/step_*/         model.safetensors, meta.json, state.pt (checkpoint.py)

loading.py rebuilds a checkpoint's model through its method plugin for the readers (analysis, downstream,
imports, report). Nothing here imports the training package (train/): training writes through these
modules and readers read through them, as one checkpoint manager serves a trainer and its evaluators.
"""
