"""A STAND-IN adapter for tests: the real hf engine, except that it cannot run batch sizes
above 1 (as a compiled engine whose compile fails for a shape), so the way from
Engine.prepare's CannotRun to an `unsupported` cell is tested through real processes."""

from pipeline.engines.base import CannotRun
from pipeline.engines.hf import HFEngine


class StandInCannotCompile(HFEngine):
    def prepare(self, batch_size: int, input_tokens: int, output_tokens: int) -> float | None:
        if batch_size > 1:
            raise CannotRun(f"stand-in: cannot compile for batch size {batch_size}")
        return 0.5
