"""MIXTURE_OR_TASK_MODULE of the mixture-transfer tests: spot's GLUE SST-2 and RTE
tasks on the T5 vocabulary from ../shared/data (the default one is on gs://).

With DATA_DIR the run then points them at local files, keeping this vocabulary.
"""

import os
import pathlib

from spot.tasks import glue

SHARED = pathlib.Path(os.environ.get(
    "SPOT_SHARED_DATA", pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"))

glue.register_glue(vocabulary=str(SHARED / "t5_vocab" / "spiece.model"), tasks=["sst2", "rte"])
