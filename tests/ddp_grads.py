"""Loss and gradients of the pairwise UniFrac loss on one global batch of 8 samples.

Run as one process, or under `accelerate launch` with 2 CPU processes (gloo): each rank encodes
its 4 samples, the runtime's unifrac_loss_global computes the global loss, and rank 0 writes
the loss and the DDP-averaged gradients to OUT.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aam_runtime.data import batches as B  # noqa: E402
from aam_runtime.data import table as T  # noqa: E402
from aam_runtime.data import unifrac as U  # noqa: E402
from aam_runtime.model import AAM, ModelConfig  # noqa: E402
from aam_runtime.losses import unifrac_global as unifrac_loss_global  # noqa: E402
from aam_runtime.device import make_accelerator  # noqa: E402
from synth import dataset_spec, make_dataset  # noqa: E402
from test_training import SMALL_MODEL  # noqa: E402

data_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
acc = make_accelerator("cpu", "no")
torch.manual_seed(0)
model = AAM(ModelConfig.from_spec(SMALL_MODEL), max_bp=150)
d = make_dataset(data_dir / f"rank{acc.process_index}", n_samples=16, n_asvs=25, seed=4)
p = T.load(dataset_spec(d))
enc = B.encode(p, 150, 1024, "abundance")
dist = U._skbio(p.sample_ids, p.asv_ids, p.counts, str(d["tree"]), "unweighted")
model = acc.prepare(model)
rows = np.arange(8)
mine = B.shard(rows, acc.process_index, acc.num_processes)
batch = B.to_torch(B.collate_numpy(enc, mine))
emb = model(batch)["embedding"]
target = torch.from_numpy(dist[np.ix_(rows, rows)]).float()
surrogate, loss, _ = unifrac_loss_global(emb, target, acc)
acc.backward(surrogate)
if acc.is_main_process:
    raw = acc.unwrap_model(model)
    torch.save({"loss": loss.item(), "grads": {n: q.grad.clone() for n, q in raw.named_parameters()
                                               if q.grad is not None}}, out)
acc.wait_for_everyone()
acc.end_training()  # leave the gloo group on every rank: exiting inside it can abort (SIGABRT)
