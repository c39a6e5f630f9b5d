# Lets the tests import the l2c_native helper next to them under any
# pytest import mode (the project uses --import-mode=importlib).
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
