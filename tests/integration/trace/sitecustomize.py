"""Records which project modules a pipeline stage's command really loads (the dvc.yaml deps check).

Put this folder on PYTHONPATH and set MELANOMA_TRACE_DIR: every Python process that DVC starts for a
stage (DVC_STAGE is set by DVC) writes, at exit, the files of the ``melanoma`` modules it imported.
"""

import atexit
import json
import os
import sys


def _dump() -> None:
    out, stage = os.environ.get("MELANOMA_TRACE_DIR"), os.environ.get("DVC_STAGE")
    if not out or not stage:
        return
    files = sorted(
        {
            m.__file__
            for name, m in list(sys.modules.items())
            if (name == "melanoma" or name.startswith("melanoma.")) and getattr(m, "__file__", None)
        }
    )
    if not files:
        return
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{stage.replace('/', '_')}.{os.getpid()}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"stage": stage, "argv": sys.argv, "files": files}, f)


atexit.register(_dump)
