#!/usr/bin/env python3
"""Copies a valid indexer checkpoint into crafted bad ones, each breaking one rule, with plain
h5py: label fields out of range (tau = 0, a negative window, critical_mass 5), a NaN weight,
and a config declaring a far larger width than its tensors.

Usage: craft_checkpoints.py GOOD.h5 OUT_DIR
"""
import json
import os
import shutil
import sys

import h5py
import numpy as np


def edit(good, out_dir, name, change):
    path = os.path.join(out_dir, name + ".h5")
    shutil.copyfile(good, path)
    with h5py.File(path, "r+") as f:
        change(f)


def set_config(f, update):
    config = json.loads(f.attrs["config_json"])
    update(config)
    f.attrs["config_json"] = json.dumps(config)


def main():
    good, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    edit(good, out_dir, "tau_zero", lambda f: set_config(f, lambda c: c["labels"].update(tau=0)))
    edit(good, out_dir, "window_negative", lambda f: set_config(f, lambda c: c["labels"].update(window=-5)))
    edit(good, out_dir, "critical_mass_5", lambda f: set_config(f, lambda c: c["labels"].update(critical_mass=5.0)))
    edit(good, out_dir, "width_huge", lambda f: set_config(f, lambda c: c.update(depth=1, width=2**22)))

    def nan_weight(f):
        w = f["tensors/query_tower.layers.0.weight"]
        data = w[...]
        data.flat[3] = np.nan
        w[...] = data
    edit(good, out_dir, "nan_weight", nan_weight)


if __name__ == "__main__":
    main()
