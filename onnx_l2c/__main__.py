import sys

from onnx_l2c.cli import main

sys.exit(main())
