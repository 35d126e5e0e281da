"""Write the raw trace --debug reads from a real cell (a fixture for test_debugtrace.py).

.venv/bin/python tests/unit/data/capture_trace.py OUT.txt PKG[,PKG] -- COMMAND...
(root, the offline set built). Prints the cell's closure: the test's CLOSURE.
"""

import sys

from nixcell.runner import execute, prepare
from nixcell.sandbox import tracer
from nixcell.spec import make_spec


def main() -> None:
    out_path, packages, command = sys.argv[1], sys.argv[2], sys.argv[4:]
    out = open(out_path, "w")  # noqa: SIM115 - open for the whole run
    line_of = tracer.CellTracer._line

    def _line(self, fd, line):
        if fd == self._trace_fd:
            out.write(line.decode("ascii", "replace") + "\n")
        line_of(self, fd, line)

    tracer.CellTracer._line = _line
    plan, _ = prepare(make_spec(command=command, packages=packages.split(",")))
    result = execute(plan, trace=True)
    out.close()
    print("exit", result.exit_code, "closure", plan.closure)


if __name__ == "__main__":
    main()
