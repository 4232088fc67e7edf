"""TensorRT's build progress (IProgressMonitor) shown as tqdm bars."""

from __future__ import annotations

from trtptq.core.log import progress
from trtptq.core.trt import Backend


def progress_monitor(backend: Backend, enabled: bool):
    """An IProgressMonitor with one bar per top-level build phase; it never cancels the build."""
    base = backend.trt.IProgressMonitor

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.bars: dict = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.bars[phase_name] = progress(total=num_steps, desc=phase_name, unit="step", leave=False,
                                                 enabled=enabled)

        def step_complete(self, phase_name, step):
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()
