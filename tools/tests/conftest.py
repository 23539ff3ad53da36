"""Makes tools/torch_checkpoint.py importable as `torch_checkpoint`."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
