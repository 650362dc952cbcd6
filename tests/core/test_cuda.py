"""The same Learner on a GPU: mixed precision (bf16 and fp16 with a grad scaler), torch.compile, and
checkpoints that load back on a CPU. Skipped where no CUDA device exists (CI has none)."""
import pytest
import torch

from firstepoch import DataLoaders, Learner
from firstepoch.data.samples import digits_arrays

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def dls():
    x, y = digits_arrays()
    return DataLoaders.from_tensors(x, y, batch_size=64)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "mixed"])
def test_trains_on_cuda(dls, precision):
    """It learns, and every conv and Linear layer really ran in the precision asked for (an autocast that fell
    back to fp32 would learn just as well)."""
    from firstepoch.core.device import autocast_dtype
    from tests.conftest import record_output_dtypes

    expected = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "mixed": autocast_dtype(torch.device("cuda"))}[precision]
    learn = Learner(dls, "cnn", device="cuda", precision=precision, progress=False)
    seen, hooks = record_output_dtypes(learn.model)
    history = learn.fit_one_cycle(3, 5e-3)
    for hook in hooks:
        hook.remove()
    assert next(learn.model.parameters()).is_cuda
    assert len(seen) > 100 and set(seen) == {expected}, set(seen)
    assert {p.dtype for p in learn.model.parameters()} == {torch.float32}
    assert history[-1]["accuracy"] > 0.9
    mixed = [cb for cb in learn.callbacks if type(cb).__name__ == "MixedPrecision"]
    assert [cb.active_dtype for cb in mixed] == ([] if precision == "fp32" else [expected])
    if expected == torch.float16:
        assert mixed[0].scaler is not None and mixed[0].scaler.get_scale() > 0


def test_compiled_cuda_training_and_a_gpu_checkpoint_on_cpu(dls, tmp_path):
    learn = Learner(dls, "cnn", device="cuda", compile=True, progress=False)
    assert learn.fit_one_cycle(2, 5e-3)[-1]["accuracy"] > 0.85
    learn.save(tmp_path / "gpu.pt")
    cpu = Learner(dls, "cnn", device="cpu", progress=False).load(tmp_path / "gpu.pt")
    x = dls.valid.dataset.x[:8]
    with torch.no_grad():
        learn.model.eval()
        cpu.model.eval()
        assert torch.allclose(learn.model(x.cuda()).cpu(), cpu.model(x), atol=1e-3)


def test_deterministic_resume_on_cuda_is_bit_exact(dls, tmp_path):
    options = dict(device="cuda", progress=False, deterministic=True)
    reference = Learner(dls, "cnn", **options)
    reference.fit(2)
    first = Learner(dls, "cnn", run=tmp_path / "r", **options)
    first.fit(1)
    resumed = Learner(dls, "cnn", run=tmp_path / "r", **options)
    resumed.fit(2, resume=True)
    assert resumed.recorder.losses == reference.recorder.losses
