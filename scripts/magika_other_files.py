"""magika on files from other sources than the zoo's splits: up to 20 files per
type from /usr/include, /usr/lib, /etc and this repository (skipping any
whose model input is in the zoo), scored against the original model.

    python -P scripts/magika_other_files.py ORIGINAL.onnx CANDIDATE.onnx [...]
"""
import hashlib
import os
import sys

import numpy as np
import onnxruntime as ort

import onnx_l2c
from pathlib import Path
from magika import Magika
from magika.types import Seekable
from onnx_l2c.models.data_files import EXT_LABELS, magika_inputs
m = Magika(); cfg = m._model_config
zoo = {hashlib.sha256(x.tobytes()).digest() for s in ("calibration", "evaluation") for x in magika_inputs(s)[0]}
roots = [Path("/usr/include"), Path("/usr/lib/python3"), Path("/usr/lib/x86_64-linux-gnu"), Path("/etc"), Path(__file__).resolve().parents[1], Path("/usr/lib/gcc")]
per_ext, xs, exts = {}, [], []
rng = np.random.default_rng(0)
for root in roots:
    for dp, dn, fns in os.walk(root):
        dn.sort()
        for fn in sorted(fns):
            ext = fn.rsplit(".", 1)[-1].lower() if "." in fn else ""
            if ext not in EXT_LABELS or per_ext.get(ext, 0) >= 20: continue
            p = Path(dp) / fn
            if p.is_symlink() or not p.is_file(): continue
            try:
                with open(p, "rb") as f: _, feats = m._get_result_or_features_from_seekable(Seekable(f), p)
            except OSError: continue
            if feats is None: continue
            x = np.asarray(feats.beg[: cfg.beg_size] + feats.end[-cfg.end_size:], dtype=np.int32)
            d = hashlib.sha256(x.tobytes()).digest()
            if d in zoo: continue
            zoo.add(d); xs.append(x); exts.append(ext); per_ext[ext] = per_ext.get(ext, 0) + 1
X = np.stack(xs)
print("files", len(X), "types", len(per_ext))
s0 = ort.InferenceSession(sys.argv[1]); name = s0.get_inputs()[0].name
ref = s0.run(None, {name: X})[0]
for c in sys.argv[2:]:
    out = onnx_l2c.InferenceSession(c).run(None, {name: X})[0]
    agree = ref.argmax(-1) == out.argmax(-1)
    kl = (ref * (np.log(np.maximum(ref, 1e-12)) - np.log(np.maximum(out, 1e-12)))).sum(-1).mean()
    print(c, "label agreement %.4f (%d of %d differ), mean KL %.4f" % (agree.mean(), (~agree).sum(), len(X), kl))
