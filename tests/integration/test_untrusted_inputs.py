"""
Issue 21: nothing runs code, nothing hangs, nothing stops silently. Each test builds its crafted
input itself; a code-execution attempt would create a marker file that must never appear.
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.engine import default_argument_parser  # noqa: E402

import train_net  # noqa: E402
from tests.integration.common import config_path  # noqa: E402

PLAIN = config_path("shapes/retinanet_R18.yaml")


def _args(argv):
    return default_argument_parser().parse_args([str(a) for a in argv])


# ----------------------------------------------------------------------------- --eval-only
def test_eval_only_without_weights_is_refused(tmp_path):
    argv = ["--config-file", PLAIN, "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"]
    out = ["OUTPUT_DIR", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"--eval-only with an empty MODEL.WEIGHTS"):
        train_net.main(_args(["--eval-only", *argv, *out]))
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS.*OUTPUT_DIR .* has none"):
        train_net.main(_args(["--eval-only", "--resume", *argv, *out]))
