"""MIXTURE_OR_TASK_MODULE for the CLI tests: SST-2 from ../shared/data, local vocabulary."""

import os
import pathlib

from spot.tasks import glue

_SHARED = pathlib.Path(os.environ.get(
    "SPOT_SHARED_DATA", pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"))

glue.register_glue(data_dir=str(_SHARED / "glue"),
                   vocabulary=str(_SHARED / "t5_vocab" / "spiece.model"),
                   name_prefix="cli_glue", tasks=["sst2", "rte"])
