"""magika on files from other sources than the zoo's splits, scored against the
original model: the task's ``other`` split (up to 20 files per type from
/usr/include, /usr/lib, /usr/libexec and /etc, none with a calibration or
evaluation input; models/data_files.py). The same as
``onnx-l2c eval ORIGINAL CANDIDATE --model magika --split other`` for each
candidate.

    python -P scripts/magika_other_files.py ORIGINAL.onnx CANDIDATE.onnx [...]
"""

import sys
from pathlib import Path

from onnx_l2c.models.evaluate import evaluate, format_result


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    original = Path(argv[0])
    for candidate in argv[1:]:
        print("\n".join(format_result(evaluate("magika", original, Path(candidate), split="other"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
