"""
``train_net.py`` as the multi-process test runs it: the same ``invoke_main()`` (Detectron2's
``launch``), plus, in every rank, the trained parameters written to ``OUTPUT_DIR/rank<r>.pth``
(parameters only: BatchNorm running statistics are per rank, as Detectron2 builds DDP with
``broadcast_buffers=False``) so that the test can compare the ranks. The shapes dataset
``ddp_train`` is registered from ``$D2KD_DDP_SHAPES`` (already generated).

    python tests/integration/ddp_main.py --num-gpus 2 --config-file CONFIG ...
"""

import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from d2kd.data import register_shapes  # noqa: E402
from d2kd.engine import unwrap_model  # noqa: E402

import train_net  # noqa: E402

# Module level, so that it also runs in the ranks that launch() spawns.
register_shapes("ddp_train", os.environ["D2KD_DDP_SHAPES"], "train", num_images=4)
_train = train_net.Trainer.train


def _train_and_save(self):
    out = _train(self)
    state = {k: p.detach() for k, p in unwrap_model(self.model).named_parameters()}
    torch.save(state, os.path.join(self.cfg.OUTPUT_DIR, f"rank{comm.get_rank()}.pth"))
    return out


train_net.Trainer.train = _train_and_save

if __name__ == "__main__":
    train_net.invoke_main()
    # The test needs nothing from the interpreter's teardown, which takes 10-20 s after a
    # training run here (with Detectron2's launcher too): end the process (with --num-gpus 1,
    # the rank itself) as soon as everything is written.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
