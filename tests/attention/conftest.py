"""Make this folder's helpers (attention_reference) importable.

tests/pytest.ini uses --import-mode=importlib, which does not put test folders on sys.path.
Nothing here touches TRITON_INTERPRET: the interpreter tests run in their own process
(see test_attention_triton_interpreter.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
